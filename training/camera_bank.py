"""A bank of real camera trajectories from the corpus, to drive the extended parts of long rollouts (AAPT, Appendix
I: "randomly sample new camera trajectories for the extended parts").

    bank = CameraBank.from_source("runs/sample")          # per latent step of the source's space (factor f)
    tokens, steps = bank.sample(40, torch.Generator().manual_seed(0))
    c2w = chain_poses(steps, start=last_c2w)               # (41, 4, 4) from where the rollout's camera is
    rays = ray_embedding(c2w, k, h, w, origin_std=origin_std_for(f))[1:]  # each sampled step, as the loader's

Each trajectory is one clip's per-step QCM tokens and relative poses (step t: frame t+1 in camera t's frame, from
`camera_c2w` via `relative_poses`). `sample` concatenates random clips: whole ones while they fit, then a random
window of one, so every piece is a contiguous stretch of a real trajectory, and the poses stay continuous across the
joins because each step is relative to the previous frame.

Units. Shards store one step per stored frame. A video VAE's latent step spans `temporal_factor` of them (latent
frame k <-> stored frame 4k, `training.data.space`): `to_latent(factor)` composes each group's poses (= relative
poses of c2w[::factor]) and takes the majority token of the group (`camera_tokens_to_latent`, the loader's rule).
`from_source` does it for the source's own space, so `sample(steps)` counts latent steps, as the loader's
`camera_tokens` and `rays` do.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from annotators.qcm import NUM_TOKENS
from curation.shards import iter_clips
from curation.snapshot import SNAPSHOT_FILE, iter_snapshot
from training.camera_rays import chain_poses, clip_magnitude, relative_poses
from training.data.space import camera_tokens_to_latent, read_space

__all__ = ["CameraBank", "Segment", "Trajectory", "chain_poses"]

logger = logging.getLogger(__name__)

COLUMNS = ("clip_id", "camera_c2w", "camera_tokens", "camera_intrinsics")


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One clip's camera, per step."""

    clip_id: str
    tokens: np.ndarray  # (S,) int64 QCM tokens
    steps: np.ndarray  # (S, 4, 4) float64: pose of frame t+1 in camera t's frame

    def __len__(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A piece of a sample: steps [start, start + length) of trajectory `index`."""

    index: int
    start: int
    length: int


class CameraBank:
    """Real camera trajectories to sample from; `skipped` counts the clips left out, by reason."""

    def __init__(self, trajectories: Sequence[Trajectory], skipped: Counter | None = None) -> None:
        self.trajectories = [t for t in trajectories if len(t)]
        self.skipped = Counter(skipped or {})
        self.temporal_factor = 1  # stored frames per step (`to_latent` and `from_source` set it)
        if empty := len(trajectories) - len(self.trajectories):  # one-frame clips: nothing to move along
            self.skipped["no_steps"] += empty
        if not self.trajectories:
            raise ValueError(f"camera bank: no trajectory with a step (skipped: {dict(self.skipped) or 'none'})")

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def num_steps(self) -> int:
        return sum(len(t) for t in self.trajectories)

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        c2w: Iterable[np.ndarray | torch.Tensor | None],
        tokens: Iterable[np.ndarray | torch.Tensor | None],
        clip_ids: Iterable[str] | None = None,
        intrinsics: Iterable[np.ndarray | torch.Tensor | None] | None = None,
        max_magnitude: float | None = None,
    ) -> CameraBank:
        """A bank of clips given as (T, 4, 4) camera-to-world poses and (T-1,) tokens per stored step. Clips without
        camera data (None), malformed or not finite are skipped; with `max_magnitude` (and `intrinsics`, (3, 3) each)
        so are those whose `clip_magnitude` exceeds it (the curation outlier rule, e.g. a run's recorded
        threshold)."""
        c2w, tokens = list(c2w), list(tokens)
        ids = list(clip_ids) if clip_ids is not None else [str(i) for i in range(len(c2w))]
        ks = list(intrinsics) if intrinsics is not None else [None] * len(c2w)
        if not len(c2w) == len(tokens) == len(ids) == len(ks):
            raise ValueError("camera bank: c2w, tokens, clip_ids and intrinsics differ in length")
        if max_magnitude is not None and intrinsics is None:
            raise ValueError("camera bank: max_magnitude needs the intrinsics")
        kept, skipped = [], Counter()
        for clip_id, pose, tok, k in zip(ids, c2w, tokens, ks, strict=True):
            trajectory, reason = _trajectory(clip_id, pose, tok, k, max_magnitude)
            if trajectory is None:
                skipped[reason] += 1
            else:
                kept.append(trajectory)
        return cls(kept, skipped)

    @classmethod
    def from_source(
        cls,
        source: str | Path,
        temporal_factor: int | None = None,
        space: str = "auto",
        max_magnitude: float | None = None,
    ) -> CameraBank:
        """The curated clips of a run or snapshot directory (what the loader reads: clips the run's camera outlier
        filter dropped are not in its selection), per latent step of `temporal_factor` stored steps (None: the
        source's, as the loader resolves `space`)."""
        if temporal_factor is None:
            temporal_factor = read_space(source, space).temporal_factor
        path = Path(source)
        rows = iter_snapshot(path, COLUMNS) if (path / SNAPSHOT_FILE).exists() else iter_clips(path, COLUMNS)
        ids, c2w, tokens, ks = [], [], [], []
        for row in rows:
            ids.append(row["clip_id"])
            c2w.append(row.get("camera_c2w"))
            tokens.append(row.get("camera_tokens"))
            ks.append(row.get("camera_intrinsics"))
        bank = cls.from_arrays(c2w, tokens, ids, ks, max_magnitude)
        return bank.to_latent(temporal_factor) if temporal_factor > 1 else bank

    def to_latent(self, factor: int) -> CameraBank:
        """The bank per latent step of `factor` stored steps: poses composed over each group, the group's majority
        token; a trailing partial group is left out (clips of 1 + 4k frames have none)."""
        if factor < 1:
            raise ValueError(f"temporal factor must be >= 1, got {factor}")
        if factor == 1:
            return self
        out = []
        for t in self.trajectories:
            n = len(t) // factor
            grouped = t.steps[: n * factor].reshape(n, factor, 4, 4)
            steps = grouped[:, 0]
            for j in range(1, factor):  # frame (k+1)f in camera kf: the group's steps chained
                steps = steps @ grouped[:, j]
            out.append(Trajectory(t.clip_id, camera_tokens_to_latent(t.tokens, factor), np.ascontiguousarray(steps)))
        bank = CameraBank(out, self.skipped)
        bank.temporal_factor = self.temporal_factor * factor
        return bank

    # -- sampling ---------------------------------------------------------------------------------------------

    def plan(self, steps: int, generator: torch.Generator) -> list[Segment]:
        """The pieces of a sample of `steps` steps: a uniformly random clip at a time, whole while it fits, then a
        uniformly random window of the last one (`generator` alone decides: seeded, it is reproducible)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        out, left = [], steps
        while left > 0:
            index = int(torch.randint(len(self.trajectories), (1,), generator=generator))
            n = len(self.trajectories[index])
            take = min(n, left)
            start = int(torch.randint(n - take + 1, (1,), generator=generator)) if take < n else 0
            out.append(Segment(index, start, take))
            left -= take
        return out

    def sample(self, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (steps,) int64, relative poses (steps, 4, 4) float64) of `plan(steps, generator)`; `chain_poses`
        turns the poses into camera-to-world for `ray_embedding`."""
        return self.gather(self.plan(steps, generator))

    def gather(self, segments: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens and poses of planned segments, concatenated."""
        tokens = [self.trajectories[s.index].tokens[s.start : s.start + s.length] for s in segments]
        poses = [self.trajectories[s.index].steps[s.start : s.start + s.length] for s in segments]
        if not segments:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, 4, dtype=torch.float64)
        return torch.from_numpy(np.concatenate(tokens)), torch.from_numpy(np.concatenate(poses))

    # -- statistics -------------------------------------------------------------------------------------------

    def ray_origin_std(self) -> float:
        """The std of the ray origins `ray_embedding` feeds for these trajectories (one identity frame per clip, then
        each step's translation): the corpus scale `camera_rays.ORIGIN_STD` stands for."""
        origins = [np.zeros((len(self.trajectories), 3))]  # every clip's frame 0: the identity
        origins += [t.steps[:, :3, 3] for t in self.trajectories]
        return float(np.concatenate(origins).std(ddof=1))  # unbiased, as `camera_rays.ray_stats`


def _trajectory(
    clip_id: str,
    c2w: np.ndarray | torch.Tensor | None,
    tokens: np.ndarray | torch.Tensor | None,
    k: np.ndarray | torch.Tensor | None,
    max_magnitude: float | None,
) -> tuple[Trajectory | None, str]:
    """The clip's trajectory, or (None, why it is skipped)."""
    if c2w is None or tokens is None:
        return None, "no_camera"
    poses = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
    tok = np.asarray(tokens).astype(np.int64)
    if poses.dim() != 3 or poses.shape[1:] != (4, 4) or tok.shape != (poses.shape[0] - 1,):
        return None, "malformed"
    if not bool(torch.isfinite(poses).all()) or tok.min(initial=0) < 0 or tok.max(initial=0) >= NUM_TOKENS:
        return None, "malformed"
    if max_magnitude is not None:
        if k is None:
            return None, "no_camera"
        magnitude = clip_magnitude(poses, torch.as_tensor(np.asarray(k), dtype=torch.float64))
        if not math.isfinite(magnitude) or magnitude > max_magnitude:
            return None, "outlier"
    try:
        steps = relative_poses(poses)[1:].numpy()
    except RuntimeError:  # a singular pose
        return None, "malformed"
    return Trajectory(clip_id, tok, np.ascontiguousarray(steps)), ""
