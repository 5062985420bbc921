"""Motion scores: units (frame diagonals per second), camera removal, and bad timestamps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from annotators.base import AnnotatorError, object_array
from annotators.motion import MotionConfig, MotionScorer, motion_scores, pair_intervals


def constant_flow(pairs: int, h: int, w: int, dx: float, dy: float) -> np.ndarray:
    flow = np.zeros((pairs, 2, h, w), np.float32)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def test_translation_scores_in_diagonals_per_second():
    flow = constant_flow(5, 48, 64, 3.0, 4.0)  # 5 px per pair
    pts = np.arange(6) * 0.125  # 8 sampled frames per second
    s = motion_scores(flow, pts)
    expected = 5.0 / math.hypot(48, 64) / 0.125
    assert s.mean == pytest.approx(expected, rel=1e-5)
    assert s.p90 == pytest.approx(expected, rel=1e-5)
    assert s.residual < 0.01 * expected  # a pure pan is all camera
    assert s.homographies.shape == (5, 3, 3)
    assert s.homographies[0, :2, 2] == pytest.approx([3.0, 4.0], abs=0.05)


def test_scores_do_not_depend_on_resolution_or_frame_rate():
    small = motion_scores(constant_flow(3, 40, 60, 2.0, 0.0), np.arange(4) * 0.1)
    # Twice the resolution (twice the pixels moved) sampled twice as often (half the pixels per pair).
    large = motion_scores(constant_flow(6, 80, 120, 2.0, 0.0), np.arange(7) * 0.05)
    assert large.mean == pytest.approx(small.mean, rel=1e-4)
    assert large.p90 == pytest.approx(small.p90, rel=1e-4)


def test_residual_measures_object_motion_not_camera_motion():
    h, w = 64, 64
    flow = constant_flow(2, h, w, 2.0, 0.0)  # camera pan
    flow[:, 0, 20:36, 20:36] = 8.0  # an object moving faster (6.25% of pixels, 6 px beyond the pan)
    s = motion_scores(flow, np.arange(3) * 0.5)
    diag_per_s = math.hypot(h, w) * 0.5
    assert s.residual == pytest.approx(6.0 * (16 * 16) / (h * w) / diag_per_s, rel=0.15)
    assert s.homographies[0, 0, 2] == pytest.approx(2.0, abs=0.1)  # the camera, not the object

    static = motion_scores(np.zeros((2, 2, h, w), np.float32), np.arange(3) * 0.5)
    assert static.mean == 0.0 and static.residual < 1e-9


def test_pair_intervals_fill_gaps_and_reject_nonsense():
    # the zero gap is replaced by the median of the valid gaps
    assert pair_intervals(np.array([0.0, 0.1, 0.1, 0.3])).tolist() == pytest.approx([0.1, 0.15, 0.2])
    with pytest.raises(AnnotatorError) as e:
        pair_intervals(np.array([1.0, 1.0, 1.0]))
    assert e.value.reason == "bad_timestamps"


def test_scorer_reports_per_clip_errors_without_failing_the_batch():
    scorer = MotionScorer(MotionConfig())
    good = constant_flow(2, 32, 32, 1.0, 0.0)
    batch = {
        "clip_id": np.array(["a", "b", "c"], dtype=object),
        "flow": object_array([good, None, good]),
        "frame_pts": object_array([np.arange(3) * 0.1, np.arange(3) * 0.1, np.zeros(3)]),
    }
    out = scorer(batch)
    assert set(out) == {"clip_id", *MotionScorer.output_columns}
    assert out["motion_mean"][0] > 0 and out["motion_error"][0] is None
    assert out["motion_mean"][1] is None and out["motion_error"][1].startswith("no_flow")
    assert out["motion_error"][2].startswith("bad_timestamps")
