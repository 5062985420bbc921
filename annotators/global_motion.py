"""Global (camera) motion from a dense flow field: a RANSAC homography, and the flow left once it is removed.

Pure functions, shared by the camera and event annotators. Conventions: pixel centres at integer coordinates,
x = column, y = row; a homography maps homogeneous frame-t pixel coordinates (x, y, 1) to frame t+1, and the flow
it induces at p is H(p) - p.

Fitting (`fit_global_motion`): a regular grid of about 2.5k flow samples gives correspondences p -> p + flow(p);
`cv2.findHomography` (RANSAC, then least-squares refinement on the inliers) fits them. When that fails, is
degenerate (folds the frame, points at infinity inside it, shrinks/grows its area by more than 4x) or explains
fewer than `MIN_INLIER_RATIO` of the samples, a 4-DoF similarity (`cv2.estimateAffinePartial2D`, RANSAC) is tried
under the same rules, then the identity. The RANSAC threshold scales with resolution: `RANSAC_FRACTION` of the
image diagonal, at least `RANSAC_MIN_PX` (0.5 px at small sizes, ~1.4 px at 480x270, ~5.5 px at 1080p), because
flow error and parallax both grow with the pixel count.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

TARGET_POINTS = 2500  # grid samples; enough for a stable fit, few enough that RANSAC costs ~1 ms
MIN_POINTS = 8  # below this no model is fitted (a homography needs 4, with margin for outliers)
MIN_INLIER_RATIO = 0.25  # a model explaining less than this share of the samples is not the camera's motion
RANSAC_FRACTION = 0.0025  # RANSAC reprojection threshold as a fraction of the image diagonal...
RANSAC_MIN_PX = 0.5  # ...but never below this many pixels
MAX_AREA_CHANGE = 4.0  # a frame-to-frame model that scales the frame area by more than this is degenerate


@dataclasses.dataclass(frozen=True)
class GlobalMotion:
    """The camera's frame-to-frame motion as a homography and how well it explains the flow."""

    homography: np.ndarray  # (3, 3) float64 mapping frame-t pixel coords (x, y, 1) to frame t+1, H[2, 2] = 1
    inlier_ratio: float  # share of the sampled points within the RANSAC threshold of this model
    n_points: int  # points sampled (after the mask and non-finite flow are dropped)
    model: str  # "homography" | "affine" | "identity" (fallback when too few points or degenerate)


def ransac_threshold(height: int, width: int) -> float:
    """Default RANSAC reprojection threshold in pixels for a (height, width) flow field."""
    return max(RANSAC_MIN_PX, RANSAC_FRACTION * math.hypot(height, width))


def _apply(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a homography."""
    mapped = pts @ hom[:, :2].T + hom[:, 2]
    return mapped[:, :2] / mapped[:, 2:3]


def _sane(hom: np.ndarray | None, height: int, width: int) -> bool:
    """A plausible frame-to-frame camera motion: finite, frame corners stay in front, convex, area within 4x."""
    if hom is None or hom.shape != (3, 3) or not np.isfinite(hom).all() or abs(hom[2, 2]) < 1e-12:
        return False
    hom = hom / hom[2, 2]
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
    w = corners @ hom[2, :2] + hom[2, 2]
    if (w <= 1e-6).any():  # the line at infinity crosses the frame: not a camera moving between two frames
        return False
    quad = _apply(hom, corners)
    edges = np.roll(quad, -1, axis=0) - quad
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not ((cross > 0).all() or (cross < 0).all()):  # folded or self-intersecting image of the frame
        return False
    area = 0.5 * abs(np.sum(quad[:, 0] * np.roll(quad[:, 1], -1) - np.roll(quad[:, 0], -1) * quad[:, 1]))
    ratio = area / (width * height)
    return 1.0 / MAX_AREA_CHANGE <= ratio <= MAX_AREA_CHANGE


def _inlier_ratio(hom: np.ndarray, src: np.ndarray, dst: np.ndarray, threshold: float) -> float:
    if len(src) == 0:
        return 0.0
    err = np.linalg.norm(_apply(hom, src) - dst, axis=1)
    return float(np.mean(err <= threshold))


def fit_global_motion(
    flow: np.ndarray,
    *,
    step: int | None = None,
    ransac_px: float | None = None,
    weights_mask: np.ndarray | None = None,
) -> GlobalMotion:
    """Fit the dominant (camera) motion of a (H, W, 2) forward flow field.

    `step`: grid spacing in pixels (default: about `TARGET_POINTS` samples). `ransac_px`: RANSAC threshold
    (default `ransac_threshold(H, W)`). `weights_mask`: (H, W), pixels where it is False/0 are not sampled (e.g.
    low texture, known foreground). Never raises on degenerate input: it falls back to "affine", then "identity".
    """
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    height, width = flow.shape[:2]
    if step is None:
        step = max(1, round(math.sqrt(height * width / TARGET_POINTS)))
    threshold = ransac_threshold(height, width) if ransac_px is None else float(ransac_px)
    ys = np.arange(step // 2, height, step)
    xs = np.arange(step // 2, width, step)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    sampled = flow[gy, gx].astype(np.float64)
    keep = np.isfinite(sampled).all(axis=-1)
    if weights_mask is not None:
        if weights_mask.shape != (height, width):
            raise ValueError(f"weights_mask must be {(height, width)}, got {weights_mask.shape}")
        keep &= weights_mask[gy, gx].astype(bool)
    src = np.stack([gx[keep], gy[keep]], axis=-1).astype(np.float64)
    dst = src + sampled[keep]
    n = len(src)
    identity = np.eye(3)
    if n < MIN_POINTS:
        return GlobalMotion(identity, _inlier_ratio(identity, src, dst, threshold), n, "identity")

    src32, dst32 = src.astype(np.float32), dst.astype(np.float32)
    hom, _ = cv2.findHomography(src32, dst32, cv2.RANSAC, threshold, maxIters=2000, confidence=0.995)
    if _sane(hom, height, width):
        hom = hom / hom[2, 2]
        ratio = _inlier_ratio(hom, src, dst, threshold)
        if ratio >= MIN_INLIER_RATIO:
            return GlobalMotion(hom, ratio, n, "homography")

    # Fewer degrees of freedom survive where a homography overfits noise or an almost-collinear point set.
    affine, _ = cv2.estimateAffinePartial2D(src32, dst32, method=cv2.RANSAC, ransacReprojThreshold=threshold)
    if affine is not None:
        hom = np.vstack([affine.astype(np.float64), [0.0, 0.0, 1.0]])
        if _sane(hom, height, width):
            ratio = _inlier_ratio(hom, src, dst, threshold)
            if ratio >= MIN_INLIER_RATIO:
                return GlobalMotion(hom, ratio, n, "affine")
    return GlobalMotion(identity, _inlier_ratio(identity, src, dst, threshold), n, "identity")


def homography_flow(homography: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width, 2) float32 flow induced by `homography` at the pixel centres (integer coordinates)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    hom = np.asarray(homography, np.float64)
    den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
    x1 = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den
    y1 = (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den
    return np.stack([x1 - xs, y1 - ys], axis=-1).astype(np.float32)


def residual_flow(flow: np.ndarray, motion: GlobalMotion) -> np.ndarray:
    """`flow` minus the flow of the global motion: what moves relative to the camera (plus parallax)."""
    return flow.astype(np.float32, copy=False) - homography_flow(motion.homography, *flow.shape[:2])
