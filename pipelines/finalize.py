"""Turn the per-input work records into the run's tables: videos, scenes, clips, rejected, and the shard manifest.

Runs on the driver after the DAG, and again on every rerun: it only reads small JSON records, so rebuilding the
tables is cheap and always reflects exactly the finished work. Inputs are visited in sorted URI order, so the
tables and the manifest are identical however the work was scheduled or interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annotators.events import EventConfig
from curation.camera_filter import REASON as CAMERA_OUTLIER
from curation.camera_filter import CameraFilterConfig, camera_magnitude, find_outliers
from curation.dedup import DedupConfig, find_duplicates
from curation.filters import FilterConfig, apply_filters
from curation.packing import Member, PackFile, pack_shards, packing_summary, remove_unlisted
from curation.schema import VIDEOS
from curation.shards import ShardFile, read_tensor_column, write_manifest
from curation.tables import write_run_table
from pipelines.steps import WorkDir, read_attempts, rejected_row

if TYPE_CHECKING:
    from pipelines.config import RunConfig

logger = logging.getLogger(__name__)

# Rejection reasons that are faults of the machinery rather than verdicts on the content.
FAULT_REASONS = ("worker_crashed", "worker_died", "out_of_memory")  # and every `*_error`


@dataclasses.dataclass
class Collected:
    """Every table's rows plus the bookkeeping the summary needs."""

    videos: list[dict] = dataclasses.field(default_factory=list)
    scenes: list[dict] = dataclasses.field(default_factory=list)
    clips: list[dict] = dataclasses.field(default_factory=list)
    rejected: list[dict] = dataclasses.field(default_factory=list)
    shards: list[ShardFile] = dataclasses.field(default_factory=list)  # per-video files, as the records list them
    packs: list[PackFile] | None = None  # the packed files holding them, once `pack_run` ran
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    ready: dict[str, list[dict]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # inputs per step
    # per step: one {"start", "end", "node", "seconds"} per finished input, for the throughput figures
    timings: dict[str, list[dict]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    # per step: {"retried": inputs that needed more than one attempt, "retries": extra attempts, "lost": inputs
    # whose every attempt died}
    attempts: dict[str, Counter] = dataclasses.field(default_factory=lambda: defaultdict(Counter))

    def note_record(self, step: str, key: str, record: dict) -> None:
        """Account one finished step record: its busy time, timing and attempts."""
        self.seconds[step] += record.get("seconds", 0.0)
        if timing := record.get("timing"):
            self.timings[step].append({**timing, "key": key, "seconds": record.get("seconds", 0.0)})
        if (extra := int(record.get("attempts", 1)) - 1) > 0:
            self.attempts[step].update(retried=1, retries=extra)

    def note_crash(self, work: WorkDir, step: str, row: dict) -> None:
        """Account an input that `step` attempted but left without a record: a `worker_crashed` rejection, and the
        attempts its attempt log shows."""
        attempts = read_attempts(work.attempts_path(step, row["key"]))
        if attempts:
            self.attempts[step].update(lost=1, retries=len(attempts) - 1, retried=int(len(attempts) > 1))
        self.rejected.append(rejected_row(step, row, "worker_crashed", crashed_detail(attempts)))

    def faults(self) -> dict[str, Any]:
        """Retries and failures of the run, for _run.json and the summary."""
        errors = Counter(
            f"{r['stage']}/{r['reason']}"
            for r in self.rejected
            if r["reason"] in FAULT_REASONS or r["reason"].endswith("_error")
        )
        return {
            "retries": sum(c["retries"] for c in self.attempts.values()),
            "retried_inputs": sum(c["retried"] for c in self.attempts.values()),
            "by_step": {step: dict(c) for step, c in sorted(self.attempts.items())},
            "errors": dict(sorted(errors.items())),
        }

    @property
    def files(self) -> list[ShardFile] | list[PackFile]:
        """The shard files of the run: the packs once packed, else the per-video files."""
        return self.packs if self.packs is not None else self.shards

    def counts(self) -> dict[str, Any]:
        failed = sum(1 for v in self.videos if v.get("error"))
        return {
            "videos": len(self.videos),
            "videos_failed": failed,
            "scenes": len(self.scenes),
            "clips": len(self.clips),
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(Counter(f"{r['stage']}/{r['reason']}" for r in self.rejected)),
            "shards": len(self.files),
            "shard_bytes": sum(s.bytes for s in self.files),
            "clip_seconds": round(sum(c["end_s"] - c["start_s"] for c in self.clips), 3),
        }


def collect(run_dir: Path, inputs: list[dict], attempted: tuple[str, ...] = ()) -> Collected:
    """Read every input's records in order. Inputs that a step in `attempted` left without a record (their worker
    died) become `worker_crashed` rejections; rerunning retries them."""
    work, out = WorkDir(run_dir), Collected()
    first_uri_of: dict[str, str] = {}
    for row in inputs:
        key = row["key"]
        if not work.done("ingest", key):
            if "ingest" in attempted:
                out.note_crash(work, "ingest", row)
            continue
        video = work.load("ingest", key)
        out.note_record("ingest", key, video)
        out.videos.append({k: video.get(k) for k in VIDEOS.names})
        if video.get("error"):
            out.rejected.append(
                rejected_row("ingest", video, video.get("reason") or "unreadable", video.get("detail", ""))
            )
            continue
        if video["video_id"] in first_uri_of:  # the same bytes under another name: keep the first in URI order
            detail = f"same content as {first_uri_of[video['video_id']]}"
            out.rejected.append(rejected_row("ingest", video, "duplicate_video", detail))
            continue
        first_uri_of[video["video_id"]] = video["source_uri"]
        _collect_video(work, row, video, out, attempted)
    return out


def _collect_video(work: WorkDir, row: dict, video: dict, out: Collected, attempted: tuple[str, ...]) -> None:
    key, ids = row["key"], {"video_id": video["video_id"], "source_uri": video["source_uri"]}
    for step in ("scenes", "clips"):
        if not work.done(step, key):
            out.ready[step].append(row)
            if step in attempted:
                out.note_crash(work, step, {**video, "key": key})
            return
        record = work.load(step, key)
        out.note_record(step, key, record)
        out.rejected.extend(record.get("rejected", []))
        if step == "scenes":
            out.scenes.extend({**ids, **s} for s in record.get("scenes", []))
        else:
            for name, seconds in record.get("annotator_seconds", {}).items():
                out.seconds[f"clips/{name}"] += seconds
            out.clips.extend(record.get("clips", []))
            out.shards.extend(ShardFile(**s) for s in record.get("shards", []))


def crashed_detail(attempts: list[dict]) -> str:
    """Why an input has no record of its step: its `attempts` (from the attempt log) all lost their worker."""
    nodes = sorted({a["node"][:8] for a in attempts})
    where = f" on node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)}" if nodes else ""
    return f"the worker process died ({len(attempts) or 'unknown'} attempts{where}); rerun to retry"


def drop_clips(data: Collected, stage: str, dropped: list[tuple[dict, str, str]]) -> None:
    """Move clips from `clips` to `rejected` (stage, reason, detail). Their shard rows stay; readers select the
    curated set by the `clips` table."""
    gone = {id(c) for c, _, _ in dropped}
    data.clips = [c for c in data.clips if id(c) not in gone]
    for clip, reason, detail in dropped:
        data.rejected.append(rejected_row(stage, clip, reason, detail, (clip["start_frame"], clip["end_frame"])))


def filter_scores(data: Collected, cfg: FilterConfig) -> dict[str, Any] | None:
    """`[filters]` thresholds over the run's clips (stage `filters`); None when no threshold is set."""
    if not cfg.columns:
        return None
    kept, dropped = apply_filters(data.clips, cfg)
    drop_clips(data, "filters", dropped)
    by_reason = Counter(reason for _, reason, _ in dropped)
    return {"min": cfg.min, "max": cfg.max, "kept": len(kept), "excluded": len(dropped), "by_reason": by_reason}


def filter_camera_outliers(data: Collected, cfg: CameraFilterConfig, run_dir: Path) -> dict[str, Any] | None:
    """`[filters.camera]`: clips whose camera embedding is an outlier of the run (stage `filters`, reason
    `camera_outlier`), from the shards' `camera_c2w` and `camera_intrinsics`. The rule and its computed threshold,
    for the manifest; None when off."""
    if not cfg.enabled:
        return None
    shards = sorted({c["shard"] for c in data.clips})
    poses = read_tensor_column(run_dir, shards, "camera_c2w")
    intrinsics = read_tensor_column(run_dir, shards, "camera_intrinsics")
    magnitudes = [camera_magnitude(poses.get(c["clip_id"]), intrinsics.get(c["clip_id"])) for c in data.clips]
    rule, found = find_outliers(magnitudes, cfg)
    drop_clips(data, "filters", [(data.clips[i], CAMERA_OUTLIER, detail) for i, detail in found])
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


def remove_duplicates(data: Collected, cfg: DedupConfig, run_dir: Path) -> dict[str, Any] | None:
    """Global near-duplicate removal (stage `dedup`, reason `duplicate`, the kept clip in the detail): key-frame
    hashes, plus the `clip_embedding` tensors in the shards when they exist. None when dedup is off."""
    if not cfg.enabled:
        return None
    clips = data.clips
    embeddings = None
    if cfg.use_embeddings:
        stored = read_tensor_column(run_dir, sorted({c["shard"] for c in clips}), "clip_embedding")
        if stored:
            dim = len(next(iter(stored.values())))
            # float16 as stored: half the memory of float32 at 1e6+ clips, and dedup converts rows as it reads them
            embeddings = np.full((len(clips), dim), np.nan, dtype=np.float16)
            for i, clip in enumerate(clips):
                if clip["clip_id"] in stored:
                    embeddings[i] = stored[clip["clip_id"]]
    method = "approximate" if cfg.approximate(len(clips)) else "exact"  # which path decides (dedup.method)
    found = find_duplicates(clips, embeddings, cfg)
    dropped = []
    for dup in found:
        kept = clips[dup.kept]
        span = f"{kept['source_uri']} frames {kept['start_frame']}-{kept['end_frame']}"
        dropped.append((clips[dup.dropped], "duplicate", f"{kept['clip_id']} ({span}); {dup.evidence}"))
    drop_clips(data, "dedup", dropped)
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
    scored = [c for c in data.clips if c.get("event_score") is not None]
    kept, dropped = [], []
    for clip in scored:
        if cfg.drop_diffuse and clip.get("event_diffuse"):
            detail = f"activity spread over the frame: entropy {clip['event_entropy']:.2f} (events.drop_diffuse)"
            dropped.append((clip, "event_diffuse", detail))
        else:
            kept.append(clip)
    min_score = 0.0
    if kept and cfg.top_fraction < 1.0:
        ranked = sorted((c["event_score"] for c in kept), reverse=True)
        min_score = ranked[max(1, math.ceil(cfg.top_fraction * len(ranked))) - 1]
        pool = len(kept)
        for clip in [c for c in kept if c["event_score"] < min_score]:
            detail = (
                f"event_score {clip['event_score']:.4g} < {min_score:.4g}, the cutoff of the top "
                f"{cfg.top_fraction:.0%} of {pool} clips (events.top_fraction)"
            )
            dropped.append((clip, "low_event_score", detail))
    drop_clips(data, "events", dropped)
    return {
        "min_event_score": min_score,
        "drop_diffuse": cfg.drop_diffuse,
        "top_fraction": cfg.top_fraction,
        "kept": len(scored) - len(dropped),
        "excluded": len(dropped),
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
    )
    for clip in data.clips:
        pack, offset = where[clip["shard"]]
        clip["shard"], clip["shard_row"] = pack, clip["shard_row"] + offset
    data.packs = packs


def remove_stale_temp_files(run_dir: Path) -> int:
    """Delete temporary files a killed run left behind (called when no step is running)."""
    stale = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


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
    for name in ("videos", "scenes", "clips", "rejected"):
        write_run_table(run_dir, name, getattr(data, name))
    if with_manifest:
        files = data.files
        if data.packs is not None:
            extra = {**extra, "packing": packing_summary(data.packs)}
        write_manifest(run_dir, files, config_hash, extra)
        if data.packs is not None:  # only now: until this manifest is in place, the rerun may need these files
            remove_unlisted(run_dir / "shards", [f.name for f in files])
