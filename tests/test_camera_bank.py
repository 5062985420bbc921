"""The camera trajectory bank (training/camera_bank.py): determinism, lengths, only real contiguous pieces of the
corpus' trajectories, latent steps, chaining poses back to camera-to-world, and building it from a run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.shards import curated_clip_ids
from training.camera_bank import CameraBank
from training.camera_rays import chain_poses, ray_map, relative_poses
from training.data.space import camera_tokens_to_latent


def turn(yaw_deg: float, translation: tuple[float, float, float]) -> np.ndarray:
    a = math.radians(yaw_deg)
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    m[:3, 3] = translation
    return m


def labelled_clip(clip: int, frames: int) -> np.ndarray:
    """(T, 4, 4) c2w whose step t translates by (clip, t, 1) x 1e-3 and turns by clip + 1 degrees: every step of
    the corpus is recognisable from its pose."""
    poses = [np.eye(4)]
    for t in range(frames - 1):
        poses.append(poses[-1] @ turn(clip + 1.0, (clip * 1e-3, t * 1e-3, 1e-3)))
    return np.stack(poses)


def labelled_bank(lengths: tuple[int, ...] = (9, 5, 17, 3, 12)) -> tuple[CameraBank, list[np.ndarray]]:
    c2w = [labelled_clip(i, n) for i, n in enumerate(lengths)]
    tokens = [np.arange(n - 1) % 81 for n in lengths]
    return CameraBank.from_arrays(c2w, tokens, [f"clip{i}" for i in range(len(lengths))]), c2w


def identify(step: torch.Tensor) -> tuple[int, int]:
    """(clip, step index) of a labelled step."""
    t = step[:3, 3].numpy() * 1e3
    return round(float(t[0])), round(float(t[1]))


def test_sample_is_deterministic_for_a_seeded_generator() -> None:
    bank, _ = labelled_bank()
    a = bank.sample(50, torch.Generator().manual_seed(7))
    b = bank.sample(50, torch.Generator().manual_seed(7))
    c = bank.sample(50, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("steps", [0, 1, 2, 16, 17, 100])
def test_lengths_and_dtypes(steps: int) -> None:
    bank, _ = labelled_bank()
    tokens, poses = bank.sample(steps, torch.Generator().manual_seed(steps))
    assert tokens.shape == (steps,) and tokens.dtype == torch.int64
    assert poses.shape == (steps, 4, 4) and poses.dtype == torch.float64
    with pytest.raises(ValueError):
        bank.sample(-1, torch.Generator())


def test_only_contiguous_pieces_of_real_trajectories_appear() -> None:
    bank, c2w = labelled_bank()
    real = [relative_poses(torch.from_numpy(c))[1:] for c in c2w]
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        segments = bank.plan(40, gen)
        tokens, poses = bank.gather(segments)
        assert sum(s.length for s in segments) == 40
        at = 0
        for j, seg in enumerate(segments):
            traj = bank.trajectories[seg.index]
            assert seg.start >= 0 and seg.start + seg.length <= len(traj)
            assert seg.length == len(traj) or j == len(segments) - 1  # whole clips, then a window of the last one
            piece = poses[at : at + seg.length]
            torch.testing.assert_close(piece, real[seg.index][seg.start : seg.start + seg.length])
            assert torch.equal(tokens[at : at + seg.length], torch.from_numpy(traj.tokens[seg.start :][: seg.length]))
            # From the poses alone: one clip, consecutive steps.
            labels = [identify(p) for p in piece]
            assert {c for c, _ in labels} == {seg.index}
            assert [t for _, t in labels] == list(range(seg.start, seg.start + seg.length))
            at += seg.length
        assert torch.equal(bank.sample(40, torch.Generator().manual_seed(seed))[1], poses)  # sample = gather(plan)


def test_chaining_poses_round_trips() -> None:
    _, c2w = labelled_bank()
    clip = torch.from_numpy(c2w[2])
    steps = relative_poses(clip)[1:]
    torch.testing.assert_close(chain_poses(steps), clip)  # frame 0 is the identity
    start = torch.from_numpy(turn(30.0, (1.0, 2.0, 3.0)))
    moved = chain_poses(steps, start)
    torch.testing.assert_close(moved, start @ clip)
    torch.testing.assert_close(relative_poses(moved)[1:], steps)  # the same steps from anywhere
    bank, _ = labelled_bank()
    tokens, sampled = bank.sample(30, torch.Generator().manual_seed(0))
    rollout = chain_poses(sampled)
    assert rollout.shape == (31, 4, 4)
    torch.testing.assert_close(relative_poses(rollout)[1:], sampled)
    batched = torch.stack([sampled, sampled.flip(0)])
    assert chain_poses(batched).shape == (2, 31, 4, 4)


def test_latent_steps_compose_groups_and_take_the_majority_token() -> None:
    c2w = [labelled_clip(0, 17), labelled_clip(1, 10)]  # 16 steps -> 4 latent steps; 9 steps -> 2 (one left over)
    tokens = [np.array([3, 3, 5, 5, 7, 7, 7, 1, 0, 0, 0, 0, 2, 2, 2, 9]), np.arange(9)]
    latent = CameraBank.from_arrays(c2w, tokens).to_latent(4)
    first = latent.trajectories[0]
    expected = relative_poses(torch.from_numpy(c2w[0][::4]))[1:].numpy()  # latent frame j <-> stored frame 4j
    np.testing.assert_allclose(first.steps, expected, atol=1e-12)
    assert first.tokens.tolist() == camera_tokens_to_latent(tokens[0], 4).tolist() == [5, 7, 0, 2]
    assert len(latent.trajectories[1]) == 2
    assert latent.to_latent(1) is latent


def test_clips_without_camera_malformed_or_outliers_are_skipped() -> None:
    good = labelled_clip(0, 9)
    spike = good.copy()
    spike[5:, 0, 3] += 1.0  # a jump: ~1700 ORIGIN_STD in one step
    broken = good.copy()
    broken[2, 1, 1] = np.nan
    k = np.array([[40.0, 0, 31.5], [0, 40.0, 17.5], [0, 0, 1]])
    tokens = np.zeros(8, np.int64)
    bank = CameraBank.from_arrays(
        [good, None, spike, broken, good[:1], good],
        [tokens, tokens, tokens, tokens, tokens[:0], tokens[:3]],
        intrinsics=[k] * 6,
        max_magnitude=20.0,
    )
    assert len(bank) == 1 and [t.clip_id for t in bank.trajectories] == ["0"]
    assert bank.skipped == {"no_camera": 1, "outlier": 1, "malformed": 2, "no_steps": 1}
    kept = CameraBank.from_arrays([good, spike], [tokens, tokens])  # no max_magnitude: the spike stays
    assert len(kept) == 2
    with pytest.raises(ValueError, match="no trajectory"):
        CameraBank.from_arrays([None], [None])
    with pytest.raises(ValueError, match="intrinsics"):
        CameraBank.from_arrays([good], [tokens], max_magnitude=20.0)


def test_ray_origin_std_is_the_std_of_the_embeddings_origins() -> None:
    bank, c2w = labelled_bank()
    k = torch.tensor([[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]], dtype=torch.float64)
    origins = torch.cat([ray_map(relative_poses(torch.from_numpy(c)), k, 4, 4)[:, :3, 0, 0] for c in c2w])
    assert bank.ray_origin_std() == pytest.approx(float(origins.std()), rel=1e-9)


def test_from_a_run_holds_its_curated_clips(smoke_run: Path) -> None:
    bank = CameraBank.from_source(smoke_run)  # pixel space: one step per stored frame
    assert len(bank) + sum(bank.skipped.values()) == len(curated_clip_ids(smoke_run))
    assert {t.clip_id for t in bank.trajectories} <= curated_clip_ids(smoke_run)
    assert all(len(t) == 7 for t in bank.trajectories)  # 8 stored frames
    tokens, poses = bank.sample(20, torch.Generator().manual_seed(0))
    assert tokens.shape == (20,) and int(tokens.max()) < 81 and torch.isfinite(poses).all()
    assert len(CameraBank.from_source(smoke_run, temporal_factor=4).trajectories[0]) == 1  # 7 steps: one group
