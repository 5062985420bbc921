"""Global motion: homography flow, RANSAC fit with a moving object, residual flow, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from annotators.global_motion import GlobalMotion, fit_global_motion, homography_flow, residual_flow

H, W = 180, 240


def camera_homography() -> np.ndarray:
    """A mild pan + zoom + rotation + perspective, like a camera between two frames."""
    angle = np.radians(0.8)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.02 * c, -s, 3.0], [s, 1.02 * c, -1.5], [2e-5, -1e-5, 1.0]])


def test_homography_flow_matches_pointwise_mapping():
    hom = camera_homography()
    flow = homography_flow(hom, H, W)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    for y, x in [(0, 0), (17, 200), (H - 1, W - 1), (90, 120)]:
        p = hom @ [x, y, 1.0]
        np.testing.assert_allclose(flow[y, x], [p[0] / p[2] - x, p[1] / p[2] - y], atol=1e-4)
    translation = np.array([[1.0, 0, 2.5], [0, 1.0, -1.0], [0, 0, 1.0]])
    np.testing.assert_allclose(homography_flow(translation, 4, 5), np.broadcast_to([2.5, -1.0], (4, 5, 2)))


def test_fit_recovers_homography():
    hom = camera_homography()
    flow = homography_flow(hom, H, W)
    motion = fit_global_motion(flow)
    assert motion.model == "homography"
    assert motion.inlier_ratio > 0.99 and 1000 <= motion.n_points <= 4000
    assert np.abs(homography_flow(motion.homography, H, W) - flow).max() < 0.05
    assert np.abs(residual_flow(flow, motion)).max() < 0.05


def test_fit_ignores_moving_object():
    hom = camera_homography()
    flow = homography_flow(hom, H, W)
    obj = np.zeros((H, W), bool)
    obj[40:120, 60:156] = True  # 80 x 96 = 17.8% of the frame... plus a small second object
    obj[150:170, 10:50] = True
    assert 0.18 < obj.mean() < 0.22
    object_motion = np.array([-6.0, 4.0], np.float32)
    flow[obj] += object_motion
    motion = fit_global_motion(flow)
    assert motion.model == "homography"
    assert 0.75 < motion.inlier_ratio < 0.85
    assert np.abs(homography_flow(motion.homography, H, W) - homography_flow(hom, H, W)).max() < 0.05
    residual = residual_flow(flow, motion)
    assert np.abs(residual[~obj]).max() < 0.05
    np.testing.assert_allclose(residual[obj], np.broadcast_to(object_motion, residual[obj].shape), atol=0.05)
    # Masking the object out gives the same camera motion with every remaining sample an inlier.
    masked = fit_global_motion(flow, weights_mask=~obj)
    assert masked.inlier_ratio > 0.99
    assert np.abs(homography_flow(masked.homography, H, W) - homography_flow(hom, H, W)).max() < 0.05


def test_zero_flow_is_identity():
    motion = fit_global_motion(np.zeros((H, W, 2), np.float32))
    assert motion.model in ("homography", "affine", "identity")
    np.testing.assert_allclose(motion.homography, np.eye(3), atol=1e-6)
    assert motion.inlier_ratio == 1.0


def test_pure_noise_falls_back_to_identity():
    rng = np.random.default_rng(0)
    flow = rng.normal(0.0, 20.0, (H, W, 2)).astype(np.float32)
    motion = fit_global_motion(flow)
    assert motion.model == "identity"
    np.testing.assert_array_equal(motion.homography, np.eye(3))
    assert motion.inlier_ratio < 0.05


def test_small_noise_is_near_identity():
    rng = np.random.default_rng(1)
    flow = rng.normal(0.0, 0.2, (H, W, 2)).astype(np.float32)
    motion = fit_global_motion(flow)
    assert motion.model in ("homography", "affine", "identity")
    assert np.abs(homography_flow(motion.homography, H, W)).max() < 0.3


def test_too_few_points_fall_back_to_identity():
    flow = np.full((H, W, 2), 3.0, np.float32)
    mask = np.zeros((H, W), bool)
    mask[90, 120] = True  # a single usable pixel: nothing can be fitted
    motion = fit_global_motion(flow, weights_mask=mask, step=1)
    assert motion == GlobalMotion(motion.homography, 0.0, 1, "identity")
    np.testing.assert_array_equal(motion.homography, np.eye(3))
    tiny = fit_global_motion(np.ones((2, 2, 2), np.float32))
    assert tiny.model == "identity" and tiny.n_points == 4
    nan = fit_global_motion(np.full((H, W, 2), np.nan, np.float32))
    assert nan.model == "identity" and nan.n_points == 0


def test_step_and_threshold_are_used():
    flow = homography_flow(camera_homography(), H, W)
    coarse = fit_global_motion(flow, step=30, ransac_px=0.1)
    assert coarse.n_points == len(range(15, H, 30)) * len(range(15, W, 30))
    assert coarse.model == "homography"
    with pytest.raises(ValueError, match="weights_mask"):
        fit_global_motion(flow, weights_mask=np.ones((2, 2), bool))


def test_degenerate_motion_is_rejected():
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    collapse = np.stack([120.0 - xs, 90.0 - ys], axis=-1)  # every pixel lands on one point: no camera does that
    motion = fit_global_motion(collapse)
    assert motion.model == "identity"
    np.testing.assert_array_equal(motion.homography, np.eye(3))
