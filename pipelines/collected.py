"""What finalize collects from a run's records, kept column-wise on disk rather than as one dict per row.

The videos, scenes and clips rows go into Parquet files under `_work/.collect-<id>/` batch by batch as finalize reads
the records, so collecting and curating millions of clips holds only the columns each curation stage reads (and a
keep-mask), never every clip as a dict. The folder is this process's scratch space: removed when the `Collected`
is closed or collected, and by the next run's `remove_stale_temp_files` if the process was killed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
import weakref
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.packing import PackFile
from curation.schema import CLIPS, REJECTED, SCENES, VIDEOS, rows_to_table
from curation.shards import ShardFile
from pipelines.steps import WorkDir, read_attempts, rejected_row

SPILL_PREFIX = ".collect-"
LIVE_SPILLS: set[str] = set()  # this process's spill folders: `remove_stale_temp_files` leaves them alone

# Rejection reasons that are faults of the machinery rather than verdicts on the content.
FAULT_REASONS = ("worker_crashed", "worker_died", "out_of_memory")  # and every `*_error`
IDENTITY = ("source_uri", "video_id", "clip_id", "start_frame", "end_frame")  # what a clip's `rejected` row names


class TableSpill:
    """The rows of one run table, in the order appended, written to a Parquet file `batch_rows` at a time. The
    first read seals it: appending after that is an error."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 8192) -> None:
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._files: list[Path] = []  # what holds the rows, in order: adopted files, then `path` once written
        self._rows, self._sealed = 0, False

    def append(self, row: dict) -> None:
        if self._sealed:
            raise RuntimeError(f"{self.path.name}: rows appended after it was read")
        self._buffer.append(row)
        self._rows += 1
        if len(self._buffer) >= self.batch_rows:
            self._flush()

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.append(row)

    def adopt(self, path: Path, rows: int) -> None:
        """Take over a Parquet file of this table's rows (another process's spill of an earlier segment) as the
        next rows, before this spill writes any of its own."""
        if self._sealed or self._writer is not None or self._buffer:
            raise RuntimeError(f"{self.path.name}: a file adopted after rows were appended")
        if rows:
            self._files.append(path)
            self._rows += rows

    def move_to(self, target: Path) -> tuple[Path, int]:
        """Seal and move the rows' file to `target`, for another spill to `adopt`: (target, rows). This spill is
        empty after it."""
        self.seal()
        if self._files != [self.path]:
            if self._files:
                raise RuntimeError(f"{self.path.name}: only a spill that wrote its own rows can be moved")
            return target, 0
        os.replace(self.path, target)
        moved, self._files, self._rows = self._rows, [], 0
        return target, moved

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd", compression_level=1)
            self._files.append(self.path)
        self._writer.write_table(rows_to_table(self._buffer, self.schema))
        self._buffer = []

    def seal(self) -> None:
        if not self._sealed:
            self._flush()
            if self._writer is not None:
                self._writer.close()
            self._sealed = True

    def __len__(self) -> int:
        return self._rows

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row's `columns` (all by default)."""
        self.seal()
        names = list(columns) if columns is not None else None
        if not self._files:
            empty = self.schema.empty_table()
            return empty.select(names) if names is not None else empty
        parts = [pq.read_table(f, columns=names) for f in self._files]
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def row_groups(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """The rows in the batches they were written in: one batch in memory at a time."""
        self.seal()
        for f in self._files:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                yield pf.read_row_group(i, columns=list(columns) if columns is not None else None)

    def batches(self) -> Iterator[pa.Table]:
        """What the run's table holds, batch by batch."""
        return self.row_groups()

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches():
            yield from batch.to_pylist()


class ClipTable(TableSpill):
    """The run's clips: a `TableSpill` plus the curation state. Curation stages drop clips by position (`drop`);
    `len`, `columns`, iteration and `batches` see only the clips still kept, with `shard`/`shard_row` pointing into
    the packed files once `relocate` was given the packing."""

    def __init__(self, path: Path, batch_rows: int = 8192) -> None:
        super().__init__(path, CLIPS, batch_rows)
        self.keep = np.ones(0, dtype=bool)
        self._where: dict[str, tuple[str, int]] | None = None
        self.drops: list[tuple[str, np.ndarray, list[str], list[str]]] = []  # (stage, positions, reasons, details)

    def seal(self) -> None:
        if not self._sealed:
            super().seal()
            self.keep = np.ones(self._rows, dtype=bool)

    def __len__(self) -> int:
        return int(self.keep.sum()) if self._sealed else self._rows

    def __bool__(self) -> bool:
        return len(self) > 0

    def live(self) -> np.ndarray:
        """Positions (in collection order) of the clips still kept."""
        self.seal()
        return np.flatnonzero(self.keep)

    def columns(self, names: Sequence[str]) -> pa.Table:
        """`names` of the clips still kept, in order (row i is position `live()[i]`)."""
        table = self.read(self._with_shard(names))
        return self._relocated(table.filter(pa.array(self.keep)) if not self.keep.all() else table, names)

    def take(self, positions: np.ndarray, names: Sequence[str]) -> pa.Table:
        """`names` of the clips at `positions` (kept or dropped), in the order given; one batch read at a time."""
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        parts, start = [], 0
        for batch in self.row_groups(self._with_shard(names)):
            lo, hi = np.searchsorted(positions[order], [start, start + batch.num_rows])
            if hi > lo:
                parts.append(batch.take(pa.array(positions[order][lo:hi] - start)))
            start += batch.num_rows
        taken = pa.concat_tables(parts) if parts else self.schema.empty_table().select(self._with_shard(names))
        return self._relocated(taken.take(pa.array(np.argsort(order, kind="stable"))), names)

    def drop(self, stage: str, positions: np.ndarray, reasons: str | list[str], details: list[str]) -> None:
        """Move the clips at `positions` out of the kept set, into `rejected` (stage, reason, detail each)."""
        positions = np.asarray(positions, dtype=np.int64)
        self.seal()
        self.keep[positions] = False
        reasons = [reasons] * len(positions) if isinstance(reasons, str) else list(reasons)
        self.drops.append((stage, positions, reasons, details))

    def rejected(self) -> Iterator[pa.Table]:
        """The `rejected` rows of the dropped clips, one table per `drop`, in order."""
        if not self.drops:
            return
        every = np.unique(np.concatenate([p for _, p, _, _ in self.drops]))
        names = self.take(every, IDENTITY)
        for stage, positions, reasons, details in self.drops:
            rows = names.take(pa.array(np.searchsorted(every, positions)))
            extra = {"stage": [stage] * len(positions), "reason": reasons, "detail": details}
            yield pa.table({**{c: rows[c] for c in IDENTITY}, **extra}).select(REJECTED.names).cast(REJECTED)

    def relocate(self, where: dict[str, tuple[str, int]]) -> None:
        """Point every clip's `shard`/`shard_row` at its row in the packed files: `where` maps each per-video file
        to (pack, row offset), as `curation.packing.pack_shards` returns it."""
        self._where = where

    def _with_shard(self, names: Sequence[str]) -> list[str]:
        """`names`, plus `shard` where relocating `shard_row` needs it."""
        extra = self._where is not None and "shard_row" in names and "shard" not in names
        return [*names, "shard"] if extra else list(names)

    def _relocated(self, table: pa.Table, names: Sequence[str] | None = None) -> pa.Table:
        """`table` with its shard columns relocated into the packs; only `names` (all by default) are returned."""
        if self._where is None or "shard" not in table.column_names:
            return table
        encoded = pc.dictionary_encode(table["shard"].combine_chunks())
        members = encoded.dictionary.to_pylist()
        index = encoded.indices.to_numpy(zero_copy_only=False)
        packs = pa.array([self._where[m][0] for m in members], pa.string())
        table = table.set_column(table.column_names.index("shard"), "shard", packs.take(encoded.indices))
        if "shard_row" in table.column_names:
            offsets = np.array([self._where[m][1] for m in members], dtype=np.int64)
            rows = table["shard_row"].to_numpy(zero_copy_only=False).astype(np.int64) + offsets[index]
            table = table.set_column(table.column_names.index("shard_row"), "shard_row", pa.array(rows, pa.int32()))
        return table.select(list(names)) if names is not None else table

    def batches(self) -> Iterator[pa.Table]:
        start = 0
        for batch in self.row_groups():
            keep = self.keep[start : start + batch.num_rows]
            start += batch.num_rows
            yield self._relocated(batch.filter(pa.array(keep)) if not keep.all() else batch)


def crashed_detail(attempts: list[dict]) -> str:
    """Why an input has no record of its step: its `attempts` (from the attempt log) all lost their worker."""
    nodes = sorted({a["node"][:8] for a in attempts})
    where = f" on node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)}" if nodes else ""
    return f"the worker process died ({len(attempts) or 'unknown'} attempts{where}); rerun to retry"


class Timings:
    """One step's timings, `{"key", "start", "end", "node", "seconds"}` per finished input as `pipelines.throughput`
    reads them, stored column-wise: at 10 M clips (1.25 M videos, three steps) a dict each would take about 2 GB."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.times = array("d")  # start, end, seconds per input
        self.node_of: list[int] = []
        self.nodes: dict[str, int] = {}  # a run has a handful of nodes: one string each

    def append(self, key: str, timing: dict[str, Any], seconds: float) -> None:
        self.keys.append(key)
        self.times.extend((timing["start"], timing["end"], seconds))
        self.node_of.append(self.nodes.setdefault(timing.get("node") or "", len(self.nodes)))

    def extend(self, other: Timings) -> None:
        """Append `other`'s inputs (a later segment of the run's)."""
        remap = [self.nodes.setdefault(node, len(self.nodes)) for node in other.nodes]
        self.keys.extend(other.keys)
        self.times.extend(other.times)
        self.node_of.extend(remap[n] for n in other.node_of)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.nodes)
        for i, key in enumerate(self.keys):
            start, end, seconds = self.times[3 * i : 3 * i + 3]
            yield {"start": start, "end": end, "node": names[self.node_of[i]], "key": key, "seconds": seconds}


def stale_spill(folder: Path) -> bool:
    """Whether a collection folder is left over: not this process's, and its process (the pid in its name) is gone.
    A folder of another live finalize on this machine stays (two runs in one directory are not supported, but one
    must not pull the other's files away)."""
    if str(folder) in LIVE_SPILLS:
        return False
    pid = folder.name[len(SPILL_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return int(pid) == os.getpid()  # this process, but no longer listed: closed


def _remove_spill(folder: str) -> None:
    LIVE_SPILLS.discard(folder)
    shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass
class CollectedPart:
    """What another process collected over a segment of the inputs, for `Collected.absorb`: its table files (moved
    into the parent's spill folder) with their row counts, and its bookkeeping."""

    files: dict[str, tuple[Path, int]]  # videos, scenes, clips -> (Parquet file, rows)
    rejected: list[dict]
    shards: list[ShardFile]
    seconds: dict[str, float]
    ready: dict[str, list[dict]]
    timings: dict[str, Timings]
    attempts: dict[str, Counter]
    firsts: dict[str, str]  # video id -> URI of the videos this segment held first (`pipelines.collect`)

    def discard(self) -> None:
        """Remove the table files (a segment read again)."""
        for path, _ in self.files.values():
            path.unlink(missing_ok=True)


class Collected:
    """Every table's rows plus the bookkeeping the summary needs. `videos`, `scenes` and `clips` are on disk
    (`TableSpill`); `rejected` holds the records' rejections as dicts (so a stalled round can reword them), and the
    clips curation drops come from `clips.rejected()`."""

    def __init__(self, run_dir: str | Path) -> None:
        folder = Path(run_dir) / "_work" / f"{SPILL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        LIVE_SPILLS.add(str(folder))
        self.close = weakref.finalize(self, _remove_spill, str(folder))  # close(): remove the folder now
        self.folder = folder
        self.videos = TableSpill(folder / "videos.parquet", VIDEOS)
        self.scenes = TableSpill(folder / "scenes.parquet", SCENES)
        self.clips = ClipTable(folder / "clips.parquet")
        self.rejected: list[dict] = []
        self.shards: list[ShardFile] = []  # per-video files, as the records list them
        self.packs: list[PackFile] | None = None  # the packed files holding them, once `pack_run` ran
        self.seconds: dict[str, float] = defaultdict(float)
        self.ready: dict[str, list[dict]] = defaultdict(list)  # inputs per step
        # per step: one {"start", "end", "node", "seconds"} per finished input, for the throughput figures
        self.timings: dict[str, Timings] = defaultdict(Timings)
        # per step: {"retried": inputs that needed more than one attempt, "retries": extra attempts, "lost": inputs
        # whose every attempt died}
        self.attempts: dict[str, Counter] = defaultdict(Counter)

    def seal(self) -> None:
        """End of collection: write out what is buffered."""
        for table in (self.videos, self.scenes, self.clips):
            table.seal()

    def export(self, dest: Path, tag: str, firsts: dict[str, str]) -> CollectedPart:
        """Seal, move the table files into `dest` (named with `tag`), and hand everything over as a part."""
        self.seal()
        files = {}
        for name, table in (("videos", self.videos), ("scenes", self.scenes), ("clips", self.clips)):
            files[name] = table.move_to(dest / f"{name}-{tag}.parquet")
        return CollectedPart(
            files,
            self.rejected,
            self.shards,
            dict(self.seconds),
            dict(self.ready),
            dict(self.timings),
            dict(self.attempts),
            firsts,
        )

    def absorb(self, part: CollectedPart) -> None:
        """Append a later segment's part (see `CollectedPart`), before anything was collected here directly."""
        self.videos.adopt(*part.files["videos"])
        self.scenes.adopt(*part.files["scenes"])
        self.clips.adopt(*part.files["clips"])
        self.rejected.extend(part.rejected)
        self.shards.extend(part.shards)
        for name, seconds in part.seconds.items():
            self.seconds[name] += seconds
        for step, rows in part.ready.items():
            self.ready[step].extend(rows)
        for step, timings in part.timings.items():
            self.timings[step].extend(timings)
        for step, counts in part.attempts.items():
            self.attempts[step].update(counts)

    def note_record(self, step: str, key: str, record: dict) -> None:
        """Account one finished step record: its busy time, timing and attempts."""
        self.seconds[step] += record.get("seconds", 0.0)
        if timing := record.get("timing"):
            self.timings[step].append(key, timing, record.get("seconds", 0.0))
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
        """Retries and failures of the run, for _run.json and the summary (curation's drops are verdicts, not
        faults: only the records' rejections count)."""
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

    def rejected_tables(self) -> Iterator[pa.Table]:
        """The `rejected` table: the records' rejections, then curation's, batch by batch."""
        yield rows_to_table(self.rejected, REJECTED)
        yield from self.clips.rejected()

    def counts(self) -> dict[str, Any]:
        error = self.videos.read(["error"])["error"]
        spans = self.clips.columns(["start_s", "end_s"])
        seconds = pc.sum(pc.subtract(spans["end_s"], spans["start_s"])).as_py() if spans.num_rows else 0.0
        by_reason = Counter(f"{r['stage']}/{r['reason']}" for r in self.rejected)
        for stage, _, reasons, _ in self.clips.drops:
            by_reason.update(f"{stage}/{r}" for r in reasons)
        return {
            "videos": len(self.videos),
            "videos_failed": int(pc.sum(pc.fill_null(pc.not_equal(error, ""), False)).as_py() or 0),
            "scenes": len(self.scenes),
            "clips": len(self.clips),
            "rejected": len(self.rejected) + sum(len(p) for _, p, _, _ in self.clips.drops),
            "rejected_by_reason": dict(by_reason),
            "shards": len(self.files),
            "shard_bytes": sum(s.bytes for s in self.files),
            "clip_seconds": round(seconds or 0.0, 3),
        }
