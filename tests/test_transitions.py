"""Gradual transitions on synthetic thumbnails with exact truth: fades through black and white, hard cuts into and
out of black, cross-dissolves, and motion that must not look like a dissolve."""

import numpy as np
import pytest

from curation.scenes import FrameScan, SceneConfig, Shot, build_shots, detect_shots, transnet_boundaries
from curation.transitions import find_dissolves, find_fades, fit_ramp, flat_frames, runs

H, W = 27, 48


def texture(seed: int, h: int = H, w: int = W, feature: int = 4) -> np.ndarray:
    """A smooth random grey image (0-255) with plenty of contrast, structures about `feature` pixels across."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.uniform(20, 235, (max(2, h // feature), max(2, w // feature))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255)


def noisy(frames: list[np.ndarray], seed: int = 0, sigma: float = 0.7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([f + rng.normal(0, sigma, f.shape) for f in frames]).clip(0, 255).astype(np.float32)


def stats(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = thumbs.reshape(len(thumbs), -1)
    return flat.mean(axis=1), flat.std(axis=1)


def fade_video(a_len: int, out_len: int, flat_len: int, in_len: int, b_len: int, level: float = 0.0) -> tuple:
    """Shot A, fade to a flat `level`, flat frames, fade in to shot B; ramps are linear with gains (k+1)/(L+1)."""
    a, b = texture(1), texture(2)
    flat = np.full((H, W), level, np.float32)
    frames = [a] * a_len
    frames += [a + (flat - a) * (k + 1) / (out_len + 1) for k in range(out_len)]
    frames += [flat] * flat_len
    frames += [flat + (b - flat) * (k + 1) / (in_len + 1) for k in range(in_len)]
    frames += [b] * b_len
    return noisy(frames), (a_len, a_len + out_len + flat_len + in_len)


@pytest.mark.parametrize("ramp", [1, 2, 6, 15])
def test_fade_through_black_is_frame_exact(ramp: int) -> None:
    thumbs, truth = fade_video(30, ramp, 4, ramp, 30)
    luma, contrast = stats(thumbs)
    assert find_fades(luma, 12.0, 0.6, contrast=contrast, flat_std=2.0, thumbs=thumbs) == [truth]
    assert find_fades(luma, 12.0, 0.6) == [truth]  # brightness alone, as before thumbnails existed


def test_fade_through_white_is_found_with_thumbnails() -> None:
    thumbs, truth = fade_video(30, 8, 5, 8, 30, level=250.0)
    luma, contrast = stats(thumbs)
    assert find_fades(luma, 12.0, 0.6, contrast=contrast, flat_std=2.0, thumbs=thumbs) == [truth]


def test_hard_cut_into_and_out_of_black() -> None:
    thumbs, truth = fade_video(25, 0, 10, 0, 25)
    luma, contrast = stats(thumbs)
    assert truth == (25, 35)
    assert find_fades(luma, 12.0, 0.6, contrast=contrast, flat_std=2.0, thumbs=thumbs) == [truth]


def test_video_of_only_flat_and_fading_frames_has_no_shots() -> None:
    grey, black = np.full((H, W), 128.0, np.float32), np.zeros((H, W), np.float32)
    frames = [grey] * 20 + [grey * (1 - (k + 1) / 9) for k in range(8)] + [black] * 20
    thumbs = noisy(frames)
    scan = FrameScan(cuts=[], luma=stats(thumbs)[0], pts=np.arange(len(frames)) / 25.0, thumbs=thumbs.astype(np.uint8))
    assert detect_shots(scan, SceneConfig()) == []


def shifted(img: np.ndarray, dx: float) -> np.ndarray:
    """`img` moved `dx` pixels to the left (sub-pixel, bilinear), as a slow pan does it."""
    import cv2

    m = np.float32([[1, 0, -dx], [0, 1, 0]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


def dissolve_video(a_len: int, length: int, b_len: int, motion: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Shot A, a linear cross-dissolve of `length` frames, shot B; with `motion`, both shots pan slowly (a quarter
    pixel per frame at 48 px wide: 9 % of the width per second at 30 fps) over scenes whose structures are a
    sixth of the thumbnail wide, as in natural footage at this size."""
    a, b = texture(3, feature=8), texture(4, feature=8)

    def shot(img: np.ndarray, t: int) -> np.ndarray:
        return shifted(img, 0.15 * t) if motion else img

    frames = [shot(a, t) for t in range(a_len)]
    for k in range(length):
        t, alpha = a_len + k, (k + 1) / (length + 1)
        frames.append((1 - alpha) * shot(a, t) + alpha * shot(b, t))
    frames += [shot(b, a_len + length + t) for t in range(b_len)]
    return noisy(frames), (a_len, a_len + length)


# A long dissolve over moving shots changes each frame no faster than the motion does; those are left to TransNetV2
# (hybrid keeps the net's span where ours found none).
@pytest.mark.parametrize(("length", "motion"), [(4, False), (8, False), (12, False), (24, False), (4, True), (8, True)])
def test_dissolve_is_frame_exact(length: int, motion: bool) -> None:
    thumbs, truth = dissolve_video(30, length, 30, motion)
    assert find_dissolves(thumbs, min_change=12.0, max_residual=0.2, max_frames=48) == [truth]


def test_fast_motion_and_a_hard_cut_are_not_dissolves() -> None:
    big = texture(5, H, 12 * W)
    pan = [big[:, 20 * t : 20 * t + W] for t in range(25)]  # a whip pan: 20 px per frame at 48 px wide
    cut = [texture(6)] * 20 + [texture(7)] * 20
    assert find_dissolves(noisy(pan), min_change=12.0, max_residual=0.2, max_frames=48) == []
    assert find_dissolves(noisy(cut), min_change=12.0, max_residual=0.2, max_frames=48) == []


def test_fit_ramp_recovers_ends_under_noise() -> None:
    rng = np.random.default_rng(0)
    alpha = np.concatenate([np.zeros(10), (np.arange(1, 13) / 13), np.ones(10)]) + rng.normal(0, 0.03, 32)
    start, end, _ = fit_ramp(alpha)
    assert (start, end) == (10, 22)


def test_runs_and_flat_frames() -> None:
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    # Dark is not flat when there is contrast (a night shot); flat is flat at any brightness (a grey slate).
    flat = flat_frames(np.array([5.0, 100.0, 100.0, 3.0]), np.array([30.0, 1.0, 30.0, 0.8]), 12.0, 2.0)
    assert flat.tolist() == [False, True, False, True]
    assert flat_frames(np.array([5.0, 100.0]), None, 12.0, 2.0).tolist() == [True, False]  # brightness alone


def test_transnet_runs_become_cuts_or_gradual_spans() -> None:
    probs = np.zeros(100, np.float32)
    probs[40] = 0.9  # the last frame of the outgoing shot: the next shot starts at 41
    probs[70:76] = 0.8  # a six-frame transition
    cuts, spans = transnet_boundaries(probs, 0.5, max_cut_frames=2)
    assert cuts == [41] and spans == [(70, 76, "dissolve")]


def test_hybrid_merges_net_boundaries_inside_our_transitions() -> None:
    thumbs, (start, end) = dissolve_video(40, 12, 40)
    probs = np.zeros(len(thumbs), np.float32)
    probs[start + 5] = 0.9  # the net marks the dissolve's middle as a cut
    probs[19] = 0.9  # and a real cut elsewhere
    luma = stats(thumbs)[0]
    scan = FrameScan([], luma, np.arange(len(thumbs)) / 30.0, thumbs.astype(np.uint8), probs)
    shots = detect_shots(scan, SceneConfig(detector="hybrid"))
    assert shots == [Shot(0, 20, "start"), Shot(20, start, "cut"), Shot(end, len(thumbs), "dissolve")]


def test_build_shots_keeps_transition_kinds() -> None:
    shots = build_shots(100, [10], [(30, 40, "dissolve"), (60, 70, "fade")])
    assert [s.transition for s in shots] == ["start", "cut", "dissolve", "fade"]
