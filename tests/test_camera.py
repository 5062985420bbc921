"""Camera trajectories and QCM tokens against the sample corpus's true camera motion, and synthetic renders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from annotators.camera import (
    CameraConfig,
    CameraEstimator,
    correspondences,
    estimate_step,
    flow_intrinsics,
    radial_parallax,
    trajectory,
)
from annotators.flow import estimate_flow
from annotators.qcm import quantize_steps, split_token, token_of
from pipelines.annotate import annotate_file
from pipelines.config import load_config
from pipelines.samples import load_truth
from pipelines.samples.layers import build_world, render_planes
from pipelines.samples.render import intrinsics, make_c2w, rot_x, rot_y
from pipelines.samples.scenes import to_uint8

MOUSE_OF = {"right": "→", "left": "←", "up": "↑", "down": "↓", "none": "none"}
CAMERA_VIDEOS = (
    "pan_right",
    "tilt_up",
    "pan_left",
    "forward",
    "backward",
    "strafe_right",
    "zoom_in",
    "objects",
    "static",
    "portrait",
    "odd_size",
    "blurry",
    "dark",
)


def expected_token(truth: dict) -> int:
    cam = truth["camera"]
    return token_of(cam["expected_keys"], MOUSE_OF[cam["expected_mouse"]])


@pytest.fixture(scope="module")
def corpus_results(corpus_dir: Path) -> dict[str, tuple[int, dict]]:
    """Each camera video annotated as one clip with the default preset (16 frames at 8 fps, 256x256 cover)."""
    cfg = load_config(None, ["frames.num_frames=12", "buckets.aspect_ratios=[]"])
    out = {}
    for name in CAMERA_VIDEOS:
        video = next(p for p in corpus_dir.iterdir() if p.stem == name and p.suffix != ".json" and "flow" not in p.name)
        out[name] = (expected_token(load_truth(video)), annotate_file(str(video), cfg))
    return out


def test_per_step_and_clip_tokens_match_the_true_camera_motion(corpus_results):
    steps_right = steps_total = clips_right = 0
    for name, (truth, result) in corpus_results.items():
        tokens = result["camera_tokens"]
        steps_right += int((tokens == truth).sum())
        steps_total += len(tokens)
        clips_right += int(result["qcm_token"] == truth)
        assert result["qcm_token"] == truth, f"{name}: {split_token(result['qcm_token'])} != {split_token(truth)}"
    assert steps_right / steps_total >= 0.95
    assert clips_right == len(corpus_results)


def test_static_and_object_clips_do_not_move_the_camera(corpus_results):
    for name in ("static", "objects"):
        result = corpus_results[name][1]
        assert result["qcm_token"] == 0 and result["camera_static"] and result["camera_confidence"] > 0.5
        assert np.allclose(result["camera_c2w"], np.eye(4), atol=1e-6)


def test_pure_rotation_and_zoom_are_not_translation(corpus_results):
    for name in ("pan_right", "tilt_up", "pan_left", "zoom_in"):
        c2w = corpus_results[name][1]["camera_c2w"]
        assert np.abs(c2w[:, :3, 3]).max() == 0.0, name  # no translation at all
    yaw = np.degrees(
        np.arctan2(
            corpus_results["pan_right"][1]["camera_c2w"][-1, 0, 2],
            corpus_results["pan_right"][1]["camera_c2w"][-1, 2, 2],
        )
    )
    assert yaw == pytest.approx(0.3 * 4 * 11, rel=0.25)  # 0.3 deg/frame, stride 4, 11 steps


def test_translation_directions_follow_the_truth(corpus_results):
    for name, axis, sign in (("forward", 2, 1), ("backward", 2, -1), ("strafe_right", 0, 1)):
        c2w = corpus_results[name][1]["camera_c2w"]
        direction = c2w[-1, :3, 3] / np.linalg.norm(c2w[-1, :3, 3])
        assert direction[axis] * sign > 0.9, (name, direction)


def test_outputs_are_well_formed(corpus_results):
    result = corpus_results["forward"][1]
    assert result["camera_c2w"].shape == (12, 4, 4) and result["camera_tokens"].shape == (11,)
    assert result["camera_tokens"].dtype == np.int16
    assert isinstance(result["camera_text"], str) and result["camera_text"]
    assert sum(s["end_step"] - s["start_step"] for s in result["qcm_segments"]) == 11


def render_script(script: list[tuple[str, int]], width: int = 256, height: int = 144) -> tuple[list, list[int]]:
    """Frames of a camera driven by a keyboard/mouse script through the corpus's layered world."""
    planes = build_world(7, "script", width, height, 60.0)
    k = intrinsics(width, height, 60.0)
    rot, center, frames, labels = np.eye(3), np.zeros(3), [], []
    # Per sampled step = 3 source frames of the corpus's speeds (8 fps sampling of a 24 fps video).
    moves = {
        "W": (np.array([0, 0, 0.12]), 0.0, 0.0),
        "S": (np.array([0, 0, -0.12]), 0.0, 0.0),
        "D": (np.array([0.09, 0, 0]), 0.0, 0.0),
        "A": (np.array([-0.09, 0, 0]), 0.0, 0.0),
        "→": (np.zeros(3), 1.2, 0.0),
        "←": (np.zeros(3), -1.2, 0.0),
        "↑": (np.zeros(3), 0.0, 1.0),
        "none": (np.zeros(3), 0.0, 0.0),
    }
    frames.append(render_planes(planes, k, make_c2w(rot, center), width, height))
    for action, n in script:
        step, yaw, pitch = moves[action]
        for _ in range(n):
            center = center + rot @ step
            rot = rot @ rot_y(yaw) @ rot_x(pitch)
            frames.append(render_planes(planes, k, make_c2w(rot, center), width, height))
            labels.append(token_of(action, "none") if action in "WSAD" else token_of("none", action))
    return [to_uint8(f) for f in frames], labels


def test_a_keyboard_script_rendered_into_video_is_recovered():
    script = [("W", 6), ("→", 6), ("D", 6), ("none", 4), ("←", 6), ("S", 6), ("↑", 6)]
    frames, labels = render_script(script)
    cfg = CameraConfig()
    k = flow_intrinsics((256, 144), (256, 144), (256, 144), (256, 144), 60.0)
    steps = [estimate_step(estimate_flow(a, b), k, 1.0, 3, cfg) for a, b in zip(frames, frames[1:], strict=False)]
    parallax, confidence = np.array([s.parallax for s in steps]), np.array([s.confidence for s in steps])
    predicted = quantize_steps(trajectory(steps), parallax, confidence, 3, cfg.qcm)
    accuracy = float((predicted == np.array(labels)).mean())
    assert accuracy >= 0.9, list(zip(labels, predicted.tolist(), strict=True))


def test_dark_flat_and_one_frame_clips_give_none_with_zero_confidence():
    estimator = CameraEstimator(CameraConfig())
    black = np.zeros((4, 64, 64, 3), np.uint8)
    flat_flow = np.zeros((3, 2, 64, 64), np.float32)
    common = {
        "frame_pts": np.arange(4) / 8,
        "frame_indices": np.arange(4) * 3,
        "source_size": (64, 64),
        "decoded_size": (64, 64),
    }
    out = estimator.annotate(flat_flow, black, **common)
    assert out["qcm_token"] == 0 and out["camera_confidence"] == 0.0 and not out["camera_static"]
    one = estimator.annotate(None, black[:1], np.zeros(1), np.zeros(1, int), (64, 64), (64, 64))
    assert one["qcm_token"] == 0 and one["camera_confidence"] == 0.0 and one["camera_tokens"].shape == (0,)
    noisy = np.random.default_rng(0).normal(0, 50, (3, 2, 64, 64)).astype(np.float32)  # degenerate geometry
    textured = np.random.default_rng(1).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    garbage = estimator.annotate(noisy, textured, **common)
    assert np.isfinite(garbage["camera_c2w"]).all() and 0.0 <= garbage["camera_confidence"] <= 1.0


# -- independent movers: a minority of moving pixels cannot flip rotation into translation ------------------------

GRID_H, GRID_W = 64, 112


def _k() -> np.ndarray:
    f = (GRID_W / 2) / np.tan(np.radians(30))
    return np.array([[f, 0, (GRID_W - 1) / 2], [0, f, (GRID_H - 1) / 2], [0, 0, 1.0]])


def _pixels() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:GRID_H, 0:GRID_W].astype(np.float64)


def _rotation_flow(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """(H, W, 2) flow of a pure camera rotation: x2 = K R^T K^-1 x1."""
    k, (yy, xx) = _k(), _pixels()
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    hom = k @ (ry @ rx).T @ np.linalg.inv(k)
    q = hom @ np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    q = (q[:2] / q[2]).T.reshape(GRID_H, GRID_W, 2)
    return (q - np.stack([xx, yy], -1)).astype(np.float32)


def _layered_translation_flow(rng: np.random.Generator, tx: float, forward: float) -> np.ndarray:
    """Flow of a translating camera over a far plane with discs nearer by 2.5x and 5x (as the corpus's world)."""
    k, (yy, xx) = _k(), _pixels()
    depth = np.full((GRID_H, GRID_W), 20.0)
    for d, n, r in ((8.0, 12, 6), (4.0, 6, 5)):
        for _ in range(n):
            cy, cx = rng.integers(0, GRID_H), rng.integers(0, GRID_W)
            depth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = d
    x = (xx - k[0, 2]) / k[0, 0] * depth
    y = (yy - k[1, 2]) / k[1, 1] * depth
    z = depth - forward
    u, v = k[0, 0] * (x - tx) / z + k[0, 2], k[1, 1] * y / z + k[1, 2]
    return np.stack([u - xx, v - yy], -1).astype(np.float32)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("speed", [2.0, 5.0])
def test_a_minority_mover_cannot_turn_a_pan_into_a_translation(share: float, speed: float):
    rng = np.random.default_rng(0)
    flow = _rotation_flow(1.0, 0.3)
    sh, sw = int(GRID_H * np.sqrt(share)), int(GRID_W * np.sqrt(share))
    flow[10 : 10 + sh, 20 : 20 + sw] += [speed, 0.3 * speed]  # an object moving on its own
    flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
    step = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
    assert step.model == "rotation" and np.allclose(step.translation, 0)
    assert np.degrees(np.arccos(np.clip(step.rotation[0, 0], -1, 1))) > 0.5  # the pan is still there


def test_pure_rotation_stays_rotation():
    rng = np.random.default_rng(1)
    for yaw, pitch in ((1.0, 0.0), (0.0, -0.8), (2.0, 1.0)):
        flow = _rotation_flow(yaw, pitch) + rng.normal(0, 0.05, (GRID_H, GRID_W, 2)).astype(np.float32)
        assert estimate_step(flow, _k(), 0.5, 1, CameraConfig()).model == "rotation"


@pytest.mark.parametrize(("tx", "forward"), [(0.3, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 2.0)])
def test_parallax_spread_over_the_scene_stays_translation(tx: float, forward: float):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        flow = _layered_translation_flow(rng, tx, forward) + rng.normal(0, 0.05, (GRID_H, GRID_W, 2)).astype(np.float32)
        step = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
        assert step.model == "translation", (seed, tx, forward)


def test_flow_no_model_explains_is_unknown_not_a_guess():
    """A pan whose flow is mostly noise (a blurred whip pan leaves such fields): neither the homography nor the
    essential matrix explains `camera.min_inliers` of the points, so the step is `unknown` with identity motion and
    zero confidence; the same pan with little noise is a rotation."""
    rng = np.random.default_rng(3)
    pan = _rotation_flow(3.0)
    noisy = pan + rng.normal(0, 6.0, pan.shape).astype(np.float32)
    step = estimate_step(noisy, _k(), 0.5, 1, CameraConfig())
    assert step.model == "unknown" and step.confidence == 0.0
    assert np.allclose(step.rotation, np.eye(3)) and np.allclose(step.translation, 0)
    clean = pan + rng.normal(0, 0.05, pan.shape).astype(np.float32)
    assert estimate_step(clean, _k(), 0.5, 1, CameraConfig()).model == "rotation"
    lenient = estimate_step(noisy, _k(), 0.5, 1, CameraConfig(min_inliers=0.0))
    assert lenient.model != "unknown"  # without the rule the same field is read as some motion


@pytest.mark.parametrize("speeds", [(3.0, 1.5), (5.0, 2.5), (4.0, -4.0)])
def test_two_movers_cannot_turn_a_pan_into_a_translation(speeds: tuple[float, float]):
    """Two objects moving on their own under a pan (the second at half the speed, or the opposite way): each is a
    compact blob moving as one, so the pan stays a rotation; one blob per object is what `mover_max_blobs` = 2
    allows, and with 1 the same step reads as a translation."""
    rng = np.random.default_rng(4)
    flow = _rotation_flow(1.0, 0.2)
    flow[8:22, 10:30] += [0.2 * speeds[0], speeds[0]]  # about 4 % of the points each
    flow[40:54, 70:90] += [0.2 * speeds[1], speeds[1]]
    flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
    step = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
    assert step.model == "rotation" and np.allclose(step.translation, 0)
    assert estimate_step(flow, _k(), 0.5, 1, CameraConfig(mover_max_blobs=1)).model == "translation"


def _zoom_flow(scale: float) -> np.ndarray:
    """Flow of a zoom (a focal change, no camera move): every pixel scales about the principal point."""
    k, (yy, xx) = _k(), _pixels()
    return np.stack([(scale - 1) * (xx - k[0, 2]), (scale - 1) * (yy - k[1, 2])], -1).astype(np.float32)


@pytest.mark.parametrize("forward", [0.2, 0.3])
def test_a_slow_dolly_through_layered_depth_is_a_forward_translation(forward: float):
    """A dolly whose parallax is a pixel or less: the essential matrix barely beats the homography on inliers, but
    the homography's residuals lie on lines through one epipole in view (`radial_parallax`), so the step is a
    translation straight ahead; without that rule the same steps read as a rotation (a zoom-like none)."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        flow = _layered_translation_flow(rng, 0.0, forward)
        flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
        step = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
        assert step.model == "translation" and step.translation[2] / step.parallax > 0.95, (seed, forward)
        if forward == 0.2:
            assert estimate_step(flow, _k(), 0.5, 1, CameraConfig(radial_min_share=1.0)).model == "rotation"


@pytest.mark.parametrize("scale", [1.01, 1.03, 0.97])
def test_a_zoom_has_no_radial_parallax(scale: float):
    """A zoom scales the image about the centre as a dolly toward a flat wall would, but leaves the homography no
    residual beyond noise: no parallax about an epipole, so it stays a rotation with (almost) none; the same with an
    object moving in view (its residuals are parallel, about no point in view)."""
    rng = np.random.default_rng(5)
    flow = _zoom_flow(scale) + rng.normal(0, 0.05, (GRID_H, GRID_W, 2)).astype(np.float32)
    p1, p2 = correspondences(flow, CameraConfig().grid_points)
    hom, _ = cv2.findHomography(p1, p2, cv2.RANSAC, 1.0)
    assert radial_parallax(p1, p2, hom, (GRID_W, GRID_H), CameraConfig()) is None
    step = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
    assert step.model == "rotation" and np.degrees(np.arccos(np.clip(step.rotation[0, 0], -1, 1))) < 0.2
    flow[10:24, 20:44] += [3.0, 0.6]  # about 5 % of the points, moving on their own
    assert estimate_step(flow, _k(), 0.5, 1, CameraConfig()).model == "rotation"


def test_a_dolly_with_an_object_moving_in_view_stays_forward():
    """Objects moving during a dolly: the essential matrix fit to every point can absorb them and decompose the step
    wrongly; the second fit, on the dominant depth and the radial parallax only, keeps the dolly going forward."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        flow = _layered_translation_flow(rng, 0.0, 0.3)
        flow[8:22, 10:34] += [3.0, 0.0]  # about 5 % of the points
        flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
        step = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
        assert step.model == "translation" and step.translation[2] / step.parallax > 0.9, seed


def _yaw_deg(step) -> float:
    return float(np.degrees(np.arctan2(step.rotation[0, 2], step.rotation[0, 0])))


@pytest.mark.parametrize("share", [0.45, 0.55, 0.65])
def test_a_near_object_filling_most_of_the_view_cannot_take_over_a_steady_pan(share: float):
    """An object covering about half the view or more starts moving under a steady pan: on its own the step reads as
    a translation or as the object's motion, but the previous step's homography (the pan) still predicts the
    background, so the step stays the pan's rotation and the object is a mover."""
    rng = np.random.default_rng(0)
    pan = _rotation_flow(1.0, 0.2)
    before = estimate_step(pan + rng.normal(0, 0.05, pan.shape).astype(np.float32), _k(), 0.5, 1, CameraConfig())
    assert before.model == "rotation" and before.homography is not None
    flow = pan.copy()
    sh, sw = int(GRID_H * np.sqrt(share)), int(GRID_W * np.sqrt(share))
    flow[2 : 2 + sh, 4 : 4 + sw] += [3.0, 0.6]
    flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
    alone = estimate_step(flow, _k(), 0.5, 1, CameraConfig())
    assert alone.model == "translation" or abs(_yaw_deg(alone) - 1.0) > 0.05
    tracked = estimate_step(flow, _k(), 0.5, 1, CameraConfig(), before.homography)
    assert tracked.model == "rotation" and abs(_yaw_deg(tracked) - 1.0) < 0.05
