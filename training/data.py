"""Training data loader: streams curated clips from Parquet shards into batches of tensors.

    from training.data import DataConfig, make_loader

    cfg = DataConfig(source="runs/sample", batch_size=8)
    loader = make_loader(cfg)  # one process; under torchrun every process passes its own rank:
    loader = make_loader(
        cfg, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
        device=f"cuda:{os.environ['LOCAL_RANK']}",
    )
    for step, batch in enumerate(loader.batches()):   # endless; `for batch in loader` is one epoch
        ...
        checkpoint["data"] = loader.state_dict()       # JSON; `loader.load_state_dict(state)` resumes there

A batch (a dict on `device`; B = batch_size, T frames, (h, w) = latent_size, C = latent_channels = 3):
- `latents` (B, C, T, h, w) float32 in [-1, 1]: the frames area-resized (pixel space, no VAE);
- `noise` (B, C, T, h, w) float32: the first C channels of the clip's warped noise (i.i.d. channels, so a subset
  keeps the statistics). Only when every source run stores noise on the latent grid with >= C channels; else the
  key is absent (never made up). `noise_source` (str) is "warped_noise" or "absent: <why>";
- `camera_tokens` (B, T-1) int64 QCM tokens (absent when no run has them; a null row is all 0 = "none"),
  `has_camera` (B,) bool;
- `event_activity` (B, T', H', W') float32 pooled to `token_grid` (`pool_event_maps`; absent when no run has
  events; a null row is zeros), `has_events` (B,) bool, `event_confidence` (B,) float32 (null -> 0);
- `text`: list[str] (caption, else camera_text, else ""), `clip_id`: list[str].
Tensors are collated in pinned memory and copied with `non_blocking=True` when `device` is CUDA.

Sources: a run directory (the curated `clips` table selects shard rows, in manifest order) or a snapshot directory
(`curation.snapshot`: its `clips.parquet` order, rows in several runs; the source shards are verified first).

Order. Everything is a pure function of (seed, epoch, rank, world_size, source metadata), computed from row counts
before any tensor is read:
1. the epoch's *units* (the curated rows of one Parquet row group) are permuted (no permutation when
   `shuffle_buffer == 0`: source order);
2. the resulting sample sequence is cut into `world_size` contiguous, balanced chunks (a row group is read by at
   most two ranks); every rank gets `ceil(N / world_size)` samples: a short rank repeats its own first samples,
   as `torch.utils.data.DistributedSampler` pads by repetition (`stats.padded_samples`), so all ranks yield the
   same number of batches and DDP never waits on a rank that ran out;
3. a seeded shuffle buffer of `shuffle_buffer` samples runs over the rank's stream. It is simulated on indices, so
   the loader knows which stream sample is emitted at every position of the epoch.
A resume therefore needs only (epoch, cursor): the loader decodes exactly the rows still to be emitted (the ones
"in the buffer" and after), never the skipped ones. Decode threads (`num_workers`) take row groups as they come,
but batches are assembled in the planned order, so timing never changes the order. The random numbers come from a
counter-based splitmix64 (not numpy's generators), so the order survives library upgrades too.

Bad rows (null or malformed frames, null or malformed warped noise when noise is served, malformed camera tokens
or event maps, a shard row that holds another clip than the selection says) are logged once per clip, counted in
`stats.skipped` and replaced by another valid sample of the same batch (or, if the whole batch is bad, the next
valid samples of the epoch), so batch shapes and the number of batches per rank never change.

Memory: the decoded samples waiting to be emitted (at most about `shuffle_buffer` plus the row groups being
decoded, `2 * num_workers` ahead) and `prefetch_batches` collated batches; shards are read one row group at a
time, only the needed columns. `stats` counts samples, skipped rows and the seconds the consumer waited.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from annotators.qcm import NUM_TOKENS
from curation.shards import read_manifest
from curation.snapshot import CLIPS_FILE, SNAPSHOT_FILE, load_snapshot, verify_snapshot

logger = logging.getLogger(__name__)

STATE_VERSION = 1
NOISE_KEY = "warped_noise"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What to read and how to batch it. Sizes are (h, w) and (T', H', W')."""

    source: str = ""  # a run directory or a snapshot directory
    batch_size: int = 2
    shuffle_buffer: int = 32  # samples; 0 = no shuffle (source order)
    seed: int = 0
    num_workers: int = 2  # background decode threads; 0 = decode in the consumer's thread
    prefetch_batches: int = 4
    latent_size: tuple[int, int] | None = None  # None: the warped-noise grid, else the frame size
    latent_channels: int = 3  # pixel space: RGB
    token_grid: tuple[int, int, int] | None = None  # event maps pooled to the model's token grid; None: (T, gh, gw)
    drop_last: bool = True

    def __post_init__(self) -> None:
        # TOML and JSON give lists: store tuples so the config stays hashable and comparable.
        for name, length in (("latent_size", 2), ("token_grid", 3)):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(value)
            if len(value) != length or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"data.{name} must be None or {length} positive integers, got {value!r}")
            object.__setattr__(self, name, value)
        for name, low in (("batch_size", 1), ("shuffle_buffer", 0), ("seed", 0), ("num_workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.prefetch_batches, int) or self.prefetch_batches < 1:
            raise ValueError(f"data.prefetch_batches must be an integer >= 1, got {self.prefetch_batches!r}")
        if self.latent_channels != 3:
            raise ValueError(
                "data.latent_channels must be 3: without a VAE the latent is the RGB frames "
                f"(got {self.latent_channels})"
            )
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        if not isinstance(self.source, str):
            raise ValueError(f"data.source must be a path, got {self.source!r}")


# ---------------------------------------------------------------------------------------------------------------
# Deterministic randomness: counter-based splitmix64, the same on every platform and library version.

_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _random_u64(key: Sequence[int], n: int) -> np.ndarray:
    """n pseudo-random uint64 for `key` (a tuple of non-negative ints): splitmix64 of a keyed counter."""
    state = np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for part in key:
            state = _mix64(state ^ np.uint64(part & _M64)) + _GOLDEN
        return _mix64(state + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64))


def _uniform(key: Sequence[int], n: int) -> np.ndarray:
    return (_random_u64(key, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _permutation(key: Sequence[int], n: int) -> np.ndarray:
    return np.argsort(_random_u64(key, n), kind="stable")


def shuffle_buffer_order(n: int, size: int, key: Sequence[int]) -> np.ndarray:
    """The emission order of a shuffle buffer of `size` over a stream of n items: out[k] = stream index emitted k-th.

    Fill `size` items; then each arriving item replaces a random buffered one, which is emitted; at the end the
    buffer drains in random order. Item k is emitted no later than after stream item k + size arrived, which is
    what bounds the loader's memory."""
    if size <= 0 or n <= 1:
        return np.arange(n, dtype=np.int64)
    u = _uniform(key, n + min(size, n))
    out = np.empty(n, np.int64)
    buf = list(range(min(size, n)))
    o = 0
    picks = (u[:n] * size).astype(np.int64)
    for i in range(size, n):
        j = int(picks[i])
        out[o] = buf[j]
        buf[j] = i
        o += 1
    for t in range(len(buf)):
        j = int(u[n + t] * len(buf))
        out[o] = buf[j]
        buf[j] = buf[-1]
        buf.pop()
        o += 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Event maps


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) resampling along one axis: exact area (box) weights when shrinking, nearest when growing."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    if n_out > n_in:
        w[torch.arange(n_out), (torch.arange(n_out) * n_in) // n_out] = 1.0
        return w
    # Output cell i covers [i, i + 1) * n_in / n_out of the input; weights are the overlaps, normalised, so every
    # input cell contributes n_out / n_in in total and the mean is preserved exactly, divisible or not.
    step = n_in / n_out
    for i in range(n_out):
        lo, hi = i * step, (i + 1) * step
        for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            w[i, j] = (min(hi, j + 1) - max(lo, j)) / step
    return w


def pool_event_maps(maps: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, T, gh, gw) event maps -> (B, T', H', W') on the model's token grid: area pooling per axis that shrinks
    (the mean is preserved), nearest upsampling per axis that grows, identity when the grid is equal."""
    if maps.dim() != 4:
        raise ValueError(f"pool_event_maps expects (B, T, gh, gw), got shape {tuple(maps.shape)}")
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"pool_event_maps: grid must be 3 positive sizes (T', H', W'), got {tuple(grid)}")
    out = maps
    for axis, size in zip((1, 2, 3), grid, strict=True):
        if out.shape[axis] != int(size):
            w = _axis_weights(out.shape[axis], int(size)).to(dtype=out.dtype, device=out.device)
            out = torch.movedim(torch.tensordot(out, w, dims=([axis], [1])), -1, axis)
    return out.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Source: the curated rows, grouped into row-group units, and each run's expected tensor layout


@dataclasses.dataclass(frozen=True)
class _Shard:
    run: int
    name: str
    path: Path
    starts: tuple[int, ...]  # first row of each row group, plus the total row count
    columns: frozenset[str]
    metadata: pq.FileMetaData


@dataclasses.dataclass(frozen=True)
class _Unit:
    """The selected rows of one row group, in source order."""

    shard: int
    group: int
    rows: tuple[int, ...]  # offsets inside the row group
    clip_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Run:
    key: str  # snapshot run_id, or "" for a run directory
    path: Path
    layout: dict[str, tuple[tuple[int, ...], np.dtype]]  # tensor -> (shape, dtype) from the manifest
    noise_grid: tuple[int, int] | None
    noise_channels: int


@dataclasses.dataclass
class _Source:
    kind: str  # "run" | "snapshot"
    path: Path
    runs: list[_Run]
    shards: list[_Shard]
    units: list[_Unit]
    fingerprint: str
    dropped_refs: int

    @property
    def num_samples(self) -> int:
        return sum(len(u.rows) for u in self.units)


def _run_layout(run_dir: Path, key: str) -> _Run:
    manifest = read_manifest(run_dir)
    buckets = manifest.get("buckets", {})
    if buckets.get("enabled"):
        names = buckets.get("buckets", [])
        raise ValueError(
            f"{run_dir}: its clips are stored in {len(names)} buckets ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}); the loader batches one clip shape so far: curate with an empty "
            "[buckets] section (the [frames] shape) to train on the run"
        )
    layout = {
        name: (tuple(int(s) for s in spec["shape"]), np.dtype(spec["dtype"]))
        for name, spec in manifest.get("tensors", {}).items()
    }
    if "frames" not in layout:
        raise ValueError(f"{run_dir}: the manifest lists no frames tensor; the loader needs frames")
    if NOISE_KEY not in layout:
        return _Run(key, run_dir, layout, None, 0)
    shape = layout[NOISE_KEY][0]  # (T, C, H/f, W/f)
    return _Run(key, run_dir, layout, (shape[2], shape[3]), shape[1])


def _shard_info(run: int, run_dir: Path, name: str) -> _Shard:
    path = run_dir / "shards" / name
    if not path.exists():
        raise ValueError(f"shard {path} is missing: the source references it")
    meta = pq.read_metadata(path)
    counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = tuple(int(x) for x in np.cumsum([0, *counts]))
    return _Shard(run, name, path, starts, frozenset(meta.schema.to_arrow_schema().names), meta)


def _open_source(source: str) -> _Source:
    if not source:
        raise ValueError("data.source is empty: give a run directory or a snapshot directory")
    path = Path(source)
    if not path.is_dir():
        raise ValueError(f"data.source {source!r} does not exist or is not a directory")
    if (path / SNAPSHOT_FILE).exists():
        snapshot = load_snapshot(path)
        located = verify_snapshot(snapshot)  # refuses when a source shard changed since the snapshot
        keys = list(located)
        runs = [_run_layout(Path(located[k]), k) for k in keys]
        table = pq.read_table(path / CLIPS_FILE, columns=["run_id", "shard", "shard_row", "clip_id"])
        index = {k: i for i, k in enumerate(keys)}
        refs = [
            (index[r], s, int(row), c)
            for r, s, row, c in zip(*(table.column(n).to_pylist() for n in table.column_names), strict=True)
        ]
        kind, identity = "snapshot", snapshot.snapshot_id
    elif (path / "shards").is_dir():
        try:
            runs = [_run_layout(path, "")]
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        manifest = read_manifest(path)
        order = {s["name"]: i for i, s in enumerate(manifest["shards"])}
        clip_files = sorted((path / "clips").glob("*.parquet"))
        if not clip_files:
            raise ValueError(f"{path}: no clips table (clips/*.parquet): not a finished run")
        table = pa.concat_tables(pq.read_table(p, columns=["clip_id", "shard", "shard_row"]) for p in clip_files)
        rows = zip(*(table.column(n).to_pylist() for n in ("shard", "shard_row", "clip_id")), strict=True)
        refs = sorted(((0, s, int(r), c) for s, r, c in rows if s in order), key=lambda x: (order[x[1]], x[2]))
        if len(refs) != table.num_rows:
            raise ValueError(f"{path}: clips reference shards that the manifest does not list")
        kind, identity = "run", manifest.get("config_hash", "")
    else:
        raise ValueError(
            f"data.source {source!r} is neither a run directory (shards/) nor a snapshot ({SNAPSHOT_FILE})"
        )
    if not refs:
        raise ValueError(f"data.source {source!r} selects 0 clips: nothing to train on")

    shards: list[_Shard] = []
    shard_index: dict[tuple[int, str], int] = {}
    units: list[_Unit] = []
    dropped = 0
    current: tuple[int, int] | None = None
    rows: list[int] = []
    ids: list[str] = []
    for run, name, row, clip_id in refs:
        if (run, name) not in shard_index:
            shard_index[(run, name)] = len(shards)
            shards.append(_shard_info(run, runs[run].path, name))
        si = shard_index[(run, name)]
        shard = shards[si]
        if not 0 <= row < shard.starts[-1]:
            logger.warning(
                "data: %s row %d does not exist (%d rows); clip %s skipped", name, row, shard.starts[-1], clip_id
            )
            dropped += 1
            continue
        group = bisect.bisect_right(shard.starts, row) - 1
        if (si, group) != current:
            if current is not None:
                units.append(_Unit(current[0], current[1], tuple(rows), tuple(ids)))
            current, rows, ids = (si, group), [], []
        rows.append(row - shard.starts[group])
        ids.append(clip_id)
    if current is not None:
        units.append(_Unit(current[0], current[1], tuple(rows), tuple(ids)))
    if not units:
        raise ValueError(f"data.source {source!r}: none of its {len(refs)} clips exist in the shards")
    # The order depends on the refs and the row-group layout: both go into the fingerprint.
    digest = hashlib.sha256(json.dumps([kind, identity], sort_keys=True).encode())
    for u in units:
        s = shards[u.shard]
        digest.update(f"{runs[s.run].key}/{s.name}/{u.group}/{s.starts[u.group]}:{','.join(u.clip_ids)};".encode())
    return _Source(kind, path, runs, shards, units, digest.hexdigest()[:16], dropped)


# ---------------------------------------------------------------------------------------------------------------
# Geometry: what every batch holds, fixed at construction from the manifests


@dataclasses.dataclass(frozen=True)
class _Geometry:
    num_frames: int
    latent_size: tuple[int, int]
    channels: int
    noise: bool
    noise_source: str
    camera: bool
    events: bool
    token_grid: tuple[int, int, int] | None


def _geometry(cfg: DataConfig, src: _Source) -> _Geometry:
    frames = [r.layout["frames"][0] for r in src.runs]
    if len({f[0] for f in frames}) != 1:
        raise ValueError(f"the source's runs store different frame counts {sorted({f[0] for f in frames})}")
    num_frames = frames[0][0]
    first = src.runs[0]
    latent = cfg.latent_size or first.noise_grid or (frames[0][1], frames[0][2])
    c = cfg.latent_channels
    reasons = []
    for r in src.runs:
        if NOISE_KEY not in r.layout:
            reasons.append(f"run {r.path} has no warped_noise")
        elif r.noise_grid != tuple(latent):
            reasons.append(f"noise grid {r.noise_grid} != latent_size {tuple(latent)} ({r.path})")
        elif r.layout[NOISE_KEY][0][1] < c:
            reasons.append(f"{r.layout[NOISE_KEY][0][1]} noise channels < latent_channels {c} ({r.path})")
        elif r.layout[NOISE_KEY][0][0] != num_frames:
            reasons.append(f"noise has {r.layout[NOISE_KEY][0][0]} frames, frames have {num_frames} ({r.path})")
    noise_source = NOISE_KEY if not reasons else "absent: " + "; ".join(dict.fromkeys(reasons))
    events = [r.layout["event_activity"][0] for r in src.runs if "event_activity" in r.layout]
    grid = cfg.token_grid
    if events and grid is None:
        if len(set(events)) != 1:
            raise ValueError(f"the source's event maps have different grids {sorted(set(events))}: set token_grid")
        grid = events[0]
    return _Geometry(
        num_frames=num_frames,
        latent_size=(int(latent[0]), int(latent[1])),
        channels=c,
        noise=not reasons,
        noise_source=noise_source,
        camera=any("camera_tokens" in r.layout for r in src.runs),
        events=bool(events),
        token_grid=tuple(int(g) for g in grid) if events and grid else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# The epoch plan: which unit row is emitted at every position of this rank's epoch


@dataclasses.dataclass(frozen=True)
class _Plan:
    epoch: int
    samples: int  # this rank's samples per epoch (padded)
    padded: int  # how many of them repeat an earlier sample
    stream_unit: np.ndarray  # stream index -> unit
    stream_item: np.ndarray  # stream index -> index into the unit's rows
    order: np.ndarray  # output position -> stream index
    read_of: np.ndarray  # stream index -> read (a run of consecutive stream samples from one unit)
    read_unit: np.ndarray  # read -> unit
    read_start: np.ndarray  # read -> its first stream index (one more entry: the stream length)


def _plan(src: _Source, cfg: DataConfig, epoch: int, rank: int, world: int) -> _Plan:
    n_units = len(src.units)
    shuffle = cfg.shuffle_buffer > 0
    unit_order = _permutation((cfg.seed, epoch, 1), n_units) if shuffle else np.arange(n_units)
    sizes = np.array([len(src.units[u].rows) for u in unit_order], np.int64)
    g_unit = np.repeat(unit_order, sizes)
    g_item = np.arange(len(g_unit)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    total = len(g_unit)
    q, rem = divmod(total, world)
    start, size = rank * q + min(rank, rem), q + (rank < rem)
    per_rank = q + (rem > 0)
    take = np.arange(start, start + size)
    pad = per_rank - size
    if pad:
        # Repeat the rank's own first samples (its row groups are the ones it reads anyway); a rank with none
        # (fewer samples than ranks) takes the epoch's sample at its rank index.
        own = take if size else np.array([rank % total])
        take = np.concatenate([take, own[np.arange(pad) % len(own)]])
    s_unit, s_item = g_unit[take], g_item[take]
    order = shuffle_buffer_order(per_rank, cfg.shuffle_buffer, (cfg.seed, epoch, 2, rank, world))
    boundary = np.ones(per_rank, bool)
    boundary[1:] = (s_unit[1:] != s_unit[:-1]) | (s_item[1:] <= s_item[:-1])
    read_of = np.cumsum(boundary) - 1
    starts = np.append(np.flatnonzero(boundary), per_rank)
    return _Plan(epoch, per_rank, pad, s_unit, s_item, order, read_of, s_unit[boundary], starts)


# ---------------------------------------------------------------------------------------------------------------
# Stats


@dataclasses.dataclass
class LoaderStats:
    """Counters for logs and the train loop: `wait_s` over the step time is the share spent waiting for data."""

    samples_yielded: int = 0
    batches_yielded: int = 0
    rows_decoded: int = 0
    rows_skipped: int = 0  # bad rows met (each time one is met), replaced in their batch
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count
    padded_samples: int = 0  # per epoch: samples this rank repeats so every rank has as many
    wait_s: float = 0.0  # consumer time blocked on the next batch
    last_wait_s: float = 0.0
    decode_s: float = 0.0  # read + decode time summed over threads
    bytes_read: int = 0  # uncompressed Arrow bytes of the columns read

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _BadRow:
    __slots__ = ("clip_id", "reason")

    def __init__(self, clip_id: str, reason: str) -> None:
        self.clip_id, self.reason = clip_id, reason


# ---------------------------------------------------------------------------------------------------------------
# Decoding one read (selected rows of one row group)


def _tensor(columns: dict[str, pa.Array], name: str, i: int) -> tuple[np.ndarray | None, str | None]:
    """(array, None), (None, None) when null, or (None, reason) when malformed. The array is read-only: a view of
    the Arrow buffer."""
    if name not in columns or not columns[name][i].is_valid:
        return None, None
    dtype_str, shape_list = columns[f"{name}_dtype"][i].as_py(), columns[f"{name}_shape"][i].as_py()
    if dtype_str is None or shape_list is None:
        return None, f"{name}: null dtype or shape"
    try:
        dtype = np.dtype(dtype_str)
        shape = tuple(int(s) for s in shape_list)
        buf = columns[name][i].as_buffer()
        if buf.size != dtype.itemsize * math.prod(shape):
            return None, f"{name}: {buf.size} bytes for shape {shape} {dtype}"
        return np.frombuffer(buf, dtype=dtype).reshape(shape), None
    except (TypeError, ValueError) as e:
        return None, f"{name}: {e}"


def _check(array: np.ndarray, name: str, layout: tuple[tuple[int, ...], np.dtype]) -> str | None:
    shape, dtype = layout
    if array.shape != shape or array.dtype != dtype:
        return f"{name}: {array.shape} {array.dtype}, expected {shape} {dtype}"
    return None


class _Decoder:
    """Turns shard rows into per-sample tensors (CPU); thread-safe (no shared mutable state but the stats)."""

    def __init__(self, src: _Source, geo: _Geometry, stats: LoaderStats, lock: threading.Lock) -> None:
        self.src, self.geo, self.stats, self.lock = src, geo, stats, lock
        wanted = ["clip_id", "frames", "event_confidence", "caption", "camera_text"]
        wanted += [NOISE_KEY] * geo.noise + ["camera_tokens"] * geo.camera + ["event_activity"] * geo.events
        self.tensors = [t for t in ("frames", NOISE_KEY, "camera_tokens", "event_activity") if t in wanted]
        self.wanted = wanted + [f"{t}_{p}" for t in self.tensors for p in ("dtype", "shape")]

    def read(self, unit: _Unit, items: Sequence[int]) -> list[dict[str, Any] | _BadRow]:
        t0 = time.perf_counter()
        shard = self.src.shards[unit.shard]
        pf = pq.ParquetFile(shard.path, metadata=shard.metadata, memory_map=True)
        columns = [c for c in self.wanted if c in shard.columns]
        offsets = [unit.rows[i] for i in items]
        table = pf.read_row_group(unit.group, columns=columns, use_threads=False)
        if offsets != list(range(table.num_rows)):
            table = table.take(pa.array(offsets, pa.int64()))
        cols = {name: table.column(name).combine_chunks() for name in table.column_names}
        run = self.src.runs[shard.run]
        out = [self._sample(cols, k, unit.clip_ids[i], run) for k, i in enumerate(items)]
        with self.lock:
            self.stats.decode_s += time.perf_counter() - t0
            self.stats.rows_decoded += len(out)
            self.stats.bytes_read += table.nbytes
        return out

    def _sample(self, cols: dict[str, pa.Array], i: int, clip_id: str, run: _Run) -> dict[str, Any] | _BadRow:
        geo = self.geo
        found = cols["clip_id"][i].as_py()
        if found != clip_id:
            return _BadRow(clip_id, f"clip_id: the row holds {found}")
        arrays: dict[str, np.ndarray | None] = {}
        for name in self.tensors:
            array, problem = _tensor(cols, name, i)
            if problem is None and array is not None and name in run.layout:
                problem = _check(array, name, run.layout[name])
            if problem is None and array is None and name in ("frames", NOISE_KEY):
                problem = f"{name}: null"
            if problem:
                return _BadRow(clip_id, problem)
            arrays[name] = array
        sample: dict[str, Any] = {"clip_id": clip_id}
        sample["latents"] = _frames_to_latents(arrays["frames"], geo.latent_size)
        if geo.noise:
            noise = torch.from_numpy(arrays[NOISE_KEY][:, : geo.channels].astype(np.float32))  # (T, C, h, w)
            if not bool(torch.isfinite(noise).all()):
                return _BadRow(clip_id, "warped_noise: not finite")
            sample["noise"] = noise.permute(1, 0, 2, 3).contiguous()
        tokens = arrays.get("camera_tokens")
        if geo.camera:
            if tokens is not None and (tokens.min(initial=0) < 0 or tokens.max(initial=0) >= NUM_TOKENS):
                return _BadRow(clip_id, f"camera_tokens: outside 0..{NUM_TOKENS - 1}")
            if tokens is not None and tokens.shape != (geo.num_frames - 1,):
                return _BadRow(clip_id, f"camera_tokens: shape {tokens.shape}")
            sample["camera_tokens"] = (
                torch.from_numpy(tokens.astype(np.int64))
                if tokens is not None
                else torch.zeros(geo.num_frames - 1, dtype=torch.int64)
            )
        sample["has_camera"] = tokens is not None
        maps = arrays.get("event_activity")
        if geo.events and geo.token_grid is not None:
            if maps is not None:
                events = torch.from_numpy(maps.astype(np.float32))
                if events.dim() != 3 or events.shape[0] != geo.num_frames or not bool(torch.isfinite(events).all()):
                    return _BadRow(clip_id, f"event_activity: shape {tuple(events.shape)} or not finite")
                sample["event_activity"] = pool_event_maps(events.clamp_(0.0, 1.0)[None], geo.token_grid)[0]
            else:
                sample["event_activity"] = torch.zeros(geo.token_grid, dtype=torch.float32)
        sample["has_events"] = maps is not None
        confidence = cols["event_confidence"][i].as_py() if "event_confidence" in cols else None
        sample["event_confidence"] = float(confidence) if confidence is not None and math.isfinite(confidence) else 0.0
        caption = cols["caption"][i].as_py() if "caption" in cols else None
        camera_text = cols["camera_text"][i].as_py() if "camera_text" in cols else None
        sample["text"] = caption or camera_text or ""
        return sample


def _frames_to_latents(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, h, w) float32 in [-1, 1], area-resized.

    When the size divides, exact box sums in integers straight from the Arrow buffer (rows first, then columns, so
    both reductions run over contiguous memory: ~8x faster than a strided mean); otherwise torch's area resize."""
    t, fh, fw, c = frames.shape
    h, w = size
    if fh % h == 0 and fw % w == 0:
        kh, kw = fh // h, fw // w
        acc = np.uint16 if kh * kw * 255 < 2**16 else np.uint32
        rows = frames.reshape(t, h, kh, fw * c).sum(axis=2, dtype=acc)
        box = rows.reshape(t, h, w, kw, c).sum(axis=3, dtype=acc).astype(np.float32)
        box *= np.float32(2.0 / (255.0 * kh * kw))
        box -= np.float32(1.0)
        return torch.from_numpy(np.ascontiguousarray(box.transpose(3, 0, 1, 2)))
    x = torch.from_numpy(frames.transpose(0, 3, 1, 2).astype(np.float32))  # astype copies: writable for torch
    x = F.interpolate(x, size=(h, w), mode="area")
    return x.permute(1, 0, 2, 3).mul(2.0 / 255.0).sub_(1.0).contiguous()


def _collate(samples: list[dict[str, Any]], geo: _Geometry, pin: bool) -> dict[str, Any]:
    def stack(key: str) -> torch.Tensor:
        parts = [s[key] for s in samples]
        if not pin:
            return torch.stack(parts)
        out = torch.empty((len(parts), *parts[0].shape), dtype=parts[0].dtype, pin_memory=True)
        return torch.stack(parts, out=out)

    batch: dict[str, Any] = {"latents": stack("latents")}
    if geo.noise:
        batch["noise"] = stack("noise")
    batch["noise_source"] = geo.noise_source
    if geo.camera:
        batch["camera_tokens"] = stack("camera_tokens")
    batch["has_camera"] = torch.tensor([s["has_camera"] for s in samples], dtype=torch.bool)
    if geo.events and geo.token_grid is not None:
        batch["event_activity"] = stack("event_activity")
    batch["has_events"] = torch.tensor([s["has_events"] for s in samples], dtype=torch.bool)
    batch["event_confidence"] = torch.tensor([s["event_confidence"] for s in samples], dtype=torch.float32)
    batch["text"] = [s["text"] for s in samples]
    batch["clip_id"] = [s["clip_id"] for s in samples]
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Background production of one epoch's batches


class _Producer:
    """Runs a batch generator in a thread and hands its batches over a bounded queue (the prefetch)."""

    def __init__(self, batches: Iterator[Any], depth: int) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(batches,), name="loader-batches", daemon=True)
        self.thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[Any]) -> None:
        try:
            for batch in batches:
                if not self._put(("batch", batch)):
                    return
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(("error", e))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # runs the generator's cleanup (cancels queued decodes) in the thread that ran it

    def get(self) -> tuple[str, Any]:
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    return ("error", RuntimeError("the loader's batch thread stopped without a result"))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# The loader


class Loader:
    """Batches of curated clips for one rank; see the module docstring for order, resume and DDP padding."""

    def __init__(
        self, cfg: DataConfig, src: _Source, rank: int, world_size: int, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg, self.src, self.rank, self.world_size = cfg, src, rank, world_size
        self.device = torch.device(device)
        self.geo = _geometry(cfg, src)
        self.noise_source = self.geo.noise_source
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        self.stats = LoaderStats()
        self._lock = threading.Lock()
        self._decoder = _Decoder(src, self.geo, self.stats, self._lock)
        self._executor: cf.ThreadPoolExecutor | None = None
        self._producer: _Producer | None = None
        self._plan_cache: _Plan | None = None
        self._warned: set[tuple[str, str]] = set()
        self.epoch, self.cursor = 0, 0
        total = src.num_samples
        self.num_samples = -(-total // world_size)  # per rank, padded
        if self.num_batches == 0:
            raise ValueError(
                f"{self.num_samples} samples per rank < batch_size {cfg.batch_size} with drop_last: no batch per epoch"
            )

    # -- sizes and state --------------------------------------------------------------------------------------

    @property
    def num_batches(self) -> int:
        n, b = self.num_samples, self.cfg.batch_size
        return n // b if self.cfg.drop_last else -(-n // b)

    def __len__(self) -> int:
        return self.num_batches

    def _epoch_end(self) -> int:
        """The last output position (exclusive) of the epoch, from the current cursor."""
        n, b, c = self.num_samples, self.cfg.batch_size, self.cursor
        return c + ((n - c) // b) * b if self.cfg.drop_last else n

    def _epoch_plan(self, epoch: int) -> _Plan:
        if self._plan_cache is None or self._plan_cache.epoch != epoch:
            self._plan_cache = _plan(self.src, self.cfg, epoch, self.rank, self.world_size)
        return self._plan_cache

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch starts: (epoch, cursor = samples of this epoch already handed out); the rest checks
        that a resumed loader sees the same data and order. The same on every rank, so rank 0's copy serves all."""
        position = None
        if self.cursor < self.num_samples:
            plan = self._epoch_plan(self.epoch)
            stream = int(plan.order[self.cursor])
            unit = self.src.units[int(plan.stream_unit[stream])]
            shard = self.src.shards[unit.shard]
            item = int(plan.stream_item[stream])
            position = {
                "run": self.src.runs[shard.run].key or str(self.src.runs[shard.run].path),
                "shard": shard.name,
                "row_group": unit.group,
                "row": shard.starts[unit.group] + unit.rows[item],
                "clip_id": unit.clip_ids[item],
            }
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "samples_per_epoch": self.num_samples,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "world_size": self.world_size,
            "rank": self.rank,
            "source": self.src.fingerprint,
            "next": position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken. Refuses (ValueError) when the order would differ: another
        source content, seed, shuffle buffer or world size."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')}, this code reads {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("source", "seed", "shuffle_buffer", "world_size", "samples_per_epoch"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"loader state does not match this loader: {key} {state.get(key)!r} != {mine[key]!r} "
                    "(exact resume needs the same data, seed, shuffle buffer and world size)"
                )
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor <= self.num_samples:
            raise ValueError(f"loader state: bad epoch/cursor {epoch}/{cursor}")
        self._stop()
        self.epoch, self.cursor = epoch, cursor
        if self._epoch_end() <= self.cursor:  # nothing left in that epoch: start the next one
            self.epoch, self.cursor = epoch + 1, 0

    # -- iteration --------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch (all of it from a fresh start), one batch at a time."""
        self._stop()
        epoch, end = self.epoch, self._epoch_end()
        batches = self._batches(self._epoch_plan(epoch), self.cursor, end)
        producer = None
        if self.cfg.num_workers > 0:
            self._producer = producer = _Producer(batches, self.cfg.prefetch_batches)
        try:
            while True:
                t0 = time.perf_counter()
                if producer is not None:
                    kind, item = producer.get()
                    if kind == "error":
                        raise item
                    if kind == "end":
                        return
                else:
                    item = next(batches, None)
                    if item is None:
                        return
                stop, batch = item
                batch = self._to_device(batch)
                waited = time.perf_counter() - t0
                # State first: once the caller holds the batch, a checkpoint must point past it.
                self.cursor = stop
                if stop >= end:
                    self.epoch, self.cursor = epoch + 1, 0
                with self._lock:
                    self.stats.wait_s += waited
                    self.stats.last_wait_s = waited
                    self.stats.batches_yielded += 1
                    self.stats.samples_yielded += len(batch["clip_id"])
                yield batch
        finally:
            # Only this iterator's thread: an abandoned iterator collected later must not stop a newer one.
            if producer is not None:
                producer.stop()
                if self._producer is producer:
                    self._producer = None
            else:
                batches.close()

    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless: epoch after epoch, each in its own order."""
        while True:
            yield from self

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=self.pin) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _batches(self, plan: _Plan, cursor: int, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(cursor after the batch, CPU batch) for positions [cursor, end), decoding only what is emitted."""
        self.stats.padded_samples = plan.padded
        b = self.cfg.batch_size
        # Numpy over the epoch (a few int arrays), no per-sample Python objects: epochs may hold millions of clips.
        pos_of = np.empty(plan.samples, np.int64)
        pos_of[plan.order] = np.arange(plan.samples)
        wanted = (pos_of >= cursor) & (pos_of < end)  # stream samples still to be emitted this epoch
        n_reads = len(plan.read_unit)
        # Each read is needed from the first position that emits one of its rows; decode in that order.
        first = np.full(n_reads, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, plan.read_of[wanted], pos_of[wanted])
        remaining = np.bincount(plan.read_of[wanted], minlength=n_reads)
        schedule = np.argsort(first, kind="stable")[: int(np.count_nonzero(remaining))].tolist()
        pending: dict[int, _Keyed | dict[int, Any]] = {}
        submitted = 0
        ahead = max(2, 2 * self.cfg.num_workers)

        def submit(r: int) -> None:
            span = np.arange(plan.read_start[r], plan.read_start[r + 1])
            stream_ids = span[wanted[span]].tolist()
            unit = self.src.units[int(plan.read_unit[r])]
            rows = [int(plan.stream_item[s]) for s in stream_ids]
            if self.cfg.num_workers > 0:
                pending[r] = _Keyed(self._pool().submit(self._decoder.read, unit, rows), stream_ids)
            else:
                pending[r] = dict(zip(stream_ids, self._decoder.read(unit, rows), strict=True))

        def take(p: int) -> Any:
            s = int(plan.order[p])
            r = int(plan.read_of[s])
            got = pending[r]
            if isinstance(got, _Keyed):
                got = pending[r] = got.result()
            sample = got.pop(s)
            remaining[r] -= 1
            if not remaining[r]:
                del pending[r]
            return sample

        try:
            for start in range(cursor, end, b):
                stop = min(start + b, end)
                # Keep the decode threads busy with the reads needed next, a bounded number ahead.
                while submitted < len(schedule) and (
                    first[schedule[submitted]] < stop or sum(1 for r in pending if first[r] >= stop) < ahead
                ):
                    submit(schedule[submitted])
                    submitted += 1
                samples = [take(p) for p in range(start, stop)]
                yield stop, _collate(self._replace_bad(samples, plan, stop), self.geo, self.pin)
        finally:
            for got in pending.values():
                if isinstance(got, _Keyed):
                    got.future.cancel()

    def _replace_bad(self, samples: list[Any], plan: _Plan, stop: int) -> list[dict[str, Any]]:
        bad = [i for i, s in enumerate(samples) if isinstance(s, _BadRow)]
        if not bad:
            return samples
        for i in bad:
            self._note_bad(samples[i])
        good = [s for s in samples if not isinstance(s, _BadRow)]
        # A wholly bad batch borrows the next valid samples of the epoch (wrapping): a function of the data and
        # the plan only, so a resumed run borrows the same ones.
        p = stop
        while not good:
            if p - stop >= plan.samples:
                raise ValueError(f"epoch {plan.epoch}: no valid sample on rank {self.rank}; see the warnings")
            s = int(plan.order[p % plan.samples])
            unit = self.src.units[int(plan.stream_unit[s])]
            found = self._decoder.read(unit, [int(plan.stream_item[s])])[0]
            if not isinstance(found, _BadRow):
                good.append(found)
            p += 1
        return [good[k % len(good)] if isinstance(s, _BadRow) else s for k, s in enumerate(samples)]

    def _note_bad(self, row: _BadRow) -> None:
        reason = row.reason.split(":", 1)[0]
        with self._lock:
            self.stats.rows_skipped += 1
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        if (row.clip_id, reason) not in self._warned:
            self._warned.add((row.clip_id, reason))
            logger.warning(
                "data: clip %s skipped (%s); replaced by another sample of its batch", row.clip_id, row.reason
            )

    def _pool(self) -> cf.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(self.cfg.num_workers, thread_name_prefix="loader-decode")
        return self._executor

    def _stop(self) -> None:
        if self._producer is not None:
            self._producer.stop()
            self._producer = None

    def close(self) -> None:
        """Stop the background threads; iterating again starts them anew."""
        self._stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to stop
            self.close()


class _Keyed:
    """A decode future and the stream indices of its rows, in the order it returns them."""

    __slots__ = ("future", "streams")

    def __init__(self, future: cf.Future, streams: list[int]) -> None:
        self.future, self.streams = future, streams

    def result(self) -> dict[int, Any]:
        return dict(zip(self.streams, self.future.result(), strict=True))


def make_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> Loader:
    """A loader for `rank` of `world_size` (under torchrun: `rank=int(os.environ["RANK"])`,
    `world_size=int(os.environ["WORLD_SIZE"])`). ValueError for an empty, missing or unusable source."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return Loader(cfg, _open_source(cfg.source), rank, world_size, device)
