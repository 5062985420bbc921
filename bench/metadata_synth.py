"""Synthesis for bench/metadata_scale.py: a finished run's metadata for N clips, written in batches (never all N rows
in memory). `synthesize` writes the per-input JSON records a run leaves in `_work/` and the packed shards with a
768-d float16 `clip_embedding` and a near-duplicate structure (see bench/metadata_scale.py);
bench/metadata_synth_tables.py writes, column-wise, only what finalize leaves."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from curation.ids import clip_id, shard_name, uri_key  # noqa: E402
from curation.packing import Member, RowGroups, pack_schema, plan_packs  # noqa: E402
from curation.schema import CLIPS, SCHEMA_VERSION, shard_schema  # noqa: E402
from curation.shards import DICTIONARY_COLUMNS  # noqa: E402
from curation.tables import atomic_write_json  # noqa: E402
from pipelines.records import MAX_RECORDS, RECORDS_DIR, BatchWriter  # noqa: E402

OVERRIDES = (  # production defaults, plus a score threshold and the event filter so every curation stage runs
    "dedup.method=approximate",
    "filters.min.sharpness=20.0",
    "events.top_fraction=0.9",
)
TOPIC_DIMS = 48  # the embeddings' topic subspace (bench/dedup_scale.py)
TABLE_OVERRIDES = ("dedup.method=approximate",)  # --tables-only: the rejections are synthesised, not decided
FRAMES = 3  # key frames hashed per clip (quality.hash_frames)
VIDEO_BLOCK = 2048  # videos synthesised at a time
BYTES_PER_CLIP = 3072  # what the plan assumes a member file holds per clip (scalars + embedding)
BENCH_DIR = "_bench"
RANK_COLUMNS = ("clip_id", "key_frame_hashes", "aesthetic_score", "width", "height", "start_s", "end_s", "sharpness")


def run_config(overrides: tuple[str, ...] = ()) -> Any:
    from pipelines.config import load_config

    return load_config(None, overrides or OVERRIDES)


# --- synthesis ------------------------------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flip_bits(rng: np.random.Generator, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`values` (m,) uint64 with `counts` (m,) distinct random bits flipped."""
    chosen = np.argsort(rng.random((len(values), 64)), axis=1) < counts[:, None]
    masks = (chosen.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return values ^ masks


def near(rng: np.random.Generator, x: np.ndarray, cosine: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Unit rows at exactly `cosine` to the unit rows `x`, the offset half in the topic subspace, half isotropic
    (as bench/dedup_scale.py makes them)."""
    v = unit(rng.standard_normal((len(x), basis.shape[1])).astype(np.float32) @ basis.T)
    v = v + unit(rng.standard_normal(x.shape).astype(np.float32))
    v -= np.einsum("ij,ij->i", v, x)[:, None] * x
    return cosine[:, None] * x + np.sqrt(1 - cosine**2)[:, None] * unit(v)


def synth_clips(
    rng: np.random.Generator, video: np.ndarray, mean: np.ndarray, basis: np.ndarray
) -> dict[str, np.ndarray]:
    """Hashes (n, FRAMES) uint64 (0 = no hash), embeddings (n, dim) float16 and the group of each clip (-1: none,
    with `first` marking the clip the others copy) for one block of clips (`video`: each clip's video in the block);
    groups never leave the block. Embeddings as bench/dedup_scale.py makes them: CLIP's cone (`mean`), a topic
    shared by a video's clips (`basis`), and isotropic noise: unrelated clips at cosine ~0.5."""
    n, dim = len(video), len(mean)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, (n, FRAMES), np.uint64, endpoint=True)
    topics = rng.standard_normal((int(video.max()) + 1, basis.shape[1])).astype(np.float32)[video]
    topics += 0.5 * rng.standard_normal(topics.shape).astype(np.float32)
    noise = unit(rng.standard_normal((n, dim)).astype(np.float32))
    emb = unit(0.7 * mean + 0.6 * unit(topics @ basis.T) + 0.4 * noise)
    group = np.full(n, -1, np.int64)
    first = np.zeros(n, bool)
    perm = rng.permutation(n)
    sizes = rng.integers(2, 5, max(1, int(0.04 * n / 3)))
    sizes = sizes[np.cumsum(sizes) <= n]
    kinds = rng.integers(0, 3, len(sizes))  # 0: hash copies, 1: embedding copies, 2: both
    at = 0
    for g, (size, kind) in enumerate(zip(sizes, kinds, strict=True)):
        members = perm[at : at + size]
        at += size
        base, copies = members[0], members[1:]
        group[members], first[base] = g, True
        m = len(copies)
        if kind in (0, 2):
            for f in range(FRAMES):
                hashes[copies, f] = flip_bits(rng, np.repeat(hashes[base, f], m), rng.integers(0, 4, m))
        cosine = rng.uniform(0.90, 0.94, m) if kind == 0 else rng.uniform(0.99, 0.998, m)
        emb[copies] = near(rng, np.repeat(emb[base][None], m, axis=0), cosine.astype(np.float32), basis)
    flat = (rng.random((n, FRAMES)) < 0.01) & (group[:, None] < 0)  # flat key frames: no hash
    hashes[flat] = 0
    return {"hashes": hashes, "emb": emb.astype(np.float16), "group": group, "first": first}


def video_plan(n_clips: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Clips per video (1-15, summing to n_clips) and the video ids, in input (sorted URI) order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 16, n_clips // 4 + 16)
    counts = counts[: int(np.searchsorted(np.cumsum(counts), n_clips)) + 1]
    counts[-1] -= int(counts.sum()) - n_clips
    counts = counts[counts > 0]
    ids = [hashlib.blake2b(f"bench-video-{i}".encode(), digest_size=8).hexdigest() for i in range(len(counts))]
    return counts, ids


class RecordSink:
    """Writes each video's records as a run leaves them when finalize starts: in batch files, in input order, as the
    driver's compactions during the run write them (`pipelines.compaction`), except the last `small` videos' (those
    finished since the last compaction), which are still small files. small < 0: every record a small file (the
    layout of runs before compaction during the run)."""

    def __init__(self, work: Path, n_videos: int, small: int) -> None:
        self.work, self.first_small = work, 0 if small < 0 else max(0, n_videos - small)
        self.batches: dict[str, BatchWriter] = {}

    def add(self, video: int, step: str, key: str, record: dict[str, Any]) -> None:
        if video >= self.first_small:
            _dump(self.work / step / f"{key}.json", record)
            return
        batch = self.batches.get(step)
        if batch is not None and len(batch.keys) >= MAX_RECORDS:
            batch.publish()
            batch = None
        if batch is None:
            batch = self.batches[step] = BatchWriter(self.work / step / RECORDS_DIR)
        # the line compaction writes for the small file `_dump` would write (`compaction.record_line`): keys sorted
        line = json.dumps({"key": key, "record": record}, sort_keys=True, separators=(",", ":"), default=str)
        batch.add(key, line.encode() + b"\n")

    def close(self) -> None:
        for batch in self.batches.values():
            batch.publish()
        self.batches = {}


def synthesize(run_dir: Path, n_clips: int, dim: int, seed: int, small_records: int = -1) -> dict[str, Any]:
    """Write the run directory: records (see `RecordSink` for small_records), packed shards, the truth table.
    Returns counts."""
    cfg = run_config()
    counts, video_ids = video_plan(n_clips, seed)
    sink = RecordSink(run_dir / "_work", len(counts), small_records)
    members = [
        Member(shard_name(v, 0), int(c), int(c) * BYTES_PER_CLIP) for v, c in zip(video_ids, counts, strict=True)
    ]
    plan = plan_packs(members, cfg.shards.target_mb, cfg.shards.pack_max_rows)
    buckets = [tuple(int(x) for x in b.split("x")) for b in _buckets(cfg)]
    shard_dir = run_dir / "shards"
    shard_dir.mkdir(parents=True)
    for step in ("ingest", "scenes", "clips"):
        (run_dir / "_work" / step).mkdir(parents=True)
    (run_dir / BENCH_DIR).mkdir()
    tensors = ["clip_embedding"] if dim else []
    schema = shard_schema(tensors)
    rng = np.random.default_rng(seed + 1)
    mean = unit(rng.standard_normal((1, max(dim, 8))).astype(np.float32))[0]
    basis = np.linalg.qr(rng.standard_normal((max(dim, 8), min(TOPIC_DIMS, max(dim, 8)))))[0].astype(np.float32)
    truth_schema = pa.schema([*(CLIPS.field(c) for c in RANK_COLUMNS), ("group", pa.int64()), ("first", pa.bool_())])
    truth = pq.ParquetWriter(run_dir / BENCH_DIR / "clips.parquet", truth_schema)
    video_at, group_base, inputs = 0, 0, []
    for name, pack_members in plan.packs:
        writer = _pack_writer(shard_dir / name, schema, pack_members)
        row_groups = RowGroups(writer, cfg.shards.row_group_mb)
        for start in range(0, len(pack_members), VIDEO_BLOCK):
            block = range(video_at + start, video_at + min(len(pack_members), start + VIDEO_BLOCK))
            rows, synth = _write_block(sink, block, counts, video_ids, rng, dim, (mean, basis), buckets, inputs)
            groups = np.where(synth["group"] >= 0, synth["group"] + group_base, -1)
            group_base = int(groups.max(initial=group_base - 1)) + 1
            truth_cols = {**{c: rows[c] for c in RANK_COLUMNS}, "group": groups, "first": synth["first"]}
            truth.write_table(pa.Table.from_pydict(truth_cols, schema=truth_schema))
            table = pa.Table.from_pydict({f.name: rows.get(f.name) for f in schema}, schema=schema)
            offsets = np.concatenate([[0], np.cumsum(counts[list(block)])])
            for i in range(len(block)):  # member by member into row groups, as write_pack coalesces them
                row_groups.write(table.slice(int(offsets[i]), int(offsets[i + 1] - offsets[i])))
            _check_disk(run_dir)
        row_groups.close()
        writer.close()
        video_at += len(pack_members)
    truth.close()
    sink.close()
    atomic_write_json(inputs, run_dir / BENCH_DIR / "inputs.json")
    return {"videos": len(counts), "clips": int(counts.sum()), "packs": len(plan.packs)}


def _buckets(cfg: Any) -> list[str]:
    from pipelines.manifest_blocks import buckets_block

    return buckets_block(cfg)["buckets"]


def quality_scores(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """n clips' quality columns, drawn in this order (the dict keeps it, so callers' draws stay reproducible)."""
    return {
        "sharpness": rng.lognormal(4.5, 0.8, n),
        "brightness": rng.uniform(0.1, 0.9, n),
        "contrast": rng.uniform(0.05, 0.35, n),
        "colorfulness": rng.gamma(2.0, 15.0, n),
        "clipped_dark": rng.beta(1, 30, n),
        "clipped_bright": rng.beta(1, 40, n),
    }


def _write_block(
    sink: RecordSink,
    videos: range,
    counts: np.ndarray,
    video_ids: list[str],
    rng: np.random.Generator,
    dim: int,
    space: tuple[np.ndarray, np.ndarray],
    buckets: list[tuple[int, int, int]],
    inputs: list[dict],
) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """Records of a block of videos, and the shard columns of their clips (as lists, in row order)."""
    per_video = counts[list(videos)]
    n = int(per_video.sum())
    synth = synth_clips(rng, np.repeat(np.arange(len(per_video)), per_video), *space)
    fps = rng.choice([24.0, 25.0, 30.0, 60.0], len(videos))
    r = {  # per-clip scores, vectorised
        **quality_scores(rng, n),
        "motion_mean": rng.gamma(2.0, 0.01, n),
        "motion_residual": rng.gamma(2.0, 0.004, n),
        "event_score": rng.gamma(2.0, 0.02, n),
        "event_confidence": rng.uniform(0, 1, n),
        "event_entropy": rng.uniform(0.2, 1, n),
        "event_gini": rng.uniform(0, 0.8, n),
        "aesthetic_score": rng.normal(5.0, 0.8, n),
        "camera_confidence": rng.uniform(0, 1, n),
        "qcm_token": rng.integers(0, 81, n),
        "bucket": rng.integers(0, len(buckets), n),
        "length": rng.integers(30, 300, n),
    }
    cols: dict[str, list] = {f.name: [] for f in shard_schema(["clip_embedding"])}
    cols.update({c: [] for c in RANK_COLUMNS})  # for `_bench/clips.parquet`
    k = 0
    for j, v in enumerate(videos):
        vid, c = video_ids[v], int(counts[v])
        uri = f"s3://bench-corpus/videos/{v:09d}.mp4"
        key = uri_key(uri)
        inputs.append({"source_uri": uri, "key": key})
        f = float(fps[j])
        spans, clips, scenes = [], [], []
        frame = 0
        for i in range(c):
            a, length = frame + 2, int(r["length"][k + i])
            b = a + length
            scenes.append({"scene_index": i, "start_frame": frame, "end_frame": b + 2, "start_s": frame / f,
                           "end_s": (b + 2) / f, "transition": "start" if i == 0 else "cut"})  # fmt: skip
            spans.append({"scene_index": i, "start_frame": a, "end_frame": b, "start_s": a / f, "end_s": b / f})
            frame = b + 2
        n_frames = frame + int(rng.integers(0, 60))
        video = {"video_id": vid, "source_uri": uri, "decoder": "decord", "n_frames": n_frames, "fps": f,
                 "width": 1920, "height": 1080, "duration_s": n_frames / f, "rotation": 0, "codec": "h264",
                 "container": "mov,mp4,m4a,3gp,3g2,mj2", "vfr": False, "file_bytes": n_frames * 40_000,
                 "error": None}  # fmt: skip
        for i, span in enumerate(spans):
            x = k + i
            t, h, w = buckets[int(r["bucket"][x])]
            stride = max(1, round(f / 8.0))
            indices = [span["start_frame"] + stride * q for q in range(t)]
            hashes = [None if not hv else f"{int(hv):016x}" for hv in synth["hashes"][x]]
            token = int(r["qcm_token"][x])
            row = {
                "clip_id": clip_id(vid, span["start_frame"], span["end_frame"]),
                "video_id": vid, "source_uri": uri, "scene_index": i,
                "start_frame": span["start_frame"], "end_frame": span["end_frame"],
                "start_s": span["start_s"], "end_s": span["end_s"], "fps": f, "width": 1920, "height": 1080,
                "num_frames": t, "frame_stride": stride, "bucket": f"{t}x{h}x{w}", "crop_fraction": 0.0,
                "frame_height": h, "frame_width": w, "shard": shard_name(vid, 0), "shard_row": i,
                "flow_backend": "dis/medium", "motion_mean": float(r["motion_mean"][x]),
                "motion_p90": float(r["motion_mean"][x] * 2.2), "motion_residual": float(r["motion_residual"][x]),
                "qcm_keys": "WAS D"[token % 5].strip() or "none", "qcm_mouse": "none", "qcm_token": token,
                "camera_text": f"camera token {token}", "camera_confidence": float(r["camera_confidence"][x]),
                "camera_static": token == 0,
                "qcm_segments": [{"start_step": 0, "end_step": t - 1, "token": token}],
                "event_score": float(r["event_score"][x]), "event_confidence": float(r["event_confidence"][x]),
                "event_entropy": float(r["event_entropy"][x]), "event_gini": float(r["event_gini"][x]),
                "event_diffuse": bool(r["event_entropy"][x] > 0.9),
                "event_start_frame": span["start_frame"], "event_end_frame": span["end_frame"],
                "sharpness": float(r["sharpness"][x]), "brightness": float(r["brightness"][x]),
                "contrast": float(r["contrast"][x]), "colorfulness": float(r["colorfulness"][x]),
                "clipped_dark": float(r["clipped_dark"][x]), "clipped_bright": float(r["clipped_bright"][x]),
                "key_frame_hashes": hashes,
                "aesthetic_score": float(r["aesthetic_score"][x]), "aesthetic_backend": "open_clip:ViT-L-14+laion",
                "caption": f"A synthetic clip {x} of video {v}, with a person walking through a market at dusk.",
                "caption_model": "bench", "caption_prompt_version": "1", "caption_truncated": False,
            }  # fmt: skip
            clips.append(row)
            shard_row = {
                **row,
                "frame_indices": indices,
                "frame_pts": [q / f for q in indices],
                "noise_seed": x,
                "noise_warper_version": "1",
            }
            if dim:
                shard_row.update(
                    clip_embedding=synth["emb"][x].tobytes(), clip_embedding_dtype="<f2", clip_embedding_shape=[dim]
                )
            for name, values in cols.items():
                values.append(shard_row.get(name))

        k += c
        timing = {"start": 0.0, "end": 1.0, "node": "bench"}
        base = {"seconds": 0.5, "timing": timing, "attempts": 1}
        sink.add(v, "ingest", key, {**video, **base})
        sink.add(v, "scenes", key, {"scenes": scenes, "spans": spans, "rejected": [], **base})
        shards = [{"name": shard_name(vid, 0), "rows": c, "bytes": c * BYTES_PER_CLIP, "video_id": vid}]
        record = {"clips": clips, "rejected": [], "shards": shards, "annotator_seconds": {"quality": 0.1}, **base}
        sink.add(v, "clips", key, record)
    return cols, synth


# Synthesis stops before the disk (shared with others) gets this full. 1 GB, not more: a CI machine with a few
# GB free must still run the 2,000-clip test (about 14 MB); the 10 M-clip runs stop here instead of filling it.
MIN_FREE_GB = 1.0


def write_complete_run_json(run_dir: Path, cfg: Any, inputs: list[dict], counts: dict, **more: Any) -> None:
    """The `_run.json` of a finished `--stage all` run (what the readers check), with `more` keys on top."""
    from pipelines.report import inputs_hash, write_run_json

    payload = {
        "status": "complete",
        "stage": "all",
        "schema_version": SCHEMA_VERSION,
        "inputs": len(inputs),
        "inputs_hash": inputs_hash(inputs),
        "config": cfg.to_dict(),
        "config_hash": cfg.content_hash(),
        "counts": counts,
        "worker_seconds": {},
        "wall_seconds": {},
    }
    write_run_json(run_dir, {**payload, **more})


def _pack_writer(path: Path, schema: pa.Schema, members: list[Member]) -> pq.ParquetWriter:
    """A pack file as `curation.packing.write_pack` writes one: the member list in its metadata, zstd level 1."""
    return pq.ParquetWriter(
        path,
        pack_schema(schema, members),
        compression="zstd",
        compression_level=1,
        use_dictionary=list(DICTIONARY_COLUMNS),
    )


def _check_disk(path: Path) -> None:
    free = shutil.disk_usage(path).free / 2**30
    if free < MIN_FREE_GB:
        raise OSError(f"only {free:.1f} GB left on the disk of {path}: synthesis stopped (MIN_FREE_GB)")


def _typed(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from arrays or numpy columns (cast to the field's type); missing columns are null."""
    n = len(next(iter(columns.values())))
    arrays = []
    for field in schema:
        value = columns.get(field.name)
        if value is None:
            arrays.append(pa.nulls(n, field.type))
        elif isinstance(value, pa.Array | pa.ChunkedArray):
            arrays.append(value.cast(field.type))
        else:
            arrays.append(pa.array(value).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))  # as atomic_write_json lays it out
