"""curation.visuals: images and SVG charts from numpy arrays (pure, no run directory needed)."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from annotators.qcm import KEYS, MOUSE
from curation import visuals

SVG_NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    """Every chart must be well-formed XML (it is also saved as a standalone .svg from notebooks)."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    return root


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG_NS}{tag}") if cls in (e.get("class") or "").split()]


def hue_of(rgb: np.ndarray) -> float:
    return float(cv2.cvtColor(rgb[:1, :1], cv2.COLOR_RGB2HSV)[0, 0, 0])


def decode_uri(uri: str) -> np.ndarray:
    header, payload = uri.split(",", 1)
    assert header in ("data:image/jpeg;base64", "data:image/png;base64")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


# --- images -------------------------------------------------------------------------------------------------------


def test_flow_to_rgb_zero_flow_is_black_in_both_layouts():
    for flow in (np.zeros((2, 6, 8), np.float16), np.zeros((6, 8, 2), np.float32)):
        rgb = visuals.flow_to_rgb(flow)
        assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
        assert not rgb.any()


def test_flow_to_rgb_hue_is_direction_and_value_is_magnitude():
    right, left = np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32)
    right[0], left[0] = 1.0, -1.0
    h_right, h_left = hue_of(visuals.flow_to_rgb(right)), hue_of(visuals.flow_to_rgb(left))
    assert abs(h_right - h_left) == pytest.approx(90, abs=2)  # opposite directions: half the wheel (0..180)
    flow = np.zeros((2, 4, 4), np.float32)
    flow[0, :, :2], flow[0, :, 2:] = 1.0, 4.0
    value = cv2.cvtColor(visuals.flow_to_rgb(flow), cv2.COLOR_RGB2HSV)[..., 2]
    assert value[0, 3] == 255 and 0 < value[0, 0] < value[0, 3]
    channels_last = visuals.flow_to_rgb(np.moveaxis(flow, 0, -1))
    np.testing.assert_array_equal(channels_last, visuals.flow_to_rgb(flow))


def test_flow_to_rgb_tolerates_nan_and_empty():
    flow = np.full((2, 3, 3), np.nan, np.float32)
    assert not visuals.flow_to_rgb(flow).any()
    assert visuals.flow_to_rgb(np.zeros((2, 0, 0))).shape == (1, 1, 3)
    with pytest.raises(ValueError, match="flow must be"):
        visuals.flow_to_rgb(np.zeros((3, 4, 5)))


def test_noise_to_gray_maps_three_sigma_to_the_full_range():
    noise = np.array([[-10.0, -3.0, 0.0], [3.0, 10.0, np.nan]], np.float16)
    gray = visuals.noise_to_gray(noise)
    assert gray.dtype == np.uint8 and gray.shape == (2, 3)
    assert gray[0, 0] == gray[0, 1] == 0 and gray[1, 0] == gray[1, 1] == 255
    assert gray[0, 2] in (127, 128) and gray[1, 2] in (127, 128)
    rng = np.random.default_rng(0)
    assert 100 < visuals.noise_to_gray(rng.standard_normal((32, 32))).mean() < 155
    assert visuals.noise_to_gray(np.zeros((0, 0))).shape == (1, 1)


def test_activity_overlay_leaves_inactive_cells_untouched():
    frame = np.full((32, 32, 3), 90, np.uint8)
    activity = np.zeros((2, 2), np.float16)
    activity[0, 1] = 1.0
    out = visuals.activity_overlay(frame, activity)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[16:, :], frame[16:, :])
    np.testing.assert_array_equal(out[:16, :16], frame[:16, :16])
    assert np.abs(out[:16, 16:].astype(int) - 90).max() > 40
    np.testing.assert_array_equal(visuals.activity_overlay(frame, np.zeros((0, 0))), frame)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_to_data_uri_round_trips_and_shrinks(fmt):
    img = np.zeros((60, 120, 3), np.uint8)
    img[:, :60, 0] = 255  # left half red
    decoded = decode_uri(visuals.to_data_uri(img, fmt, max_side=40))
    assert decoded.shape[:2] == (20, 40)
    assert decoded[10, 5, 2] > 200 and decoded[10, 5, 0] < 60  # OpenCV decodes BGR: red is channel 2
    assert decode_uri(visuals.to_data_uri(np.zeros((0, 0, 3), np.uint8), fmt)).shape[:2] == (1, 1)
    assert decode_uri(visuals.to_data_uri(np.zeros((5, 5), np.uint8), fmt)).shape[:2] == (5, 5)


# --- charts -------------------------------------------------------------------------------------------------------


def test_histogram_has_one_bin_group_per_bin_and_labelled_thresholds():
    values = np.linspace(0, 100, 50)
    svg = visuals.histogram_svg(values, bins=12, thresholds={"min 20": 20.0, "event cutoff": 75.0}, title="score")
    root = parse(svg)
    assert len(by_class(root, "g", "bin")) == 12
    thresholds = by_class(root, "g", "threshold")
    assert len(thresholds) == 2
    labels = {"".join(t.itertext()).strip() for t in thresholds}
    assert labels == {"min 20", "event cutoff"}
    assert "score" in svg


def test_histogram_stacks_kept_and_dropped():
    values = [1.0, 1.0, 2.0, 3.0, None, float("nan")]
    kept = [True, False, True, False, True, False]
    root = parse(visuals.histogram_svg(values, bins=4, kept_mask=kept))
    heights = lambda cls: sum(float(r.get("height")) for r in by_class(root, "rect", cls))  # noqa: E731
    assert heights("kept") > 0 and heights("dropped") > 0
    assert "kept 2" in "".join(root.itertext()) and "dropped 2" in "".join(root.itertext())


def test_histogram_pins_a_far_threshold_to_the_edge():
    svg = visuals.histogram_svg(np.arange(10.0), bins=5, thresholds={"max 1e9": 1e9})
    root = parse(svg)
    assert "max 1e9 →" in "".join(root.itertext())
    assert len(by_class(root, "g", "bin")) == 5
    # The bars still spread over the data: the far threshold did not stretch the axis.
    assert sum(float(r.get("height")) > 0 for r in by_class(root, "rect", "kept")) == 5


@pytest.mark.parametrize("values", [[], None, [float("nan"), None], np.array([])])
def test_charts_draw_no_data_for_empty_input(values):
    for svg in (visuals.histogram_svg(values, thresholds={"min 1": 1.0}), visuals.line_svg(values)):
        assert "no data" in "".join(parse(svg).itertext())
    counts = np.full(81, np.nan) if values is not None and len(values) else values  # all-NaN counts: no data too
    assert "no data" in "".join(parse(visuals.qcm_heatmap_svg(counts)).itertext())


def test_histogram_of_a_single_value():
    root = parse(visuals.histogram_svg([5.0, 5.0, 5.0], bins=3))
    assert sum(float(r.get("height")) for r in by_class(root, "rect", "kept")) > 0


def test_qcm_heatmap_has_81_cells_and_the_vocabulary():
    counts = np.zeros((9, 9), int)
    counts[1, 0], counts[0, 1] = 5, 2
    root = parse(visuals.qcm_heatmap_svg(counts, title="tokens"))
    assert len(by_class(root, "rect", "cell")) == 81
    text = set(root.itertext())
    assert set(KEYS) <= text and set(MOUSE) <= text and {"5", "2"} <= text
    assert len(by_class(parse(visuals.qcm_heatmap_svg(np.zeros(81))), "rect", "cell")) == 81


def path_points(svg: str) -> np.ndarray:
    (poly,) = by_class(parse(svg), "polyline", "path")
    return np.array([[float(v) for v in p.split(",")] for p in poly.get("points").split()])


def test_camera_path_of_forward_motion_is_a_vertical_line_going_up():
    c2w = np.repeat(np.eye(4)[None], 6, axis=0)
    c2w[:, 2, 3] = np.arange(6) * 0.1  # +z = forward
    pts = path_points(visuals.camera_path_svg(c2w))
    assert len(pts) == 6
    assert np.ptp(pts[:, 0]) < 1e-6  # constant x
    assert np.all(np.diff(pts[:, 1]) < 0)  # forward is drawn upward (SVG y decreases)


def test_camera_path_static_rotation_and_empty():
    static = np.repeat(np.eye(4)[None], 5, axis=0)
    svg = visuals.camera_path_svg(static)
    assert len(path_points(svg)) == 1 and "static" in "".join(parse(svg).itertext())
    turning = static.copy()
    a = np.radians(np.arange(5) * 5.0)
    turning[:, 0, 0], turning[:, 0, 2], turning[:, 2, 0], turning[:, 2, 2] = np.cos(a), np.sin(a), -np.sin(a), np.cos(a)
    assert "rotation only" in "".join(parse(visuals.camera_path_svg(turning)).itertext())
    for empty in (None, np.zeros((0, 4, 4)), np.full((3, 4, 4), np.nan), np.zeros(3)):
        assert "no camera path" in "".join(parse(visuals.camera_path_svg(empty)).itertext())


def test_line_svg_skips_non_finite_points():
    svg = visuals.line_svg([0.0, 0.5, float("nan"), 1.0], ymin=0, ymax=1, title="phase")
    (poly,) = by_class(parse(svg), "polyline", "line")
    assert len(poly.get("points").split()) == 3
    assert re.search(r">phase<", svg)
