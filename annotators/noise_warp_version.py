"""The noise warp's output version, importable without torch: the driver writes it into the manifest, and importing
`annotators.noise_warp` (torch) there would cost seconds on every run."""

from __future__ import annotations

WARPER_VERSION: str = "gwtf-index-v2"  # stored in shards as noise_warper_version; bump if outputs change
# v2: the area pool adds a block's columns one after the other (v1: torch's sum, whose order is its kernel's)
