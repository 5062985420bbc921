"""`synthesize_tables` for bench/metadata_scale.py --tables-only: the run directory as finalize leaves it (tables,
packs without embeddings, manifest, _run.json), synthesised column-wise in blocks, with no per-input records and no
embeddings: for the steps after finalize at sizes whose records would not fit on the disk."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling (which puts the repo on the path too)
from metadata_synth import (  # noqa: E402
    BYTES_PER_CLIP,
    FRAMES,
    TABLE_OVERRIDES,
    VIDEO_BLOCK,
    _buckets,
    _check_disk,
    _pack_writer,
    _typed,
    flip_bits,
    quality_scores,
    run_config,
    video_plan,
    write_complete_run_json,
)

from curation.ids import shard_name  # noqa: E402
from curation.packing import Member, RowGroups, plan_packs  # noqa: E402
from curation.schema import CLIPS, shard_schema  # noqa: E402


def _hex_ids(index: np.ndarray, salt: int) -> list[str]:
    """16-hex ids of the clip indices (splitmix64): unique and fast, where the records' blake2b ids are not needed."""
    x = index.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return [f"{v:016x}" for v in x.tolist()]


def _lists(values: np.ndarray, lengths: np.ndarray, kind: pa.DataType) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, kind))


def synthesize_tables(run_dir: Path, n_clips: int, seed: int, pack_rows: int = 0) -> dict[str, Any]:
    """The run directory as finalize leaves it (videos, scenes, clips, rejected tables, packed shards without
    embeddings, manifest, _run.json) for n clips, column-wise in blocks: for the steps after finalize at sizes whose
    per-input records would not fit on the disk. About 4% of clips are in near-duplicate groups whose non-first
    members are `dedup` rejections (the clips table leaves them out); no score threshold, no event filter."""
    from curation.packing import PackFile
    from curation.schema import SCENES, TABLES, VIDEOS
    from curation.shards import write_manifest
    from pipelines.manifest_blocks import manifest_extra

    cfg = run_config(TABLE_OVERRIDES)
    counts, video_ids = video_plan(n_clips, seed)
    pairs = zip(video_ids, counts, strict=True)
    members = [Member(shard_name(v, 0), int(c), int(c) * BYTES_PER_CLIP) for v, c in pairs]
    plan = plan_packs(members, cfg.shards.target_mb, cfg.shards.pack_max_rows)
    buckets = _buckets(cfg)
    shard_dir = run_dir / "shards"
    shard_dir.mkdir(parents=True)
    schema = shard_schema([])
    tables = {}
    for name in ("videos", "scenes", "clips", "rejected"):
        (run_dir / name).mkdir()
        tables[name] = pq.ParquetWriter(run_dir / name / f"{name}.parquet", TABLES[name], compression="zstd")
    rng = np.random.default_rng(seed + 1)
    video_at, clip_at, packs, kept_total, dropped_total = 0, 0, [], 0, 0
    uris_digest = []  # inputs_hash needs every URI: kept as a list of the block prefixes' strings
    for name, pack_members in plan.packs:
        writer = _pack_writer(shard_dir / name, schema, pack_members)
        row_groups = RowGroups(writer, cfg.shards.row_group_mb)
        pack_row = 0
        for start in range(0, len(pack_members), 8 * VIDEO_BLOCK):
            stop = min(len(pack_members), start + 8 * VIDEO_BLOCK)
            v = np.arange(video_at + start, video_at + stop)
            per = counts[v]
            n = int(per.sum())
            video = np.repeat(v, per)
            first_of = np.repeat(np.cumsum(per) - per, per)
            scene = np.arange(n) - first_of
            length = rng.integers(30, 300, n)
            ends = np.cumsum(length + 4)
            base = np.repeat(np.concatenate([[0], ends])[np.cumsum(per) - per], per)
            start_frame = ends - length - 2 - base
            end_frame = start_frame + length
            fps_v = rng.choice([24.0, 25.0, 30.0, 60.0], len(v))
            fps = np.repeat(fps_v, per)
            vids = [video_ids[i] for i in v.tolist()]
            uris = [f"s3://bench-corpus/videos/{i:09d}.mp4" for i in v.tolist()]
            uris_digest.extend(uris)
            vid_col = pa.array(vids, pa.string()).take(pa.array(video - v[0]))
            uri_col = pa.array(uris, pa.string()).take(pa.array(video - v[0]))
            ids = _hex_ids(np.arange(clip_at, clip_at + n), seed)
            bucket = rng.integers(0, len(buckets), n)
            shape = np.array([[int(x) for x in b.split("x")] for b in buckets])[bucket]
            stride = np.maximum(1, np.round(fps / 8.0)).astype(np.int64)
            t = shape[:, 0]
            indices = np.repeat(start_frame, t) + np.repeat(stride, t) * (
                np.arange(int(t.sum())) - np.repeat(np.cumsum(t) - t, t)
            )
            token = rng.integers(0, 81, n)
            motion = rng.gamma(2.0, 0.01, n)
            entropy = rng.uniform(0.2, 1, n)
            hashes = rng.integers(0, np.iinfo(np.uint64).max, (n, FRAMES), np.uint64, endpoint=True)
            # near-duplicates: groups of 2-4 consecutive clips of a permutation; all but the first are dropped
            perm = rng.permutation(n)
            sizes = rng.integers(2, 5, max(1, int(0.04 * n / 3)))
            sizes = sizes[np.cumsum(sizes) <= n]
            group_first = perm[np.repeat(np.cumsum(sizes) - sizes, sizes)]
            in_group = perm[: int(sizes.sum())]
            dropped = in_group[in_group != group_first]
            keeper = group_first[in_group != group_first]
            for f in range(FRAMES):
                hashes[dropped, f] = flip_bits(rng, hashes[keeper, f], rng.integers(0, 4, len(dropped)))
            common = {
                "clip_id": pa.array(ids, pa.string()),
                "video_id": vid_col,
                "source_uri": uri_col,
                "scene_index": scene,
                "start_frame": start_frame,
                "end_frame": end_frame,
                "start_s": start_frame / fps,
                "end_s": end_frame / fps,
                "fps": fps,
                "bucket": pa.array(buckets, pa.string()).take(pa.array(bucket)),
                "crop_fraction": np.zeros(n),
                "frame_height": shape[:, 1],
                "frame_width": shape[:, 2],
                "flow_backend": pa.array(["dis/medium"] * n, pa.string()),
                "motion_mean": motion,
                "motion_p90": motion * 2.2,
                "motion_residual": rng.gamma(2.0, 0.004, n),
                "qcm_keys": pa.array(["none", "W", "S", "A", "D"], pa.string()).take(pa.array(token % 5)),
                "qcm_mouse": pa.array(["none"] * n, pa.string()),
                "qcm_token": token,
                "camera_text": pa.array([f"camera token {x}" for x in token.tolist()], pa.string()),
                "camera_confidence": rng.uniform(0, 1, n),
                "camera_static": token == 0,
                "event_score": rng.gamma(2.0, 0.02, n),
                "event_confidence": rng.uniform(0, 1, n),
                "event_entropy": entropy,
                "event_gini": rng.uniform(0, 0.8, n),
                "event_diffuse": entropy > 0.9,
                "event_start_frame": start_frame,
                "event_end_frame": end_frame,
                **quality_scores(rng, n),
                "aesthetic_score": rng.normal(5.0, 0.8, n),
                "aesthetic_backend": pa.array(["open_clip:ViT-L-14+laion"] * n, pa.string()),
                "caption": pa.array(
                    [
                        f"A synthetic clip {i}, a person walking through a market at dusk."
                        for i in range(clip_at, clip_at + n)
                    ],
                    pa.string(),
                ),  # fmt: skip
                "caption_model": pa.array(["bench"] * n, pa.string()),
                "caption_prompt_version": pa.array(["1"] * n, pa.string()),
                "caption_truncated": np.zeros(n, bool),
            }
            shard_cols = {
                **common,
                "frame_indices": _lists(indices, t, pa.int64()),
                "frame_pts": _lists(indices / np.repeat(fps, t), t, pa.float64()),
                "noise_seed": np.arange(clip_at, clip_at + n),
                "noise_warper_version": pa.array(["1"] * n, pa.string()),
            }
            shard_table = _typed(shard_cols, schema)
            if pack_rows:  # a fixed layout (--pack-rows), to compare with
                writer.write_table(shard_table, row_group_size=pack_rows)
            else:  # member by member into row groups, as write_pack coalesces them
                for first, rows in zip((np.cumsum(per) - per).tolist(), per.tolist(), strict=True):
                    row_groups.write(shard_table.slice(first, rows))
            _check_disk(run_dir)
            hex_hashes = [f"{x:016x}" for x in hashes.ravel().tolist()]
            keep = np.ones(n, bool)
            keep[dropped] = False
            clip_cols = {
                **common,
                "width": np.full(n, 1920),
                "height": np.full(n, 1080),
                "num_frames": t,
                "frame_stride": stride,
                "shard": pa.array([name] * n, pa.string()),
                "shard_row": pack_row + np.arange(n),
                "qcm_segments": pa.array(
                    [
                        [{"start_step": 0, "end_step": int(a) - 1, "token": int(b)}]
                        for a, b in zip(t, token, strict=True)
                    ],
                    CLIPS.field("qcm_segments").type,
                ),
                "key_frame_hashes": _lists(np.array(hex_hashes, object), np.full(n, FRAMES), pa.string()),
            }
            tables["clips"].write_table(_typed(clip_cols, CLIPS).filter(pa.array(keep)))
            tables["rejected"].write_table(
                _typed(
                    {
                        "stage": pa.array(["dedup"] * len(dropped), pa.string()),
                        "source_uri": uri_col.take(pa.array(dropped)),
                        "video_id": vid_col.take(pa.array(dropped)),
                        "clip_id": pa.array([ids[i] for i in dropped.tolist()], pa.string()),
                        "start_frame": start_frame[dropped],
                        "end_frame": end_frame[dropped],
                        "reason": pa.array(["duplicate"] * len(dropped), pa.string()),
                        "detail": pa.array(
                            [f"{ids[k]} (frames); key-frame hash distance 2.0/64 bits" for k in keeper.tolist()],
                            pa.string(),
                        ),
                    },
                    TABLES["rejected"],
                )
            )
            scenes = {
                "video_id": vid_col,
                "source_uri": uri_col,
                "scene_index": scene,
                "start_frame": start_frame - 2,
                "end_frame": end_frame + 2,
                "start_s": (start_frame - 2) / fps,
                "end_s": (end_frame + 2) / fps,
                "transition": pa.array(np.where(scene == 0, "start", "cut").tolist(), pa.string()),
            }
            tables["scenes"].write_table(_typed(scenes, SCENES))
            frames_v = np.bincount(video - v[0], weights=length + 4, minlength=len(v)).astype(np.int64) + 30
            videos = {
                "video_id": pa.array(vids, pa.string()),
                "source_uri": pa.array(uris, pa.string()),
                "decoder": pa.array(["decord"] * len(v), pa.string()),
                "n_frames": frames_v,
                "fps": fps_v,
                "width": np.full(len(v), 1920),
                "height": np.full(len(v), 1080),
                "duration_s": frames_v / fps_v,
                "rotation": np.zeros(len(v), np.int16),
                "codec": pa.array(["h264"] * len(v), pa.string()),
                "container": pa.array(["mov,mp4,m4a,3gp,3g2,mj2"] * len(v), pa.string()),
                "vfr": np.zeros(len(v), bool),
                "file_bytes": frames_v * 40_000,
            }
            tables["videos"].write_table(_typed(videos, VIDEOS))
            pack_row += n
            clip_at += n
            kept_total += int(keep.sum())
            dropped_total += len(dropped)
        row_groups.close()
        writer.close()
        packs.append(PackFile(name, pack_row, (shard_dir / name).stat().st_size, len(pack_members)))
        video_at += len(pack_members)
    for writer in tables.values():
        writer.close()
    extra = manifest_extra(cfg)
    extra["tensors"] = {"frames": extra["tensors"]["frames"]}  # what the manifest declares; no bytes
    extra["curation"] = {"clips_before": clip_at, "dedup": {"excluded": dropped_total}, "clips_after": kept_total}
    write_manifest(run_dir, packs, cfg.content_hash(), extra)
    inputs = [{"source_uri": u} for u in uris_digest]
    counts_block = {"videos": len(counts), "clips": kept_total, "rejected": dropped_total}
    write_complete_run_json(run_dir, cfg, inputs, counts_block)
    return {"videos": len(counts), "clips": clip_at, "curated": kept_total, "packs": len(packs)}
