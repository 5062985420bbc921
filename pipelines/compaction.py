"""Record compaction: the driver consolidates a run's small per-input records into batch files
(`pipelines.records`) and deletes the small files.

When: as the run goes (`Compactor`, every `runtime.compact_every` finished videos, in a background thread of the
driver, while the workers keep committing records) and once more at the run's end (`Compactor.compact`), so a
finished run leaves a few batch files per step instead of one file per input and step. Records are written in the
run's input order, the order `pipelines.collect` reads them in: its reads then go front to back through each batch
file instead of opening millions of small files scattered over the disk.

Crash safety (`kill -9` at any point, or power loss):
- a half-written batch is invisible (`pipelines.records.publish`), and the next compaction (or
  `finalize.remove_stale_temp_files`) deletes it;
- the small files are deleted only after every batch is published and its folder fsynced; killed in between, a record
  exists in both forms, identical: readers take the batch copy, and the next compaction deletes the small file
  instead of consolidating it again, so every record stays readable exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipelines.records import MAX_BYTES, MAX_RECORDS, RECORDS_DIR, BatchWriter, RecordIndex, fsync_dir, loads, tidy

logger = logging.getLogger(__name__)


def record_line(step_dir: Path, key: str) -> bytes | None:
    """The batch line of `key`'s small record; None when it cannot be read (it then stays a small file)."""
    try:
        with open(os.path.join(step_dir, f"{key}.json"), "rb") as f:  # os.path: pathlib costs a third more here
            record = loads(f.read())
    except (OSError, ValueError):
        logger.warning("record %s/%s.json is unreadable: left as it is", step_dir.name, key)
        return None
    return json.dumps({"key": key, "record": record}, separators=(",", ":")).encode() + b"\n"


def write_batches(step_dir: Path, keys: list[str], max_records: int, max_bytes: int) -> list[tuple[Path, list[str]]]:
    """Consolidate the small records of `keys` into new batch files: (file, keys it holds) per file."""
    records_dir, out = step_dir / RECORDS_DIR, []
    batch: BatchWriter | None = None
    try:
        for key in keys:
            line = record_line(step_dir, key)
            if line is None:
                continue
            if batch and (len(batch.keys) >= max_records or batch.size + len(line) > max_bytes):
                out.append((batch.publish(), batch.keys))
                batch = None
            batch = batch or BatchWriter(records_dir)
            batch.add(key, line)
        if batch:
            out.append((batch.publish(), batch.keys))
            batch = None
    finally:
        if batch:  # an error mid-batch: nothing of it is published
            batch.discard()
    return out


def list_step(step_dir: Path) -> tuple[list[str], list[str]]:
    """(keys with a small record, keys with an attempt log) in a step folder; one listing."""
    small, attempts = [], []
    with os.scandir(step_dir) as entries:
        for e in entries:
            if e.name.startswith("."):  # temporary files
                continue
            if e.name.endswith(".json"):
                small.append(e.name[: -len(".json")])
            elif e.name.endswith(".attempts"):
                attempts.append(e.name[: -len(".attempts")])
    return small, attempts


@dataclasses.dataclass
class Compaction:
    """What one step's compaction did."""

    step: str
    records: int = 0  # records consolidated into new batch files
    files: int = 0  # new batch files
    removed: int = 0  # small record files deleted (consolidated now or by an earlier, interrupted compaction)
    attempts_removed: int = 0  # attempt logs of inputs with a record


def compact_step(
    step_dir: str | Path,
    max_records: int = MAX_RECORDS,
    max_bytes: int = MAX_BYTES,
    rank: Mapping[str, int] | None = None,
    index: RecordIndex | None = None,
) -> Compaction:
    """Consolidate a step's small records into new batch files, then delete the small files and the attempt logs of
    inputs with a record (those of inputs without one stay: finalize reports them as crashes). Its cost is one
    listing plus the new records.

    rank: each input's position in the run's input order, the order records are written in (finalize reads them
    in that order, so it then reads the batch files front to back); keys without one go last, by name. index: this
    step's index, kept by a caller that compacts again and again (only new batch files are read into it).

    Safe while the step's workers run (the driver compacts as the run goes): a small file is consolidated only once
    its record is complete (records are published by rename), a worker that misses a record's small file looks in
    the batch files (`WorkDir.find`), and `WorkDir.save` checks both before committing. Only one compaction of a
    step may run at a time: two would consolidate the same records twice (readers would still agree: the oldest
    copy wins)."""
    step_dir = Path(step_dir)
    out = Compaction(step_dir.name)
    if not step_dir.is_dir():
        return out
    tidy(step_dir / RECORDS_DIR)
    if index is None:
        index = RecordIndex(step_dir)
    else:
        index.refresh(force=True)
    small, attempts = list_step(step_dir)
    already = index.contains(small)
    new = [k for k, done in zip(small, already, strict=True) if not done]
    if rank is None:
        new.sort()
    else:
        last = len(rank)
        new.sort(key=lambda k: (rank.get(k, last), k))
    written = write_batches(step_dir, new, max_records, max_bytes)
    if written:
        fsync_dir(step_dir / RECORDS_DIR)  # the batches are durable before their small files go
    consolidated = [k for k, done in zip(small, already, strict=True) if done] + [k for _, ks in written for k in ks]
    out.records, out.files = sum(len(ks) for _, ks in written), len(written)
    out.removed = _unlink_all(step_dir, consolidated, ".json")
    has_small = set(small)
    in_index = index.contains(attempts)
    with_record = [k for k, found in zip(attempts, in_index, strict=True) if found or k in has_small]
    out.attempts_removed = _unlink_all(step_dir, with_record, ".attempts")
    return out


def _unlink_all(folder: Path, keys: Iterable[str], suffix: str) -> int:
    n = 0
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, f"{key}{suffix}"))
            n += 1
    return n


class Compactor:
    """Compacts a run's records: in a background thread while its executions go on (`tick()` per finished video
    starts a compaction of every step once `every` videos have finished since the last one started, none while one
    runs; `wait()` lets the one under way finish), and once more at the end (`compact()`). One per driver: it keeps
    each step's index, so a compaction reads only the batch files published since the last one. A failed background
    compaction is logged and costs nothing (the records stay small files, as valid, and the next one retries)."""

    def __init__(self, run_dir: str | Path, steps: Iterable[str], rank: Mapping[str, int], every: int = 0) -> None:
        self.steps = [Path(run_dir) / "_work" / step for step in steps]
        self.rank, self.every = rank, every
        self.indexes: dict[Path, RecordIndex] = {}
        self.since = 0
        self.thread: threading.Thread | None = None
        self.done: list[Compaction] = []  # what every compaction of this driver did, in order

    def tick(self, videos: int = 1) -> None:
        self.since += videos
        if self.every and self.since >= self.every and not (self.thread and self.thread.is_alive()):
            self.since = 0
            self.thread = threading.Thread(target=self._background, name="record-compaction", daemon=True)
            self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def compact(self) -> list[Compaction]:
        """Compact every step now (after `wait()`: one compaction at a time); logs what moved. Raises OSError."""
        t0 = time.perf_counter()
        done = [compact_step(d, rank=self.rank, index=self.indexes.setdefault(d, RecordIndex(d))) for d in self.steps]
        self.done += done
        if moved := [c for c in done if c.records or c.removed]:
            logger.info(
                "records compacted in %.1f s: %s",
                time.perf_counter() - t0,
                ", ".join(f"{c.step} {c.records} into {c.files} files" for c in moved),
            )
        return done

    def _background(self) -> None:
        try:
            self.compact()
        except Exception:
            logger.exception("compacting the records during the run failed; they stay small files until the next")
