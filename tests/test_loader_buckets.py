"""The training loader on a bucketed run (tests/conftest.py `bucketed_run`: clips of several (T, H, W) shapes):
every batch is one bucket, per-bucket geometry, coverage, exact resume across buckets, DDP balance (in process) and
the plan's properties on synthetic buckets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import torch

from curation.buckets import Bucket
from curation.shards import iter_clips
from tests.test_loader import assert_same_batches, take
from training.data import DataConfig, _plan, _Source, _Unit, make_loader
from training.data.order import bucket_sizes
from training.data.source import resolve_dims

NOISE_FACTOR, EVENT_CELL = 8, 16  # the smoke preset's [noise] factor and [events] cell


def clip_buckets(run: Path) -> dict[str, str]:
    rows = duckdb.sql(f"SELECT clip_id, bucket FROM read_parquet('{run}/clips/*.parquet')").fetchall()
    return dict(rows)


def test_every_batch_is_one_bucket_at_its_own_geometry(bucketed_run: Path) -> None:
    buckets = clip_buckets(bucketed_run)
    clips = {c["clip_id"]: c for c in iter_clips(bucketed_run)}
    seen: list[str] = []
    sequence: list[str] = []
    with make_loader(DataConfig(source=str(bucketed_run), batch_size=2, drop_last=False)) as loader:
        assert len(loader.geo.buckets) == len(set(buckets.values())) >= 2
        for batch in loader:
            shape = Bucket.parse(batch["bucket"])
            t, h, w = shape.num_frames, shape.height // NOISE_FACTOR, shape.width // NOISE_FACTOR
            assert {buckets[c] for c in batch["clip_id"]} == {batch["bucket"]}  # single-bucket batch
            b = len(batch["clip_id"])
            assert batch["latents"].shape == (b, 3, t, h, w) and batch["noise"].shape == (b, 3, t, h, w)
            assert batch["camera_tokens"].shape == (b, t - 1)
            assert batch["event_activity"].shape == (b, t, shape.height // EVENT_CELL, shape.width // EVENT_CELL)
            for i, clip_id in enumerate(batch["clip_id"]):  # against an independent decode of the stored row
                clip = clips[clip_id]
                frames = clip["frames"].astype(np.float64)  # (T, H, W, 3) -> 8x8 box average
                pooled = frames.reshape(t, h, 8, w, 8, 3).mean(axis=(2, 4)).transpose(3, 0, 1, 2)
                np.testing.assert_allclose(batch["latents"][i].numpy(), pooled / 127.5 - 1, atol=1e-5)
                noise = clip["warped_noise"][:, :3].astype(np.float32).transpose(1, 0, 2, 3)
                np.testing.assert_array_equal(batch["noise"][i].numpy(), noise)
                np.testing.assert_array_equal(batch["event_activity"][i].numpy(), clip["event_activity"])
            seen += batch["clip_id"]
            sequence.append(batch["bucket"])
    assert sorted(seen) == sorted(buckets)  # one epoch, world 1, no drop: every clip exactly once
    assert loader.stats.batches_per_bucket == {k: sequence.count(k) for k in set(sequence)}
    # The (bucket, batch) list is shuffled: the buckets interleave instead of coming one after the other.
    runs = sum(1 for a, b in zip(sequence, sequence[1:], strict=False) if a != b) + 1
    assert runs > len(set(sequence))


def test_order_shuffles_within_buckets_by_seed_and_epoch(bucketed_run: Path) -> None:
    cfg = DataConfig(source=str(bucketed_run), batch_size=2, shuffle_buffer=8)

    def epochs(c: DataConfig, n: int = 2) -> list[list[tuple[str, tuple[str, ...]]]]:
        with make_loader(c) as loader:
            return [[(b["bucket"], tuple(b["clip_id"])) for b in loader] for _ in range(n)]

    a = epochs(cfg)
    assert a == epochs(dataclasses.replace(cfg, num_workers=0))  # threads never change the order
    assert a[0] != a[1]  # each epoch its own order
    assert a[0] != epochs(dataclasses.replace(cfg, seed=1), 1)[0]
    # Within a bucket the clips come in another order than the source's.
    unshuffled = epochs(dataclasses.replace(cfg, shuffle_buffer=0), 1)[0]
    by_bucket = lambda batches: {k: [c for b, ids in batches if b == k for c in ids] for k, _ in batches}  # noqa: E731
    assert by_bucket(a[0]) != by_bucket(unshuffled)
    assert [b for b, _ in unshuffled] == sorted((b for b, _ in unshuffled), key=lambda n: Bucket.parse(n))


def test_resume_across_buckets_gives_the_uninterrupted_batches(bucketed_run: Path) -> None:
    cfg = DataConfig(source=str(bucketed_run), batch_size=2, shuffle_buffer=8)
    with make_loader(cfg) as loader:
        per_epoch = loader.num_batches
        reference = take(loader.batches(), 2 * per_epoch + 3)
    assert len({b["bucket"] for b in reference}) >= 2
    for consumed in (3, per_epoch - 1, per_epoch, per_epoch + 5):  # mid-epoch, last batch, boundary, next epoch
        with make_loader(cfg) as first:
            take(first.batches(), consumed)
            state = json.loads(json.dumps(first.state_dict()))
        assert state["buckets"] == [b.name for b in first.geo.buckets]
        with make_loader(dataclasses.replace(cfg, num_workers=0)) as resumed:
            resumed.load_state_dict(state)
            rest = take(resumed.batches(), len(reference) - consumed)
        assert [b["bucket"] for b in rest] == [b["bucket"] for b in reference[consumed:]]
        assert_same_batches(rest, reference[consumed:])
    # A resume needs the same batch shapes: another latent size merges the buckets differently.
    merged = dataclasses.replace(cfg, latent_size=(4, 4), token_grid=(1, 2, 2))  # buckets of equal T merge
    with make_loader(merged) as other, pytest.raises(ValueError, match="buckets"):
        other.load_state_dict(state)


def test_ranks_get_equal_batches_of_the_same_buckets(bucketed_run: Path) -> None:
    buckets = clip_buckets(bucketed_run)
    for world in (2, 3):
        ranks: list[list[dict[str, Any]]] = []
        padded = 0
        for rank in range(world):
            cfg = DataConfig(source=str(bucketed_run), batch_size=2, drop_last=False, shuffle_buffer=8)
            with make_loader(cfg, rank, world) as loader:
                ranks.append(list(loader))
                padded += loader.stats.padded_samples
        # Balanced: the same number of batches, and step by step the same bucket (and so the same shapes).
        assert len({len(r) for r in ranks}) == 1
        for step in zip(*ranks, strict=True):
            assert len({b["bucket"] for b in step}) == 1
            assert len({tuple(b["latents"].shape[2:]) for b in step}) == 1
        ids = [[c for b in r for c in b["clip_id"]] for r in ranks]
        assert set().union(*ids) == set(buckets)  # together, the whole epoch
        assert sum(len(x) for x in ids) == len(buckets) + padded  # only padding repeats a clip
        for r in ranks:
            for b in r:
                assert {buckets[c] for c in b["clip_id"]} == {b["bucket"]}


def test_plan_partitions_buckets_into_balanced_single_bucket_batches() -> None:
    """The plan alone, on synthetic buckets of unequal sizes: per rank the same batches per bucket in the same
    bucket sequence, every batch from one bucket, non-padded samples disjoint and complete."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 6, size=30)
    unit_bucket = rng.integers(0, 4, size=30)
    units = [_Unit(0, g, tuple(range(k)), tuple(f"{g}-{i}" for i in range(k))) for g, k in enumerate(sizes)]
    src = _Source("run", Path("."), [], [], units, "", 0)
    per_bucket = np.bincount(unit_bucket, weights=sizes).astype(int)
    for world, drop_last in ((1, True), (2, False), (3, True), (5, False)):
        cfg = DataConfig(shuffle_buffer=6, seed=2, batch_size=3, drop_last=drop_last)
        expected = bucket_sizes(src, cfg, world, unit_bucket)
        own: list[list[str]] = []
        sequences = []
        for rank in range(world):
            plan = _plan(src, cfg, 4, rank, world, unit_bucket)
            assert sorted(plan.order.tolist()) == list(range(plan.samples))
            assert np.array_equal(plan.read_unit[plan.read_of], plan.stream_unit)
            counts = np.bincount(plan.batch_bucket, minlength=len(per_bucket))
            assert np.array_equal(counts, expected[:, 1]) and plan.samples == expected[:, 0].sum()
            sequences.append(plan.batch_bucket.tolist())
            for k in range(len(plan.batch_bucket)):
                stream = plan.order[plan.batch_start[k] : plan.batch_start[k + 1]]
                assert set(unit_bucket[plan.stream_unit[stream]]) == {plan.batch_bucket[k]}
                borrow = plan.by_bucket[plan.bucket_positions(k, 3)]  # replacements: the same bucket only
                assert set(unit_bucket[plan.stream_unit[borrow]]) == {plan.batch_bucket[k]}
            ids = [units[u].clip_ids[i] for u, i in zip(plan.stream_unit, plan.stream_item, strict=True)]
            # Padding is each bucket's tail of the rank's stream: drop it, bucket by bucket.
            keep = []
            for g in range(len(per_bucket)):
                lo, hi = plan.bucket_start[g], plan.bucket_start[g + 1]
                q, rem = divmod(per_bucket[g], world)
                keep += ids[lo : lo + q + (rank < rem)]
                assert hi - lo == -(-per_bucket[g] // world)
            own.append(keep)
        assert all(s == sequences[0] for s in sequences)
        flat = [c for r in own for c in r]
        assert len(flat) == len(set(flat)) == sizes.sum()
    # The batch list is shuffled per epoch, and the same on every rank.
    a, b = (_plan(src, DataConfig(batch_size=2), e, 0, 1, unit_bucket).batch_bucket for e in (0, 1))
    assert sorted(a.tolist()) == sorted(b.tolist()) and a.tolist() != b.tolist()


def test_one_bucket_keeps_the_order_of_the_loader_before_buckets() -> None:
    """Golden: the first 12 clips of rank 1 of 3, epoch 1, seed 2, shuffle_buffer 8, as the loader emitted them
    before buckets existed (computed with its `_plan`)."""
    sizes = np.random.default_rng(0).integers(1, 7, size=40)
    units = [_Unit(0, g, tuple(range(k)), tuple(f"{g}-{i}" for i in range(k))) for g, k in enumerate(sizes)]
    src = _Source("run", Path("."), [], [], units, "", 0)
    plan = _plan(src, DataConfig(shuffle_buffer=8, seed=2), 1, 1, 3)
    head = plan.order[:12]
    first = [units[u].clip_ids[i] for u, i in zip(plan.stream_unit[head], plan.stream_item[head], strict=True)]
    assert first == ["21-4", "21-2", "21-0", "21-1", "3-0", "29-3", "29-1", "7-0", "21-3", "35-0", "29-4", "35-2"]
    assert np.array_equal(plan.batch_start, np.arange(0, plan.samples - plan.samples % 2 + 1, 2))


def test_manifest_dims_resolve_per_bucket() -> None:
    shape = (17, 64, 112)
    assert resolve_dims(("T", "H", "W", 3), shape) == (17, 64, 112, 3)
    assert resolve_dims(("T-1", 2, "H/8", "W/8"), shape) == (16, 2, 8, 14)
    assert resolve_dims(("T", "H/16", "W/16"), shape) == (17, 4, 7)
    assert resolve_dims(("D", "h", 4), shape) == (None, None, 4)  # not fixed by the shape: any size


def test_token_patch_pools_events_to_each_buckets_token_grid(bucketed_run: Path) -> None:
    clips = {c["clip_id"]: c for c in iter_clips(bucketed_run, columns=["clip_id", "event_activity"])}
    cfg = DataConfig(source=str(bucketed_run), batch_size=2, token_patch=(1, 2, 2), drop_last=False)
    with make_loader(cfg) as loader:
        grids = {b.name: b.token_grid for b in loader.geo.buckets}
        for bucket in loader.geo.buckets:
            t, h, w = bucket.latent_shape
            assert bucket.token_grid == (t, h // 2, w // 2)
        for batch in loader:
            assert batch["event_activity"].shape[1:] == grids[batch["bucket"]]
            raw = torch.from_numpy(np.stack([clips[c]["event_activity"] for c in batch["clip_id"]]).astype(np.float32))
            torch.testing.assert_close(batch["event_activity"].mean((1, 2, 3)), raw.mean((1, 2, 3)))  # area pooling
    with pytest.raises(ValueError, match="bucket .* not divisible by data.token_patch"):
        make_loader(DataConfig(source=str(bucketed_run), token_patch=(1, 3, 3)))
    with pytest.raises(ValueError, match="exclude each other"):
        DataConfig(source=str(bucketed_run), token_patch=(1, 2, 2), token_grid=(1, 2, 2))


def test_snapshot_of_a_bucketed_run_batches_by_bucket(bucketed_run: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from curation.snapshot import CLIPS_FILE, create_snapshot

    snap = create_snapshot(bucketed_run, tmp_path / "snap", {"event_top_fraction": 0.5})
    table = pq.read_table(snap.path / CLIPS_FILE, columns=["clip_id", "bucket"]).to_pylist()
    buckets = {r["clip_id"]: r["bucket"] for r in table}
    seen = []
    with make_loader(DataConfig(source=str(snap.path), batch_size=2, drop_last=False)) as loader:
        for batch in loader:
            assert {buckets[c] for c in batch["clip_id"]} == {batch["bucket"]}
            assert batch["latents"].shape[2] == Bucket.parse(batch["bucket"]).num_frames
            seen += batch["clip_id"]
    assert sorted(seen) == sorted(buckets)
