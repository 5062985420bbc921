"""End-of-run reporting: the summary table printed to the terminal and RUN_DIR/_run.json (provenance)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

from curation.tables import atomic_write_json

PACKAGES = (
    "torch",
    "torchvision",
    "scenedetect",
    "decord",
    "av",
    "ray",
    "pyarrow",
    "open_clip_torch",
    "transformers",
    "opencv-python-headless",
    "duckdb",
    "numpy",
    "fsspec",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_json(run_dir: Path, payload: dict[str, Any]) -> None:
    atomic_write_json({**payload, "versions": package_versions(), "written_at": time.time()}, run_dir / "_run.json")


def summary_table(
    counts: dict[str, Any],
    seconds: dict[str, float],
    wall: dict[str, float],
    faults: dict[str, Any] | None = None,
    throughput: dict[str, dict[str, Any]] | None = None,
    stalls: list[dict[str, Any]] | None = None,
) -> str:
    """A plain-text table: inputs, outputs, drops by reason, retries, errors and executions the stall watchdog
    stopped, and time and rate per stage."""
    faults = faults or {}
    lines = [
        ("videos in", counts["videos"]),
        ("videos failed", counts["videos_failed"]),
        ("scenes", counts["scenes"]),
        ("clips kept", counts["clips"]),
        ("clip seconds", counts["clip_seconds"]),
        ("rejected", counts["rejected"]),
        *((f"  {reason}", n) for reason, n in sorted(counts["rejected_by_reason"].items())),
        ("shards", counts["shards"]),
        ("shard MB", round(counts["shard_bytes"] / 1e6, 1)),
        ("retries", faults.get("retries", 0)),
        *((f"  errors: {kind}", n) for kind, n in faults.get("errors", {}).items()),
        *((("stalls (watchdog)", len(stalls)),) if stalls else ()),
        *(
            (f"  round {st.get('round', '?')}: {st['step']}", f"{st['left']} left after {st['waited_s']:.0f} s")
            for st in stalls or ()
        ),
        *((f"worker s: {stage}", round(s, 1)) for stage, s in seconds.items()),
        *((f"wall s: {stage}", round(s, 1)) for stage, s in wall.items()),
    ]
    for stage, f in (throughput or {}).items():
        if f.get("rows"):
            lines.append((f"rows/s: {stage}", f["rows_per_s"]))
            if f.get("utilisation") is not None:
                lines.append((f"  utilisation ({f['slots']:g} {_slot_kind(f)})", f"{f['utilisation']:.0%}"))
            if f.get("queued_mean_s") is not None:
                lines.append(("  queued s per row", f["queued_mean_s"]))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v:>10}" for k, v in lines)


def _slot_kind(figures: dict[str, Any]) -> str:
    return "actors" if figures.get("kind") == "actors" else "slots"


def inputs_hash(inputs: list[dict]) -> str:
    return hashlib.sha256(json.dumps([r["source_uri"] for r in inputs]).encode()).hexdigest()[:16]
