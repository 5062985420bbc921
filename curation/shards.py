"""Training shards: Parquet files with one row per curated clip, scalar columns plus raw-bytes tensors.

A video's clips step writes its rows to `shards/<video_id>-<chunk>.parquet` (at most `rows_per_shard` rows each) in
small row groups so readers stream. Files are written under a temporary name unique to the writer and renamed when
complete. At the end of the run `curation.packing` copies them into packed files of about `target_mb`, rows of many
videos each. `shards/manifest.json` lists the shard files of the run; `iter_clips(RUN_DIR)` reads them back.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import storage
from curation.ids import shard_name
from curation.schema import SCHEMA_VERSION, SHARD_META, UNCOMPRESSED_TENSORS, shard_schema
from curation.tables import atomic_write_json, temp_path
from curation.video_store import VideoCodec, decode_video, encode_video, is_video_dtype

MANIFEST = "manifest.json"
DICTIONARY_COLUMNS = ("video_id", "source_uri", "flow_backend", "noise_warper_version")  # few distinct values


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """Shard file layout."""

    target_mb: float = 512.0  # packed shard files: about this size, rows of many videos each
    # ... and at most this many rows, so small rows (no video bytes) still make several files; 0 = no cap
    pack_max_rows: int = 8192
    rows_per_shard: int = 256  # per-video files a clips step writes before packing
    row_group_rows: int = 16  # small groups: a reader holds one group of clips in memory at a time
    # packed files: consecutive rows (of one video or many) in row groups of about this much data, so the footers
    # stay small when rows are small (~1 kB per row group and column, held while a file is open)
    row_group_mb: float = 8.0
    tensor_compression: str = "zstd"  # for frame tensors; none | zstd | lz4 | snappy
    tensor_compression_level: int = 1  # decode speed is the same at every zstd level, so spend little on writes

    def __post_init__(self) -> None:
        if self.rows_per_shard < 1 or not 1 <= self.row_group_rows <= self.rows_per_shard:
            raise ValueError("shards needs rows_per_shard >= 1 and 1 <= row_group_rows <= rows_per_shard")
        if not 0 < self.row_group_mb <= 1024:
            raise ValueError(f"shards.row_group_mb must be in (0, 1024], got {self.row_group_mb}")
        if self.pack_max_rows < 0:
            raise ValueError(f"shards.pack_max_rows must be >= 0 (0 = no cap), got {self.pack_max_rows}")
        if not 0 < self.target_mb <= 1 << 20:
            raise ValueError(f"shards.target_mb must be in (0, 1048576], got {self.target_mb}")
        if self.tensor_compression not in ("none", "zstd", "lz4", "snappy"):
            raise ValueError(f"shards.tensor_compression: unknown codec {self.tensor_compression!r}")


@dataclasses.dataclass
class ShardFile:
    """A written shard: its name, row count and size."""

    name: str
    rows: int
    bytes: int
    video_id: str


def encode_tensor(name: str, array: np.ndarray, video: VideoCodec | None = None, fps: float = 8.0) -> dict[str, Any]:
    """The three column values that store `array` as tensor `name`: its raw bytes, or with `video` (frames only,
    (T, H, W, 3) uint8) an encoded stream whose dtype column names the codec (`curation.video_store`)."""
    array = np.ascontiguousarray(array)
    if video is not None:
        return {name: encode_video(array, video, fps), f"{name}_dtype": video.dtype, f"{name}_shape": list(array.shape)}
    return {name: array.tobytes(), f"{name}_dtype": array.dtype.str, f"{name}_shape": list(array.shape)}


def decode_tensor(row: dict[str, Any], name: str) -> np.ndarray:
    """Rebuild tensor `name` from a row's bytes, dtype and shape columns (a writable copy); a video-coded tensor is
    decoded back to uint8 frames."""
    dtype, shape = row[f"{name}_dtype"], tuple(row[f"{name}_shape"])
    if is_video_dtype(dtype):
        return decode_video(row[name], shape)
    return np.frombuffer(row[name], dtype=np.dtype(dtype)).reshape(shape).copy()


class ShardWriter:
    """Writes one video's clip rows into chunked shard files; renames them into place on `close()`."""

    def __init__(
        self,
        shard_dir: str | Path,
        video_id: str,
        tensors: Sequence[str],
        cfg: ShardConfig,
        uncompressed: Sequence[str] = (),
    ) -> None:
        self.uncompressed = UNCOMPRESSED_TENSORS | set(uncompressed)  # already compressed, or incompressible
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.video_id, self.cfg = video_id, cfg
        self.schema = shard_schema(list(tensors))
        self.tensors = list(tensors)
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[dict[str, Any]] = []
        self._rows_in_file = 0
        self._pending: list[tuple[Path, Path]] = []  # (tmp, final) pairs renamed together on close
        self.files: list[ShardFile] = []

    def add(self, row: dict[str, Any]) -> tuple[str, int]:
        """Queue one clip row (scalar columns + encoded tensors); returns (shard name, row index in it)."""
        if self._writer is None or self._rows_in_file >= self.cfg.rows_per_shard:
            self._open_next()
        location = (self.files[-1].name, self._rows_in_file)
        self._buffer.append(row)
        self._rows_in_file += 1
        self.files[-1].rows += 1
        if len(self._buffer) >= self.cfg.row_group_rows:
            self._flush()
        return location

    def close(self) -> list[ShardFile]:
        """Finish the open file and move every file of this video to its final name."""
        self._finish_file()
        for tmp, final in self._pending:
            os.replace(tmp, final)
        self._pending.clear()
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)

    def _open_next(self) -> None:
        self._finish_file()
        final = self.dir / shard_name(self.video_id, len(self.files))
        tmp = temp_path(final)  # unique: a second attempt at this video never writes into this attempt's file
        scalar = [f.name for f in SHARD_META]
        codec = self.cfg.tensor_compression
        compression = {f.name: "zstd" for f in self.schema}
        compression.update({t: ("none" if t in self.uncompressed else codec) for t in self.tensors})
        levels = {t: self.cfg.tensor_compression_level for t in self.tensors if compression[t] == "zstd"}
        self._writer = pq.ParquetWriter(
            tmp,
            self.schema,
            compression=compression,
            use_dictionary=list(DICTIONARY_COLUMNS),
            write_statistics=scalar,
            compression_level=levels or None,
        )
        self._pending.append((tmp, final))
        self.files.append(ShardFile(name=final.name, rows=0, bytes=0, video_id=self.video_id))
        self._rows_in_file = 0

    def _flush(self) -> None:
        if self._buffer and self._writer is not None:
            columns = {f.name: [r.get(f.name) for r in self._buffer] for f in self.schema}
            self._writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
            self._buffer.clear()

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        self.files[-1].bytes = self._pending[-1][0].stat().st_size


def write_manifest(run_dir: str | Path, shards: Sequence[Any], config_hash: str, extra: dict[str, Any]) -> None:
    """`shards/manifest.json`: what a training job reads (shard order, rows, bytes, schema version, config hash).
    `shards` are dataclasses with at least name, rows and bytes (`curation.packing.PackFile`)."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "config_hash": config_hash,
        "rows": sum(s.rows for s in shards),
        "bytes": sum(s.bytes for s in shards),
        "shards": [dataclasses.asdict(s) for s in shards],
        **extra,
    }
    atomic_write_json(manifest, Path(run_dir) / "shards" / MANIFEST)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The run's `shards/manifest.json`; `run_dir` may be a URL (`curation.storage`)."""
    path = storage.join(storage.location(run_dir), "shards", MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: the run has not finished (re-run the same command to complete it)")
    return storage.read_json(path)


def curated_clip_ids(run_dir: str | Path) -> set[str]:
    """The clip ids of the run's `clips` table: the curated set. Shard rows of clips that a global stage dropped
    afterwards (score filters, dedup, the event filter; listed in `rejected`) stay in the files but are not in it."""
    paths = storage.glob(storage.join(storage.location(run_dir), "clips"), "*.parquet")
    return {cid for p in paths for cid in storage.read_table(p, columns=["clip_id"]).column("clip_id").to_pylist()}


def iter_clips(run_dir: str | Path, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one dict per curated clip, in manifest order: scalars as Python values, tensors as numpy arrays.

    `columns` limits what is read; naming a tensor reads its dtype and shape columns too. Shard rows of clips that
    are not in the `clips` table (dropped by a filter or dedup after their shards were written) are skipped.
    """
    manifest = read_manifest(run_dir)
    curated = curated_clip_ids(run_dir)
    for shard in manifest["shards"]:
        pf = storage.parquet_file(shard_path(run_dir, shard["name"]))
        names = pf.schema_arrow.names
        tensors = [n for n in names if f"{n}_dtype" in names and f"{n}_shape" in names]
        wanted, extra = None, set()
        if columns is not None:
            layout = {f"{t}_{part}" for t in set(columns) & set(tensors) for part in ("dtype", "shape")}
            extra = {"clip_id"} - set(columns)  # read to select curated rows, not returned
            wanted = [n for n in names if n in columns or n in layout or n in extra]
        # One row group at a time: memory stays at a few clips whatever the shard size.
        for group in range(pf.num_row_groups):
            for row in pf.read_row_group(group, columns=wanted).to_pylist():
                if row["clip_id"] in curated:
                    yield {k: v for k, v in _decode_row(row, tensors).items() if k not in extra}


def shard_path(run_dir: str | Path, shard: str) -> str | Path:
    """Where shard file `shard` of a run lives: a Path, or a URL for a run on an object store."""
    return storage.join(storage.location(run_dir), "shards", shard)


def visit_tensors(
    run_dir: str | Path,
    names: Sequence[str],
    codes: np.ndarray,
    rows: np.ndarray,
    tensors: Sequence[str],
    visit: Callable[[int, list[np.ndarray | None]], None],
    batch_rows: int = 4096,
) -> int:
    """Call `visit(i, [each of `tensors`, None where absent])` for every i whose shard row (`names[codes[i]]`,
    `rows[i]`) holds at least one of them, file by file and batch by batch, reading only those tensors' columns and
    each file's footer once: memory is one batch, however many clips. Returns how many were visited."""
    if isinstance(tensors, str):  # a bare name would be read as its letters
        raise TypeError("visit_tensors takes a sequence of tensor names")
    visited = 0
    for ids, batch in _member_batches(run_dir, names, codes, rows, tensors, batch_rows):
        for i, row in zip(ids, batch.to_pylist(), strict=True):
            found = [decode_tensor(row, t) if row.get(t) is not None else None for t in tensors]
            if any(f is not None for f in found):
                visit(int(i), found)
                visited += 1
    return visited


def _member_batches(
    run_dir: str | Path,
    names: Sequence[str],
    codes: np.ndarray,
    rows: np.ndarray,
    tensors: Sequence[str],
    batch_rows: int,
) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """(the i of the rows, their rows' columns of `tensors` present in the file) for every shard row
    (`names[codes[i]]`, `rows[i]`), file by file and batch by batch, reading each file's footer once."""
    codes, rows = np.asarray(codes, dtype=np.int64), np.asarray(rows, dtype=np.int64)
    order = np.lexsort((rows, codes))
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    for code, shard in enumerate(names):
        members = order[bounds[code] : bounds[code + 1]]
        if not len(members):
            continue
        pf = storage.parquet_file(shard_path(run_dir, shard))
        present = [t for t in tensors if t in pf.schema_arrow.names]
        if not present:
            continue
        wanted = [c for t in present for c in (t, f"{t}_dtype", f"{t}_shape")]
        at, start = rows[members], 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
            lo, hi = np.searchsorted(at, [start, start + batch.num_rows])
            if hi > lo:
                yield members[lo:hi], batch.take(pa.array(at[lo:hi] - start))
            start += batch.num_rows


def visit_tensor_blocks(
    run_dir: str | Path,
    names: Sequence[str],
    codes: np.ndarray,
    rows: np.ndarray,
    tensor: str,
    visit: Callable[[np.ndarray, np.ndarray], None],
    batch_rows: int = 4096,
) -> int:
    """`visit_tensors` for one tensor, a block at a time: `visit(ids, values)` with the i of the rows that hold it
    (as in `visit_tensors`) and their tensors stacked, (k, *shape). Where a block's tensors share one raw dtype and
    shape (an embedding column), they are read straight from the column's buffer: no Python object per row, which
    at 10 M clips is minutes. Other blocks go row by row, visited in groups of one shape. Returns how many rows were
    visited."""
    visited = 0
    for ids, batch in _member_batches(run_dir, names, codes, rows, (tensor,), batch_rows):
        held = np.asarray(batch.column(0).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if held.any():
            for block_ids, values in _stacked(batch.filter(pa.array(held)), tensor, ids[held]):
                visit(block_ids, values)
            visited += int(held.sum())
    return visited


def _stacked(batch: pa.RecordBatch, tensor: str, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The tensors of a batch whose rows all hold one: [(ids, stacked values)], one entry when they share a raw dtype
    and shape (read from the column's buffer), else one per shape, decoded row by row."""
    dtypes = batch.column(1).unique().to_pylist()
    shapes = batch.column(2)
    first = shapes[0].as_py() or []
    lengths = pc.fill_null(pc.list_value_length(shapes), -1).to_numpy(zero_copy_only=False)
    same_shape = bool(np.all(lengths == len(first))) and np.array_equal(
        pc.list_flatten(shapes).to_numpy(zero_copy_only=False).reshape(len(batch), len(first)),
        np.broadcast_to(np.asarray(first, dtype=np.int64), (len(batch), len(first))),
    )
    values = batch.column(0)
    if len(dtypes) == 1 and not is_video_dtype(dtypes[0]) and same_shape:
        dtype = np.dtype(dtypes[0])
        size = math.prod(first) * dtype.itemsize
        width = np.int64 if pa.types.is_large_binary(values.type) else np.int32
        offsets = np.frombuffer(values.buffers()[1], dtype=width)[values.offset : values.offset + len(values) + 1]
        if np.all(np.diff(offsets) == size):  # one contiguous run of equal-sized values
            data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            return [(ids, data.view(dtype).reshape(len(batch), *first))]
    groups: dict[tuple[int, ...], list[int]] = {}
    decoded = [decode_tensor(row, tensor) for row in batch.to_pylist()]
    for k, array in enumerate(decoded):
        groups.setdefault(array.shape, []).append(k)
    return [(ids[ks], np.stack([decoded[k] for k in ks])) for ks in groups.values()]


def _decode_row(row: dict[str, Any], tensors: list[str]) -> dict[str, Any]:
    present = [t for t in tensors if t in row]
    layout = {f"{t}_{part}" for t in present for part in ("dtype", "shape")}
    out = {k: v for k, v in row.items() if k not in layout}
    for t in present:  # a null cell (the annotator had nothing for this clip) stays None
        out[t] = decode_tensor(row, t) if row[t] is not None else None
    if "frame_indices" in out:
        out["frame_indices"] = np.asarray(out["frame_indices"], dtype=np.int64)
    return out


def read_rows(
    run_dir: str | Path, refs: Sequence[tuple[str, int]], columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Random access by locator: the shard rows `(shard name, row index)` of one run, decoded like `iter_clips`
    (tensors as numpy arrays), in the order of `refs`. Dropped clips' rows are readable too. Only the row groups that
    hold a wanted row are read. IndexError for a row past the end of its shard."""
    by_shard: dict[str, list[int]] = {}
    for shard, row in refs:
        by_shard.setdefault(shard, []).append(int(row))
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for shard, rows in by_shard.items():
        unique = sorted(set(rows))
        found.update(zip(((shard, r) for r in unique), ShardReader(run_dir, shard, columns).read(unique), strict=True))
    return [found[(shard, int(row))] for shard, row in refs]


class ShardReader:
    """Random access to one shard's rows by index, decoded like `iter_clips` (tensors as numpy arrays); the footer
    and row-group offsets are read once, and each call reads only the row groups holding its rows."""

    def __init__(self, run_dir: str | Path, shard: str, columns: Sequence[str] | None) -> None:
        self.key = (run_dir, shard)
        self.name = shard
        self.file = storage.parquet_file(shard_path(run_dir, shard))
        names = self.file.schema_arrow.names
        self.tensors = [n for n in names if f"{n}_dtype" in names and f"{n}_shape" in names]
        self.columns = None
        if columns is not None:
            layout = {f"{t}_{part}" for t in set(columns) & set(self.tensors) for part in ("dtype", "shape")}
            self.columns = [n for n in names if n in columns or n in layout]
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])

    def read(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The decoded rows, in the order given; IndexError for a row past the end of the shard."""
        wanted = np.asarray(rows, np.int64)
        total = int(self.starts[-1])
        bad = wanted[(wanted < 0) | (wanted >= total)]
        if len(bad):
            raise IndexError(f"{self.name} has {total} rows; row {int(bad.min())} does not exist")
        groups = np.searchsorted(self.starts, wanted, side="right") - 1
        found: dict[int, dict[str, Any]] = {}
        for g in np.unique(groups):
            table = self.file.read_row_group(int(g), columns=self.columns)
            for r in np.unique(wanted[groups == g]):
                row = table.slice(int(r - self.starts[g]), 1).to_pylist()[0]
                found[int(r)] = _decode_row(row, self.tensors)
        return [found[int(r)] for r in wanted]
