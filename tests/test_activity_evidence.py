"""Event activity under weak evidence and several movers: texture weights (flow is only measured where the image has
2-D structure), camera models that explain too little of the frame, and the local scale that judges each mover
against its own peak."""

from __future__ import annotations

import numpy as np
import pytest

from annotators import activity as act


def texture_frames() -> dict[str, np.ndarray]:
    """One RGB frame per kind of texture, 64x64."""
    ys, xs = np.mgrid[0:64, 0:64]
    checker = (((ys // 4) + (xs // 4)) % 2 * 200 + 20).astype(np.uint8)
    ramp = (xs * 3).astype(np.uint8)  # brightness changes along x only: 1-D structure, the aperture problem
    flat = np.full((64, 64), 90, np.uint8)
    stripes = ((xs // 4) % 2 * 200 + 20).astype(np.uint8)  # strong edges, all in one direction
    return {
        k: np.repeat(v[..., None], 3, axis=-1)
        for k, v in dict(checker=checker, ramp=ramp, flat=flat, stripes=stripes).items()
    }


def test_texture_weights_need_two_dimensional_structure():
    frames = texture_frames()
    w = act.texture_weights(np.stack(list(frames.values())), (64, 64), floor=1.5)
    by_kind = dict(zip(frames, w, strict=True))
    assert w.shape == (4, 64, 64) and w.dtype == np.float32 and (w >= 0).all() and (w <= 1).all()
    assert by_kind["checker"][8:-8, 8:-8].min() == 1.0  # corners everywhere: flow is measurable
    for kind in ("ramp", "flat", "stripes"):  # no texture, or edges in one direction only: flow is a guess
        assert by_kind[kind][8:-8, 8:-8].max() == 0.0, kind
    np.testing.assert_array_equal(act.texture_weights(np.stack(list(frames.values())), (64, 64), 0.0), 1.0)


def test_texture_weights_resize_to_the_flow_grid_and_fall_with_contrast():
    checker = texture_frames()["checker"].astype(np.float32)
    weights = []
    for contrast in (1.0, 0.05, 0.02):  # 200 grey levels between squares, then 10, then 4
        frame = (110 + (checker - 120) * contrast).astype(np.uint8)
        weights.append(act.texture_weights(frame[None], (32, 32), floor=1.5)[0])
    assert weights[0].shape == (32, 32)
    means = [float(w[4:-4, 4:-4].mean()) for w in weights]
    assert means[0] == 1.0 and means[0] >= means[1] >= means[2] and means[2] < 0.5


def test_a_camera_model_that_explains_little_of_the_frame_gives_no_change():
    """Incoherent flow that no homography explains (what a failed fit on a whip pan leaves) is unknown, not an
    event; the same flow under a model that explains the frame, plus a mover, still gives its change."""
    rng = np.random.default_rng(0)
    flows = rng.normal(0, 8, (3, 64, 64, 2)).astype(np.float32)
    homs = np.tile(np.eye(3), (3, 1, 1))
    seconds = np.full(3, 0.125)
    assert act.change_maps(flows, homs, seconds, (8, 8), min_explained=0.25).max() == 0.0
    assert act.change_maps(flows, homs, seconds, (8, 8)).max() > 0.0  # off: the residual passes as before
    mover = np.zeros((1, 64, 64, 2), np.float32)
    mover[0, 20:36, 20:36, 0] = 6.0  # a square moving under a still camera: the model explains 94 % of the frame
    change = act.change_maps(mover, homs[:1], seconds[:1], (8, 8), min_explained=0.25)
    assert change[0, 2:4, 2:4].min() > 0 and change[0, 6:, 6:].max() == 0


def test_change_scales_with_the_trust_weights():
    mover = np.zeros((1, 64, 64, 2), np.float32)
    mover[0, 20:36, 20:36, 0] = 6.0
    hom, seconds = np.eye(3)[None], np.full(1, 0.125)
    full = act.change_maps(mover, hom, seconds, (8, 8))
    none = act.change_maps(mover, hom, seconds, (8, 8), weights=np.zeros((1, 64, 64), np.float32))
    half = act.change_maps(mover, hom, seconds, (8, 8), weights=np.full((1, 64, 64), 0.5, np.float32))
    assert none.max() == 0.0 and full.max() > 0
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)


def two_movers(speed: float) -> np.ndarray:
    """(T-1, 256, 256, 2) flows under a still camera: a square at `speed` px per pair and one at half of it."""
    flows = np.zeros((7, 256, 256, 2), np.float32)
    flows[:, 40:80, 40:80, 0] = speed
    flows[:, 160:200, 140:180, 0] = speed / 2
    return flows


@pytest.mark.parametrize("speed", [4.0, 8.0, 16.0])
def test_a_slower_mover_is_judged_against_its_own_peak(speed: float):
    """Two movers, the second at half the speed of the first (both above the floor): with a local scale each gets
    (almost) its full activity; with one scale per frame (EVD) the slower one stays under half of the faster."""
    seconds = np.full(7, 0.125)
    change = act.change_maps(two_movers(speed), np.tile(np.eye(3), (7, 1, 1)), seconds, (16, 16))
    peaks = {}
    for radius in (0, 2):
        params = act.ActivityParams(local_peak=radius)
        activity, _ = act.activity_maps(change, act.speed_floors(seconds, params), params)
        peaks[radius] = activity[1:, 2:6, 2:6].max(), activity[1:, 10:13, 8:12].max()
    fast, slow = peaks[2]
    assert fast > 0.9 and slow >= 0.9 * fast
    assert peaks[0][1] < 0.5 * peaks[0][0]


def test_local_scale_keeps_the_spill_of_a_mover_below_it():
    """The 3x3 smoothing spills a mover into its neighbours; measured against the mover's own peak that spill stays
    below the soft threshold's centre, and a frame with nothing above the floor is not stretched."""
    frame = np.zeros((16, 16), np.float32)
    frame[6:8, 6:8] = 1.0
    x = act.robust_normalize(act.smooth3x3(frame), min_scale=0.01, radius=2)
    assert x.max() == pytest.approx(1.0) and x[5:9, 5:9].min() < x.max()
    spill = x.copy()
    spill[6:8, 6:8] = 0
    assert spill.max() < 0.65
    quiet = np.full((16, 16), 0.004, np.float32)
    np.testing.assert_allclose(act.robust_normalize(quiet, min_scale=0.01, radius=2), 0.4)
