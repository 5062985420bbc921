"""Shot and clip-span logic on hand-made inputs (no decoding)."""

import numpy as np
import pytest

from curation.scenes import SceneConfig, Shot, build_shots, clip_spans, detection_size
from curation.transitions import find_fades


def fade_luma(n=100, fade_out=(40, 50), black=(50, 53), fade_in=(53, 63), level=120.0):
    luma = np.full(n, level) + np.random.default_rng(0).normal(0, 0.2, n)
    luma[fade_out[0] : fade_out[1]] = level * (1 - (np.arange(1, 11) / 11))
    luma[black[0] : black[1]] = 0.5
    luma[fade_in[0] : fade_in[1]] = level * (np.arange(1, 11) / 11)
    return luma


def test_fade_span_covers_ramps_and_black():
    fades = find_fades(fade_luma(), black_level=12.0, min_step=0.6)
    assert len(fades) == 1
    assert fades[0] == (40, 63)  # frame-exact: first ramp frame, first full-brightness frame after the fade-in


def test_dark_but_textured_video_is_not_a_fade():
    luma = np.full(80, 20.0) + np.random.default_rng(1).normal(0, 1, 80)
    assert find_fades(luma, black_level=12.0, min_step=0.6) == []


def test_cut_inside_fade_is_absorbed():
    shots = build_shots(100, cuts=[46, 80], gradual=[(40, 63)])
    assert shots == [Shot(0, 40, "start"), Shot(63, 80, "fade"), Shot(80, 100, "cut")]


def test_fade_in_from_black_at_start_is_not_a_transition():
    shots = build_shots(60, cuts=[], gradual=[(0, 10)])
    assert shots == [Shot(10, 60, "start")]


def test_shots_tile_the_video_between_cuts():
    shots = build_shots(90, cuts=[30, 60], gradual=[])
    assert [(s.start, s.end) for s in shots] == [(0, 30), (30, 60), (60, 90)]
    assert [s.transition for s in shots] == ["start", "cut", "cut"]


def test_clip_spans_trim_split_and_drop():
    cfg = SceneConfig(trim_frames=2, min_clip_s=1.0, max_clip_s=4.0)
    fps = 10.0
    pts = np.arange(200) / fps
    kept, dropped = clip_spans(Shot(20, 120, "cut"), "cut", pts, fps, cfg)
    assert kept[0][0] == 22 and kept[-1][1] == 118  # trimmed at both cuts
    assert all(b - a <= 40 for a, b in kept) and len(kept) == 3  # 9.6 s split into three 3.2 s pieces
    assert [b for _, b in kept[:-1]] == [a for a, _ in kept[1:]]  # contiguous, nothing lost
    kept, dropped = clip_spans(Shot(0, 8, "start"), "cut", pts, fps, cfg)
    assert kept == [] and dropped == [(0, 6, "too_short")]


def test_clip_spans_use_timestamps_not_frame_counts():
    # Variable frame rate: the first 50 frames at 50 fps (1 s), the next 50 at 10 fps (5 s).
    pts = np.concatenate([np.arange(50) / 50.0, 1.0 + np.arange(50) / 10.0])
    cfg = SceneConfig(trim_frames=0, min_clip_s=0.5, max_clip_s=3.0)
    kept, _ = clip_spans(Shot(0, 100, "start"), None, pts, 50.0, cfg)
    assert len(kept) == 2
    split = kept[0][1]
    assert abs(pts[split] - 3.0) < 0.11  # split at half of the 6 s by time, not at frame 50


@pytest.mark.parametrize("w,h,expect", [(1920, 1080, (256, 144)), (200, 100, (200, 100)), (333, 187, (256, 144))])
def test_detection_size_follows_cli_rule(w, h, expect):
    assert detection_size(w, h, 256) == expect
