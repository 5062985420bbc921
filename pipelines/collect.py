"""Finalize's first act: read every input's records, in sorted input order, into a `Collected` (column files on disk).

A large run's records are read by several processes, each over a contiguous segment of the inputs: decoding the
JSON records and turning their rows into Arrow is Python work on one core, about 10 minutes at 10 M clips. Each
process collects its segment exactly as one process would, and the parent joins the segments in input order, so
the tables, rejections and timings are the same whatever the number of processes (the worker-seconds totals to
float rounding: they are summed per segment).

The one rule that spans segments is `duplicate_video` (the same bytes under another name: the first input in URI
order keeps them). Each segment returns the videos it saw first; a segment holding a video that an earlier segment
saw first is read again, told which, so it rejects that video as one process would have.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from curation.schema import VIDEOS
from curation.shards import ShardFile
from pipelines.collected import Collected, CollectedPart
from pipelines.steps import WorkDir, rejected_row

logger = logging.getLogger(__name__)

PARALLEL_MIN_INPUTS = 20_000  # below this, starting processes costs more than they save (~1 s each)
MAX_AUTO_WORKERS = 4  # collect is bound by the records' reads past this, and each process holds its step indexes
SEGMENTS_PER_WORKER = 2  # segments finish unevenly (videos differ in clips): a few more than the processes


def collect_workers(configured: int, inputs: int) -> int:
    """Processes to collect `inputs` with: `runtime.collect_workers` when set, else (0) this machine's CPUs, at most
    `MAX_AUTO_WORKERS`, for runs of `PARALLEL_MIN_INPUTS` or more, and 1 below that."""
    if configured > 0:
        return configured
    if inputs < PARALLEL_MIN_INPUTS:
        return 1
    return max(1, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def collect(run_dir: Path, inputs: list[dict], attempted: tuple[str, ...] = (), workers: int = 1) -> Collected:
    """Read every input's records in order. Inputs that a step in `attempted` left without a record (their worker
    died) become `worker_crashed` rejections; rerunning retries them. `workers` > 1 reads contiguous segments of
    the inputs in that many processes (the result is the same)."""
    if workers > 1 and len(inputs) >= 2 * workers:
        try:
            return _collect_parallel(Path(run_dir), inputs, attempted, workers)
        except BrokenProcessPool as e:  # a process was killed (memory?): one process still gets the run finished
            logger.warning("collect: a worker process died (%s); reading the records in this process instead", e)
    out = Collected(run_dir)
    collect_rows(out, WorkDir(run_dir), inputs, attempted, {})
    out.seal()
    return out


def collect_rows(
    out: Collected, work: WorkDir, inputs: Sequence[dict], attempted: tuple[str, ...], earlier: dict[str, str]
) -> dict[str, str]:
    """Collect `inputs` into `out`. `earlier` maps the video ids that inputs before these hold to the first URI that
    holds each; returns the ids these inputs hold first, with that URI."""
    first_uri_of = dict(earlier)
    firsts: dict[str, str] = {}
    for row in inputs:
        key = row["key"]
        if (video := work.find("ingest", key)) is None:
            if "ingest" in attempted:
                out.note_crash(work, "ingest", row)
            continue
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
        first_uri_of[video["video_id"]] = firsts[video["video_id"]] = video["source_uri"]
        _collect_video(work, row, video, out, attempted)
    return firsts


def _collect_video(work: WorkDir, row: dict, video: dict, out: Collected, attempted: tuple[str, ...]) -> None:
    key, ids = row["key"], {"video_id": video["video_id"], "source_uri": video["source_uri"]}
    for step in ("scenes", "clips"):
        if (record := work.find(step, key)) is None:
            out.ready[step].append(row)
            if step in attempted:
                out.note_crash(work, step, {**video, "key": key})
            return
        out.note_record(step, key, record)
        out.rejected.extend(record.get("rejected", []))
        if step == "scenes":
            out.scenes.extend({**ids, **s} for s in record.get("scenes", []))
        else:
            for name, seconds in record.get("annotator_seconds", {}).items():
                out.seconds[f"clips/{name}"] += seconds
            out.clips.extend(record.get("clips", []))
            out.shards.extend(ShardFile(**s) for s in record.get("shards", []))


def _collect_parallel(run_dir: Path, inputs: list[dict], attempted: tuple[str, ...], workers: int) -> Collected:
    count = min(len(inputs), workers * SEGMENTS_PER_WORKER)
    bounds = [round(i * len(inputs) / count) for i in range(count + 1)]
    segments = [inputs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out = Collected(run_dir)
    started, done = time.perf_counter(), 0
    logger.info("collect: %d inputs in %d segments, %d processes", len(inputs), count, workers)
    # spawn, not fork: the driver has threads (Ray's, the compactor's) that a forked child would inherit mid-lock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:

        def submit(i: int, earlier: dict[str, str]) -> Future[CollectedPart]:
            return pool.submit(_segment, str(run_dir), segments[i], attempted, earlier, str(out.folder), f"{i:05d}")

        futures = [submit(i, {}) for i in range(count)]
        parts: list[CollectedPart] = []
        seen: dict[str, str] = {}  # video id -> first URI, over the segments joined so far
        for i, future in enumerate(futures):
            part = future.result()
            if again := {v: seen[v] for v in part.firsts if v in seen}:  # read again, told what came first
                logger.info("collect: segment %d shares %d videos with earlier ones; reading it again", i, len(again))
                part.discard()
                part = submit(i, again).result()
            for video_id, uri in part.firsts.items():
                seen.setdefault(video_id, uri)
            parts.append(part)
            done += len(segments[i])
            logger.info("collect: %d of %d inputs read (%.0f s)", done, len(inputs), time.perf_counter() - started)
    for part in parts:
        out.absorb(part)
    out.seal()
    return out


def _segment(
    run_dir: str, rows: list[dict], attempted: tuple[str, ...], earlier: dict[str, str], dest: str, tag: str
) -> CollectedPart:
    """One process's segment: collected into its own spill, whose files it moves into `dest` for the parent."""
    part = Collected(run_dir)
    try:
        firsts = collect_rows(part, WorkDir(run_dir), rows, attempted, earlier)
        return part.export(Path(dest), tag, firsts)
    finally:
        part.close()
