"""Opening a source (a run or a snapshot directory): its shards, the curated rows grouped into row-group units (one
stored clip shape each), each run's tensor layout, and the per-bucket batch geometry that follows from the
manifests."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import storage
from curation.buckets import Bucket
from curation.shards import read_manifest
from curation.snapshot import CLIPS_FILE, SNAPSHOT_FILE, load_snapshot, verify_snapshot
from training.data.config import NOISE_KEY, DataConfig
from training.data.space import DataSpace, resolve_space

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Source: the curated rows, grouped into row-group units, and each run's expected tensor layout


@dataclasses.dataclass(frozen=True)
class _Shard:
    run: int
    name: str
    path: Path | str  # a URL for a run on an object store
    starts: tuple[int, ...]  # first row of each row group, plus the total row count
    columns: frozenset[str]
    metadata: pq.FileMetaData


@dataclasses.dataclass(frozen=True)
class _Unit:
    """The selected rows of one row group that share one stored clip shape, in source order."""

    shard: int
    group: int
    rows: tuple[int, ...]  # offsets inside the row group
    clip_ids: tuple[str, ...]
    shape: int = 0  # index into `_Source.shapes`


Dim = int | str  # a manifest dimension: a number, or a symbol of the clip's bucket ("T", "H/8", "T-1", "D")
Shape = tuple[int, int, int]  # a stored clip shape (num_frames, height, width)


@dataclasses.dataclass(frozen=True)
class _Run:
    key: str  # snapshot run_id, or "" for a run directory
    path: Path | str  # a URL for a run on an object store
    layout: dict[str, tuple[tuple[Dim, ...], np.dtype]]  # tensor -> (shape, dtype) from the manifest
    shapes: tuple[Shape, ...]  # the stored clip shapes: the buckets, or the one [frames] shape
    bucketed: bool  # rows carry their shape in the `bucket` column
    manifest: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame of the run's VAE (1 without one): how its T' annotations align to frames."""
        block = self.manifest.get("latents") or self.manifest.get("noise") or {}
        return int(block.get("temporal_factor") or 1)

    def expected(self, shape: Shape) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        """The layout of a row stored at `shape`: symbols resolved, None where a size is not fixed by the shape."""
        return {name: (resolve_dims(dims, shape), dtype) for name, (dims, dtype) in self.layout.items()}


_SYMBOL = re.compile(r"^([THW])(?:([-+/*])(\d+))?$")


def resolve_dims(dims: tuple[Dim, ...], shape: Shape) -> tuple[int | None, ...]:
    """Manifest dims on one stored clip shape (T, H, W): "T-1", "H/8" (floor division, as the pipeline sizes grids)
    and numbers resolve; other symbols ("D", flow's "h") are None: any size."""
    values = dict(zip("THW", shape, strict=True))
    out: list[int | None] = []
    for d in dims:
        if isinstance(d, int):
            out.append(d)
            continue
        m = _SYMBOL.match(str(d).replace(" ", ""))
        if m is None:
            out.append(None)
            continue
        v, op, k = values[m.group(1)], m.group(2), int(m.group(3) or 0)
        out.append({None: v, "-": v - k, "+": v + k, "*": v * k, "/": v // k if k else None}[op])
    return tuple(out)


@dataclasses.dataclass
class _Source:
    kind: str  # "run" | "snapshot"
    path: Path | str
    runs: list[_Run]
    shards: list[_Shard]
    units: list[_Unit]
    fingerprint: str
    dropped_refs: int

    shapes: list[Shape] = dataclasses.field(default_factory=list)  # the distinct stored clip shapes, sorted

    @property
    def num_samples(self) -> int:
        return sum(len(u.rows) for u in self.units)


def _run_layout(run_dir: Path | str, key: str) -> _Run:
    manifest = read_manifest(run_dir)
    layout = {
        name: (tuple(s if isinstance(s, int) else str(s) for s in spec["shape"]), np.dtype(spec["dtype"]))
        for name, spec in manifest.get("tensors", {}).items()
    }
    if "frames" not in layout:
        raise ValueError(
            f"{run_dir}: the manifest lists no frames tensor (a frames.store=none run keeps annotations only); the "
            "loader needs frames"
        )
    block = manifest.get("buckets") or {}
    if block.get("enabled"):
        try:
            shapes = tuple(sorted({dataclasses.astuple(Bucket.parse(str(n))) for n in block.get("buckets", [])}))
        except ValueError as e:
            raise ValueError(f"{run_dir}: malformed bucket names in the manifest: {e}") from e
        if not shapes:
            raise ValueError(f"{run_dir}: the manifest says buckets are enabled but lists none")
        return _Run(key, run_dir, layout, shapes, True, manifest)
    frames = layout["frames"][0]
    if len(frames) != 4 or not all(isinstance(d, int) for d in frames[:3]):
        raise ValueError(f"{run_dir}: the manifest's frames shape {list(frames)} is not (T, H, W, 3) numbers")
    return _Run(key, run_dir, layout, (tuple(frames[:3]),), False, manifest)


def _shard_info(run: int, run_dir: Path | str, name: str) -> _Shard:
    path = storage.join(run_dir, "shards", name)
    if not storage.exists(path):
        raise ValueError(f"shard {path} is missing: the source references it")
    meta = storage.read_metadata(path)
    counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = tuple(int(x) for x in np.cumsum([0, *counts]))
    return _Shard(run, name, path, starts, frozenset(meta.schema.to_arrow_schema().names), meta)


def _bucket_names(table: pa.Table, rows: list[int], runs: list[_Run], where: str) -> list[str | None]:
    """The `bucket` of each ref (None for rows of a run without buckets, whose one shape is in its manifest)."""
    if not any(r.bucketed for r in runs):
        return [None] * table.num_rows
    if "bucket" not in table.column_names:
        raise ValueError(f"{where}: the run stores clips in buckets but its clips table has no bucket column")
    names = table.column("bucket").to_pylist()
    return [names[i] if runs[r].bucketed else None for i, r in enumerate(rows)]


def _read_selection(path: Path | str, columns: list[str]) -> pa.Table:
    """The selection table of a snapshot or a run, with `bucket` when it has one."""
    if storage.exists(storage.join(path, SNAPSHOT_FILE)):
        files = [storage.join(path, CLIPS_FILE)]
    else:
        files = storage.glob(storage.join(path, "clips"), "*.parquet")
    names = set(storage.read_schema(files[0]).names) if files else set()
    wanted = [*columns, *(["bucket"] if "bucket" in names else [])]
    return pa.concat_tables(storage.read_table(p, columns=wanted) for p in files)


REF_BATCH = 65536  # selection rows turned into Python values at once


def _iter_refs(
    table: pa.Table, run_of: Callable[[pa.Table], list[int]], runs: list[_Run], path: Path | str
) -> Iterator[tuple[int, str, int, str, str | None]]:
    """(run, shard, row, clip_id, bucket) of every selected row, in table order, converted batch by batch: only one
    batch of rows is ever held as Python objects. ValueError (from `_bucket_names`) before any row when a bucketed
    run's selection has no bucket column."""
    _bucket_names(table.slice(0, 0), [], runs, str(path))
    for batch in table.to_batches(max_chunksize=REF_BATCH):
        part = pa.Table.from_batches([batch])
        runs_of = run_of(part)
        buckets = _bucket_names(part, runs_of, runs, str(path))
        columns = (part.column(n).to_pylist() for n in ("shard", "shard_row", "clip_id"))
        for r, s, row, c, b in zip(runs_of, *columns, buckets, strict=True):
            yield r, s, int(row), c, b


def _open_source(source: str) -> _Source:
    """The source's shards and row-group units. `source` may be a URL (`s3://bucket/prefix`, `curation.storage`)
    of a run or a snapshot; ValueError for one that is missing, unfinished or cannot be read."""
    if not source:
        raise ValueError("data.source is empty: give a run directory or a snapshot directory")
    path = storage.location(source)
    if not storage.is_dir(path):
        raise ValueError(f"data.source {source!r} does not exist or is not a directory")
    if storage.exists(storage.join(path, SNAPSHOT_FILE)):
        snapshot = load_snapshot(path)
        located = verify_snapshot(snapshot)  # refuses when a source shard changed since the snapshot
        keys = list(located)
        runs = [_run_layout(located[k], k) for k in keys]
        table = _read_selection(path, ["run_id", "shard", "shard_row", "clip_id"])
        index = {k: i for i, k in enumerate(keys)}
        refs = _iter_refs(table, lambda batch: [index[r] for r in batch.column("run_id").to_pylist()], runs, path)
        kind, identity = "snapshot", snapshot.snapshot_id
    elif storage.is_dir(storage.join(path, "shards")):
        try:
            runs = [_run_layout(path, "")]
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        manifest = read_manifest(path)
        names = [s["name"] for s in manifest["shards"]]
        if not storage.glob(storage.join(path, "clips"), "*.parquet"):
            raise ValueError(f"{path}: no clips table (clips/*.parquet): not a finished run")
        table = _read_selection(path, ["clip_id", "shard", "shard_row"])
        # Manifest order, then row: a stable sort, done by Arrow rather than over Python tuples of every row.
        position = pc.index_in(table.column("shard"), value_set=pa.array(names, pa.string()))
        if position.null_count:
            raise ValueError(f"{path}: clips reference shards that the manifest does not list")
        table = table.append_column("_position", position)
        table = table.take(pc.sort_indices(table, [("_position", "ascending"), ("shard_row", "ascending")]))
        refs = _iter_refs(table.drop_columns(["_position"]), lambda batch: [0] * batch.num_rows, runs, path)
        kind, identity = "run", manifest.get("config_hash", "")
    else:
        raise ValueError(
            f"data.source {source!r} is neither a run directory (shards/) nor a snapshot ({SNAPSHOT_FILE})"
        )
    n_refs = table.num_rows

    shapes = sorted({s for r in runs for s in r.shapes})
    shape_index = {s: i for i, s in enumerate(shapes)}
    shards: list[_Shard] = []
    shard_index: dict[tuple[int, str], int] = {}
    units: list[_Unit] = []
    dropped = 0
    # Consecutive refs in one row group form a block; a block holds one unit per stored shape, in order of first
    # appearance (a run without buckets has one shape: one unit per block).
    current: tuple[int, int] | None = None
    block: dict[int, tuple[list[int], list[str]]] = {}

    def flush() -> None:
        if current is not None:
            units.extend(_Unit(current[0], current[1], tuple(r), tuple(i), k) for k, (r, i) in block.items())

    for run, name, row, clip_id, bucket in refs:
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
        shape = runs[run].shapes[0] if bucket is None else _parse_bucket(bucket, runs[run], clip_id)
        group = bisect.bisect_right(shard.starts, row) - 1
        if (si, group) != current:
            flush()
            current, block = (si, group), {}
        rows_, ids_ = block.setdefault(shape_index[shape], ([], []))
        rows_.append(row - shard.starts[group])
        ids_.append(clip_id)
    flush()
    if not n_refs:  # after the loop: a bad selection (no bucket column) is reported first, as it always was
        raise ValueError(f"data.source {source!r} selects 0 clips: nothing to train on")
    if not units:
        raise ValueError(f"data.source {source!r}: none of its {n_refs} clips exist in the shards")
    # The order depends on the refs, the row-group layout and (with several) the shapes: all go into the
    # fingerprint. One shape adds nothing, so single-shape sources keep the fingerprint they always had.
    digest = hashlib.sha256(json.dumps([kind, identity], sort_keys=True).encode())
    if len(shapes) > 1:
        digest.update(json.dumps(shapes).encode())
    for u in units:
        s = shards[u.shard]
        tag = f"@{u.shape}" if len(shapes) > 1 else ""
        digest.update(f"{runs[s.run].key}/{s.name}/{u.group}/{s.starts[u.group]}{tag}:{','.join(u.clip_ids)};".encode())
    return _Source(kind, path, runs, shards, units, digest.hexdigest()[:16], dropped, shapes)


def _parse_bucket(name: object, run: _Run, clip_id: str) -> Shape:
    try:
        shape = dataclasses.astuple(Bucket.parse(str(name)))
    except ValueError:
        raise ValueError(f"{run.path}: clip {clip_id} has a malformed bucket {name!r} (expected TxHxW)") from None
    if shape not in run.shapes:
        raise ValueError(f"{run.path}: clip {clip_id} is in bucket {name}, which the manifest does not list")
    return shape


# ---------------------------------------------------------------------------------------------------------------
# Geometry: what every batch of a bucket holds, fixed at construction from the manifests


@dataclasses.dataclass(frozen=True)
class _Bucket:
    """One batch shape: the samples of every stored clip shape that decodes to it (each batch is one bucket)."""

    name: str  # the stored shape(s) "TxHxW" (joined by "+" when a fixed latent_size merges several)
    num_frames: int
    latent_size: tuple[int, int]
    token_grid: tuple[int, int, int] | None  # event maps pooled to this; None without events

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(T, h, w) of the batch's latents."""
        return (self.num_frames, *self.latent_size)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    channels: int
    noise: bool
    noise_source: str
    camera: bool
    events: bool
    buckets: tuple[_Bucket, ...]  # sorted by (T, h, w): bucket 0 keeps the unbucketed loader's random streams
    bucket_of: dict[tuple[int, int], int]  # (run, stored shape index) -> bucket
    space: DataSpace = dataclasses.field(default_factory=lambda: DataSpace("pixel", 3, 1, None, None))
    text: bool = False  # batches carry the stored text embeddings, padded to `space.text_length`
    rays: bool = False  # batches carry camera ray embeddings (`data.camera_rays`)

    @property
    def latent(self) -> bool:
        return self.space.kind == "latent"

    def _single(self) -> _Bucket:
        if len(self.buckets) != 1:
            names = ", ".join(b.name for b in self.buckets)
            raise ValueError(f"the source has {len(self.buckets)} batch shapes ({names}): read geo.buckets")
        return self.buckets[0]

    # The one bucket of a source without buckets (an error with several: their sizes differ).
    @property
    def num_frames(self) -> int:
        return self._single().num_frames

    @property
    def latent_size(self) -> tuple[int, int]:
        return self._single().latent_size

    @property
    def token_grid(self) -> tuple[int, int, int] | None:
        return self._single().token_grid


def _patched(shape: tuple[int, int, int], patch: tuple[int, int, int], what: str) -> tuple[int, int, int]:
    if any(s % p for s, p in zip(shape, patch, strict=True)):
        raise ValueError(f"{what}: latent (T, h, w) = {shape} is not divisible by data.token_patch {patch}")
    return tuple(s // p for s, p in zip(shape, patch, strict=True))


def data_space(cfg: DataConfig, src: _Source) -> DataSpace:
    """The source's space (pixel or latent), VAE and text encoder, checked against the config's pins."""
    manifests = [(str(r.path), r.manifest) for r in src.runs]
    return resolve_space(manifests, cfg.space, cfg.vae_hash, cfg.text_encoder_hash)


def _latent_grid(r: _Run, shape: Shape, where: str) -> tuple[int, int, int]:
    """(T', h, w) of the run's stored latents at one clip shape, from the manifest."""
    dims = r.expected(shape)["latents"][0]
    if len(dims) != 4 or None in dims:
        raise ValueError(f"{where}: the manifest's latents shape {list(r.layout['latents'][0])} is not (C, T', h, w)")
    return int(dims[1]), int(dims[2]), int(dims[3])


def _geometry(cfg: DataConfig, src: _Source) -> _Geometry:
    space = data_space(cfg, src)
    c = space.channels
    if cfg.latent_channels is not None and cfg.latent_channels != c:
        raise ValueError(
            f"data.latent_channels {cfg.latent_channels} != the data's {c} channels ({space.kind} space"
            + (f", {space.vae['cls']}" if space.vae else "")
            + "): leave it unset"
        )
    if space.kind == "latent" and cfg.latent_size is not None:
        raise ValueError("data.latent_size is for pixel space: VAE latents are used at their stored size")
    pairs = sorted({(src.shards[u.shard].run, u.shape) for u in src.units})  # (run, shape) that rows use
    first = src.runs[0]
    reasons: list[str] = []
    signature: dict[tuple[int, int], tuple[int, tuple[int, int]]] = {}
    event_grids: dict[tuple[int, int], tuple[int | None, ...]] = {}
    for run_i, shape_i in pairs:
        r, shape = src.runs[run_i], src.shapes[shape_i]
        expected, lead = r.expected(shape), first.expected(shape)
        where = f"({r.path})" if not r.bucketed else f"(bucket {'x'.join(map(str, shape))}, {r.path})"
        if space.kind == "latent":
            t, *latent = _latent_grid(r, shape, where)
        else:
            t = shape[0]
            # The first run's noise grid sizes every run's latents (as before buckets), else the frames.
            grid = tuple(lead[NOISE_KEY][0][2:4]) if NOISE_KEY in lead else ()
            latent = cfg.latent_size or (grid if len(grid) == 2 and None not in grid else (shape[1], shape[2]))
        signature[(run_i, shape_i)] = (t, (int(latent[0]), int(latent[1])))
        if "event_activity" in expected:  # stored at T or T': served at the latents' t either way
            event_grids[(run_i, shape_i)] = (t, *expected["event_activity"][0][1:])
        if NOISE_KEY not in expected:
            reasons.append(f"run {r.path} has no warped_noise")
            continue
        noise = expected[NOISE_KEY][0]  # (T, C, H/f, W/f)
        if tuple(noise[2:4]) != tuple(latent):
            reasons.append(f"noise grid {tuple(noise[2:4])} != latent_size {tuple(latent)} {where}")
        elif noise[1] is None or noise[1] < c:
            reasons.append(f"{noise[1]} noise channels < latent_channels {c} {where}")
        elif noise[0] != t:
            reasons.append(f"noise has {noise[0]} frames, the latents {t} {where}")
    if space.kind == "latent" and reasons:
        # Pixel space falls back to i.i.d. noise; latents whose noise is not on their grid is a broken run.
        raise ValueError(f"latent space needs the warped noise on the latent grid: {'; '.join(dict.fromkeys(reasons))}")
    noise_source = NOISE_KEY if not reasons else "absent: " + "; ".join(dict.fromkeys(reasons))
    events = bool(event_grids)
    text = space.text is not None if cfg.text_embeddings is None else cfg.text_embeddings
    if text and space.text is None:
        raise ValueError("data.text_embeddings is set, but not every run stores text embeddings (text_encoder.*)")

    if cfg.camera_rays and not any({"camera_c2w", "camera_intrinsics"} <= set(r.layout) for r in src.runs):
        raise ValueError(
            "data.camera_rays needs camera_c2w and camera_intrinsics in the shards, and no run stores them "
            "(pipeline: camera.enabled with a flow backend)"
        )

    # Pairs with equal (T, h, w) batch together; then each bucket's event grid.
    keys = sorted(set(signature.values()))
    members = {k: [p for p in pairs if signature[p] == k] for k in keys}
    buckets = []
    for t, latent in keys:
        names = sorted({"x".join(map(str, src.shapes[s])) for _, s in members[(t, latent)]})
        name = "+".join(names)
        grid: tuple[int, ...] | None = None
        if events and cfg.token_grid is not None:
            grid = cfg.token_grid
        elif events and cfg.token_patch is not None:
            grid = _patched((t, *latent), cfg.token_patch, f"bucket {name}")
        elif events:
            stored = {event_grids[p] for p in members[(t, latent)] if p in event_grids}
            if len(stored) != 1 or None in next(iter(stored)):
                found = sorted(str(g) for g in stored) or ["none"]
                raise ValueError(
                    f"bucket {name}: event maps on grids {', '.join(found)}: set data.token_grid or data.token_patch"
                )
            grid = next(iter(stored))
        buckets.append(_Bucket(name, t, latent, tuple(int(g) for g in grid) if grid else None))
    index = {k: i for i, k in enumerate(keys)}
    return _Geometry(
        channels=c,
        noise=not reasons,
        noise_source=noise_source,
        camera=any("camera_tokens" in r.layout for r in src.runs),
        events=events,
        buckets=tuple(buckets),
        bucket_of={p: index[signature[p]] for p in pairs},
        space=space,
        text=text,
        rays=cfg.camera_rays,
    )
