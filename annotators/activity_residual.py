"""The residual motion of `annotators.activity`: per pixel, the motion a frame pair's camera (its homography, and
its epipolar geometry when it translates) does not explain, and where that residual lands. Pure functions of a
flow field and camera motion."""

from __future__ import annotations

import functools
import math

import numpy as np

from annotators.global_motion import homography_flow

EDGE_MARGIN = 0.03  # share of the short side next to the border where a moving camera's flow is not trusted


@functools.lru_cache(maxsize=8)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) float64 pixel-centre coordinates, shared read-only by every pair of a clip (and of the next)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def safe_homography(hom: np.ndarray) -> np.ndarray:
    """The homography, or identity when it is missing or not finite (then the camera is assumed still)."""
    hom = np.asarray(hom, np.float64)
    return hom if hom.shape == (3, 3) and np.isfinite(hom).all() and abs(hom[2, 2]) > 1e-12 else np.eye(3)


def fundamental_from_step(relative_pose: np.ndarray, k: np.ndarray) -> np.ndarray | None:
    """Fundamental matrix of a camera step (camera t+1's pose in camera t's frame, 4x4, OpenCV axes) on the
    pixel grid of intrinsics `k`; None when the step has no translation (epipolar geometry is then undefined)."""
    rotation, centre = relative_pose[:3, :3], relative_pose[:3, 3]
    norm = float(np.linalg.norm(centre))
    if not np.isfinite(relative_pose).all() or norm < 1e-12:
        return None
    r_21 = rotation.T  # maps camera-t coordinates to camera-t+1 coordinates: x2 = r_21 x1 + t_21
    t_21 = -r_21 @ (centre / norm)
    tx = np.array([[0.0, -t_21[2], t_21[1]], [t_21[2], 0.0, -t_21[0]], [-t_21[1], t_21[0], 0.0]])
    k_inv = np.linalg.inv(k)
    return k_inv.T @ (tx @ r_21) @ k_inv


def _epipolar_lines(shape: tuple[int, ...], fundamental: np.ndarray) -> tuple[np.ndarray, ...]:
    """(xs, ys, a, b, c, |(a, b)|): every pixel's epipolar line l = F p1 in the next frame, one product per
    coefficient (no (h, w, 3) stack and matrix product: the per-pair cost of the events stage is mostly such
    whole-grid passes)."""
    ys, xs = pixel_grid(*shape[:2])
    f = np.asarray(fundamental, np.float64)
    a = f[0, 0] * xs + f[0, 1] * ys + f[0, 2]
    b = f[1, 0] * xs + f[1, 1] * ys + f[1, 2]
    c = f[2, 0] * xs + f[2, 1] * ys + f[2, 2]
    return xs, ys, a, b, c, np.maximum(np.hypot(a, b), 1e-12)


def epipolar_distance(flow: np.ndarray, fundamental: np.ndarray) -> np.ndarray:
    """(h, w) pixel distance of each point's flow endpoint to its epipolar line in the next frame."""
    xs, ys, a, b, c, norm = _epipolar_lines(flow.shape, fundamental)
    return (np.abs(a * (xs + flow[..., 0]) + b * (ys + flow[..., 1]) + c) / norm).astype(np.float32)


def epipolar_residual(flow: np.ndarray, camera: np.ndarray, fundamental: np.ndarray, bound: float) -> np.ndarray:
    """(h, w) residual in pixels under a translating camera: the endpoint's distance to its epipolar line, plus
    whatever of the motion along that line (relative to the homography's prediction `camera`) exceeds `bound`
    pixels, the most parallax the step's translation can make. Unbounded, any motion along the line would count as
    parallax, so a tiny spurious translation would explain away an object that moves along its epipolar lines."""
    xs, ys, a, b, c, norm = _epipolar_lines(flow.shape, fundamental)
    distance = np.abs(a * (xs + flow[..., 0]) + b * (ys + flow[..., 1]) + c) / norm
    if not math.isfinite(bound):
        return distance.astype(np.float32)
    # the motion the homography leaves, split into across (the distance) and along the line (its direction (-b, a))
    along = np.abs((camera[..., 0] - flow[..., 0]) * b + (flow[..., 1] - camera[..., 1]) * a) / norm
    return np.hypot(distance, np.maximum(along - bound, 0.0)).astype(np.float32)


def camera_residual(
    flow: np.ndarray,
    homography: np.ndarray,
    fundamental: np.ndarray | None = None,
    parallax_bound: float = math.inf,
) -> np.ndarray:
    """(h, w) magnitude in pixels of the motion the camera does not explain.

    Non-finite flow counts as moving with the camera. Points the camera carries out of the next frame (or to
    within `EDGE_MARGIN` of its border) count as still: they have no true correspondence, and flow there is
    extrapolated, so its residual is not an event."""
    flow = np.asarray(flow, np.float32)
    h, w = flow.shape[:2]
    camera = homography_flow(safe_homography(homography), h, w)
    flow = np.where(np.isfinite(flow), flow, camera)  # no estimate: assume the point moves with the camera
    residual = np.hypot(flow[..., 0] - camera[..., 0], flow[..., 1] - camera[..., 1])
    if fundamental is not None:
        residual = np.minimum(residual, epipolar_residual(flow, camera, fundamental, parallax_bound))
    margin = EDGE_MARGIN * min(h, w)
    ys, xs = pixel_grid(h, w)
    x1, y1 = xs + camera[..., 0], ys + camera[..., 1]
    inside = (x1 >= margin) & (x1 <= w - 1 - margin) & (y1 >= margin) & (y1 <= h - 1 - margin)
    # a still camera keeps its borders: objects may enter there
    moved = np.maximum(np.abs(camera[..., 0]), np.abs(camera[..., 1])) > 0.25
    return np.where(inside | ~moved, residual, 0.0).astype(np.float32)


def splat_max(values: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Each value at its own pixel and at the pixel its flow lands on (nearest), keeping the larger (NaN wins, as in
    np.maximum); non-finite flow stays put. A compiled scatter: numpy's `maximum.at` was a fifth of the events
    stage's time."""
    from annotators.small_kernels import splat_max_into  # numba: imported on first use, not with the configs

    out = np.array(values, copy=True)
    splat_max_into(out, np.asarray(values), np.asarray(flow))
    return out
