"""Event activity math: hysteresis, phase, soft threshold, spatial statistics, epipolar geometry, camera residual,
splatting, and the change -> activity -> stats chain on synthetic clips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from annotators import activity as act
from annotators import activity_residual as residual
from annotators.global_motion import homography_flow

# Camera of the epipolar tests: 128x96 pixels, fx = fy = 200, principal point at the image centre.
IMG_H, IMG_W = 96, 128
K = np.array([[200.0, 0.0, 63.5], [0.0, 200.0, 47.5], [0.0, 0.0, 1.0]])

# Synthetic clip of the chain tests: 10 frames, a 64x64 flow grid, 8 fps.
CLIP_T, FLOW_HW, PAIR_SECONDS = 10, 64, 0.125
BLOCK, BLOCK_SPEED, BLOCK_Y0, BLOCK_X0 = 16, 4, 24, 20
MOVING_PAIRS = range(3, 7)


# ---------------------------------------------------------------- helpers


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def rot_y(degrees: float) -> np.ndarray:
    """Rotation about the camera's y axis (yaw in OpenCV axes)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def pose(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, centre
    return out


def pixel_grid(h: int, w: int) -> np.ndarray:
    """(h, w, 3) homogeneous pixel coordinates (x, y, 1)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([xs, ys, np.ones_like(xs)], axis=-1)


def static_scene_flow(rotation: np.ndarray, centre: np.ndarray, seed: int = 0) -> np.ndarray:
    """(h, w, 2) flow of a static scene with random depth per pixel of camera t, seen from camera t+1 whose pose
    in camera t's frame is [rotation | centre]: x2 = K R^T (X - C)."""
    p1 = pixel_grid(IMG_H, IMG_W)
    depth = np.random.default_rng(seed).uniform(2.0, 10.0, (IMG_H, IMG_W, 1))
    points = depth * (p1 @ np.linalg.inv(K).T)
    cam2 = (points - centre) @ rotation  # row-wise R^T (X - C)
    p2 = cam2 @ K.T
    return (p2[..., :2] / p2[..., 2:3] - p1[..., :2]).astype(np.float32)


def yaw_step() -> tuple[np.ndarray, np.ndarray]:
    """A 2-degree yaw with a sideways-and-forward translation: (rotation, centre)."""
    return rot_y(2.0), np.array([0.1, 0.0, 0.3])


def clip_flows(pairs: range = MOVING_PAIRS, speed: float = BLOCK_SPEED) -> np.ndarray:
    """(T-1, 64, 64, 2) flow: still background, a 16x16 block moving right by `speed` px during `pairs`."""
    flows = np.zeros((CLIP_T - 1, FLOW_HW, FLOW_HW, 2), np.float32)
    for p in pairs:
        x = block_x(p)
        flows[p, BLOCK_Y0 : BLOCK_Y0 + BLOCK, x : x + BLOCK, 0] = speed
    return flows


def block_x(pair: int) -> int:
    """Left edge of the block at the first frame of `pair`."""
    return BLOCK_X0 + BLOCK_SPEED * (pair - MOVING_PAIRS.start)


def block_cells(pair: int, grid: tuple[int, int]) -> np.ndarray:
    """(gh, gw) bool: the grid cells the block touches in either frame of `pair`."""
    cell_h, cell_w = FLOW_HW // grid[0], FLOW_HW // grid[1]
    mask = np.zeros((FLOW_HW, FLOW_HW), bool)
    x = block_x(pair)
    mask[BLOCK_Y0 : BLOCK_Y0 + BLOCK, x : x + BLOCK + BLOCK_SPEED] = True
    return mask.reshape(grid[0], cell_h, grid[1], cell_w).any(axis=(1, 3))


def run_chain(
    flows: np.ndarray, grid: tuple[int, int], homographies: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, act.EventStats]:
    """change_maps -> activity_maps -> event_stats with default params: (change, activity, active, stats)."""
    n = len(flows)
    homs = np.repeat(np.eye(3)[None], n, axis=0) if homographies is None else homographies
    seconds = np.full(n, PAIR_SECONDS)
    params = act.ActivityParams()
    change = act.change_maps(flows, homs, seconds, grid)
    activity, active = act.activity_maps(change, act.speed_floors(seconds, params), params)
    return change, activity, active, act.event_stats(activity, active, change)


def one_hot(n: int, index: int = 0) -> np.ndarray:
    v = np.zeros(n)
    v[index] = 1.0
    return v


# ---------------------------------------------------------------- hysteresis


def test_hysteresis_flicker_between_thresholds_never_turns_on():
    flicker = np.random.default_rng(1).uniform(0.381, 0.619, (50, 3, 4))
    out = act.hysteresis(flicker)
    assert out.shape == flicker.shape and out.dtype == np.uint8
    assert not out.any()


def test_hysteresis_flicker_after_spike_stays_on():
    flicker = np.random.default_rng(2).uniform(0.381, 0.619, 40)
    signal = np.concatenate([[0.1, 0.7], flicker])[:, None]
    out = act.hysteresis(signal)[:, 0]
    assert out[0] == 0 and out[1:].all()
    # ...until a drop to the off threshold, after which flicker keeps it off again.
    signal = np.concatenate([[0.7], flicker[:10], [0.3], flicker[10:]])[:, None]
    out = act.hysteresis(signal)[:, 0]
    assert out[:11].all() and not out[11:].any()


def test_hysteresis_boundaries_are_inclusive():
    on, off = 0.62, 0.38
    signal = np.array([0.5, np.nextafter(on, 0.0), on, 0.5, np.nextafter(off, 1.0), off, 0.5])
    np.testing.assert_array_equal(act.hysteresis(signal, on, off), [0, 0, 1, 1, 1, 0, 0])
    # Custom thresholds are honoured.
    np.testing.assert_array_equal(act.hysteresis(np.array([0.5, 0.8, 0.3, 0.2]), 0.8, 0.2), [0, 1, 1, 0])


def test_hysteresis_is_independent_per_cell():
    rng = np.random.default_rng(3)
    signal = rng.uniform(0.0, 1.0, (30, 2, 3)).astype(np.float32)
    out = act.hysteresis(signal)
    assert out.shape == (30, 2, 3) and out.dtype == np.uint8
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(out[:, i, j], act.hysteresis(signal[:, i, j]))
    # Changing one cell's history leaves the others untouched.
    edited = signal.copy()
    edited[:, 0, 0] = 1.0
    out2 = act.hysteresis(edited)
    assert out2[:, 0, 0].all()
    np.testing.assert_array_equal(out2.reshape(30, -1)[:, 1:], out.reshape(30, -1)[:, 1:])


# ---------------------------------------------------------------- phase


def test_phase_is_cumulative_share():
    mass = np.random.default_rng(4).uniform(0.0, 3.0, 25)
    mass[5:9] = 0.0
    out = act.phase(mass)
    assert out.shape == (25,) and out.dtype == np.float32
    assert (np.diff(out) >= 0).all()
    assert out[-1] == 1.0
    assert out[0] == pytest.approx(mass[0] / mass.sum(), rel=1e-6)
    np.testing.assert_allclose(out, np.cumsum(mass) / mass.sum(), rtol=1e-5, atol=1e-7)
    assert out[5] == out[8]  # no mass, no progress


def test_phase_zero_mass_and_bad_values():
    np.testing.assert_array_equal(act.phase(np.zeros(6)), np.zeros(6))
    assert act.phase(np.zeros(6)).dtype == np.float32
    np.testing.assert_array_equal(act.phase(np.array([-1.0, np.nan, -3.0])), np.zeros(3))
    out = act.phase(np.array([1.0, np.nan, -5.0, 3.0, np.nan]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [0.25, 0.25, 0.25, 1.0, 1.0], rtol=1e-6)


# ---------------------------------------------------------------- soft threshold


@pytest.mark.parametrize(("center", "softness"), [(0.5, 0.1), (0.3, 0.05), (2.0, 0.3), (0.5, 0.01)])
def test_soft_threshold_shape(center: float, softness: float):
    assert (act.soft_threshold(np.array([-5.0, -1e-3, 0.0]), center, softness) == 0.0).all()
    x = np.linspace(1e-3, center + 4 * softness, 300)
    y = act.soft_threshold(x, center, softness)
    assert y.dtype == np.float32
    assert (y >= 0.0).all() and (y <= 1.0).all()
    assert (np.diff(y.astype(np.float64)) > 0).all()
    far = act.soft_threshold(np.array([center + 10 * softness, center + 100 * softness, 1e6]), center, softness)
    assert (far > 0.999).all() and (far <= 1.0).all()
    assert 0.4 < float(act.soft_threshold(np.array([center]), center, softness)[0]) < 0.6


def test_soft_threshold_matches_rescaled_sigmoid():
    x = np.array([0.1, 0.4, 0.5, 0.7])
    sig = 1.0 / (1.0 + np.exp(-(x - 0.5) / 0.1))
    floor = 1.0 / (1.0 + math.exp(0.5 / 0.1))
    np.testing.assert_allclose(act.soft_threshold(x, 0.5, 0.1), (sig - floor) / (1.0 - floor), rtol=1e-6)


# ---------------------------------------------------------------- spatial statistics


@pytest.mark.parametrize("n", [2, 16, 100])
def test_statistics_extremes(n: int):
    uniform, single = np.full(n, 0.7), one_hot(n, n // 2) * 3.0
    assert act.gini(uniform) == pytest.approx(0.0, abs=1e-12)
    assert act.gini(single) == pytest.approx(1.0)
    assert act.spatial_entropy(uniform) == pytest.approx(1.0)
    assert act.spatial_entropy(single) == pytest.approx(0.0, abs=1e-12)
    assert act.concentration(single) == pytest.approx(1.0)
    if n > 2:  # with two cells the top 10% is one cell of two, so uniform is the only reference
        assert act.concentration(uniform) == pytest.approx(0.0, abs=1e-12)
    for fn in (act.gini, act.spatial_entropy, act.concentration):
        assert fn(np.zeros(n)) == 0.0


def test_statistics_ordering():
    rng = np.random.default_rng(5)
    spread = rng.uniform(0.5, 1.0, (8, 8))
    focused = spread * 0.05
    focused[2:4, 3:5] = 5.0  # the same map with most of its mass moved into 4 cells
    assert act.gini(focused) > act.gini(spread) + 0.3
    assert act.concentration(focused) > act.concentration(spread) + 0.3
    assert act.spatial_entropy(focused) < act.spatial_entropy(spread) - 0.2
    # Scale invariance and ignoring of negative values.
    for fn in (act.gini, act.spatial_entropy, act.concentration):
        assert fn(focused * 7.0) == pytest.approx(fn(focused))
    assert act.gini(np.array([-1.0, 0.0, 0.0, 2.0])) == pytest.approx(1.0)


def test_concentration_top_share_rounds_up():
    v = np.zeros(16)
    v[[3, 9]] = 1.0  # top 10% of 16 cells = 2 cells (rounded up), which hold everything
    assert act.concentration(v) == pytest.approx(1.0)
    v = np.zeros(16)
    v[:4] = 1.0  # top 2 cells hold half: (1/2 - 2/16) / (1 - 2/16)
    assert act.concentration(v) == pytest.approx(3.0 / 7.0)
    assert act.concentration(v, share=0.25) == pytest.approx(1.0)
    assert act.concentration(np.ones(5), share=1.0) == 1.0  # top share covers every cell


def test_entropy_of_half_the_cells():
    v = np.zeros(16)
    v[:4] = 1.0  # uniform over 4 of 16 cells: log 4 / log 16
    assert act.spatial_entropy(v) == pytest.approx(0.5)
    assert act.gini(v) == pytest.approx(0.8)  # (1 - 4/16) * 16/15


# ---------------------------------------------------------------- epipolar geometry


def test_fundamental_of_static_scene_gives_zero_epipolar_distance():
    rotation, centre = yaw_step()
    flow = static_scene_flow(rotation, centre)
    assert np.abs(flow).max() > 5.0  # real parallax, not a trivial flow
    fundamental = residual.fundamental_from_step(pose(rotation, centre), K)
    assert fundamental is not None and fundamental.shape == (3, 3)
    assert np.linalg.matrix_rank(fundamental, tol=1e-9 * np.abs(fundamental).max()) == 2
    dist = residual.epipolar_distance(flow, fundamental)
    assert dist.shape == (IMG_H, IMG_W) and dist.dtype == np.float32
    assert dist.max() < 1e-3
    # The same cloud seen through a wrong convention (R instead of R^T) is far off its lines.
    wrong = residual.fundamental_from_step(pose(rotation.T, centre), K)
    assert residual.epipolar_distance(flow, wrong).max() > 1.0


@pytest.mark.parametrize("offset", [0.5, 3.0, -7.0])
def test_perpendicular_offset_gives_its_distance(offset: float):
    rotation, centre = yaw_step()
    flow = static_scene_flow(rotation, centre, seed=1)
    fundamental = residual.fundamental_from_step(pose(rotation, centre), K)
    y, x = 30, 90
    line = fundamental @ np.array([x, y, 1.0])
    normal = line[:2] / np.hypot(line[0], line[1])
    moved = flow.copy()
    moved[y, x] += (offset * normal).astype(np.float32)
    dist = residual.epipolar_distance(moved, fundamental)
    assert dist[y, x] == pytest.approx(abs(offset), abs=1e-3)
    others = np.ones(dist.shape, bool)
    others[y, x] = False
    assert dist[others].max() < 1e-3


def test_fundamental_undefined_without_translation():
    assert residual.fundamental_from_step(pose(rot_y(3.0), np.zeros(3)), K) is None
    assert residual.fundamental_from_step(np.eye(4), K) is None
    bad = pose(rot_y(1.0), np.array([0.1, 0.0, 0.0]))
    bad[0, 0] = np.nan
    assert residual.fundamental_from_step(bad, K) is None


def test_fundamental_ignores_translation_scale():
    rotation, centre = yaw_step()
    flow = static_scene_flow(rotation, centre, seed=2)
    flow[10:20, 10:20] += 4.0
    small = residual.fundamental_from_step(pose(rotation, centre), K)
    large = residual.fundamental_from_step(pose(rotation, centre * 50.0), K)
    far, near = residual.epipolar_distance(flow, large), residual.epipolar_distance(flow, small)
    np.testing.assert_allclose(far, near, atol=1e-4)


# ---------------------------------------------------------------- camera residual


def test_residual_of_pure_camera_motion_is_zero():
    hom = translation(2.5, -1.0)
    flow = homography_flow(hom, IMG_H, IMG_W)
    res = residual.camera_residual(flow, hom)
    assert res.shape == (IMG_H, IMG_W) and res.dtype == np.float32
    assert res.max() < 1e-5
    # A rotation-like homography (the infinite homography of a 2-degree yaw) likewise.
    rot = K @ rot_y(2.0).T @ np.linalg.inv(K)
    assert residual.camera_residual(homography_flow(rot, IMG_H, IMG_W), rot).max() < 1e-4


def test_residual_isolates_moving_square():
    hom = translation(2.5, -1.0)
    flow = homography_flow(hom, IMG_H, IMG_W)
    square = np.zeros((IMG_H, IMG_W), bool)
    square[40:56, 56:72] = True
    flow[square, 0] += 5.0
    res = residual.camera_residual(flow, hom)
    np.testing.assert_allclose(res[square], 5.0, atol=1e-4)
    assert res[~square].max() < 1e-5


def test_residual_wrong_homography_is_not_zero():
    flow = homography_flow(translation(2.5, -1.0), IMG_H, IMG_W)
    res = residual.camera_residual(flow, np.eye(3))
    np.testing.assert_allclose(res, math.hypot(2.5, 1.0), atol=1e-5)  # still camera: borders kept


def test_residual_edge_margin_only_for_moving_camera():
    margin = residual.EDGE_MARGIN * min(IMG_H, IMG_W)  # 2.88 px
    still = np.zeros((IMG_H, IMG_W, 2), np.float32)
    still[:, :3, 0] = 4.0  # something entering at the left border of a still camera
    res = residual.camera_residual(still, np.eye(3))
    np.testing.assert_allclose(res[:, :3], 4.0)
    hom = translation(-6.0, 0.0)  # a pan carrying the left columns out of frame
    flow = homography_flow(hom, IMG_H, IMG_W)
    flow[..., 0] += 4.0  # everything moves 4 px relative to the camera
    res = residual.camera_residual(flow, hom)
    ys, xs = np.mgrid[0:IMG_H, 0:IMG_W]
    x1 = xs - 6.0
    inside = (x1 >= margin) & (x1 <= IMG_W - 1 - margin) & (ys >= margin) & (ys <= IMG_H - 1 - margin)
    assert (~inside).sum() > 6 * IMG_H  # the carried-out columns and the margin rows
    assert (res[~inside] == 0.0).all()
    np.testing.assert_allclose(res[inside], 4.0, atol=1e-5)


def test_residual_tiny_camera_motion_keeps_borders():
    hom = translation(0.2, 0.0)  # below the 0.25 px "camera moves" bar
    flow = homography_flow(hom, IMG_H, IMG_W)
    flow[..., 1] += 3.0
    np.testing.assert_allclose(residual.camera_residual(flow, hom), 3.0, atol=1e-5)


def test_residual_nan_flow_is_finite():
    hom = translation(2.5, -1.0)
    flow = homography_flow(hom, IMG_H, IMG_W)
    flow[10:20, 30:40] = np.nan
    flow[50, 60] = np.inf
    res = residual.camera_residual(flow, hom)
    assert np.isfinite(res).all()
    finite = np.isfinite(flow).all(axis=-1)
    assert res[finite].max() < 1e-5  # the bad pixels do not leak into their neighbours
    still = np.full((IMG_H, IMG_W, 2), np.nan, np.float32)
    assert (residual.camera_residual(still, np.eye(3)) == 0.0).all()
    # A non-finite homography is treated as a still camera.
    np.testing.assert_array_equal(residual.safe_homography(np.full((3, 3), np.nan)), np.eye(3))
    np.testing.assert_array_equal(residual.safe_homography(np.zeros((3, 3))), np.eye(3))
    np.testing.assert_array_equal(residual.safe_homography(translation(1.0, 2.0)), translation(1.0, 2.0))


def test_residual_with_fundamental_explains_parallax():
    rotation, centre = yaw_step()
    flow = static_scene_flow(rotation, centre, seed=3)
    rot_hom = K @ rotation.T @ np.linalg.inv(K)  # the camera's rotation: all a homography can explain
    fundamental = residual.fundamental_from_step(pose(rotation, centre), K)
    without = residual.camera_residual(flow, rot_hom)
    with_f = residual.camera_residual(flow, rot_hom, fundamental)
    assert np.median(without) > 1.0
    assert with_f.max() < 1e-3
    # An object moving off its epipolar line keeps its residual with F.
    obj = (slice(40, 56), slice(56, 72))
    flow[obj] += np.array([0.0, 6.0], np.float32)
    with_f = residual.camera_residual(flow, rot_hom, fundamental)
    assert np.median(with_f[obj]) > 1.0
    outside = np.ones((IMG_H, IMG_W), bool)
    outside[obj] = False
    assert with_f[outside].max() < 1e-3


def test_parallax_bound_keeps_an_object_moving_along_tiny_translation_epipolar_lines():
    # A pan with a spurious sideways translation of 0.002 (the camera mistook part of an object for parallax): the
    # epipolar lines are horizontal, so an object sliding 8 px sideways lies on them. Unbounded, the epipolar
    # distance explains it away; bounded by the parallax such a translation can make, it stays an event.
    rotation, centre = rot_y(1.0), np.array([0.002, 0.0, 0.0])
    flow = static_scene_flow(rotation, centre, seed=5)
    rot_hom = K @ rotation.T @ np.linalg.inv(K)
    fundamental = residual.fundamental_from_step(pose(rotation, centre), K)
    obj = (slice(24, 40), slice(24, 40))
    flow[obj] += np.array([8.0, 0.0], np.float32)
    bound = 4.0 * np.linalg.norm(centre) * K[0, 0] + 1.0
    unbounded = residual.camera_residual(flow, rot_hom, fundamental)
    bounded = residual.camera_residual(flow, rot_hom, fundamental, bound)
    assert np.median(unbounded[obj]) < 0.5  # explained away as parallax
    assert np.median(bounded[obj]) > 8.0 - bound - 0.5  # only the bound's worth is forgiven
    outside = np.ones((IMG_H, IMG_W), bool)
    outside[obj] = False
    assert bounded[outside].max() < 1e-3  # the static scene's true parallax is within the bound
    # A bound never adds residual: it is the plain residual at most, and the epipolar distance at least.
    assert (bounded <= residual.camera_residual(flow, rot_hom) + 1e-5).all()
    assert (bounded >= unbounded - 1e-5).all()


# ---------------------------------------------------------------- splatting, pooling, normalization


def test_splat_max_copies_value_to_landing_pixel():
    values = np.zeros((10, 12), np.float32)
    values[4, 5] = 2.0
    flow = np.zeros((10, 12, 2), np.float32)
    flow[4, 5] = (3.0, 2.0)
    out = residual.splat_max(values, flow)
    expected = values.copy()
    expected[6, 8] = 2.0  # x + 3, y + 2
    np.testing.assert_array_equal(out, expected)
    assert values[6, 8] == 0.0  # input untouched


def test_splat_max_keeps_larger_and_rounds():
    values = np.zeros((6, 6), np.float32)
    values[1, 1], values[3, 3] = 1.0, 5.0
    flow = np.zeros((6, 6, 2), np.float32)
    flow[3, 3] = (-2.4, -1.6)  # lands on round(0.6, 1.4) = (x 1, y 1)
    flow[1, 1] = (1.8, 2.2)  # lands on round(2.8, 3.2) = (3, 3), smaller than what is there
    out = residual.splat_max(values, flow)
    assert out[1, 1] == 5.0 and out[3, 3] == 5.0
    assert out.sum() == 10.0


def test_splat_max_drops_values_leaving_the_image():
    values = np.ones((5, 7), np.float32)
    flow = np.zeros((5, 7, 2), np.float32)
    flow[..., 0] = 100.0
    flow[0, 0] = (-50.0, -50.0)
    flow[1, 1] = (np.nan, np.inf)
    out = residual.splat_max(values, flow)
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("seed", range(4))
def test_splat_max_is_numpys_maximum_at(seed: int):
    """The compiled scatter gives numpy's `maximum.at` result exactly: random flows with collisions, half-pixel
    ties, non-finite and huge values, NaN values, and a non-contiguous flow."""
    rng = np.random.default_rng(seed)
    h, w = 23, 31
    values = rng.uniform(-1.0, 3.0, (h, w)).astype(np.float32)
    values[rng.random((h, w)) < 0.03] = np.nan
    flow = np.round(rng.normal(0.0, 3.0, (h, w, 2)) * 2) / 2  # many exact .5: rounding ties to even
    bad = rng.random((h, w)) < 0.05
    flow[bad] = rng.choice([np.nan, np.inf, -np.inf, 1e30], (int(bad.sum()), 2))
    flow = np.asfortranarray(flow.astype(np.float32))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    clean = np.nan_to_num(flow, nan=0.0, posinf=0.0, neginf=0.0)
    tx, ty = np.rint(xs + clean[..., 0]), np.rint(ys + clean[..., 1])
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    want = values.copy()
    np.maximum.at(want, (ty[inside].astype(np.int64), tx[inside].astype(np.int64)), values[inside])
    np.testing.assert_array_equal(residual.splat_max(values, flow), want)


def test_pool_is_area_average():
    values = np.random.default_rng(6).uniform(0.0, 1.0, (8, 12)).astype(np.float32)
    pooled = act.pool(values, (2, 3))
    np.testing.assert_allclose(pooled, values.reshape(2, 4, 3, 4).mean(axis=(1, 3)), rtol=1e-5)
    np.testing.assert_array_equal(act.pool(values, (8, 12)), values)


def test_smooth3x3_box_average():
    impulse = np.zeros((7, 7), np.float32)
    impulse[3, 3] = 9.0
    out = act.smooth3x3(impulse)
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = 1.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(act.smooth3x3(np.full((4, 5), 0.3)), 0.3, rtol=1e-6)
    corner = np.zeros((5, 5), np.float32)
    corner[0, 0] = 9.0  # replicated border: the corner cell fills 4 of its own 9 window places
    out = act.smooth3x3(corner)
    assert out[0, 0] == pytest.approx(4.0) and out[0, 1] == pytest.approx(2.0) and out[1, 1] == pytest.approx(1.0)


def test_robust_normalize_noise_below_floor_stays_below_one():
    min_scale = 0.05
    noise = np.random.default_rng(7).uniform(0.0, 0.9 * min_scale, (16, 16))
    out = act.robust_normalize(noise, min_scale)
    assert out.max() < 1.0
    np.testing.assert_allclose(out, noise / min_scale, rtol=1e-6)


def test_robust_normalize_scale_from_quantile():
    frame = np.arange(101, dtype=np.float64)  # 90th percentile 90
    out = act.robust_normalize(frame, 0.01, quantile=0.9)
    np.testing.assert_allclose(out, frame / 90.0, rtol=1e-6)
    assert out[0] == 0.0 and out[90] == pytest.approx(1.0)


def test_above_median_is_the_frame_baseline():
    frame = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.nan]])  # NaN counts as 0: median of 0..5 is 2.5
    np.testing.assert_allclose(act.above_median(frame), [[0.0, 0.0, 0.5], [1.5, 2.5, 0.0]])


def test_speed_floors_takes_larger_floor():
    params = act.ActivityParams(min_speed=0.02, min_shift=0.004)
    seconds = np.array([0.05, 0.2, 0.4, 1.0, 0.0])
    # min_shift / seconds: 0.08, 0.02, 0.01, 0.004, (huge: seconds clamped to 1e-6)
    np.testing.assert_allclose(act.speed_floors(seconds, params), [0.08, 0.02, 0.02, 0.02, 4000.0])


# ---------------------------------------------------------------- main window


def test_main_window_picks_run_with_most_activity():
    active = np.zeros((10, 2, 2), np.uint8)
    activity = np.zeros((10, 2, 2), np.float32)
    active[1:3, 0, 0], activity[1:3] = 1, 5.0  # short but strong
    active[5:9, 1, 1], activity[5:9, 1, 1] = 1, 1.0  # long but weak
    assert act.main_window(active, activity) == (1, 2)
    activity[5:9] = 5.0
    assert act.main_window(active, activity) == (5, 8)
    active[9, 0, 1] = 1  # run reaching the last frame is closed
    assert act.main_window(active, activity) == (5, 9)
    assert act.main_window(np.zeros((4, 2, 2), np.uint8), np.ones((4, 2, 2))) is None


# ---------------------------------------------------------------- the chain on synthetic clips


GRID = (16, 16)  # 4x4 flow pixels per cell


# On the 4x4 grid the block (with its landing strip) covers 4 of 16 cells, so the top 10% (2 cells) can hold only
# about half of a frame's activity: confidence (concentration) is ~0.4 there by construction.
# On the 4x4 grid the 3x3 smoothing also spans most of the frame, so only ~2/3 of the mass stays on the block.
CHAIN_GRIDS = [((4, 4), 0.2, 0.6), (GRID, 0.8, 0.7)]


@pytest.mark.parametrize(("grid", "min_confidence", "min_mass"), CHAIN_GRIDS)
def test_chain_localizes_moving_block(grid: tuple[int, int], min_confidence: float, min_mass: float):
    change, activity, active, stats = run_chain(clip_flows(), grid)
    assert change.shape == (CLIP_T - 1, *grid) and (change >= 0).all()
    assert activity.shape == (CLIP_T, *grid) and activity.dtype == np.float32
    assert active.shape == activity.shape and active.dtype == np.uint8
    assert (activity >= 0).all() and (activity <= 1).all()
    assert (activity[0] == 0).all() and (active[0] == 0).all()
    for t in range(1, CLIP_T):
        pair = t - 1
        if pair in MOVING_PAIRS:
            cells = block_cells(pair, grid)
            assert activity[t].max() >= 0.62  # the hysteresis turns it on
            assert activity[t][cells].sum() >= min_mass * activity[t].sum()
            assert active[t][cells].any()
            if grid == GRID:  # on the 4x4 grid the 3x3 smoothing may switch on neighbours too
                assert not active[t][~cells].any()
        else:
            assert (activity[t] == 0).all() and (change[pair] == 0).all()
    assert stats.window == (4, 7)
    assert stats.confidence > min_confidence
    assert stats.score > 0.0
    assert 0.0 < stats.active_share < 0.35
    # Change is in frame diagonals per second: the block's 4 px per 1/8 s over a 64x64 diagonal, on the
    # 16 x 20 px the block vacates and covers; area pooling keeps the frame mean.
    speed = BLOCK_SPEED / (math.hypot(FLOW_HW, FLOW_HW) * PAIR_SECONDS)
    area = BLOCK * (BLOCK + BLOCK_SPEED) / FLOW_HW**2
    for pair in MOVING_PAIRS:
        assert change[pair].mean() == pytest.approx(speed * area, rel=1e-4)
    if grid == GRID:  # cells of 4x4 px lie wholly inside the block
        assert change[MOVING_PAIRS.start].max() == pytest.approx(speed, rel=1e-4)


@pytest.mark.parametrize("speed", [2.0, 4.0, 8.0])
def test_chain_score_is_mean_change_of_moving_pairs(speed: float):
    score = run_chain(clip_flows(speed=speed), GRID)[3].score
    # Residual `speed` px on the block and on where it lands: 16 x (16 + speed) px of the 64x64 frame, in
    # diagonals per second; the top 20% of 9 pairs are 2 of the 4 identical moving pairs.
    per_second = speed / (math.hypot(FLOW_HW, FLOW_HW) * PAIR_SECONDS)
    assert score == pytest.approx(per_second * BLOCK * (BLOCK + speed) / FLOW_HW**2, rel=1e-4)


@pytest.mark.parametrize(("grid", "min_confidence", "min_mass"), CHAIN_GRIDS)
def test_chain_camera_pan_is_compensated(grid: tuple[int, int], min_confidence: float, min_mass: float):  # noqa: ARG001
    pan = translation(3.0, 0.0)
    homs = np.repeat(pan[None], CLIP_T - 1, axis=0)
    flows = clip_flows() + homography_flow(pan, FLOW_HW, FLOW_HW)[None]
    _, activity, _, stats = run_chain(flows, grid, homs)
    reference = run_chain(clip_flows(), grid)
    assert stats.window == reference[3].window == (4, 7)
    assert stats.confidence > min_confidence
    for t in (1, 2, 3, 8, 9):
        assert (activity[t] == 0).all()


@pytest.mark.parametrize("grid", [(4, 4), GRID])
def test_chain_still_clip_is_empty(grid: tuple[int, int]):
    flows = np.zeros((CLIP_T - 1, FLOW_HW, FLOW_HW, 2), np.float32)
    change, activity, active, stats = run_chain(flows, grid)
    for arr in (change, activity):
        assert np.isfinite(arr).all() and (arr == 0).all()
    assert not active.any()
    summary = (stats.score, stats.confidence, stats.entropy, stats.gini, stats.active_share, stats.window)
    assert summary == (0.0, 0.0, 0.0, 0.0, 0.0, None) and not stats.frame_mass.any()


@pytest.mark.parametrize("grid", [(4, 4), GRID])
def test_chain_uniform_residual_is_not_an_event(grid: tuple[int, int]):
    flows = np.zeros((CLIP_T - 1, FLOW_HW, FLOW_HW, 2), np.float32)
    flows[..., 0], flows[..., 1] = 3.0, -2.0  # everything moves against an identity homography
    change, activity, _, stats = run_chain(flows, grid)
    assert np.isfinite(activity).all()
    assert stats.confidence < 0.2 or stats.entropy > 0.9
    assert (change == 0).all()  # the frame median removes a uniform residual entirely
    assert stats.window is None


def test_chain_uniform_noise_on_coarse_grid_is_not_an_event():
    flows = np.random.default_rng(8).normal(0.0, 2.0, (CLIP_T - 1, FLOW_HW, FLOW_HW, 2)).astype(np.float32)
    change, activity, _, stats = run_chain(flows, (4, 4))
    assert np.isfinite(activity).all() and (change >= 0).all()
    assert stats.confidence < 0.2 or stats.entropy > 0.9
    for frame in change:
        assert act.spatial_entropy(frame) > 0.9 and act.concentration(frame) < 0.2


def test_empty_clip_stats():
    activity, active = act.activity_maps(np.zeros((0, 4, 4), np.float32), np.zeros(0), act.ActivityParams())
    assert activity.shape == (1, 4, 4) and not activity.any() and not active.any()
    stats = act.event_stats(activity, active, np.zeros((0, 4, 4), np.float32))
    summary = (stats.score, stats.confidence, stats.entropy, stats.gini, stats.active_share, stats.window)
    assert summary == (0.0, 0.0, 0.0, 0.0, 0.0, None) and not stats.frame_mass.any()


# ---------------------------------------------------------------- activity maps and event stats directly


@pytest.mark.parametrize("cell", [(4, 4), (0, 0), (0, 5)])
def test_activity_maps_one_cell_event_reaches_full_activity(cell: tuple[int, int]):
    change = np.zeros((2, 8, 8), np.float32)
    change[0][cell] = 0.5  # far above the floor, in one cell of 64
    activity, active = act.activity_maps(change, np.full(2, 0.032), act.ActivityParams())
    assert activity[1][cell] > 0.9 and active[1][cell]
    near = np.zeros((8, 8), bool)
    near[max(cell[0] - 1, 0) : cell[0] + 2, max(cell[1] - 1, 0) : cell[1] + 2] = True
    assert (activity[1][~near] == 0).all() and not active[1][~near].any()
    assert (activity[2] == 0).all()
    # A weak one-cell change (below the speed floor) stays well below the on threshold.
    change[0][cell] = 0.01
    activity, active = act.activity_maps(change, np.full(2, 0.032), act.ActivityParams())
    assert activity.max() < 0.1 and not active.any()


def test_activity_maps_frame_change_adds_activity():
    change = np.zeros((3, 8, 8), np.float32)
    frame_change = np.zeros((3, 8, 8), np.float32)
    frame_change[1, 2:6, 2:6] = 0.5  # a region that changed in grey level though flow saw nothing
    params = act.ActivityParams()
    floors = np.full(3, 0.032)
    without, _ = act.activity_maps(change, floors, params)
    with_fc, active = act.activity_maps(change, floors, params, frame_change)
    assert not without.any()
    assert (with_fc[[0, 1, 3]] == 0).all()
    assert with_fc[2, 3:5, 3:5].min() > 0.9 and active[2, 3:5, 3:5].all()
    assert with_fc[2, 0, 0] == 0.0


def test_event_stats_short_event_gets_less_confidence():
    def stats_for(frames: range) -> act.EventStats:
        activity = np.zeros((10, 4, 4), np.float32)
        for t in frames:
            activity[t, 1, 2] = 1.0
        active = (activity > 0.5).astype(np.uint8)
        return act.event_stats(activity, active, np.zeros((9, 4, 4), np.float32))

    long, one = stats_for(range(2, 6)), stats_for(range(4, 5))
    assert long.window == (2, 5) and one.window == (4, 4)
    assert long.confidence == pytest.approx(1.0)  # all mass in one cell of 16, for 4 >= 3 frames
    assert one.confidence == pytest.approx(1.0 / act.MIN_EVENT_FRAMES)
    assert long.gini == pytest.approx(1.0) and long.entropy == pytest.approx(0.0)
    assert long.active_share == pytest.approx(1.0 / 16)


def test_event_stats_weak_peak_has_no_confidence():
    activity = np.zeros((6, 4, 4), np.float32)
    activity[1:5, 0, 0] = 0.25  # below PEAK_MIN, though concentrated
    active = (activity > 0).astype(np.uint8)
    stats = act.event_stats(activity, active, np.zeros((5, 4, 4), np.float32))
    assert stats.window == (1, 4)
    assert stats.confidence == 0.0
    assert stats.gini == pytest.approx(1.0)


def test_event_stats_score_is_mean_of_top_share():
    change = np.zeros((10, 2, 2), np.float32)
    change[:, 0, 0] = np.arange(10)  # grid means 0, 0.25, ..., 2.25; the top 2 are 2.25 and 2.0
    stats = act.event_stats(np.zeros((11, 2, 2), np.float32), np.zeros((11, 2, 2), np.uint8), change)
    assert stats.score == pytest.approx(2.125)
    assert stats.confidence == 0.0 and stats.window is None


# ---------------------------------------------------------------- compensated difference


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random RGB texture, uint8."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (h // 4, w // 4))
    grey = np.kron(small, np.ones((4, 4)))[:h, :w]
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)


def test_compensated_difference_aligns_a_pan():
    h, w, dx, dy = 32, 48, 3, -2
    big = texture(h + 8, w + 8, seed=9)
    f0 = big[4 : 4 + h, 4 : 4 + w]
    f1 = big[4 - dy : 4 - dy + h, 4 - dx : 4 - dx + w]  # content moved by (dx, dy): f1(x + d) = f0(x)
    frames = np.stack([f0, f1])
    aligned = act.compensated_difference(frames, translation(dx, dy)[None], (h, w))
    assert aligned.shape == (1, h, w) and aligned.dtype == np.float32
    assert (aligned >= 0).all() and (aligned <= 1).all()
    assert aligned.max() < 1e-6  # covered pixels match, uncovered ones count as unchanged
    unaligned = act.compensated_difference(frames, np.eye(3)[None], (h, w))
    assert unaligned.mean() > 0.05
    wrong_way = act.compensated_difference(frames, translation(-dx, -dy)[None], (h, w))
    assert wrong_way.mean() > 0.05


def test_compensated_difference_still_camera_is_abs_difference():
    f0 = texture(16, 16, seed=10)
    f1 = f0.copy()
    f1[4:8, 4:8] = 255 - f1[4:8, 4:8]
    frames = np.stack([f0, f1, f1])
    out = act.compensated_difference(frames, np.stack([np.eye(3), np.full((3, 3), np.nan)]), (16, 16))
    expected = np.abs(f1[..., 0].astype(np.float32) - f0[..., 0]) / 255.0
    np.testing.assert_allclose(out[0], np.clip(expected - np.median(expected), 0, None), atol=1e-6)
    assert (out[1] == 0).all()
