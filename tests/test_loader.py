"""Training loader (training/data/) on the smoke run: batch contents, epoch coverage, order, resume, snapshot
sources, DDP partitioning (in process), bad rows and the event-map pooling math."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curation.shards import curated_clip_ids, iter_clips
from training.data import DataConfig, make_loader, pool_event_maps, shuffle_buffer_order

TENSOR_KEYS = ("latents", "noise", "camera_tokens", "has_camera", "event_activity", "has_events", "event_confidence")


def epoch_ids(source: Path, **kw: Any) -> list[str]:
    with make_loader(DataConfig(source=str(source), **kw)) as loader:
        return [cid for batch in loader for cid in batch["clip_id"]]


def take(batches: Any, n: int) -> list[dict[str, Any]]:
    return [next(batches) for _ in range(n)]


def assert_same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["clip_id"] == y["clip_id"] and x["text"] == y["text"]
        for key in TENSOR_KEYS:
            assert torch.equal(x[key], y[key]), key


def test_batch_keys_shapes_dtypes_and_ranges(smoke_run: Path) -> None:
    n = len(curated_clip_ids(smoke_run))
    with make_loader(DataConfig(source=str(smoke_run), batch_size=4)) as loader:
        batches = list(loader)
    assert len(batches) == n // 4 == len(loader) and loader.num_samples == n
    for batch in batches:
        assert batch["latents"].shape == (4, 3, 8, 8, 8) and batch["latents"].dtype == torch.float32
        assert batch["latents"].min() >= -1 and batch["latents"].max() <= 1
        assert batch["noise"].shape == (4, 3, 8, 8, 8) and batch["noise"].dtype == torch.float32
        assert batch["noise_source"] == "warped_noise"
        assert batch["camera_tokens"].shape == (4, 7) and batch["camera_tokens"].dtype == torch.int64
        assert batch["camera_tokens"].min() >= 0 and batch["camera_tokens"].max() <= 80
        assert batch["has_camera"].dtype == torch.bool and batch["has_camera"].all()
        assert batch["event_activity"].shape == (4, 8, 4, 4) and batch["event_activity"].dtype == torch.float32
        assert batch["event_activity"].min() >= 0 and batch["event_activity"].max() <= 1
        assert batch["has_events"].dtype == torch.bool and batch["event_confidence"].dtype == torch.float32
        assert len(batch["text"]) == len(batch["clip_id"]) == 4 and all(batch["text"])
    # Warped noise is N(0, 1) per channel. Frames of a clip share warped noise, so only about 20 clips x 64 cells
    # are independent per channel: 4 sigma of the mean is ~0.11 (less with more clips).
    noise = torch.cat([b["noise"] for b in batches]).transpose(0, 1).reshape(3, -1)
    assert noise.mean(1).abs().max() < 0.11 and (noise.std(1) - 1).abs().max() < 0.08
    assert loader.stats.samples_yielded == 4 * (n // 4) and loader.stats.rows_skipped == 0 and loader.stats.wait_s > 0


def test_samples_match_an_independent_decode(smoke_run: Path) -> None:
    clips = {c["clip_id"]: c for c in iter_clips(smoke_run)}
    seen = 0
    with make_loader(DataConfig(source=str(smoke_run), batch_size=4, drop_last=False)) as loader:
        for batch in loader:
            for i, clip_id in enumerate(batch["clip_id"]):
                clip = clips[clip_id]
                frames = clip["frames"].astype(np.float64)  # (T, 64, 64, 3) -> 8x8 box average
                pooled = frames.reshape(8, 8, 8, 8, 8, 3).mean(axis=(2, 4)).transpose(3, 0, 1, 2)
                np.testing.assert_allclose(batch["latents"][i].numpy(), pooled / 127.5 - 1, atol=1e-5)
                noise = clip["warped_noise"][:, :3].astype(np.float32).transpose(1, 0, 2, 3)
                np.testing.assert_array_equal(batch["noise"][i].numpy(), noise)
                np.testing.assert_array_equal(batch["camera_tokens"][i].numpy(), clip["camera_tokens"])
                np.testing.assert_array_equal(batch["event_activity"][i].numpy(), clip["event_activity"])
                assert batch["event_confidence"][i].item() == pytest.approx(clip["event_confidence"] or 0.0)
                assert batch["text"][i] == (clip["caption"] or clip["camera_text"] or "")
                seen += 1
    assert seen == len(clips)


def test_one_epoch_covers_the_curated_set_once(smoke_run: Path) -> None:
    curated = curated_clip_ids(smoke_run)
    ids = epoch_ids(smoke_run, batch_size=3, drop_last=False)
    assert sorted(ids) == sorted(curated)
    kept = epoch_ids(smoke_run, batch_size=3)  # drop_last: full batches only, distinct clips
    assert len(kept) == len(set(kept)) == 3 * (len(curated) // 3) and set(kept) <= curated
    # No shuffle: the manifest order of iter_clips.
    assert epoch_ids(smoke_run, batch_size=3, drop_last=False, shuffle_buffer=0) == [
        c["clip_id"] for c in iter_clips(smoke_run, columns=["clip_id"])
    ]


def test_order_is_a_function_of_seed_and_epoch_only(smoke_run: Path) -> None:
    cfg = {"batch_size": 4, "shuffle_buffer": 8}
    a = epoch_ids(smoke_run, **cfg)
    assert a == epoch_ids(smoke_run, **cfg, num_workers=0)  # threads never change the order
    assert a == epoch_ids(smoke_run, **cfg, num_workers=2, prefetch_batches=1)
    assert a != epoch_ids(smoke_run, **cfg, seed=1)
    with make_loader(DataConfig(source=str(smoke_run), **cfg)) as loader:
        first, second = list(loader), list(loader)  # one epoch per iter(), each in its own order
    assert [c for b in first for c in b["clip_id"]] == a
    assert [c for b in second for c in b["clip_id"]] != a and loader.epoch == 2


def test_resume_gives_the_uninterrupted_batches(smoke_run: Path) -> None:
    cfg = DataConfig(source=str(smoke_run), batch_size=3, shuffle_buffer=8)
    with make_loader(cfg) as loader:
        per_epoch = loader.num_batches
        reference = take(loader.batches(), 2 * per_epoch + 4)
    for consumed in (4, per_epoch, per_epoch + 3):  # mid-epoch, exactly at the boundary, in the second epoch
        with make_loader(cfg) as first:
            take(first.batches(), consumed)
            state = json.loads(json.dumps(first.state_dict()))
        with make_loader(dataclasses.replace(cfg, num_workers=0)) as resumed:  # threads or not: same batches
            resumed.load_state_dict(state)
            assert_same_batches(take(resumed.batches(), len(reference) - consumed), reference[consumed:])
    # Resuming decodes only the rows still to be emitted, not the ones skipped.
    with make_loader(cfg) as first:
        take(first.batches(), 2)
        state = first.state_dict()
    assert state["epoch"] == 0 and state["cursor"] == 6 and state["next"]["clip_id"] == reference[2]["clip_id"][0]
    with make_loader(cfg) as resumed:
        resumed.load_state_dict(state)
        rest = list(resumed)
    assert len(rest) == per_epoch - 2 and resumed.stats.rows_decoded == 3 * (per_epoch - 2)


def test_resume_refuses_another_order(smoke_run: Path) -> None:
    with make_loader(DataConfig(source=str(smoke_run))) as loader:
        state = loader.state_dict()
    for other in ({"seed": 3}, {"shuffle_buffer": 4}):
        with make_loader(DataConfig(source=str(smoke_run), **other)) as loader, pytest.raises(ValueError, match="same"):
            loader.load_state_dict(state)
    with (
        make_loader(DataConfig(source=str(smoke_run)), rank=1, world_size=2) as loader,
        pytest.raises(ValueError, match="world_size"),
    ):
        loader.load_state_dict(state)


def test_ranks_are_disjoint_equal_and_cover_the_epoch(smoke_run: Path) -> None:
    world, curated = 3, curated_clip_ids(smoke_run)
    n = len(curated)
    per, rem = -(-n // world), n % world  # ranks >= rem (when rem > 0) are one short and repeat one clip
    per_rank = []
    for rank in range(world):
        with make_loader(DataConfig(source=str(smoke_run), batch_size=2, drop_last=False), rank, world) as loader:
            batches = list(loader)
            assert len(batches) == -(-per // 2) and loader.num_samples == per
            per_rank.append([c for b in batches for c in b["clip_id"]])
            assert loader.stats.padded_samples == (1 if rem and rank >= rem else 0)
            assert len(set(per_rank[-1])) == per - loader.stats.padded_samples  # padding repeats its own clips
    assert set().union(*per_rank) == curated
    assert sum(len(ids) for ids in per_rank) == world * per
    assert sum(len(set(ids)) for ids in per_rank) == n  # disjoint


def test_snapshot_source_yields_its_clips(smoke_run: Path, tmp_path: Path) -> None:
    from curation.snapshot import CLIPS_FILE, create_snapshot

    snap = create_snapshot(smoke_run, tmp_path / "snap", {"event_top_fraction": 0.5})
    expected = pq.read_table(snap.path / CLIPS_FILE, columns=["clip_id"]).column("clip_id").to_pylist()
    assert 0 < len(expected) < len(curated_clip_ids(smoke_run))
    assert epoch_ids(snap.path, batch_size=2, drop_last=False, shuffle_buffer=0) == expected
    assert sorted(epoch_ids(snap.path, batch_size=2, drop_last=False)) == sorted(expected)


def test_grid_options_and_absent_noise(smoke_run: Path) -> None:
    with make_loader(DataConfig(source=str(smoke_run), latent_size=(16, 16), token_grid=(4, 2, 2))) as loader:
        batch = next(iter(loader))
    assert "noise" not in batch and batch["noise_source"].startswith("absent: noise grid (8, 8)")
    assert batch["latents"].shape == (2, 3, 8, 16, 16) and batch["event_activity"].shape == (2, 4, 2, 2)
    clips = {c["clip_id"]: c for c in iter_clips(smoke_run, columns=["clip_id", "event_activity"])}
    raw = torch.from_numpy(np.stack([clips[c]["event_activity"] for c in batch["clip_id"]]).astype(np.float32))
    torch.testing.assert_close(batch["event_activity"].mean((1, 2, 3)), raw.mean((1, 2, 3)))
    with make_loader(DataConfig(source=str(smoke_run), latent_size=(12, 20))) as loader:  # not a divisor: area
        batch = next(iter(loader))
    assert batch["latents"].shape == (2, 3, 8, 12, 20) and "noise" not in batch
    assert batch["latents"].min() >= -1 and batch["latents"].max() <= 1


def test_pool_event_maps_properties() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 8, 6, 10, generator=gen, dtype=torch.float64)
    assert torch.equal(pool_event_maps(maps, (8, 6, 10)), maps)
    for grid in ((4, 3, 5), (3, 4, 3), (1, 1, 1), (5, 6, 7)):  # divisible and not: area pooling keeps the mean
        pooled = pool_event_maps(maps, grid)
        assert pooled.shape == (3, *grid)
        torch.testing.assert_close(pooled.mean((1, 2, 3)), maps.mean((1, 2, 3)))
    small = torch.rand(2, 2, 3, 4, generator=gen)
    up = pool_event_maps(small, (4, 6, 8))  # nearest: every cell repeated 2x2x2
    assert torch.equal(up, small.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3))
    mixed = pool_event_maps(small, (1, 6, 2))  # time pooled, height upsampled, width pooled
    assert torch.allclose(mixed, pool_event_maps(pool_event_maps(small, (1, 3, 2)), (1, 6, 2)))
    with pytest.raises(ValueError):
        pool_event_maps(small[0], (1, 1, 1))


def test_rank_plans_partition_any_epoch() -> None:
    """The plan alone (no data): for many world sizes, equal per-rank counts, every sample once, padding only on
    the short ranks and only with their own samples."""
    from training.data import _plan, _Source, _Unit

    sizes = np.random.default_rng(0).integers(1, 7, size=40)
    units = [_Unit(0, g, tuple(range(k)), tuple(f"{g}-{i}" for i in range(k))) for g, k in enumerate(sizes)]
    src = _Source("run", Path("."), [], [], units, "", 0)
    total = int(sizes.sum())
    for world in (1, 2, 3, 7, total + 1):
        ranks = []
        for rank in range(world):
            plan = _plan(src, DataConfig(shuffle_buffer=16, seed=5), 3, rank, world)
            assert plan.samples == -(-total // world) and sorted(plan.order.tolist()) == list(range(plan.samples))
            assert np.array_equal(plan.read_unit[plan.read_of], plan.stream_unit)
            ids = [units[u].clip_ids[i] for u, i in zip(plan.stream_unit, plan.stream_item, strict=True)]
            own = ids[: plan.samples - plan.padded]
            assert set(ids[len(own) :]) <= (set(own) or set(ids))
            ranks.append(own)
        flat = [c for r in ranks for c in r]
        assert len(flat) == len(set(flat)) == total  # disjoint, and together the whole epoch


def test_shuffle_buffer_order_is_a_bounded_permutation() -> None:
    order = shuffle_buffer_order(200, 16, (0, 0))
    assert sorted(order.tolist()) == list(range(200))
    assert all(order[k] <= k + 16 for k in range(200))  # emitted no later than 16 arrivals after it came
    assert not np.array_equal(order, shuffle_buffer_order(200, 16, (0, 1)))
    assert np.array_equal(order, shuffle_buffer_order(200, 16, (0, 0)))


def _break_rows(run: Path) -> list[str]:
    """Null frames in one row and a wrong frames shape in another, in the copy's first shard with 2 curated rows."""
    curated = curated_clip_ids(run)
    for path in sorted((run / "shards").glob("*.parquet")):
        table = pq.read_table(path)
        rows = table.to_pylist()
        victims = [i for i, r in enumerate(rows) if r["clip_id"] in curated][:2]
        if len(victims) == 2:
            break
    rows[victims[0]]["frames"] = None
    rows[victims[1]]["frames_shape"] = [8, 32, 64, 3]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, row_group_size=4)
    return [rows[i]["clip_id"] for i in victims]


def test_bad_rows_are_skipped_and_counted(smoke_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    broken = _break_rows(run)
    with (
        caplog.at_level(logging.WARNING, logger="training.data"),
        make_loader(DataConfig(source=str(run), batch_size=4, drop_last=False)) as loader,
    ):
        batches = list(loader)
    ids = [c for b in batches for c in b["clip_id"]]
    assert len(ids) == len(curated_clip_ids(run)) and not set(ids) & set(broken)  # replaced in their batch
    assert set(ids) == curated_clip_ids(run) - set(broken)
    assert loader.stats.rows_skipped == 2 and loader.stats.skipped == {"frames": 2}
    assert all(b["latents"].shape[0] == len(b["clip_id"]) for b in batches)
    assert sum(broken[0] in r.message for r in caplog.records) >= 1


def test_bad_sources_and_configs_are_clear_errors(smoke_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        make_loader(DataConfig(source=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="empty"):
        make_loader(DataConfig())
    with pytest.raises(ValueError, match="neither"):
        make_loader(DataConfig(source=str(tmp_path)))
    run = tmp_path / "empty"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("_samples", "_work"))
    for path in (run / "clips").glob("*.parquet"):
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(ValueError, match="0 clips"):
        make_loader(DataConfig(source=str(run)))
    for bad in (
        {"batch_size": 0},
        {"latent_size": (0, 4)},
        {"token_grid": (2, 2)},
        {"space": "pixel", "latent_channels": 4},
    ):
        with pytest.raises(ValueError, match="data\\."):
            DataConfig(source=str(smoke_run), **bad)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(DataConfig(source=str(smoke_run), batch_size=4096))  # drop_last with ~40 clips: no batch
    with pytest.raises(ValueError, match="rank"):
        make_loader(DataConfig(source=str(smoke_run)), rank=2, world_size=2)
