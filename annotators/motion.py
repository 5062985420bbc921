"""Motion scores from a clip's optical flow: overall motion and the motion left after removing the camera's.

Scores are resolution- and frame-rate-independent: per-pixel flow magnitude divided by the frame diagonal and by
the time between the two sampled frames, i.e. "frame diagonals per second". A slow pan across a 256 px clip and
the same pan across a 1080p clip score the same. The camera's global motion is a RANSAC homography per frame
pair (`annotators.global_motion`); `motion_residual` is what it does not explain (moving objects, parallax).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from annotators.base import AnnotatorError, Batch, per_clip
from annotators.global_motion import fit_global_motion, residual_flow


@dataclasses.dataclass(frozen=True, kw_only=True)
class MotionConfig:
    """Motion scoring settings."""

    percentile: float = 90.0  # the percentile stored as motion_p90

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile < 100.0:
            raise ValueError("motion.percentile must be in (0, 100)")


@dataclasses.dataclass(frozen=True)
class MotionScores:
    """One clip's motion summary plus the per-pair camera homographies other annotators reuse."""

    mean: float
    p90: float
    residual: float
    homographies: np.ndarray  # (T-1, 3, 3) float32, frame t pixel -> frame t+1 pixel
    inlier_ratio: float  # mean share of flow consistent with the homography


def pair_intervals(frame_pts: np.ndarray) -> np.ndarray:
    """Seconds between consecutive sampled frames; gaps that are not positive fall back to the median gap."""
    dt = np.diff(np.asarray(frame_pts, dtype=np.float64))
    valid = np.isfinite(dt) & (dt > 0)
    if not valid.any():
        raise AnnotatorError("bad_timestamps", f"no increasing presentation times in {list(frame_pts)}")
    return np.where(valid, dt, np.median(dt[valid]))


def motion_scores(flow: np.ndarray, frame_pts: np.ndarray, percentile: float = 90.0) -> MotionScores:
    """Scores of one clip from its forward flow (T-1, 2, h, w) in pixels and the frames' times (T,) in seconds."""
    if flow.ndim != 4 or flow.shape[1] != 2 or len(frame_pts) != flow.shape[0] + 1:
        raise AnnotatorError("bad_flow", f"flow shape {flow.shape} does not fit {len(frame_pts)} frame times")
    dt = pair_intervals(frame_pts)
    diag = math.hypot(flow.shape[2], flow.shape[3])
    speeds, residual_means, homographies, inliers = [], [], [], []
    for pair, seconds in zip(flow, dt, strict=True):
        hw2 = np.ascontiguousarray(pair.transpose(1, 2, 0), dtype=np.float32)
        motion = fit_global_motion(hw2)
        scale = 1.0 / (diag * seconds)
        speeds.append(np.hypot(hw2[..., 0], hw2[..., 1]).ravel() * scale)
        residual_means.append(float(np.linalg.norm(residual_flow(hw2, motion), axis=-1).mean()) * scale)
        homographies.append(motion.homography)
        inliers.append(motion.inlier_ratio)
    all_speeds = np.concatenate(speeds)
    return MotionScores(
        mean=float(np.mean([s.mean() for s in speeds])),
        p90=float(np.percentile(all_speeds, percentile)),
        residual=float(np.mean(residual_means)),
        homographies=np.stack(homographies).astype(np.float32),
        inlier_ratio=float(np.mean(inliers)),
    )


class MotionScorer:
    """Motion scores per clip from the `flow` column (see module docstring for units)."""

    name: ClassVar[str] = "motion"
    output_columns: ClassVar[tuple[str, ...]] = (
        "motion_mean",
        "motion_p90",
        "motion_residual",
        "global_homography",
        "motion_error",
    )

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        columns = per_clip(
            self.name, self.output_columns, zip(batch["flow"], batch["frame_pts"], strict=True), self.score
        )
        return {"clip_id": batch["clip_id"], **columns}

    def score(self, flow: np.ndarray | None, frame_pts: np.ndarray) -> dict:
        if flow is None:
            raise AnnotatorError("no_flow", "the flow annotator produced nothing for this clip")
        s = motion_scores(np.asarray(flow, dtype=np.float32), np.asarray(frame_pts), self.cfg.percentile)
        return {
            "motion_mean": s.mean,
            "motion_p90": s.p90,
            "motion_residual": s.residual,
            "global_homography": s.homographies,
        }
