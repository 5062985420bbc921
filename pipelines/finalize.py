"""Turn the per-input work records into the run's tables: videos, scenes, clips, rejected, and the shard manifest.

Runs on the driver after the DAG, and again on every rerun: `pipelines.collect` reads the records (small JSON) into
column files (`pipelines.collected`); finalize curates over the columns each stage needs and writes the tables batch
by batch, so its memory follows the curation columns, not the rows. Inputs are visited in sorted URI order, so the
tables and the manifest are identical however the work was scheduled or interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from annotators.events import EventConfig
from curation.camera_filter import REASON as CAMERA_OUTLIER
from curation.camera_filter import CameraFilterConfig, camera_magnitude, find_outliers
from curation.dedup import DedupConfig, find_duplicates_in, hash_arrays, quality_rank
from curation.filters import FilterConfig, filter_columns
from curation.packing import Member, pack_shards, packing_summary, remove_unlisted
from curation.shards import visit_tensor_blocks, visit_tensors, write_manifest
from curation.tables import write_run_table_batches
from pipelines.collected import SPILL_PREFIX, Collected, stale_spill
from pipelines.steps import WorkDir

if TYPE_CHECKING:
    from pipelines.config import RunConfig

logger = logging.getLogger(__name__)

RANK_FIELDS = ("aesthetic_score", "width", "height", "start_s", "end_s", "sharpness", "clip_id")  # quality_rank's


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64, NaN where null."""
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64)


def filter_scores(data: Collected, cfg: FilterConfig) -> dict[str, Any] | None:
    """`[filters]` thresholds over the run's clips (stage `filters`); None when no threshold is set."""
    if not cfg.columns:
        return None
    live, table = data.clips.live(), data.clips.columns(sorted(cfg.columns))
    hit, reasons, details = filter_columns({c: _floats(table, c) for c in cfg.columns}, cfg)
    data.clips.drop("filters", live[hit], reasons, details)
    by_reason = Counter(reasons)
    return {"min": cfg.min, "max": cfg.max, "kept": len(data.clips), "excluded": len(hit), "by_reason": by_reason}


def _tensor_rows(data: Collected) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Where each kept clip's shard row is: (file names, each clip's index into them, row in that file)."""
    table = data.clips.columns(["shard", "shard_row"])
    encoded = pc.dictionary_encode(table["shard"].combine_chunks())
    rows = table["shard_row"].to_numpy(zero_copy_only=False)
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False), rows


def filter_camera_outliers(data: Collected, cfg: CameraFilterConfig, run_dir: Path) -> dict[str, Any] | None:
    """`[filters.camera]`: clips whose camera embedding is an outlier of the run (stage `filters`, reason
    `camera_outlier`), from the shards' `camera_c2w` and `camera_intrinsics`. The rule and its computed threshold,
    for the manifest; None when off."""
    if not cfg.enabled:
        return None
    live = data.clips.live()
    magnitudes: list[float | None] = [None] * len(live)

    def measure(i: int, found: list[np.ndarray | None]) -> None:
        magnitudes[i] = camera_magnitude(*found)

    visit_tensors(run_dir, *_tensor_rows(data), ("camera_c2w", "camera_intrinsics"), measure)
    rule, found = find_outliers(magnitudes, cfg)
    data.clips.drop("filters", live[[i for i, _ in found]], CAMERA_OUTLIER, [detail for _, detail in found])
    return {**rule.as_dict(), "excluded": len(found)}


def filter_clips(data: Collected, cfg: FilterConfig, run_dir: Path) -> dict[str, Any] | None:
    """`[filters]`: camera outliers first (their threshold over every clip, so it does not depend on the score
    thresholds), then the score thresholds; None when neither is set."""
    camera = filter_camera_outliers(data, cfg.camera, run_dir)
    scores = filter_scores(data, cfg)
    if camera is None:
        return scores
    out = scores or {"min": cfg.min, "max": cfg.max, "kept": len(data.clips), "excluded": 0, "by_reason": Counter()}
    out["camera"] = camera
    out["excluded"] += camera["excluded"]
    if camera["excluded"]:
        out["by_reason"] = Counter(out["by_reason"]) + Counter({CAMERA_OUTLIER: camera["excluded"]})
    return out


def clip_embeddings(
    data: Collected, run_dir: Path, name: str = "clip_embedding", remap_rows: int = 65536
) -> np.ndarray | None:
    """The kept clips' `name` tensors as an (n, d) float16 array on disk (a read-only memmap in the collection's
    folder: 10 M clips of 768 values are 15 GB), NaN rows where a clip has none; None when no clip has one.

    A mapping's written pages stay in the process's resident set until it is closed: the file is written through a
    mapping that is flushed and reopened every `remap_rows` rows, and what is returned is a fresh read-only one, so
    the embeddings cost page cache, not resident memory (1.5 GB at 1 M clips before)."""
    where = _tensor_rows(data)
    seen = np.zeros(len(where[1]), dtype=bool)
    path = data.folder / f"{name}.npy"
    out: np.memmap | None = None
    since_remap = 0

    def put(ids: np.ndarray, values: np.ndarray) -> None:
        nonlocal out, since_remap
        if out is None:  # the width comes from the first tensor found
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(seen), values[0].size))
        elif since_remap >= remap_rows:  # written pages leave the resident set with their mapping
            out.flush()
            out, since_remap = np.load(path, mmap_mode="r+"), 0
        if values[0].size != out.shape[1]:
            raise ValueError(f"{name} tensors of {values[0].size} and {out.shape[1]} values in one run")
        # float16 as stored: dedup converts rows as it reads them
        out[ids], seen[ids] = values.reshape(len(ids), -1), True
        since_remap += len(ids)

    visit_tensor_blocks(run_dir, *where, name, put)
    if out is None:
        return None
    out[np.flatnonzero(~seen)] = np.nan  # clips without one: each row written once
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def remove_duplicates(data: Collected, cfg: DedupConfig, run_dir: Path) -> dict[str, Any] | None:
    """Global near-duplicate removal (stage `dedup`, reason `duplicate`, the kept clip in the detail): key-frame
    hashes, plus the `clip_embedding` tensors in the shards when they exist. None when dedup is off."""
    if not cfg.enabled:
        return None
    live = data.clips.live()
    embeddings = clip_embeddings(data, run_dir) if cfg.use_embeddings else None
    table = data.clips.columns(["key_frame_hashes", *RANK_FIELDS])
    values, valid = hash_arrays(table["key_frame_hashes"])
    table = table.drop_columns(["key_frame_hashes"])
    method = "approximate" if cfg.approximate(len(live)) else "exact"  # which path decides (dedup.method)
    found = find_duplicates_in(values, valid, embeddings, lambda i: quality_rank(table.slice(i, 1).to_pylist()[0]), cfg)
    keepers = data.clips.take(live[[d.kept for d in found]], ["clip_id", "source_uri", "start_frame", "end_frame"])
    details = [
        f"{k['clip_id']} ({k['source_uri']} frames {k['start_frame']}-{k['end_frame']}); {d.evidence}"
        for d, k in zip(found, keepers.to_pylist(), strict=True)
    ]
    data.clips.drop("dedup", live[[d.dropped for d in found]], "duplicate", details)
    return {
        "method": method,
        "hash_distance": cfg.hash_distance,
        "embedding_similarity": cfg.embedding_similarity if embeddings is not None else None,
        "embedding_dim": embeddings.shape[1] if embeddings is not None else None,
        "groups": len({d.kept for d in found}),
        "excluded": len(found),
    }


def curate(data: Collected, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The run's global clip selection, in order: camera outliers and score thresholds, near-duplicate removal (among
    the clips that pass them, so a group never loses its keeper to a later filter), then EVD's relative event filter.
    Returns what each did, for the manifest's `curation` block."""
    out: dict[str, Any] = {"clips_before": len(data.clips)}
    stages = (  # called in turn: each sees what the previous one kept
        ("filters", lambda: filter_clips(data, cfg.filters, run_dir)),
        ("dedup", lambda: remove_duplicates(data, cfg.dedup, run_dir)),
        ("events", lambda: select_events(data, cfg.events)),
    )
    for name, stage in stages:
        summary = stage()
        if summary is not None:
            out[name] = summary
            logger.info("%s: kept %d clips, excluded %d (see `rejected`)", name, len(data.clips), summary["excluded"])
    out["clips_after"] = len(data.clips)
    return out


def select_events(data: Collected, cfg: EventConfig) -> dict[str, Any] | None:
    """EVD's clip filter, over the whole run: drop diffuse clips (`drop_diffuse`), then keep the top
    `top_fraction` of the rest by event_score (ties at the cutoff are kept). Dropped clips leave the `clips`
    table for `rejected` (stage `events`) with the reason. Returns the rule for the manifest; None when the
    filter is off."""
    if not cfg.enabled or (cfg.top_fraction >= 1.0 and not cfg.drop_diffuse):
        return None
    live, table = data.clips.live(), data.clips.columns(["event_score", "event_diffuse", "event_entropy"])
    score, entropy = _floats(table, "event_score"), _floats(table, "event_entropy")
    scored = ~np.isnan(score)
    diffuse = np.zeros(len(live), dtype=bool)
    if cfg.drop_diffuse:
        diffuse = scored & pc.fill_null(table["event_diffuse"], False).to_numpy(zero_copy_only=False).astype(bool)
    kept = scored & ~diffuse
    dropped = [np.flatnonzero(diffuse)]
    reasons = ["event_diffuse"] * len(dropped[0])
    details = [f"activity spread over the frame: entropy {entropy[i]:.2f} (events.drop_diffuse)" for i in dropped[0]]
    min_score = 0.0
    if kept.any() and cfg.top_fraction < 1.0:
        ranked = np.sort(score[kept])[::-1]
        min_score = float(ranked[max(1, math.ceil(cfg.top_fraction * len(ranked))) - 1])
        low = np.flatnonzero(kept & (score < min_score))
        rule = f"the cutoff of the top {cfg.top_fraction:.0%} of {int(kept.sum())} clips (events.top_fraction)"
        dropped.append(low)
        reasons += ["low_event_score"] * len(low)
        details += [f"event_score {score[i]:.4g} < {min_score:.4g}, {rule}" for i in low]
    out = np.concatenate(dropped)
    data.clips.drop("events", live[out], reasons, details)
    return {
        "min_event_score": min_score,
        "drop_diffuse": cfg.drop_diffuse,
        "top_fraction": cfg.top_fraction,
        "kept": int(scored.sum()) - len(out),
        "excluded": len(out),
    }


def pack_run(run_dir: Path, data: Collected, cfg: RunConfig) -> None:
    """Make sure the packed shard files of the run's per-video files exist (`curation.packing`), and point every
    clip's `shard`/`shard_row` at its row in them. Deletes nothing: see `write_tables`."""
    members = [Member(s.name, s.rows, s.bytes) for s in data.shards]
    every = max(1, cfg.runtime.progress_every_s)
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= every or done == total:
            last[0] = time.monotonic()
            logger.info("packing shards: %d of %d files written", done, total)

    packs, where = pack_shards(
        run_dir / "shards",
        members,
        cfg.shards.target_mb,
        cfg.shards.tensor_compression_level,
        workers=min(4, os.cpu_count() or 1),
        progress=progress,
        max_rows=cfg.shards.pack_max_rows,
        group_mb=cfg.shards.row_group_mb,
    )
    data.clips.relocate(where)
    data.packs = packs


def remove_stale_temp_files(run_dir: Path) -> int:
    """Delete temporary files a killed run left behind (called when no step is running), and the collection
    folders (`pipelines.collected`) of finalizes whose process is gone."""
    stale = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    folders = [p for p in (run_dir / "_work").glob(f"{SPILL_PREFIX}*") if stale_spill(p)]
    for p in folders:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale) + len(folders)


def remove_used_frames(run_dir: Path) -> int:
    """Delete frames the scenes step kept for a clips step that has finished (its record exists): the clips step
    deletes them itself, unless it failed or was killed after committing. Frames of videos still waiting for their
    clips step stay."""
    frames, work = run_dir / "_work" / "frames", WorkDir(run_dir)
    used = [p for p in frames.glob("*.npy") if work.done("clips", p.stem)]
    for p in used:
        p.unlink(missing_ok=True)
    return len(used)


def write_tables(run_dir: Path, data: Collected, config_hash: str, with_manifest: bool, extra: dict) -> None:
    for name in ("videos", "scenes", "clips"):
        write_run_table_batches(run_dir, name, getattr(data, name).batches())
    write_run_table_batches(run_dir, "rejected", data.rejected_tables())
    if with_manifest:
        files = data.files
        if data.packs is not None:
            extra = {**extra, "packing": packing_summary(data.packs)}
        write_manifest(run_dir, files, config_hash, extra)
        if data.packs is not None:  # only now: until this manifest is in place, the rerun may need these files
            remove_unlisted(run_dir / "shards", [f.name for f in files])
