"""The per-video steps the DAG maps over, with their resume records. No Ray here: each step is a plain function
from a small row (`source_uri`, `key`) to the same row plus a status, and can be called directly in tests.

Every step first looks for its record in RUN_DIR/_work/<step>/<key>.json (or, once the end of a run compacted it,
in the step's batch files: `pipelines.records`); if present the work is already done (resume after a crash).
Otherwise it does the work, writes its outputs atomically, and writes the record last, so a record's existence means
the step's outputs are complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from annotators.models import ModelLoadError
from curation.buckets import available_frames
from curation.decode import DecodeError, VideoInfo, iter_frames
from curation.frame_cache import FrameBuffer, read_frames, write_frames
from curation.ids import clip_id
from curation.ingest import local_path, probe_input
from curation.sampling import (
    FramesConfig,
    VideoLayout,
    clip_windows,
    decode_size,
    fit_to_target,
    sampling_stride,
    video_layout,
)
from curation.scenes import (
    FrameScan,
    SceneConfig,
    clip_spans,
    detect_shots,
    detection_size,
    scan_frames,
    span_seconds,
)
from curation.tables import atomic_write_json, create_json_once, read_json
from pipelines.annotate import annotators_for
from pipelines.config import RunConfig
from pipelines.faults import CrashGuard
from pipelines.records import RecordIndex, loads

logger = logging.getLogger(__name__)

Row = dict[str, Any]


class WorkDir:
    """RUN_DIR/_work: one JSON record per (step, input) marking finished work, as a small file
    (`<step>/<key>.json`) until the driver consolidates it into a batch file (`pipelines.compaction`: during the run
    and at its end).
    Records read the same in either form; the batch files are indexed lazily, once per instance and step."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "_work"
        self._indexes: dict[str, RecordIndex] = {}
        self._dirs: dict[str, str] = {}

    def __reduce__(self) -> tuple:
        # Ray ships step functions holding a WorkDir to every worker: send the path, never a loaded index.
        return (type(self), (self.run_dir,))

    def record_path(self, step: str, key: str) -> Path:
        """The small-file form of a record (absent once compacted)."""
        return self.root / step / f"{key}.json"

    def compacted(self, step: str) -> RecordIndex:
        """The index of `step`'s consolidated records, built on first use."""
        if step not in self._indexes:
            self._indexes[step] = RecordIndex(self.root / step)
        return self._indexes[step]

    def done(self, step: str, key: str) -> bool:
        """Whether (step, input) has a record, in either form."""
        index = self.compacted(step)
        if index.find(key) is not None or self.record_path(step, key).exists():
            return True
        return index.refresh() and index.find(key) is not None  # compacted since this instance looked (one stat)

    def attempts_path(self, step: str, key: str) -> Path:
        """The attempt log of (step, input): present only while the step runs, or after its worker died."""
        return self.root / step / f"{key}.attempts"

    def load(self, step: str, key: str) -> dict[str, Any]:
        """The record of (step, input); FileNotFoundError when it has none (a record expected to be there: a miss
        lists the batch folder, in case the small file was compacted meanwhile)."""
        if (record := self.find(step, key, sure=True)) is None:
            raise FileNotFoundError(self.record_path(step, key))
        return record

    def find(self, step: str, key: str, sure: bool = False) -> dict[str, Any] | None:
        """The record of (step, input), or None when it has none: `done` and `load` in one lookup (finalize reads
        every record of a run this way: one open per small file, no existence check before it). The consolidated
        copy comes first: a compaction killed before deleting the small file leaves an identical one. A missing
        small file may have been compacted meanwhile: one stat decides, as in `done` (an input without a record,
        common in a retry round, must not cost a listing of the batch folder), or a listing when `sure`."""
        index = self.compacted(step)
        if (record := index.read(key)) is not None:
            return record
        try:
            with open(os.path.join(self._step_dir(step), f"{key}.json"), "rb") as f:
                return loads(f.read())
        except FileNotFoundError:
            return index.read(key) if index.refresh(force=sure) else None

    def _step_dir(self, step: str) -> str:
        if (found := self._dirs.get(step)) is None:
            found = self._dirs[step] = str(self.root / step)
        return found

    def save(self, step: str, key: str, record: dict[str, Any]) -> bool:
        """Commit the record of (step, input) unless one is there already: the first finished attempt wins. A second
        attempt can run while the first still does (a task Ray retried on a node it presumed lost, a worker left
        over from a killed run); it must not replace a good record with, say, the error it hit. False when the
        record was already there, as a small file or consolidated."""
        index = self.compacted(step)
        index.refresh(force=True)  # one listing of a small folder, per finished piece of work
        if index.find(key) is not None:
            return False
        path = self.record_path(step, key)
        if not create_json_once(record, path):
            return False
        # The driver compacts while workers commit (`pipelines.compaction`): an earlier attempt's small file may
        # have been consolidated and deleted between the check above and this commit. Its batch copy stands
        # (readers take it first); this one then withdraws its small file. Another compaction may already have
        # consolidated this very record: then the batch copy is this one, and it stands.
        if not index.refresh(force=True) or (batched := index.read(key)) is None:
            return True
        if batched == json.loads(json.dumps(record, sort_keys=True, default=str)):
            return True
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False

    def frames_path(self, key: str) -> Path:
        """The frames the scenes step kept for the clips step of one input (`curation.frame_cache`)."""
        return self.root / "frames" / f"{key}.npy"

    def cache_dir(self, cfg: RunConfig) -> str:
        """Where non-local inputs are fetched: `ingest.cache_dir`, or RUN_DIR/_work/cache."""
        return cfg.ingest.cache_dir or str(self.root / "cache")


def rejected_row(stage: str, video: Row, reason: str, detail: str = "", span: tuple[int, int] | None = None) -> Row:
    row = {
        "stage": stage,
        "source_uri": video["source_uri"],
        "video_id": video.get("video_id"),
        "reason": reason,
        "detail": detail,
    }
    if span is not None and video.get("video_id"):
        row.update(clip_id=clip_id(video["video_id"], *span), start_frame=span[0], end_frame=span[1])
    return row


def _ray() -> Any:
    """The `ray` module when this process is a connected Ray worker or driver, else None (steps also run without
    Ray, in tests and notebooks)."""
    try:
        import ray
    except ImportError:
        return None
    return ray if ray.is_initialized() else None


def worker_node() -> str:
    """The Ray node id of this process (the host name outside Ray), for the per-node figures of the run."""
    ray = _ray()
    return ray.get_runtime_context().get_node_id() if ray else socket.gethostname()


def start_attempt(work: WorkDir, step: str, key: str, session: str | None = None) -> list[dict[str, Any]]:
    """Log one more attempt at (step, input) in RUN_DIR/_work/<step>/<key>.attempts, before the work starts: the
    attempts a record was preceded by, or that an input without a record used up, are the run's retries."""
    path = work.attempts_path(step, key)
    attempts = read_attempts(path)
    attempts.append({"at": time.time(), "node": worker_node(), "pid": os.getpid(), "session": session})
    atomic_write_json({"attempts": attempts}, path)
    return attempts


def read_attempts(path: Path) -> list[dict[str, Any]]:
    try:
        return list(read_json(path)["attempts"])
    except (OSError, ValueError, KeyError, TypeError):  # absent, or torn by a death mid-write
        return []


def _resumable(
    step: str,
    work: WorkDir,
    fn: Callable[[Row], dict[str, Any]],
    session: str | None = None,
    max_deaths: int | None = None,
) -> Callable[[Row], Row]:
    """Wrap a step body with its resume record, attempt log, timing, and a last-resort error record per input.

    With `session` (the driver's run) and `max_deaths`: an input whose earlier attempts in this run all lost their
    worker process that many times is recorded as `worker_died` instead of being tried again (a decoder that
    segfaults on a file would otherwise take every retry Ray and the retry round allow)."""

    def run(row: Row) -> Row:
        key = row["key"]
        if not work.done(step, key):
            attempts = start_attempt(work, step, key, session)
            started_at, started = time.time(), time.perf_counter()
            deaths = sum(1 for a in attempts[:-1] if session and a.get("session") == session)
            if max_deaths and deaths >= max_deaths:
                detail = f"the {step} worker process died {deaths} times on this input in this run; not retried"
                record = _failure_record(step, row, "worker_died", detail)
            else:
                try:
                    record = fn(row)
                except Exception as e:  # one bad input must never stop the run: record it with the reason
                    logger.error("%s failed on %s: %s", step, row["source_uri"], traceback.format_exc(limit=4))
                    record = _failure_record(step, row, f"{step}_error", f"{type(e).__name__}: {e}")
            record["seconds"] = time.perf_counter() - started
            record["timing"] = {"start": started_at, "end": time.time(), "node": attempts[-1]["node"]}
            record["attempts"] = len(attempts)
            if not work.save(step, key, record):
                logger.info("%s of %s: another attempt finished first; its record stands", step, row["source_uri"])
            work.attempts_path(step, key).unlink(missing_ok=True)
        return {**row, f"{step}_done": True}

    return run


def _failure_record(step: str, row: Row, reason: str, detail: str) -> dict[str, Any]:
    """The record of an input a step gave up on; it carries the input's identity so finalize reports it like any
    other failure of this step."""
    return {
        "source_uri": row["source_uri"],
        "video_id": f"u{row['key'][:15]}",
        "error": detail,
        "reason": reason,
        "detail": detail,
        "rejected": [rejected_row(step, row, reason, detail)],
    }


def make_ingest_fn(cfg: RunConfig, run_dir: str | Path) -> Callable[[Row], Row]:
    """Step `ingest`: probe one input file (1:1)."""
    work = WorkDir(run_dir)
    cache = work.cache_dir(cfg)

    def ingest(row: Row) -> dict[str, Any]:
        record = probe_input(row["source_uri"], cfg.ingest, cache)
        record["video_id"] = record["video_id"] or f"u{row['key'][:15]}"  # unreadable files still get an id
        return record

    return _resumable("ingest", work, ingest)


def video_info(video: Row) -> VideoInfo:
    return VideoInfo(**{f.name: video[f.name] for f in dataclasses.fields(VideoInfo)})


def make_scenes_fn(
    cfg: RunConfig, run_dir: str | Path, session: str | None = None, keep_frames: bool = False
) -> Callable[[Row], Row]:
    """Step `scenes`: detect shots and cut them into clip spans (1:1). With `keep_frames` (the clips step follows in
    the same run) and `scenes.keep_frames`, the one decode of the video also keeps the frames its clips will need
    (`curation.frame_cache`), so the clips step does not decode the video again."""
    work = WorkDir(run_dir)
    cache = work.cache_dir(cfg)
    sc = cfg.scenes

    def scenes(row: Row) -> dict[str, Any]:
        video = work.load("ingest", row["key"])
        info = video_info(video)
        path = local_path(video["source_uri"], cache)
        layout = video_layout(info.width, info.height, cfg.frames, cfg.buckets)
        keep = keep_frames and sc.keep_frames and not layout.problem
        size, detect = scan_sizes(info, sc, layout if keep else None)
        buffer = FrameBuffer(sc.frame_buffer_mb, sc.frame_spill_mb) if keep else None
        try:
            net = transnet_stream(sc) if sc.uses_transnet else None
            keeper = _keeper(buffer, layout, info) if buffer is not None else None
            frames = iter_frames(path, info, size=size)
            scan = scan_frames(frames, info.fps, sc, detect_size=detect, net=net, keep=keeper)
            record = scenes_record(video, scan, info.fps, sc)
            if buffer is not None:
                record["frames_cache"] = keep_clip_frames(work, row["key"], record, video, layout, scan, buffer)
        except DecodeError as e:
            return {"rejected": [rejected_row("scenes", video, e.reason, e.detail)], "scenes": [], "spans": []}
        finally:
            if buffer is not None:
                buffer.close()
        if scan.n_frames < info.n_frames:
            logger.warning("%s: decoded %d of %d probed frames", video["source_uri"], scan.n_frames, info.n_frames)
        return record

    return _resumable("scenes", work, scenes, session, max_deaths=2)


_TRANSNET: dict[tuple, Any] = {}  # one loaded TransNetV2 per worker process and setting


def transnet_stream(sc: SceneConfig) -> Any:
    """A fresh TransNetV2 prediction stream for one video; the network loads once per process (Ray reuses its
    workers, so a run loads it once per worker, not per video)."""
    from annotators.models import resolve_device
    from annotators.transnetv2 import TransNetV2Detector

    device = resolve_device(sc.transnet_device)
    batch = sc.transnet_batch or (2 if device == "cpu" else 8)  # measured: larger batches are slower on a CPU
    if (device, batch) not in _TRANSNET:
        _TRANSNET[device, batch] = TransNetV2Detector(device=device, batch_windows=batch)
    return _TRANSNET[device, batch].stream()


def scan_sizes(info: VideoInfo, sc: SceneConfig, layout: VideoLayout | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(decode size, detection size). Without kept frames the video is decoded at the detection size. With them it
    is decoded at the clips' decode size, or at the detection size when that is the larger (then the clip frames are
    scaled down from it), and the other size is made from the decoded frame."""
    detect = detection_size(info.width, info.height, sc.detect_width)
    if layout is None:
        return detect, detect
    clip = decode_size(info.width, info.height, layout.frames)
    return (clip if clip[0] * clip[1] >= detect[0] * detect[1] else detect), detect


def _keeper(buffer: FrameBuffer, layout: VideoLayout, info: VideoInfo) -> Callable[[int, float, Any], None]:
    """Keeps each scanned frame as the clips store it (`clip_frame`)."""
    size = decode_size(info.width, info.height, layout.frames)

    def keep(index: int, pts: float, rgb: Any) -> None:
        buffer.add(index, clip_frame(rgb, size, layout.frames))

    return keep


def clip_frame(rgb: Any, size: tuple[int, int], fc: FramesConfig) -> Any:
    """A decoded frame as the clips store it: scaled to the clips' decode `size` (when it was decoded larger, for
    detection) and cropped or padded to the target. Kept frames and frames decoded again go through the same steps
    from the same decode, so a clip's pixels do not depend on which path served it."""
    if (rgb.shape[1], rgb.shape[0]) != tuple(size):
        import cv2

        rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)
    return fit_to_target(rgb, fc)


def scenes_record(video: Row, scan: FrameScan, fps: float, sc: SceneConfig) -> dict[str, Any]:
    """The scenes record of one scanned video: its shots, their clip spans, and what was dropped and why."""
    shots = detect_shots(scan, sc)
    record: dict[str, Any] = {"n_decoded": scan.n_frames, "scenes": [], "spans": [], "rejected": []}
    if not shots:
        detail = (
            f"all {scan.n_frames} frames are flat (black, or spatial std < scenes.flat_std) or part of a fade or "
            "dissolve between flat frames"
        )
        record["rejected"].append(rejected_row("scenes", video, "no_shots", detail))
    for i, shot in enumerate(shots):
        start_s, end_s = span_seconds(scan.pts, shot.start, shot.end, fps)
        record["scenes"].append(
            {
                "scene_index": i,
                "start_frame": shot.start,
                "end_frame": shot.end,
                "start_s": start_s,
                "end_s": end_s,
                "transition": shot.transition,
            }
        )
        next_transition = shots[i + 1].transition if i + 1 < len(shots) else None
        kept, dropped = clip_spans(shot, next_transition, scan.pts, fps, sc)
        for a, b in kept:
            s0, s1 = span_seconds(scan.pts, a, b, fps)
            record["spans"].append({"scene_index": i, "start_frame": a, "end_frame": b, "start_s": s0, "end_s": s1})
        for a, b, reason in dropped:
            detail = f"{(b - a)} frames, shorter than scenes.min_clip_s={sc.min_clip_s}"
            record["rejected"].append(rejected_row("scenes", video, reason, detail, (a, b)))
    return record


def keep_clip_frames(
    work: WorkDir, key: str, record: dict, video: Row, layout: VideoLayout, scan: FrameScan, buffer: FrameBuffer
) -> dict[str, Any] | None:
    """Write the frames the clips of `record` will read to RUN_DIR/_work/frames/<key>.npy; their index for the
    scenes record, or None when the buffer could not keep them (the clips step then decodes)."""
    plans, _ = clip_plans(record.get("spans", []), video, layout)
    wanted = sorted({i for _, indices, _ in plans for i in indices if i < scan.n_frames})
    path = work.frames_path(key)
    if not write_frames(buffer, wanted, path):
        return None
    return {"file": str(path.relative_to(work.run_dir)), "indices": wanted, "pts": [float(scan.pts[i]) for i in wanted]}


def clip_plans(spans: list[dict], video: Row, layout: VideoLayout) -> tuple[list[tuple], list[Row]]:
    """The clips of a video's spans, as (span, frame indices, stride) windows, and the rejection of every span that
    cannot give one."""
    plans, rejected = [], []
    for span in spans:
        bounds = (span["start_frame"], span["end_frame"])
        if layout.problem:
            rejected.append(rejected_row("clips", video, "below_bucket_resolution", layout.problem, bounds))
            continue
        windows = clip_windows(*bounds, video["fps"], layout)
        if not windows:
            rejected.append(rejected_row("clips", video, *too_short(span, video["fps"], layout), bounds))
        for indices, stride in windows:
            plans.append((window_span(span, indices, stride) if layout.bucketed else span, indices, stride))
    return plans, rejected


def make_clips_fn(cfg: RunConfig, run_dir: str | Path, session: str | None = None) -> Callable[[Row], Row]:
    """Step `clips`: the clips' training frames (kept by the scenes step, else decoded in one pass over the video),
    the clip annotators on them (flow, motion scores, warped noise) and the clip's shard row (1:1). `session` names
    the driver's run, so a clip that keeps killing its worker within one run is rejected
    (`pipelines.faults.CrashGuard`)."""
    work = WorkDir(run_dir)
    cache = work.cache_dir(cfg)
    session = session or uuid.uuid4().hex

    def clips(row: Row) -> dict[str, Any]:
        video, scenes = work.load("ingest", row["key"]), work.load("scenes", row["key"])
        record: dict[str, Any] = {"clips": [], "rejected": [], "shards": [], "annotator_seconds": {}}
        layout = video_layout(video["width"], video["height"], cfg.frames, cfg.buckets)
        # a scenes step that failed has no spans, only its rejection
        plans, rejected = clip_plans(scenes.get("spans", []), video, layout)
        record["rejected"] += rejected
        kept = kept_frames(work, scenes, plans)
        if plans:
            guard = CrashGuard.open(work.root, row["key"], session)
            try:
                from pipelines.clip_writer import ClipWriter  # imports this module: resolved at call time

                writer = ClipWriter(video, work.run_dir / "shards", cfg, record, guard, layout)
                writer.write(plans, local_path(video["source_uri"], cache), frames=kept)
            finally:  # not reached when the process dies: the marker is then the evidence for the retry
                guard.clear()
        record["frames_from"] = "scenes" if kept is not None else "decoder"
        work.frames_path(row["key"]).unlink(missing_ok=True)  # used (a crash before the record just decodes again)
        return record

    # The crash guard needs up to 3 deaths to narrow a crash down to one clip; more means the video itself.
    return _resumable("clips", work, clips, session, max_deaths=4)


def kept_frames(work: WorkDir, scenes: dict, plans: list[tuple]) -> Iterator[tuple[int, float, Any]] | None:
    """The frames the scenes step kept for these clips, streamed from its frames file; None when it kept none (an
    older run, a video too long for the buffer, `--stage scenes` run on its own) or they do not cover the plans."""
    index = scenes.get("frames_cache")
    if not index or not plans:
        return None
    path = work.run_dir / index["file"]
    wanted = {i for _, indices, _ in plans for i in indices}
    if not path.exists() or not wanted <= set(index["indices"]):
        return None
    return read_frames(path, index["indices"], index["pts"])


def window_span(span: dict, indices: list[int], stride: int) -> dict:
    """The clip of one window of `span`: from its first stored frame to one stride past its last (the next window's
    first frame), within the span. Its times are set from the decoded frames (`ClipWriter`)."""
    end = min(indices[-1] + stride, span["end_frame"])
    return {**span, "start_frame": indices[0], "end_frame": end, "start_s": None, "end_s": None, "span": span}


def too_short(span: dict, fps: float, layout: VideoLayout) -> tuple[str, str]:
    """(reason, detail) of a clip too short to store a single window."""
    length, fc = span["end_frame"] - span["start_frame"], layout.frames
    if not layout.bucketed:
        return "too_few_frames", f"{length} frames < frames.num_frames={fc.num_frames}"
    stride = sampling_stride(fps, fc)
    return "too_short_for_bucket", (
        f"{length} frames give {available_frames(length, stride)} samples every {stride} frames, fewer than the "
        f"smallest bucket at {fc.height}x{fc.width} ({min(layout.counts)} frames)"
    )


class ClipsStep:
    """Step `clips` as a callable class for Ray actors: builds the annotators (loads models) once per actor.

    Weights that fail to load fail every video the same way, so the actor records nothing: each row comes back
    with `model_error` and no resume record, the driver stops the run with that message, and a rerun after the fix
    resumes where the run stood.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, session: str | None = None) -> None:
        self.model_error = None
        try:
            annotators_for(cfg)
        except ModelLoadError as e:
            self.model_error = str(e)
        self.clips = make_clips_fn(cfg, run_dir, session)
        self.actor = actor_identity(cfg)

    def __call__(self, row: Row) -> Row:
        if self.model_error:
            return {**row, "clips_done": False, "model_error": self.model_error}
        return {**self.clips(row), "actor": self.actor}


def actor_identity(cfg: RunConfig) -> dict[str, Any]:
    """Where this actor runs and on what: its node, the GPUs Ray assigned it, and the device each model resolved
    to (a GPU node without CUDA falls back to CPU), reported back to the driver with every row."""
    from annotators.models import resolve_device
    from pipelines.annotate import model_annotators

    ray = _ray()
    return {
        "node": worker_node(),
        "pid": os.getpid(),
        "actor_id": ray.get_runtime_context().get_actor_id() if ray else None,
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if ray else [],
        "devices": {name: resolve_device(device) for name, device in model_annotators(cfg).items()},
    }
