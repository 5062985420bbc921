"""Opening a source (a run or a snapshot directory): its shards, the curated rows grouped into row-group units,
each run's tensor layout, and the batch geometry that follows from the manifests."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.shards import read_manifest
from curation.snapshot import CLIPS_FILE, SNAPSHOT_FILE, load_snapshot, verify_snapshot
from training.data.config import NOISE_KEY, DataConfig

logger = logging.getLogger(__name__)


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
        raise ValueError(
            f"{run_dir}: the manifest lists no frames tensor (a frames.store=none run keeps annotations only); the "
            "loader needs frames"
        )
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
