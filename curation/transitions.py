"""Gradual shot transitions, frame-exact: flat stretches (black or any flat colour), fades through them, and
cross-dissolves. Pure functions over per-frame thumbnails (small grey frames, float32 0-255) and brightness.

Conventions: every span is half-open [start, end) in source frames. `start` is the first frame that is no longer
pure content of the shot before, `end` the first frame that is pure content of the shot after, so the shot
before ends at `start` and the shot after begins at `end`.

Why these methods:
- A frame is *flat* when it is dark or has almost no spatial contrast: black, white and grey slates alike.
- A *fade* is a flat run plus the ramps into and out of it. On a ramp each frame is a blend of content and the
  flat colour, so its distance to the flat frame shrinks (fade-out) or grows (fade-in) monotonically; the walk
  stops on the last (first) frame at full content, which is what makes the ends exact.
- A *dissolve* is a blend f_k = (1 - a_k) A + a_k B between two different frames. Fast motion also makes A and B
  differ, but its middle frames are not blends of them, so the blend residual separates the two; the ends come
  from fitting a clamped linear ramp to the measured blend weights, which is robust to encoding noise.
"""

from __future__ import annotations

import numpy as np

Span = tuple[int, int]
RAMP_TAIL = 0.25  # a fade ramp's step is at least this share of the step before it (see `find_fades`)


def flat_frames(luma: np.ndarray, contrast: np.ndarray | None, black_level: float, flat_std: float) -> np.ndarray:
    """(N,) bool: frames with spatial std below `flat_std` (black, white, any slate). Without the contrast, frames
    darker than `black_level`. Darkness alone is no flat frame: a night shot or a small object on black has content
    (mean grey 0.5 and std 4.9 for a red ball on black, std 1.3 for a black frame with encoding noise)."""
    if contrast is not None:
        return np.asarray(contrast) < flat_std
    return np.asarray(luma) < black_level


def runs(mask: np.ndarray) -> list[Span]:
    """[start, end) runs of True in a boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def find_fades(
    luma: np.ndarray,
    black_level: float,
    min_step: float,
    *,
    contrast: np.ndarray | None = None,
    flat_std: float = 0.0,
    thumbs: np.ndarray | None = None,
) -> list[Span]:
    """Fades through flat frames as [start, end) spans: the flat run plus its fade-out and fade-in ramps.

    The ramps are walked on the distance of each frame to the flat run's mean frame (`thumbs`, (N, h, w)), or on the
    brightness alone without thumbnails (then only fades through black are found). A flat run with no ramp (a hard
    cut to or from black) is a span of its own: the shot after it starts on its first content frame.
    """
    luma = np.asarray(luma, dtype=np.float64)
    n = len(luma)
    spans: list[Span] = []
    flat_runs = runs(flat_frames(luma, contrast, black_level, flat_std))
    for k, (run_start, run_end) in enumerate(flat_runs):
        floor = spans[-1][1] if spans else 0
        # The ramps stay between the neighbouring flat runs: the distance is needed there only (each frame of the
        # video is measured at most twice, whatever the number of runs).
        ceiling = flat_runs[k + 1][0] if k + 1 < len(flat_runs) else n
        dist = np.full(n, np.nan)
        if thumbs is not None:
            ref = thumbs[run_start:run_end].mean(axis=0).reshape(1, -1)
            dist[floor:ceiling] = np.abs(thumbs[floor:ceiling].reshape(ceiling - floor, -1) - ref).mean(axis=1)
        else:
            dist[floor:ceiling] = np.abs(luma[floor:ceiling] - luma[run_start:run_end].mean())
        start, step = run_start, 0.0
        # Back up the fade-out ramp. A ramp step is at least `min_step` and not much smaller than the step before
        # it: the flicker of real content after a fade is a step of its own, never a quarter of the ramp's.
        while start > floor and (d := dist[start - 1] - dist[start]) > max(min_step, RAMP_TAIL * step):
            start, step = start - 1, d
        # `start` is now the last frame at full content (or still the first flat one): the fade begins after it.
        start = start + 1 if start < run_start else run_start
        end, step = run_end, 0.0
        while end + 1 < ceiling and (d := dist[end + 1] - dist[end]) > max(min_step, RAMP_TAIL * step):
            end, step = end + 1, d
        # `end` is the first frame that is not closer to flat than its successor: the first full-content frame.
        if spans and start <= spans[-1][1]:  # ramps that touch: one transition
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def blend_weights(frames: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares blend weight of each frame between `a` (0) and `b` (1), and the mean absolute residual of
    that blend, per frame. frames: (K, h, w); a, b: (h, w)."""
    diff = (b - a).reshape(-1)
    norm = float(diff @ diff) or 1.0
    centred = frames.reshape(len(frames), -1) - a.reshape(1, -1)
    alpha = centred @ diff / norm
    residual = np.abs(centred - alpha[:, None] * diff[None, :]).mean(axis=1)
    return alpha, residual


def blocks(thumbs: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Block means of each thumbnail on a `grid` (w, h): a blend of two frames is still exactly a blend of their
    block means, while motion inside a shot moves them far less than it moves pixels."""
    import cv2

    if thumbs.shape[1:3] == (grid[1], grid[0]):
        return thumbs
    return np.stack([cv2.resize(t, grid, interpolation=cv2.INTER_AREA) for t in thumbs]) if len(thumbs) else thumbs


def fit_ramp(alpha: np.ndarray) -> tuple[int, int, float]:
    """The clamped linear ramp that best fits blend weights `alpha` over frames 0..K-1: weight 0 before `start`,
    (k - start + 1) / (end - start + 1) on [start, end), 1 from `end` on. Returns (start, end, mean squared error).
    """
    k = len(alpha)
    index = np.arange(k, dtype=np.float64)
    best = (0, k, float("inf"))
    for start in range(1, k):
        for end in range(start + 1, k):
            ramp = np.clip((index - start + 1) / (end - start + 1), 0.0, 1.0)
            ramp[index >= end] = 1.0
            err = float(np.mean((alpha - ramp) ** 2))
            if err < best[2]:
                best = (start, end, err)
    return best


def find_dissolves(
    thumbs: np.ndarray,
    *,
    min_change: float,
    max_residual: float,
    max_frames: int,
    excluded: np.ndarray | None = None,
    max_outside_rate: float = 0.33,
    min_area: float = 0.6,
    block_grid: tuple[int, int] = (8, 5),
) -> list[Span]:
    """Cross-dissolves as [start, end) spans over grey thumbnails (N, h, w), on their block means (`block_grid`),
    which motion inside the shots moves far less than it moves pixels.

    A window [t - w, t + w] is a candidate when
    - its end frames differ by at least `min_change` (mean absolute grey levels), over at least `min_area` of the
      blocks (a title or an object fading in over a running shot changes a part of the picture);
    - every frame between them is a blend of the two ends, with a residual below `max_residual` times that change,
      the blend weight rising (not jumping, as at a cut) from 0 to 1;
    - the frames beside the window change at under `max_outside_rate` times the rate inside it: a pan or a zoom is
      also close to a blend of its ends over a short window, but it changes at one rate throughout.
    Overlapping candidates are one dissolve; its ends come from `fit_ramp` on a window a few frames wider. Frames in
    `excluded` (flat frames and fades, found first) never take part. Measured limits: long dissolves between moving
    shots (film) are often missed, since each of their frames changes no faster than the motion does.
    """
    thumbs = blocks(np.asarray(thumbs, dtype=np.float32), block_grid)
    n = len(thumbs)
    if n < 5:
        return []
    excluded = np.zeros(n, bool) if excluded is None else np.asarray(excluded, bool)
    widths = [w for w in (2, 3, 4, 6, 8, 12, 16, 24, 32) if 2 * w <= max_frames + 1]
    flat = thumbs.reshape(n, -1)
    candidates: list[Span] = []
    for w in widths:
        change = np.abs(flat[2 * w :] - flat[: -2 * w]).mean(axis=1) if n > 2 * w else np.array([])
        for i in np.flatnonzero(change >= min_change):
            lo, hi = int(i), int(i) + 2 * w
            if excluded[lo : hi + 1].any():
                continue
            # Both shots must hold still compared with the change across the window: the rate of change just
            # outside it (w frames each side) is a fraction of the rate inside. A pan or a zoom changes at one rate.
            before = np.abs(flat[lo] - flat[max(0, lo - w)]).mean() / max(1, min(w, lo))
            after = np.abs(flat[min(n - 1, hi + w)] - flat[hi]).mean() / max(1, min(w, n - 1 - hi))
            if max(before, after) > max_outside_rate * change[i] / (2 * w):
                continue
            # Most of the picture must change: a title or an object fading in over a shot is no transition.
            if (np.abs(flat[hi] - flat[lo]) > min_change / 2).mean() < min_area:
                continue
            alpha, residual = blend_weights(thumbs[lo + 1 : hi], thumbs[lo], thumbs[hi])
            if residual.max() > max_residual * change[i]:
                continue
            steps = np.diff(np.concatenate([[0.0], alpha, [1.0]]))
            if steps.min() < -0.15 or steps.max() > 0.5:  # not monotone, or one jump: motion or a cut
                continue
            candidates.append((lo, hi))
    spans: list[Span] = []
    for lo, hi in sorted(candidates):
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
        else:
            spans.append((lo, hi))
    return [_exact_ends(thumbs, lo, hi, excluded) for lo, hi in spans]


def _exact_ends(thumbs: np.ndarray, lo: int, hi: int, excluded: np.ndarray) -> Span:
    """Frame-exact ends of a dissolve found in [lo, hi]: the best clamped ramp of the blend weights against frames a
    little outside it (not into flat frames or past the video), then again against the frames just before and after
    the ramp found, until it settles: the nearer the reference frames, the less motion inside the shots leaks into
    the weights."""
    n, margin = len(thumbs), 3
    a = lo
    while a > 0 and a > lo - margin and not excluded[a - 1]:
        a -= 1
    b = hi
    while b < n - 1 and b < hi + margin and not excluded[b + 1]:
        b += 1
    ref_a, ref_b = a, b
    start, end = lo + 1, hi
    for _ in range(4):
        alpha, _ = blend_weights(thumbs[a : b + 1], thumbs[ref_a], thumbs[ref_b])
        s, e, _ = fit_ramp(alpha)
        if (a + s, a + e) == (start, end):
            break
        start, end = a + s, a + e
        ref_a, ref_b = max(a, start - 1), min(b, end)
    return start, end
