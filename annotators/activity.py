"""Event activity math (EVD pseudo-targets): pure functions from a clip's flow and camera motion to token-grid
activity maps, their hysteresis, phase and per-clip statistics. No I/O, no models; `annotators.events` wires it.

Per frame pair t -> t+1 (sampled frames), on the flow grid:
1. camera-compensated change: the flow minus the camera's global homography; when the camera translates, the
   distance of each point's motion to its epipolar line instead, if smaller (parallax of the static scene lies on
   epipolar lines, object motion generally does not);
2. that residual, in frame diagonals per second, is placed where the moving point was AND where it lands, so the
   change of frame t+1 covers both the vacated and the newly covered region;
3. the frame's median is subtracted (EVD's frame-wise mean subtraction, robust) and the map is area-pooled to
   the token grid.
Per frame on the grid: smoothed 3x3 (replicate border) and normalized by a scale (the largest smoothed change
within a few cells, so each mover is judged against its own peak, or EVD's one per frame, the 99th-percentile
change; floored by an absolute speed so that a still frame's noise is not stretched), soft-thresholded to [0, 1]
(exactly 0 at or below the frame's median), then hysteresis along time gives the binary map.

Frame t of the (T, gh, gw) maps holds the change from sampled frame t-1 to t; frame 0 has none (as in EVD's
latent-change targets, which difference consecutive frames).
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from annotators.activity_residual import (
    camera_residual,
    safe_homography,
    splat_max,
)
from annotators.global_motion import ransac_threshold

TOP_SCORE_SHARE = 0.2  # event score = mean of the top 20% per-frame change (EVD)
TOP_CELLS_SHARE = 0.1  # confidence looks at how much of a frame's activity its top 10% cells hold
PEAK_MIN = 0.3  # EVD's delta: a frame whose strongest cell is weaker than this carries no confident event
MIN_EVENT_FRAMES = 3  # an event seen in fewer frames than this gets proportionally less confidence
# Structure-tensor window of `texture_weights`, flow-grid pixels: about the support of a DIS patch plus its
# densification, so the flat inside of a textured object near its edges keeps its (propagated) flow
TEXTURE_WINDOW = 15


def pool(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-average an (h, w) map onto the (gh, gw) grid."""
    gh, gw = grid
    if values.shape == (gh, gw):
        return values.astype(np.float32)
    return cv2.resize(values.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)


def above_median(values: np.ndarray) -> np.ndarray:
    """How far each value lies above the map's median, 0 below it (EVD's frame-wise baseline, made robust)."""
    values = np.nan_to_num(np.asarray(values, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(values - np.median(values), 0.0, None)


def robust_normalize(frame: np.ndarray, min_scale: float, quantile: float = 0.99, radius: int = 0) -> np.ndarray:
    """frame / scale for a non-negative map (change above the frame's median), the scale never below the absolute
    floor `min_scale`, so a frame where nothing moves keeps values near 0 instead of having its noise stretched.

    `radius` 0: one scale for the frame, its q-quantile (EVD's per-frame normalisation: 1 at the frame's robust
    peak; a few outlier cells cannot set it). `radius` r > 0: each cell's own scale is the largest value within r
    cells of it, so every mover is measured against its own peak, not only against the frame's fastest one (at
    radius 0 an object at half the speed of another reaches ~0.44 of its activity), while the spill of a mover
    into its neighbours (the 3x3 smoothing, a third to two thirds of its peak) stays below its peak."""
    frame = np.asarray(frame, np.float32)
    if radius > 0:
        local = cv2.dilate(frame, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))  # max filter
        return frame / np.maximum(local, np.float32(min_scale))
    return frame / max(float(np.quantile(frame, quantile)), min_scale)


def smooth3x3(frame: np.ndarray) -> np.ndarray:
    """3x3 box average with replicated borders (EVD's activity smoothing)."""
    return cv2.blur(frame.astype(np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE)


def soft_threshold(x: np.ndarray, center: float, softness: float) -> np.ndarray:
    """sigmoid((x - center) / softness), shifted and rescaled so x <= 0 maps to exactly 0 and large x to 1."""
    tail = math.exp(-center / softness)  # center, softness > 0: no overflow
    floor = tail / (1.0 + tail)
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) - center) / softness))
    out = np.clip((s - floor) / (1.0 - floor), 0.0, 1.0)
    return np.where(np.asarray(x) > 0, out, 0.0).astype(np.float32)  # exactly 0, whatever the rounding


def hysteresis(activity: np.ndarray, on: float = 0.62, off: float = 0.38) -> np.ndarray:
    """Binary state along axis 0 per cell: switches on at >= `on`, off at <= `off`, otherwise keeps its previous
    value; starts off. Returns uint8 of the same shape."""
    state = np.zeros(activity.shape[1:], bool)
    out = np.zeros(activity.shape, np.uint8)
    for t, frame in enumerate(activity):
        state = np.where(frame >= on, True, np.where(frame <= off, False, state))
        out[t] = state
    return out


def phase(mass: np.ndarray) -> np.ndarray:
    """Cumulative share of activity per frame from per-frame masses (T,): monotone, ends at 1; all zeros when
    there is no activity."""
    mass = np.clip(np.nan_to_num(np.asarray(mass, np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = float(mass.sum())
    if total <= 0.0:
        return np.zeros(len(mass), np.float32)
    out = np.cumsum(mass) / total
    out[-1] = 1.0  # exact, whatever the rounding
    return out.astype(np.float32)


def latent_frame_maps(
    activity: np.ndarray, active: np.ndarray, phase_: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame event maps (T, gh, gw) at a causal video VAE's latent frames (1 + (T - 1) / factor): latent frame
    0 is frame 0, latent frame k its group of frames [factor*(k-1) + 1, factor*k]; a cell is as active as it is in
    the group's most active frame (max), on when on in any of them, and the phase is the group's last frame's (the
    cumulative share up to the end of the group, still monotone, still ending at 1)."""
    t = len(activity)
    if factor == 1:
        return activity, active, phase_
    if factor < 1 or (t - 1) % factor:
        raise ValueError(f"{t} frames do not make whole latent frames at temporal factor {factor}")
    groups = [slice(0, 1)] + [slice(1 + factor * j, 1 + factor * (j + 1)) for j in range((t - 1) // factor)]
    return (
        np.stack([activity[g].max(0) for g in groups]),
        np.stack([active[g].max(0) for g in groups]),
        np.asarray([phase_[g.stop - 1] for g in groups], dtype=phase_.dtype),
    )


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = uniform, -> 1 = all in one cell); 0 for an all-zero map."""
    v = np.sort(np.clip(np.asarray(values, np.float64).ravel(), 0.0, None))
    n, total = len(v), float(v.sum())
    if n < 2 or total <= 0.0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * v).sum() / (n * total) - (n + 1) / n) * n / (n - 1))


def spatial_entropy(values: np.ndarray) -> float:
    """Shannon entropy of a map's activity distribution over its cells, normalized to [0, 1] (1 = uniform);
    0 for an all-zero map."""
    v = np.clip(np.asarray(values, np.float64).ravel(), 0.0, None)
    total = float(v.sum())
    if len(v) < 2 or total <= 0.0:
        return 0.0
    p = v[v > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(len(v)))


def concentration(values: np.ndarray, share: float = TOP_CELLS_SHARE) -> float:
    """How much of a map's activity its top `share` of cells hold, rescaled so a uniform map scores 0 and a
    map with everything in those cells scores 1."""
    v = np.sort(np.clip(np.asarray(values, np.float64).ravel(), 0.0, None))[::-1]
    total = float(v.sum())
    if total <= 0.0:
        return 0.0
    k = max(1, math.ceil(share * len(v)))
    uniform = k / len(v)
    if uniform >= 1.0:
        return 1.0
    return float(np.clip((v[:k].sum() / total - uniform) / (1.0 - uniform), 0.0, 1.0))


def main_window(active: np.ndarray, activity: np.ndarray) -> tuple[int, int] | None:
    """(first, last) frame, inclusive, of the run of frames with any active cell that holds the most activity;
    None when no frame is active."""
    on = active.reshape(len(active), -1).any(axis=1)
    mass = activity.reshape(len(activity), -1).sum(axis=1)
    best, best_mass, start = None, -1.0, None
    for t, flag in enumerate([*on, False]):
        if flag and start is None:
            start = t
        elif not flag and start is not None:
            run_mass = float(mass[start:t].sum())
            if run_mass > best_mass:
                best, best_mass = (start, t - 1), run_mass
            start = None
    return best


def moving_share(change: np.ndarray, active: np.ndarray, window: tuple[int, int]) -> tuple[float, float]:
    """The share of the first and of the last pair of `window` (activity frames, inclusive; frame t holds the change
    of pair t-1 -> t) during which the event moved. Change is a speed over the whole pair, so a mover that starts or
    stops part-way through a pair shows that part of its speed there: each boundary pair's peak change over its
    active cells, against the peak of the neighbouring inner pair around those cells (the same mover one pair
    later, or earlier, at full speed; a clip's other movers are faster or slower). (1, 1) when no pair lies inside."""
    first, last = window
    if last - first < 2:
        return 1.0, 1.0

    def share(t: int, inner: int) -> float:
        cells = active[t].astype(bool)
        if not cells.any():
            return 1.0
        padded, (h, w) = np.pad(cells, 1), cells.shape
        around = np.zeros_like(cells)  # the cells and their 8 neighbours: where the mover is one pair on
        for dy in range(3):
            for dx in range(3):
                around |= padded[dy : dy + h, dx : dx + w]
        reference = float(change[inner - 1][around].max())
        return min(1.0, float(change[t - 1][cells].max()) / reference) if reference > 0.0 else 1.0

    return share(first, first + 1), share(last, last - 1)


def window_frames(window: tuple[int, int], shares: tuple[float, float], indices: np.ndarray) -> tuple[int, int]:
    """[start, end) source frames of an activity `window` (frame t holds the change since sampled frame t-1) whose
    first and last pairs moved for `shares` of their span (`moving_share`): the motion is taken to end the first
    pair and open the last, so a window is resolved to source frames rather than to the sampled frames around it."""
    first, last = window
    lo, hi = int(indices[max(first - 1, 0)]), int(indices[first])
    start = hi - shares[0] * (hi - lo)
    lo, hi = int(indices[max(last - 1, 0)]), int(indices[last])
    end = lo + shares[1] * (hi - lo)
    start_frame = int(round(start))
    return start_frame, max(start_frame + 1, int(round(end)))


@dataclasses.dataclass(frozen=True)
class ActivityParams:
    """The knobs of the activity maps (see `annotators.events.EventConfig` for their meaning and defaults)."""

    min_speed: float = 0.02
    min_shift: float = 0.004
    threshold: float = 0.65
    softness: float = 1 / 12
    peak_quantile: float = 0.99
    local_peak: int = 0
    on: float = 0.62
    off: float = 0.38
    min_change: float = 0.03


@dataclasses.dataclass(frozen=True)
class EventMaps:
    """A clip's activity maps and per-frame change."""

    activity: np.ndarray  # (T, gh, gw) float32 in [0, 1], soft
    active: np.ndarray  # (T, gh, gw) uint8, after hysteresis
    change: np.ndarray  # (T-1,) per-pair camera-compensated change, frame diagonals per second (grid mean)


def texture_weights(frames: np.ndarray, size: tuple[int, int], floor: float) -> np.ndarray:
    """(T, h, w) how far the flow of each pixel of each frame can be trusted, in [0, 1], on the (h, w) flow grid.

    Flow is measured only where the image has 2-D structure (the aperture problem): the local texture is the
    square root of the smaller eigenvalue of the structure tensor over `TEXTURE_WINDOW` pixels, in grey levels per
    pixel, and the weight rises linearly from 0 at `floor` / 2 to 1 at `floor`. Measured on the corpus at 256x256
    (7x7 window, cell means): cells that moving objects light up have a median texture of 5-7 grey levels/px
    (10th percentile >= 2), the false activations of a heavily blurred pan 0.4 and of a whip pan's blurred frames
    0.8. `floor` <= 0 trusts every pixel."""
    h, w = size
    if floor <= 0:
        return np.ones((len(frames), h, w), np.float32)
    out = np.empty((len(frames), h, w), np.float32)
    for t, frame in enumerate(frames):
        grey = cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32)
        if grey.shape != (h, w):
            grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # Sobel's 3x3 kernel has gain 8: grey levels/px
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        jxx, jyy, jxy = (cv2.blur(g, (TEXTURE_WINDOW, TEXTURE_WINDOW)) for g in (gx * gx, gy * gy, gx * gy))
        smaller = 0.5 * (jxx + jyy - np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy * jxy))
        out[t] = np.clip((np.sqrt(np.maximum(smaller, 0.0)) - 0.5 * floor) / (0.5 * floor), 0.0, 1.0)
    return out


def explained_share(residual: np.ndarray, threshold: float) -> float:
    """Share of the flow grid whose motion the camera model explains to within `threshold` pixels."""
    return float(np.mean(np.asarray(residual) <= threshold))


def change_maps(
    flows: np.ndarray,
    homographies: np.ndarray,
    seconds: np.ndarray,
    grid: tuple[int, int],
    fundamentals: list[np.ndarray | None] | None = None,
    *,
    parallax_bounds: list[float] | None = None,
    weights: np.ndarray | None = None,
    min_explained: float = 0.0,
) -> np.ndarray:
    """(T-1, gh, gw) camera-compensated change per pair in frame diagonals per second, frame median removed.

    `flows` (T-1, h, w, 2) px on the flow grid; `homographies` (T-1, 3, 3) frame t -> t+1 on that grid;
    `seconds` (T-1,) between the frames; `fundamentals` per pair or None (no translation estimate), with the
    most parallax in pixels each pair's translation can make in `parallax_bounds` (None: unbounded); `weights`
    (T-1, h, w) in [0, 1] scale each pixel's residual by how far its flow can be trusted (`texture_weights` of
    frame t). A pair whose camera model explains less than `min_explained` of the grid (to within the global
    motion's RANSAC threshold) has no usable background model: whatever its residual is, it is not evidence of
    an event, so the pair's change is 0 (unknown, never a guess)."""
    n = len(flows)
    out = np.zeros((n, *grid), np.float32)
    for t in range(n):
        flow = np.asarray(flows[t], np.float32)
        h, w = flow.shape[:2]
        fundamental = fundamentals[t] if fundamentals is not None else None
        bound = parallax_bounds[t] if parallax_bounds is not None else math.inf
        residual = camera_residual(flow, homographies[t], fundamental, bound)
        if min_explained > 0 and explained_share(residual, ransac_threshold(h, w)) < min_explained:
            continue
        if weights is not None:
            residual = residual * weights[t]
        per_second = 1.0 / (math.hypot(h, w) * max(float(seconds[t]), 1e-6))
        out[t] = pool(above_median(splat_max(residual, flow) * per_second), grid)
    return out


def compensated_difference(frames: np.ndarray, homographies: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T-1, h, w) absolute grey-level change in [0, 1] between frame t and frame t+1 aligned onto it with the
    camera homography (on the (h, w) flow grid), above the frame's median change; pixels the aligned frame does
    not cover count as unchanged."""
    h, w = size
    grey = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (w, h), interpolation=cv2.INTER_AREA) for f in frames]
    out = np.zeros((len(frames) - 1, h, w), np.float32)
    ones = np.ones((h, w), np.float32)
    for t in range(len(frames) - 1):
        hom = safe_homography(homographies[t])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # dst(x) = frame_{t+1}(H x): frame t+1 seen from frame t
        aligned = cv2.warpPerspective(grey[t + 1].astype(np.float32), hom, (w, h), flags=flags)
        covered = cv2.warpPerspective(ones, hom, (w, h), flags=flags) > 0.999
        out[t] = above_median(np.where(covered, np.abs(aligned - grey[t]) / 255.0, 0.0))
    return out


def latent_change_maps(
    latents: np.ndarray,
    homographies: np.ndarray,
    flow_size: tuple[int, int],
    factor: int,
    grid: tuple[int, int],
) -> np.ndarray:
    """EVD's recipe B: (T'-1, gh, gw) camera-compensated change between consecutive latent frames, in normalised
    latent units (channel mean of |z_k+1 aligned onto frame k - z_k|), frame median removed.

    `latents` (C, T', h, w); `homographies` (T-1, 3, 3) frame t -> t+1 on the (fh, fw) `flow_size` grid; latent
    frame k stands for source frame `factor`*k (the last frame of its group), so step k composes the homographies
    from frame factor*k to factor*(k+1) and rescales them to the latent grid. Cells the aligned frame does not
    cover count as unchanged."""
    z = np.asarray(latents, np.float32)
    c, t_latent, h, w = z.shape
    fh, fw = flow_size
    scale = np.diag([w / fw, h / fh, 1.0])
    out = np.zeros((max(t_latent - 1, 0), *grid), np.float32)
    ones = np.ones((h, w), np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # dst(x) = z_k+1(H x): frame k+1 seen from frame k
    for k in range(t_latent - 1):
        hom = np.eye(3)
        for step in range(factor * k, min(factor * (k + 1), len(homographies))):
            hom = safe_homography(homographies[step]) @ hom
        on_grid = scale @ hom @ np.linalg.inv(scale)
        aligned = np.stack([cv2.warpPerspective(z[ch, k + 1], on_grid, (w, h), flags=flags) for ch in range(c)])
        covered = cv2.warpPerspective(ones, on_grid, (w, h), flags=flags) > 0.999
        diff = np.where(covered, np.abs(aligned - z[:, k]).mean(0), 0.0)
        out[k] = pool(above_median(diff), grid)
    return out


def speed_floors(seconds: np.ndarray, params: ActivityParams) -> np.ndarray:
    """Per pair, the smallest robust scale (diagonals per second): `min_speed`, or `min_shift` diagonals within
    the pair's interval if that is faster. Flow error is a roughly fixed displacement per pair, so closely
    spaced frames need a faster change before it stands out of the error."""
    seconds = np.maximum(np.asarray(seconds, np.float64), 1e-6)
    return np.maximum(params.min_speed, params.min_shift / seconds)


def activity_maps(
    change: np.ndarray, floors: np.ndarray, params: ActivityParams, frame_change: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Soft (T, gh, gw) activity and its hysteresis from per-pair change (T-1, gh, gw) (diagonals per second),
    the pairs' scale floors (T-1,) (`speed_floors`) and optionally per-pair compensated frame difference pooled
    to the grid (T-1, gh, gw), in [0, 1]."""
    n = len(change)
    grid = change.shape[1:]
    activity = np.zeros((n + 1, *grid), np.float32)
    for t in range(n):
        # Smoothing is linear, so smoothing first and normalizing by the smoothed frame's own scale is the same
        # map up to that scale, but a one-cell event spread over its 3x3 neighbourhood can still reach 1.
        x = robust_normalize(smooth3x3(change[t]), float(floors[t]), params.peak_quantile, params.local_peak)
        if frame_change is not None:
            lit = robust_normalize(smooth3x3(frame_change[t]), params.min_change, params.peak_quantile)
            x = np.maximum(x, lit)
        activity[t + 1] = soft_threshold(x, params.threshold, params.softness)
    activity = np.nan_to_num(activity, nan=0.0)
    return activity, hysteresis(activity, params.on, params.off)


@dataclasses.dataclass(frozen=True)
class EventStats:
    """Per-clip event summary (see `annotators.events` for the column meanings)."""

    score: float
    confidence: float
    entropy: float
    gini: float
    active_share: float  # mass-weighted mean share of active cells per frame
    window: tuple[int, int] | None  # (first, last) active frame, inclusive, in sampled-frame indices
    frame_mass: np.ndarray  # (T,) gated activity (soft x binary) per frame, what `phase` accumulates


def event_stats(activity: np.ndarray, active: np.ndarray, change: np.ndarray) -> EventStats:
    """Score, confidence, spatial entropy/Gini and the main window of one clip's maps."""
    per_pair = change.reshape(len(change), -1).mean(axis=1) if len(change) else np.zeros(0)
    if len(per_pair):
        top = np.sort(per_pair)[::-1][: max(1, math.ceil(TOP_SCORE_SHARE * len(per_pair)))]
        score = float(top.mean())
    else:
        score = 0.0
    gated = activity * active  # activity that survived hysteresis: EVD's gate is soft x binary
    mass = gated.reshape(len(gated), -1).sum(axis=1)
    total = float(mass.sum())
    if total <= 0.0:
        return EventStats(score, 0.0, 0.0, 0.0, 0.0, None, mass)
    weights = mass / total
    confidence = sum(
        w * (concentration(frame) if frame.max() >= PEAK_MIN else 0.0)
        for w, frame in zip(weights, activity, strict=True)
        if w > 0
    )
    entropy = sum(w * spatial_entropy(frame) for w, frame in zip(weights, activity, strict=True) if w > 0)
    gini_ = sum(w * gini(frame) for w, frame in zip(weights, activity, strict=True) if w > 0)
    share = float((weights * active.reshape(len(active), -1).mean(axis=1)).sum())
    window = main_window(active, gated)
    if window is not None:  # a change seen in one or two frames only is as likely flow error as an event
        confidence *= min(1.0, (window[1] - window[0] + 1) / MIN_EVENT_FRAMES)
    else:
        confidence = 0.0
    return EventStats(score, float(confidence), float(entropy), float(gini_), share, window, mass)
