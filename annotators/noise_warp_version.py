"""The noise warp's output version, importable without torch: the driver writes it into the manifest, and importing
`annotators.noise_warp` (torch) there would cost seconds on every run."""

from __future__ import annotations

WARPER_VERSION: str = "gwtf-index-v1"  # stored in shards as noise_warper_version; bump if outputs change
