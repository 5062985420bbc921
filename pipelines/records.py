"""Batch files of records: the per-input JSON records of a step, consolidated into a few append-only files, and
the index that reads them.

A worker commits one small record per (step, input) in RUN_DIR/_work/<step>/<key>.json (`pipelines.steps.WorkDir`);
at millions of inputs that is millions of files. The driver moves them into
RUN_DIR/_work/<step>/_records/records-<NNNNN>.jsonl, one `{"key": ..., "record": {...}}` per line, each beside a
`records-<NNNNN>.index.json` listing its keys and byte offsets (`pipelines.compaction` does that, and says when).
Batch files are never rewritten: a later compaction appends new ones holding only the records new since.

Why JSON lines and not Parquet: a worker or `pipelines.collect` reads single records in input order. A byte offset
serves each one with a single read of exactly its bytes; Parquet would decode a whole row-group column chunk per
record, and the nested, heterogeneous records would be stored as JSON strings in it anyway. JSON also round-trips a
record to the identical dict the small file gave, and stays greppable.

Why a subfolder: listing it (which every `RecordIndex` does once) never lists the step folder, which holds one file
per unfinished input while a run is going.

Publishing: a batch is written to a dot-prefixed temporary file and fsynced, then hard-linked to its final name
(atomic, and never replaces an existing file); readers only look at final names, so a half-written batch is
invisible. The index file is published after its data file and is only a cache: a data file without it, or with one
that does not match its size, is scanned instead (`tidy` writes it again).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from curation.tables import temp_path

logger = logging.getLogger(__name__)

RECORDS_DIR = "_records"  # under RUN_DIR/_work/<step>
MAX_RECORDS = 10_000  # records per batch file: 1,000 files per step at 10 million inputs
MAX_BYTES = 256 << 20  # and bytes per batch file, so a file of large records stays easy to copy and scan
_OPEN_FILES = 8  # batch files a RecordIndex keeps open for reading
_DATA = re.compile(r"^records-(\d+)\.jsonl$")


def data_files(records_dir: Path) -> list[Path]:
    """The published batch files of a step, oldest first (temporary files are dot-prefixed: never matched)."""
    try:
        names = os.listdir(records_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := _DATA.match(name))]
    return [records_dir / name for _, name in sorted(found)]


def loads(data: bytes) -> Any:
    """A record's JSON: orjson (3.5-5x json's speed on records; finalize reads every record of a run), or json where
    orjson refuses what json wrote (NaN and Infinity, which json.dumps writes for float NaN and inf)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def index_path(data: Path) -> Path:
    return data.with_name(data.name.removesuffix(".jsonl") + ".index.json")


def scan(data: Path) -> tuple[list[str], list[int], int]:
    """(keys, byte offsets, size) of a batch file, read line by line: for a batch whose index file is missing."""
    keys, offsets, pos = [], [], 0
    with open(data, "rb") as f:
        for line in f:
            keys.append(loads(line)["key"])
            offsets.append(pos)
            pos += len(line)
    return keys, offsets, pos


def read_index(data: Path) -> tuple[list[str], list[int], int]:
    """(keys, byte offsets, size) of a batch file from its index file, or by scanning it when that is missing or does
    not describe this file (a compaction killed between publishing the two)."""
    size = data.stat().st_size
    try:
        index = json.loads(index_path(data).read_bytes())
        keys, offsets = index["keys"], index["offsets"]
        if index["size"] == size and len(keys) == len(offsets) and (not offsets or offsets[0] == 0):
            return keys, offsets, size
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return scan(data)


@dataclasses.dataclass(frozen=True)
class Location:
    """Where one record sits: its batch file and the byte range of its line."""

    path: Path
    offset: int
    length: int


class RecordIndex:
    """key -> (batch file, offset, length) for the consolidated records of one step, built lazily from the index
    files (not the records) and kept as sorted numpy arrays: about 32 bytes per key (32 MB at a million keys), where
    a dict of tuples would take about 250."""

    def __init__(self, step_dir: str | Path) -> None:
        self.dir = Path(step_dir) / RECORDS_DIR
        self.files: list[Path] = []
        self._keys = np.empty(0, dtype="S1")
        self._fid = np.empty(0, dtype=np.int32)
        self._off = np.empty(0, dtype=np.int64)
        self._len = np.empty(0, dtype=np.uint32)  # a line of a batch file is < 4 GiB
        self._stamp: int | None = None  # the folder's mtime when last listed; None = never
        # open batch files, least recently used first: reading many records (finalize reads every one) costs one
        # pread each instead of an open, a seek and a close; few, since a step can have a thousand files
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()

    def close(self) -> None:
        """Close the batch files kept open for reading (reading again reopens them)."""
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __len__(self) -> int:
        self._ensure()
        return len(self._keys)

    def refresh(self, force: bool = False) -> bool:
        """Index the batch files published since the last look; True if there were any. Unless `force`d, only when
        the folder's mtime moved (one stat): cheap enough for every miss, but a coarse clock can hide a file
        published right after the last listing, so the paths where a miss matters (`WorkDir.save`, a record gone
        from its small file) force a listing."""
        stamp = _mtime_ns(self.dir)  # before listing: a file published meanwhile changes it again
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        known = {p.name for p in self.files}
        new = [p for p in data_files(self.dir) if p.name not in known]
        if new:
            self._merge([self._entries(len(self.files) + i, p) for i, p in enumerate(new)])
            self.files += new
        return bool(new)

    def find(self, key: str) -> Location | None:
        """The location of `key`'s record in the batch files indexed so far (the first call indexes them)."""
        i = self._position(key)
        return None if i is None else Location(self.files[self._fid[i]], int(self._off[i]), int(self._len[i]))

    def _position(self, key: str) -> int | None:
        self._ensure()
        want = key.encode()
        if not len(self._keys) or len(want) > self._keys.dtype.itemsize:
            return None
        i = int(np.searchsorted(self._keys, want))
        return None if i == len(self._keys) or self._keys[i] != want else i

    def contains(self, keys: list[str]) -> np.ndarray:
        """Whether each of `keys` has a consolidated record (vectorised, for compaction)."""
        self._ensure()
        n, width = len(self._keys), self._keys.dtype.itemsize
        if not keys or not n:
            return np.zeros(len(keys), dtype=bool)
        # a binary search per key in the sorted keys: np.isin would sort all of them again on every call
        fits = np.fromiter((len(k.encode()) <= width for k in keys), dtype=bool, count=len(keys))
        want = np.array([k.encode() if ok else b"" for k, ok in zip(keys, fits, strict=True)], dtype=self._keys.dtype)
        at = np.minimum(np.searchsorted(self._keys, want), n - 1)
        return fits & (self._keys[at] == want)

    def read(self, key: str) -> dict[str, Any] | None:
        """`key`'s record, or None when it has no consolidated one: one read of exactly its line."""
        i = self._position(key)
        if i is None:
            return None
        fid, offset = int(self._fid[i]), int(self._off[i])
        entry = loads(os.pread(self._fd(fid), int(self._len[i]), offset))
        if entry.get("key") != key:  # only a batch file changed by hand could do this
            path = self.files[fid]
            raise ValueError(f"{path} at byte {offset}: expected the record of {key}, found {entry.get('key')}")
        return entry["record"]

    def _fd(self, fid: int) -> int:
        fd = self._fds.get(fid)
        if fd is None:
            fd = self._fds[fid] = os.open(self.files[fid], os.O_RDONLY)
            if len(self._fds) > _OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(fid)
        return fd

    def _ensure(self) -> None:
        if self._stamp is None:
            self.refresh()

    def _entries(self, fid: int, data: Path) -> tuple[np.ndarray, ...]:
        keys, offsets, size = read_index(data)
        ends = np.append(np.asarray(offsets[1:], dtype=np.int64), size)
        off = np.asarray(offsets, dtype=np.int64)
        return _as_bytes(keys), np.full(len(keys), fid, dtype=np.int32), off, (ends - off).astype(np.uint32)

    def _merge(self, parts: list[tuple[np.ndarray, ...]]) -> None:
        """Add new files' entries, keeping the arrays sorted by key; of a key in several files (only concurrent
        compactions write that) the oldest wins. Only the new entries are sorted, then inserted: a run compacts
        as it goes, so the index grows by a few files at a time and re-sorting all of it each time would be
        quadratic in the run's size."""
        new = [np.concatenate([p[i] for p in parts]) for i in range(4)]
        width = max(self._keys.dtype.itemsize, new[0].dtype.itemsize)
        old_keys, new[0] = self._keys.astype(f"S{width}", copy=False), new[0].astype(f"S{width}", copy=False)
        order = np.argsort(new[0], kind="stable")  # equal keys keep their files' order
        new = [a[order] for a in new]
        at = np.searchsorted(old_keys, new[0], side="right")  # after an equal old key: the older one comes first
        keys, fid, off, length = (
            np.insert(old, at, add) for old, add in zip((old_keys, self._fid, self._off, self._len), new, strict=True)
        )
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        if not first.all():
            keys, fid, off, length = keys[first], fid[first], off[first], length[first]
        self._keys, self._fid, self._off, self._len = keys, fid, off, length


def _as_bytes(keys: list[str]) -> np.ndarray:
    return np.array([k.encode() for k in keys], dtype=bytes) if keys else np.empty(0, dtype="S1")


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


def fsync_dir(path: Path) -> None:
    """Make the names published in `path` durable (a no-op where directories cannot be fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def publish(tmp: Path, records_dir: Path) -> Path:
    """Give a complete, fsynced batch file the next free number, never replacing a published one."""
    files = data_files(records_dir)
    number = int(_DATA.match(files[-1].name).group(1)) + 1 if files else 0
    while True:
        final = records_dir / f"records-{number:05d}.jsonl"
        try:
            os.link(tmp, final)
            break
        except FileExistsError:
            number += 1
        except OSError:  # no hard links here (some FUSE and object-store mounts): check, then rename
            if final.exists():
                number += 1
                continue
            os.replace(tmp, final)
            break
    tmp.unlink(missing_ok=True)
    return final


class BatchWriter:
    """One batch file being written: lines go to a temporary file, `publish` gives it its final name and index."""

    def __init__(self, records_dir: Path) -> None:
        records_dir.mkdir(parents=True, exist_ok=True)
        self.dir = records_dir
        self.tmp = temp_path(records_dir / "records.jsonl")
        self.file: IO[bytes] = open(self.tmp, "wb")  # noqa: SIM115 - closed in publish / discard
        self.keys: list[str] = []
        self.offsets: list[int] = []
        self.size = 0

    def add(self, key: str, line: bytes) -> None:
        self.keys.append(key)
        self.offsets.append(self.size)
        self.file.write(line)
        self.size += len(line)

    def publish(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        index = temp_path(self.dir / "records.index.json")
        try:
            _write_synced(index, json.dumps({"keys": self.keys, "offsets": self.offsets, "size": self.size}).encode())
            final = publish(self.tmp, self.dir)
            os.replace(index, index_path(final))  # after its data file: an index never describes a missing file
        finally:
            index.unlink(missing_ok=True)
        return final

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def tidy(records_dir: Path) -> None:
    """Undo what a killed compaction left: temporary files, index files without their data file, and data files
    without a valid index file (indexed again)."""
    if not records_dir.is_dir():
        return
    for p in records_dir.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    data = data_files(records_dir)
    names = {p.name for p in data}
    for p in records_dir.glob("records-*.index.json"):
        if p.name.removesuffix(".index.json") + ".jsonl" not in names:
            p.unlink(missing_ok=True)
    for p in data:
        if not _index_matches(p):
            keys, offsets, size = scan(p)
            tmp = temp_path(index_path(p))
            _write_synced(tmp, json.dumps({"keys": keys, "offsets": offsets, "size": size}).encode())
            os.replace(tmp, index_path(p))


def _index_matches(data: Path) -> bool:
    try:
        return json.loads(index_path(data).read_bytes())["size"] == data.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return False
