"""Packed shard files: the rows of many videos in files of about `shards.target_mb` (and at most
`shards.pack_max_rows` rows).

Each video's clips step writes its rows into small per-video files (`curation.shards.ShardWriter`), which are
complete under their final names the moment the step's record commits. At the end of a run, `pack_shards` copies
them, in the run's sorted input order, into `part-<digest>.parquet` files (row groups of about
`shards.row_group_mb` of consecutive rows, `RowGroups`) and the per-video files go away once the manifest that
lists the packs is written.

Guarantees, which resume and snapshots rely on:
- **Deterministic.** The plan is a pure function of the ordered per-video files (name, rows, bytes) and the target;
  a pack's name carries a digest of its members, so the same inputs and config give the same files, and a file under
  a given name always has the same rows.
- **Never partial.** A pack is written under a unique temporary name and renamed into place. Nothing is deleted
  until the manifest that no longer needs it is in place (`remove_unlisted`), so a kill -9 at any point leaves
  every row in a per-video file or in a complete pack, and the rerun finds it there.
- **Incremental.** A pack that already exists is not rewritten. A pack ends at the member whose name hashes highest
  among those that leave it between 60 % and 100 % of its target (content-defined, like rsync's chunking), so
  retried or added videos change the packs around them, not every pack after them.

A pack's members (file name and rows, in order) are in its footer, so a rerun can rebuild a pack from older packs
when the per-video files are gone.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.schema import SHARD_META
from curation.shards import DICTIONARY_COLUMNS, ShardConfig
from curation.tables import temp_path

logger = logging.getLogger(__name__)

PACK_PREFIX = "part-"
MEMBERS_KEY = b"curation.pack_members"  # footer key: JSON list of [member file name, rows]
# A pack ends between MIN_FILL and all of its target (`group_members`): packs hold about 80 % of it on average.
MIN_FILL = 0.6


@dataclasses.dataclass(frozen=True)
class Member:
    """One per-video shard file that goes into a pack."""

    name: str
    rows: int
    bytes: int


@dataclasses.dataclass
class PackFile:
    """A packed shard file as the manifest lists it."""

    name: str
    rows: int
    bytes: int
    videos: int


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """The packs of a run, in order, with the members of each."""

    packs: tuple[tuple[str, tuple[Member, ...]], ...]

    def locations(self) -> dict[str, tuple[str, int]]:
        """{member file: (pack name, row offset of its first row in the pack)}."""
        out: dict[str, tuple[str, int]] = {}
        for name, members in self.packs:
            offset = 0
            for m in members:
                out[m.name] = (name, offset)
                offset += m.rows
        return out


def _score(name: str) -> int:
    """A member's rank as a pack's last member: a hash of its name (the same wherever it falls in the run)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def group_members(members: Sequence[Member], target_bytes: int, max_rows: int = 0) -> list[list[Member]]:
    """Split `members` (in order) into consecutive groups of about `target_bytes` and, with `max_rows` > 0, at most
    that many rows. From where a group starts, its possible last members are those that leave it holding MIN_FILL
    of either limit without taking it past either; it ends at the one whose name hashes highest (`_score`). A member
    past a limit alone is a group of its own; the run's last members that do not reach the limits are the last
    group. Every group is non-empty.

    Why the highest hash in a window, not the first candidate past MIN_FILL: when a video is inserted or removed,
    the groups after it start a little earlier or later, and their windows shift by as much. The highest hash of a
    window rarely moves with a small shift, so the boundaries meet the old ones again within a pack or two. With the
    first candidate past MIN_FILL (one member in three), a shift of a few members usually has a candidate inside
    it, and the two chains of boundaries could stay apart for dozens of packs: in 300 simulated insertions (20,000
    videos of 1-15 rows, a 1,000-row cap) that rule changed 5.3 packs on average and up to 84, this one 1.2 and at
    most 11; with bytes (3,000 videos of 5-15 kB, a 100 kB target) 2.8 and 21 against 2.4 and 17.

    Why a row cap: rows without video bytes (metadata runs, small latents) would otherwise fill a 512 MB pack with
    ~100 k clips, so a run of a million clips would be a handful of files (little for parallel readers to split) and
    an inserted video would rewrite a pack of ~100 k rows. (Footers no longer need it: `RowGroups` coalesces the
    members' rows, where a pack once kept one row group per member.)"""
    if target_bytes <= 0 or max_rows < 0:
        raise ValueError("target_bytes must be positive and max_rows >= 0")
    row_cap = max_rows if max_rows > 0 else float("inf")
    scores = [_score(m.name) for m in members]
    groups: list[list[Member]] = []
    start, n = 0, len(members)
    while start < n:
        size = rows = 0
        end, best, best_score = start, -1, -1
        while end < n:  # the members that fit, and the best last member among those past MIN_FILL
            m = members[end]
            if end > start and (size + m.bytes > target_bytes or rows + m.rows > row_cap):
                break
            size, rows = size + m.bytes, rows + m.rows
            if (size >= MIN_FILL * target_bytes or rows >= MIN_FILL * row_cap) and scores[end] > best_score:
                best, best_score = end, scores[end]
            end += 1
        last = end - 1 if end == n or best < 0 else best
        groups.append(list(members[start : last + 1]))
        start = last + 1
    return groups


def pack_name(members: Sequence[Member]) -> str:
    """`part-<digest of the members>.parquet`: a different membership never reuses a name, and the same one always
    gets it wherever the pack falls in the run (the manifest holds the order)."""
    digest = hashlib.blake2b(digest_size=6)
    for m in members:
        digest.update(f"{m.name}\0{m.rows}\0{m.bytes}\n".encode())
    return f"{PACK_PREFIX}{digest.hexdigest()}.parquet"


def plan_packs(members: Sequence[Member], target_mb: float, max_rows: int = 0) -> PackPlan:
    """The deterministic pack plan of `members` (per-video files in run order) at `target_mb` and `max_rows` rows
    (0: no row cap)."""
    groups = group_members(members, max(1, int(target_mb * 2**20)), max_rows)
    return PackPlan(tuple((pack_name(g), tuple(g)) for g in groups))


def read_members(path: Path) -> list[tuple[str, int]]:
    """The members a pack's footer lists: [(member file name, rows)], in row order."""
    meta = pq.read_schema(path).metadata or {}
    if MEMBERS_KEY not in meta:
        raise ValueError(f"{path} is not a packed shard file (no member list in its footer)")
    return [(str(n), int(r)) for n, r in json.loads(meta[MEMBERS_KEY])]


def _sources(shard_dir: Path, wanted: set[str]) -> dict[str, tuple[Path, int, int]]:
    """Where each wanted member's rows are now: {member: (file, first row, rows)}, its own file when it still
    exists, else a complete pack that holds it."""
    found: dict[str, tuple[Path, int, int]] = {}
    for name in wanted:
        path = shard_dir / name
        if path.exists():
            found[name] = (path, 0, pq.read_metadata(path).num_rows)
    missing = wanted - set(found)
    if missing:
        for pack in sorted(shard_dir.glob(f"{PACK_PREFIX}*.parquet")):
            offset = 0
            for name, rows in read_members(pack):
                if name in missing and name not in found:
                    found[name] = (pack, offset, rows)
                offset += rows
    return found


def _compression(meta: pq.FileMetaData) -> dict[str, str]:
    """Per-column codec of a member file, so a pack keeps what its writer chose (coded video stays uncompressed)."""
    if meta.num_row_groups == 0:
        return {}
    group = meta.row_group(0)
    codecs = {}
    for i in range(group.num_columns):
        col = group.column(i)
        codec = {"uncompressed": "none", "lz4_raw": "lz4"}.get(col.compression.lower(), col.compression.lower())
        codecs[col.path_in_schema.split(".")[0]] = codec
    return codecs


class _SourceRows:
    """Reads members' rows from their current files: the last file opened and the last row group read are kept, so
    the members of a coalesced row group (an older pack's) cost one read of it, not one per member."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._file: pq.ParquetFile | None = None
        self._starts: list[int] = []
        self._group: tuple[int, pa.Table] | None = None

    def _open(self, path: Path) -> pq.ParquetFile:
        if self._path != path or self._file is None:
            self._file = pq.ParquetFile(path)
            meta = self._file.metadata
            self._starts = [0]
            for g in range(meta.num_row_groups):
                self._starts.append(self._starts[-1] + meta.row_group(g).num_rows)
            self._path, self._group = path, None
        return self._file

    def read(self, path: Path, first: int, rows: int) -> list[pa.Table]:
        """Rows [first, first + rows) of `path`, as tables along its row-group boundaries."""
        pf = self._open(path)
        out = []
        g = bisect.bisect_right(self._starts, first) - 1  # the group holding the first row (files of many groups)
        while 0 <= g < pf.num_row_groups and self._starts[g] < first + rows:
            start, stop = self._starts[g], self._starts[g + 1]
            lo, hi = max(first, start), min(first + rows, stop)
            if lo < hi:
                if self._group is None or self._group[0] != g:
                    self._group = (g, pf.read_row_group(g))
                out.append(self._group[1].slice(lo - start, hi - lo))
            g += 1
        return out


class RowGroups:
    """Writes tables to a Parquet writer as row groups of consecutive rows (of one member or several) holding at
    least `group_mb` of data, where there is that much: a table is never split, so a group holds at most what
    was buffered when it crossed it. `close` writes the rest.

    Why: a reader holds a file's whole footer, about 1 kB per row group and column, while the file is open. One
    row group per member (a few clips each) made the footers of a 1 M-clip run hold 125 k row groups: gigabytes for
    a snapshot or the loader to open. Rows with video bytes still get groups of a few clips."""

    def __init__(self, writer: pq.ParquetWriter, group_mb: float = ShardConfig.row_group_mb) -> None:
        if group_mb <= 0:
            raise ValueError(f"group_mb must be > 0, got {group_mb}")
        self.writer, self.group_bytes = writer, max(1, round(group_mb * 2**20))
        self._pending: list[pa.Table] = []
        self._bytes = 0
        self.groups = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._bytes += table.nbytes
        if self._bytes >= self.group_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as one row group."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self.writer.write_table(table, row_group_size=table.num_rows)
        self._pending, self._bytes = [], 0
        self.groups += 1

    close = flush


def pack_schema(schema: pa.Schema, members: Sequence[Member]) -> pa.Schema:
    """`schema` with the pack's member list (name, rows, in order) in its metadata, as `read_members` reads it."""
    member_list = json.dumps([[m.name, m.rows] for m in members]).encode()
    return schema.with_metadata({**(schema.metadata or {}), MEMBERS_KEY: member_list})


def write_pack(
    shard_dir: Path,
    name: str,
    members: Sequence[Member],
    sources: dict[str, tuple[Path, int, int]],
    compression_level: int | None,
    group_mb: float = ShardConfig.row_group_mb,
) -> PackFile:
    """Copy the members' rows, in order, into pack `name` (temp file, then rename), in row groups of about
    `group_mb` (`RowGroups`)."""
    final = shard_dir / name
    first = sources[members[0].name][0]
    meta = pq.read_metadata(first)
    schema = meta.schema.to_arrow_schema()
    schema = pack_schema(schema, members)
    codecs = _compression(meta)
    levels = {c: compression_level for c, codec in codecs.items() if codec == "zstd" and compression_level}
    dictionary = [c for c in DICTIONARY_COLUMNS if c in schema.names]
    tmp = temp_path(final)
    rows = 0
    reader = _SourceRows()
    try:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression=codecs or "zstd",
            compression_level=levels or None,
            use_dictionary=dictionary or False,
            write_statistics=[f.name for f in SHARD_META if f.name in schema.names],
        ) as writer:
            groups = RowGroups(writer, group_mb)
            for m in members:
                path, start, count = sources[m.name]
                if count != m.rows:
                    raise ValueError(f"{path} holds {count} rows of {m.name}, its record says {m.rows}")
                for table in reader.read(path, start, count):
                    if table.schema.remove_metadata() != schema.remove_metadata():
                        raise ValueError(f"{m.name}: its columns differ from {members[0].name}'s; cannot pack them")
                    groups.write(table.replace_schema_metadata(schema.metadata))
                    rows += table.num_rows
            groups.close()
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return PackFile(name=name, rows=rows, bytes=final.stat().st_size, videos=len(members))


def pack_shards(
    shard_dir: str | Path,
    members: Sequence[Member],
    target_mb: float,
    compression_level: int | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    max_rows: int = 0,
    group_mb: float = ShardConfig.row_group_mb,
) -> tuple[list[PackFile], dict[str, tuple[str, int]]]:
    """Make sure every pack of the plan of `members` (`plan_packs`) exists in `shard_dir`, its row groups of about
    `group_mb` (`RowGroups`); returns the packs (manifest entries, in order) and each member's (pack, row offset).
    Nothing is deleted here (see `remove_unlisted`)."""
    shard_dir = Path(shard_dir)
    plan = plan_packs(members, target_mb, max_rows)
    todo = [(name, group) for name, group in plan.packs if not (shard_dir / name).exists()]
    if todo:
        wanted = {m.name for _, group in todo for m in group}
        sources = _sources(shard_dir, wanted)
        if lost := sorted(wanted - set(sources)):
            named = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
            raise FileNotFoundError(
                f"the shard rows of {len(lost)} per-video files ({named}) are in no file under {shard_dir}: neither "
                "their own file nor a packed one holds them"
            )
        t0, done = time.perf_counter(), 0
        with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # pyarrow releases the GIL for I/O + codecs
            futures = [pool.submit(write_pack, shard_dir, n, g, sources, compression_level, group_mb) for n, g in todo]
            for future in cf.as_completed(futures):
                future.result()
                done += 1
                if progress is not None:
                    progress(done, len(todo))
        logger.info("packed %d shard files of %d in %.1f s", len(todo), len(plan.packs), time.perf_counter() - t0)
    packs = []
    for name, group in plan.packs:
        path = shard_dir / name
        rows = sum(m.rows for m in group)
        packs.append(PackFile(name=name, rows=rows, bytes=path.stat().st_size, videos=len(group)))
    return packs, plan.locations()


def remove_unlisted(shard_dir: str | Path, listed: Sequence[str]) -> int:
    """Delete the Parquet files in `shard_dir` that the manifest just written does not list (per-video files now in
    packs, packs of an older plan, a late duplicate attempt's file). Call only after that manifest is in place."""
    keep = set(listed)
    removed = 0
    for path in Path(shard_dir).glob("*.parquet"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def packing_summary(packs: Sequence[PackFile]) -> dict[str, Any]:
    """Files, rows and bytes per file, for the manifest."""
    sizes = sorted(p.bytes for p in packs)
    return {
        "files": len(packs),
        "rows": sum(p.rows for p in packs),
        "median_mb": round(sizes[len(sizes) // 2] / 2**20, 3) if sizes else 0.0,
        "max_mb": round(sizes[-1] / 2**20, 3) if sizes else 0.0,
    }
