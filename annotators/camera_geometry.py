"""The geometry of `annotators.camera`'s model selection, as pure functions of flow correspondences: sampling them,
the tests that tell parallax from objects moving on their own (`independent_movers`, `radial_parallax`), the
background a previous step predicts (`continues`, `background_homography`), and the essential matrix and its
decomposition into a rotation and a translation direction."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from annotators.camera import CameraConfig

MIN_POINTS = 24  # fewer correspondences than this cannot support a RANSAC fit worth trusting
_CHEIRALITY_POINTS = 400  # inliers that vote between the decompositions of an essential matrix


def correspondences(flow: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid points of frame t and where the (H, W, 2) flow sends them, keeping matches that stay in the frame."""
    h, w = flow.shape[:2]
    step = max(1, int(math.sqrt(h * w / n_points)))
    ys, xs = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    p1 = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    p2 = p1 + flow[ys.ravel(), xs.ravel()]
    inside = (p2[:, 0] >= 0) & (p2[:, 0] <= w - 1) & (p2[:, 1] >= 0) & (p2[:, 1] <= h - 1)
    return p1[inside], p2[inside]


def grid_components(points: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """8-connected component label (1..) of every point on the regular sampling grid of `correspondences`, taking
    only `flagged` points as foreground (0 = not flagged)."""
    labels = np.zeros(len(points), np.int32)
    if not flagged.any():
        return labels
    xs, ys = np.unique(points[:, 0]), np.unique(points[:, 1])
    step = float(np.min(np.diff(xs))) if len(xs) > 1 else float(np.min(np.diff(ys))) if len(ys) > 1 else 1.0
    gx = np.round((points[:, 0] - xs.min()) / step).astype(np.int64)
    gy = np.round((points[:, 1] - ys.min()) / step).astype(np.int64)
    grid = np.zeros((int(gy.max()) + 1, int(gx.max()) + 1), np.uint8)
    grid[gy[flagged], gx[flagged]] = 1
    _, comp = cv2.connectedComponents(grid, connectivity=8)
    labels[flagged] = comp[gy[flagged], gx[flagged]]
    return labels


def independent_movers(
    p1: np.ndarray,
    p2: np.ndarray,
    hom: np.ndarray,
    h_inlier: np.ndarray,
    e_inlier: np.ndarray,
    cfg: CameraConfig,
    max_area: float | None = None,
) -> bool:
    """True when the points only the essential matrix explains lie in at most `mover_max_blobs` compact blobs of
    homography outliers, each moving as one (its residual to the homography nearly constant): objects moving on
    their own, not parallax (see the module docstring). Parallax varies inside a blob, with depth and with the
    direction to the epipole, and shows wherever the depth differs from the dominant plane, in many places."""
    extra = e_inlier & ~h_inlier
    if not extra.any():
        return False
    labels = grid_components(p1, ~h_inlier)
    counts = np.bincount(labels[extra], minlength=labels.max() + 1)
    counts[0] = 0  # not in any outlier blob
    blobs = [int(b) for b in np.argsort(counts)[::-1][: cfg.mover_max_blobs] if counts[b] > 0]
    if not blobs or counts[blobs].sum() / extra.sum() < cfg.mover_region_share:
        return False
    members = np.isin(labels, blobs)
    # Several rigid blobs are also what near layers at constant depth show under a strafe (measured on the motion
    # corpus at the default preset: two blobs over 38 % of the points, against 8 % for two moving objects), so
    # together they may cover only half the area one mover may
    if members.mean() > (cfg.mover_max_area if max_area is None else max_area) / (1 if len(blobs) == 1 else 2):
        return False
    for blob in blobs:
        inside = labels == blob
        if counts[blob] < 0.05 * extra.sum():
            continue  # a sliver: too few points to judge, and too few to have decided the model
        residual = p2[inside] - cv2.perspectiveTransform(p1[inside][None], hom)[0]
        typical = np.median(residual, axis=0)
        spread = float(np.median(np.linalg.norm(residual - typical, axis=1)))
        if spread > cfg.mover_uniformity * float(np.linalg.norm(typical)):
            return False
    return True


def radial_parallax(
    p1: np.ndarray, p2: np.ndarray, hom: np.ndarray, size: tuple[int, int], cfg: CameraConfig
) -> np.ndarray | None:
    """The points whose homography residual is parallax about one epipole inside the (w, h) frame, when they show a
    translation along the view, else None. A homography of the dominant depth explains such a move all but a pixel
    (plane plus parallax: every residual lies on the line from the epipole through its point). See
    `CameraConfig.radial_*`.

    The epipole is the robust least-squares meeting point of the residuals' lines (iteratively reweighted: lines
    that pass far from it, such as a moving object's, lose their weight, so movers in view do not drag it away)."""
    warped = cv2.perspectiveTransform(p1[None], hom)[0]
    residual = p2 - warped
    length = np.linalg.norm(residual, axis=1)
    big = length > cfg.radial_noise_px
    if big.sum() < MIN_POINTS or big.mean() < cfg.radial_min_share:
        return None
    x, r, m = warped[big], residual[big], length[big]
    normal = np.stack([-r[:, 1], r[:, 0]], axis=1) / m[:, None]  # each residual's line: normal . (e - x) = 0
    base = np.minimum(m, 4 * cfg.radial_noise_px)  # longer residuals are surer of their direction, up to a point
    weight = base
    for _ in range(4):
        epipole = np.linalg.lstsq(normal * weight[:, None], (normal * x).sum(axis=1) * weight, rcond=None)[0]
        miss = np.abs((normal * (epipole - x)).sum(axis=1))  # the line's distance from the epipole, pixels
        weight = base / (1.0 + (miss / (0.1 * np.linalg.norm(x - epipole, axis=1) + 1.0)) ** 2)
    w, h = size
    if not (0 <= epipole[0] <= w - 1 and 0 <= epipole[1] <= h - 1):
        return None
    toward = x - epipole
    cos = np.abs((toward * r).sum(axis=1)) / np.maximum(np.linalg.norm(toward, axis=1) * m, 1e-9)
    radial = cos >= cfg.radial_consistency
    if radial.sum() < cfg.radial_min_share * len(p1):
        return None
    # parallax about a point in view comes from several sides; a strafe's or one mover's residuals are parallel
    angle = np.arctan2(r[radial, 1], r[radial, 0])
    if abs(np.mean(np.exp(2j * angle))) > cfg.radial_max_alignment:
        return None
    points = np.zeros(len(p1), bool)
    points[np.flatnonzero(big)[radial]] = True
    return points


def continues(hom: np.ndarray, points: np.ndarray, predicted: np.ndarray, tolerance_px: float) -> bool:
    """Whether homography `hom` moves the points where the previous step's homography did (`predicted`; median
    difference within `tolerance_px`): the step's dominant motion is still the camera rotation the previous step
    found, i.e. the background."""
    moved = cv2.perspectiveTransform(points[None], hom)[0] - predicted
    return bool(np.median(np.linalg.norm(moved, axis=1)) <= tolerance_px)


def background_homography(
    p1: np.ndarray, p2: np.ndarray, predicted: np.ndarray, cfg: CameraConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """(homography, inlier mask) fit to the points whose match p2 lies within 2x `ransac_px` of where the previous
    step's homography moves them (`predicted`: a steady camera rotation moves the background as it did), when they
    are at least 1 - `mover_max_area_tracked` of the points; else None."""
    near = np.linalg.norm(p2 - predicted, axis=1) <= 2 * cfg.ransac_px
    if near.sum() < MIN_POINTS or near.mean() < 1.0 - cfg.mover_max_area_tracked:
        return None
    hom, _ = cv2.findHomography(p1[near], p2[near], cv2.RANSAC, cfg.ransac_px)
    if hom is None or not np.isfinite(hom).all():
        return None
    inliers = np.linalg.norm(p2 - cv2.perspectiveTransform(p1[None], hom)[0], axis=1) <= cfg.ransac_px
    return hom, inliers.astype(np.uint8)[:, None]


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation nearest to the 3x3 matrix m (Frobenius norm, via its SVD)."""
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    return r if np.linalg.det(r) > 0 else u @ np.diag([1.0, 1.0, -1.0]) @ vt


def homography_rotation(hom: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The camera rotation R of an image homography H = K R^T K^-1 (pure rotation), projected onto SO(3)."""
    return nearest_rotation(np.linalg.inv(k) @ hom @ k).T


def essential_matrix(
    p1: np.ndarray, p2: np.ndarray, k: np.ndarray, cfg: CameraConfig
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """MAGSAC's essential matrix (the first, its best, of several solutions) and inlier mask, or (None, None)."""
    essential, mask = cv2.findEssentialMat(p1, p2, k, cv2.USAC_MAGSAC, 0.999, cfg.ransac_px)
    if essential is None or essential.shape[0] < 3 or not np.isfinite(essential[:3]).all():
        return None, None
    return essential[:3], mask


def decompose_translation(
    essential: np.ndarray, e_mask: np.ndarray, p1: np.ndarray, p2: np.ndarray, k: np.ndarray, moved: float
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(rotation, translation (unit direction x parallax), parallax) of the essential matrix's decomposition, or
    None when it is degenerate (fewer than 5 inliers) or "removing" its rotation adds image motion (more than 1.5x
    `moved`, the typical image motion as an angle): a wrong decomposition."""
    focal = float(k[0, 0])
    # The cheirality check decides between the four decompositions of E. Its default distance limit (50 baselines)
    # drops distant points as "at infinity", which with small steps is most of the scene: lift it. It votes with
    # evenly spread inliers, at most `_CHEIRALITY_POINTS` (triangulating all of them was half a step's cost; the
    # decompositions themselves come from E alone).
    inliers = np.flatnonzero(e_mask.ravel())
    if len(inliers) < 5:  # fewer than an essential matrix needs: nothing to vote with
        return None
    if len(inliers) > _CHEIRALITY_POINTS:
        inliers = inliers[np.linspace(0, len(inliers) - 1, _CHEIRALITY_POINTS).round().astype(np.int64)]
    votes = np.ones((len(inliers), 1), np.uint8)
    _, r_21, t_21, _, _ = cv2.recoverPose(essential, p1[inliers], p2[inliers], k, distanceThresh=1e6, mask=votes)
    rotation = r_21.T  # recoverPose maps camera-t points to camera-t+1 points: x2 = R x1 + t
    direction = -(r_21.T @ t_21).ravel()  # camera t+1's centre in camera t's frame
    # Parallax: image motion the rotation does not explain, as an angle.
    derotated = cv2.perspectiveTransform(p1[None], k @ r_21 @ np.linalg.inv(k))[0]
    parallax = float(np.median(np.linalg.norm(p2 - derotated, axis=1)) / focal)
    norm = float(np.linalg.norm(direction))
    if norm == 0 or not np.isfinite(norm) or not np.isfinite(parallax) or parallax > 1.5 * moved:
        return None
    return rotation, direction / norm * parallax, parallax
