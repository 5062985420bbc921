"""Event pseudo-targets per clip (EVD): where and when localized change happens, with camera motion removed.

Outputs, aligned with the clip's sampled frames (`frame_indices`), or with a video VAE's latent frames when
`temporal_factor` > 1 (set from [latents]: latent frame k covers frames 4k-3..4k, `activity.latent_frame_maps`):
- `event_activity` (T, gh, gw) float16 in [0, 1]: soft activity on the token grid (frames / `events.cell`);
- `event_active` (T, gh, gw) uint8: the same after hysteresis along time (on at 0.62, off at 0.38);
- `event_phase` (T,) float16: cumulative share of the clip's (gated) activity, monotone, ends at 1 (all zeros
  when nothing happens);
- `event_score`: mean of the top 20% per-pair change (camera-compensated, frame diagonals per second), EVD's
  interaction score used for the top-fraction filter;
- `event_confidence` in [0, 1]: how concentrated each frame's activity is in its top 10% cells (0 for a uniform
  or empty map), weighted by frame activity; frames whose peak is below 0.3 count as 0;
- `event_entropy` / `event_gini`: spatial entropy (normalized, 1 = uniform) and Gini of the activity per
  frame, weighted by frame activity; 0 when there is no activity;
- `event_diffuse`: activity is spread over the frame (entropy or active-cell share above the limits): what
  camera-dominated clips look like, and what EVD's filter rejects;
- `event_start_frame` / `event_end_frame`: the main active window in source frames, [start, end) in the same
  convention as the corpus truth (steps start -> start+1 that move), null when no cell is ever active; resolved
  inside its first and last pair of sampled frames by how much of each the motion filled (`activity.moving_share`).
The math is in `annotators.activity`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from annotators import activity as act
from annotators.activity_residual import fundamental_from_step, splat_max
from annotators.base import AnnotatorError, Batch, per_clip
from annotators.motion import pair_intervals


@dataclasses.dataclass(frozen=True, kw_only=True)
class EventConfig:
    """Event pseudo-target settings and the clip filter built on them."""

    enabled: bool = True
    cell: int = 16  # stored-frame pixels per grid cell: 16 = an 8x latent with 2x2 DiT patches (the token grid)
    use_camera: bool = True  # on translating steps, also remove motion along the camera's epipolar lines
    frame_change: bool = False  # also count camera-aligned grey-level change (lights, fluids, what flow misses)
    min_speed: float = 0.02  # floor of the robust scale, frame diagonals per second: change this fast is
    # fully active even when nothing else in the frame moves; much slower change stays near 0
    min_shift: float = 0.004  # ... and never below this share of the frame diagonal per frame pair (flow noise)
    # The scale of a cell's change: the largest change within `local_peak` cells of it, so each mover is judged
    # against its own peak (Measured: mass in boxes 0.79 -> 0.83 at the default preset; a mover at half the speed
    # of another 0.44 -> 0.96 of its peak activity); 0 = EVD's one scale per frame, the `peak_quantile` of its change
    local_peak: int = 2
    peak_quantile: float = 0.99
    threshold: float = 0.65  # soft threshold centre, as a share of the robust scale above the frame's median
    # Soft threshold width (sigmoid temperature), same units: 1/12, the sharpness of EVD's inference gate (beta = 12).
    # The 3x3 smoothing spills a third to a half of a mover's peak into its ring of cells; at 0.1 that ring kept
    # ~25 % of the activity outside the object (motion corpus, 256x256 preset), at 1/12 it keeps ~17-21 %
    softness: float = 1 / 12
    on: float = 0.62  # hysteresis: a cell turns on at this activity (EVD)
    off: float = 0.38  # ... and off at this one
    min_change: float = 0.03  # floor of the robust scale of frame_change, grey-level fraction
    diffuse_entropy: float = 0.9  # activity with a higher spatial entropy is diffuse
    diffuse_share: float = 0.35  # ... and so is activity that keeps more than this share of cells on
    # Weak evidence counts as no event: flow residual counts fully where the frame's local 2-D texture is at least
    # this many grey levels per pixel, not at all below half of it (0 = trust all flow; `activity.texture_weights`)
    flow_texture: float = 1.5
    min_explained: float = 0.25  # a pair whose camera model explains less of the frame than this has no events
    # Motion along an epipolar line counts as parallax only up to this many times the step's median parallax
    # (+ 1 px): a tiny translation the camera mistook an object for cannot explain that object away (0 = unbounded)
    parallax_bound: float = 6.0
    # Stored maps at a video VAE's latent frames (1 + (T - 1) / factor); set from [latents] like the noise's.
    temporal_factor: int = 1
    # flow: residual motion from optical flow (recipe A); latent: camera-compensated change of the stored VAE
    # latents between latent frames (EVD's recipe B; needs [latents])
    source: str = "flow"
    latent_min_change: float = 0.25  # recipe B's floor of the robust scale, normalised latent units
    top_fraction: float = 1.0  # clip filter: keep the top fraction by event_score (EVD: 0.3); 1 keeps all
    drop_diffuse: bool = False  # clip filter: drop clips flagged event_diffuse

    def __post_init__(self) -> None:
        if self.cell < 1 or self.temporal_factor < 1:
            raise ValueError("events.cell and events.temporal_factor must be >= 1")
        if not 0.0 < self.off < self.on < 1.0:
            raise ValueError(f"events needs 0 < off < on < 1 (got off={self.off}, on={self.on})")
        if min(self.min_speed, self.min_shift, self.threshold, self.softness, self.min_change) <= 0:
            raise ValueError("events.min_speed, min_shift, threshold, softness and min_change must be > 0")
        if not 0.5 <= self.peak_quantile <= 1.0:
            raise ValueError("events.peak_quantile must be in [0.5, 1]")
        if self.local_peak < 0:
            raise ValueError("events.local_peak must be >= 0 (cells; 0 = one scale per frame)")
        if not 0.0 < self.diffuse_entropy <= 1.0 or not 0.0 < self.diffuse_share <= 1.0:
            raise ValueError("events.diffuse_entropy and events.diffuse_share must be in (0, 1]")
        if self.source not in ("flow", "latent"):
            raise ValueError(f"events.source must be flow or latent, got {self.source!r}")
        if self.flow_texture < 0 or not 0.0 <= self.min_explained < 1.0:
            raise ValueError("events.flow_texture must be >= 0 and events.min_explained in [0, 1)")
        if self.parallax_bound < 0:
            raise ValueError("events.parallax_bound must be >= 0 (0 = unbounded)")
        if self.latent_min_change <= 0:
            raise ValueError("events.latent_min_change must be > 0")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"events.top_fraction must be in (0, 1], got {self.top_fraction}")

    @property
    def params(self) -> act.ActivityParams:
        return act.ActivityParams(
            min_speed=self.min_speed,
            min_shift=self.min_shift,
            threshold=self.threshold,
            softness=self.softness,
            peak_quantile=self.peak_quantile,
            local_peak=self.local_peak,
            on=self.on,
            off=self.off,
            min_change=self.min_change,
        )


def event_grid(frame_height: int, frame_width: int, cell: int) -> tuple[int, int]:
    if frame_height % cell or frame_width % cell:
        raise AnnotatorError("bad_event_grid", f"frames {frame_width}x{frame_height} not divisible by cell {cell}")
    return frame_height // cell, frame_width // cell


BORROW_STEPS = 2  # a step without a translation estimate uses the nearest translating step this close
PARALLAX_FLOOR_PX = 1.0  # the parallax bound never drops below this (flow noise along the epipolar line)


def step_epipolar(
    c2w: np.ndarray | None, k: np.ndarray | None, n_pairs: int, bound_factor: float = 0.0
) -> tuple[list[np.ndarray | None], list[float]] | None:
    """Per pair, the fundamental matrix of the estimated camera step on the flow grid and the most parallax in
    pixels that step can make; None overall without a camera estimate.

    The camera stores a step's translation as a unit direction times its median parallax in radians, so the
    median static point moves |t| * focal pixels along its epipolar line; nearer points move more. The bound is
    `bound_factor` times that plus `PARALLAX_FLOOR_PX` (0 = unbounded: any motion along the line is parallax).

    Camera motion is smooth, so in a clip whose camera translates in most steps, a step the camera model did not
    see translate (small parallax in that one pair) borrows the nearest translating step within `BORROW_STEPS`
    (fundamental and bound); in a clip that mostly turns or stands, a lone translating step is more likely an
    object the camera model mistook for parallax, and lending its epipolar lines to its neighbours would explain
    that object away in them too (measured: two objects moving under a pan lost 5 steps of events to 1 such
    step). A camera that never translates gives None everywhere (a still camera has no epipolar geometry)."""
    if c2w is None or k is None or len(c2w) != n_pairs + 1:
        return None
    c2w, k = np.asarray(c2w, np.float64), np.asarray(k, np.float64)
    steps = [np.linalg.inv(c2w[t]) @ c2w[t + 1] for t in range(n_pairs)]
    own = [fundamental_from_step(step, k) for step in steps]
    focal = float(k[0, 0])
    bounds = [
        bound_factor * float(np.linalg.norm(step[:3, 3])) * focal + PARALLAX_FLOOR_PX if bound_factor > 0 else math.inf
        for step in steps
    ]
    if 2 * sum(f is not None for f in own) < n_pairs:
        return own, bounds
    offsets = [0] + [d * sign for d in range(1, BORROW_STEPS + 1) for sign in (-1, 1)]  # nearest first
    source = [
        next((t + d for d in offsets if 0 <= t + d < n_pairs and own[t + d] is not None), None) for t in range(n_pairs)
    ]
    lent = [own[i] if i is not None else None for i in source]
    return lent, [bounds[i] if i is not None else math.inf for i in source]


class EventAnnotator:
    """EVD event pseudo-targets per clip from `flow`, `global_homography` and, when present, the camera."""

    name: ClassVar[str] = "events"
    output_columns: ClassVar[tuple[str, ...]] = (
        "event_activity",
        "event_active",
        "event_phase",
        "event_score",
        "event_confidence",
        "event_entropy",
        "event_gini",
        "event_diffuse",
        "event_start_frame",
        "event_end_frame",
        "events_error",
    )

    def __init__(self, cfg: EventConfig) -> None:
        self.cfg = cfg
        # load the compiled splat (numba's import and its cached kernel, ~0.3 s) once per worker, not in a clip
        splat_max(np.zeros((1, 1), np.float32), np.zeros((1, 1, 2), np.float32))

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["clip_id"])
        optional = [batch.get(k, [None] * n) for k in ("camera_c2w", "camera_intrinsics", "latents")]
        keys = ("flow", "global_homography", "frames", "frame_indices", "frame_pts")
        inputs = zip(*(batch[k] for k in keys), *optional, strict=True)
        return {"clip_id": batch["clip_id"], **per_clip(self.name, self.output_columns, inputs, self.annotate)}

    def annotate(
        self,
        flow: np.ndarray | None,
        homographies: np.ndarray | None,
        frames: np.ndarray,
        frame_indices: np.ndarray,
        frame_pts: np.ndarray,
        camera_c2w: np.ndarray | None = None,
        camera_k: np.ndarray | None = None,
        latents: np.ndarray | None = None,
    ) -> dict:
        cfg = self.cfg
        if cfg.source == "latent":
            return self.from_latents(latents, flow, homographies, frames, frame_indices)
        n_frames = len(frames)
        grid = event_grid(frames.shape[1], frames.shape[2], cfg.cell)
        if n_frames > 1 and flow is None:
            raise AnnotatorError("no_flow", "the flow annotator produced nothing for this clip")
        n_pairs = n_frames - 1
        if n_pairs > 0:
            flows = np.asarray(flow, np.float32).transpose(0, 2, 3, 1)  # (T-1, h, w, 2)
            homs = np.asarray(homographies) if homographies is not None else np.tile(np.eye(3), (n_pairs, 1, 1))
            epipolar = step_epipolar(camera_c2w, camera_k, n_pairs, cfg.parallax_bound) if cfg.use_camera else None
            fundamentals, bounds = epipolar if epipolar is not None else (None, None)
            seconds = pair_intervals(frame_pts)
            weights = act.texture_weights(np.asarray(frames[:-1]), flows.shape[1:3], cfg.flow_texture)
            change = act.change_maps(
                flows,
                homs,
                seconds,
                grid,
                fundamentals,
                parallax_bounds=bounds,
                weights=weights,
                min_explained=cfg.min_explained,
            )
            frame_change = None
            if cfg.frame_change:
                diff = act.compensated_difference(np.asarray(frames), homs, flows.shape[1:3])
                frame_change = np.stack([act.pool(d, grid) for d in diff])
            floors = act.speed_floors(seconds, cfg.params)
            activity, active = act.activity_maps(change, floors, cfg.params, frame_change)
        else:  # one frame: nothing can have changed
            change = np.zeros((0, *grid), np.float32)
            activity, active = np.zeros((1, *grid), np.float32), np.zeros((1, *grid), np.uint8)
        stats = act.event_stats(activity, active, change)
        # no activity gives entropy and active share 0: never diffuse
        diffuse = stats.entropy >= cfg.diffuse_entropy or stats.active_share >= cfg.diffuse_share
        window = stats.window
        indices = np.asarray(frame_indices, np.int64)
        bounds = act.window_frames(window, act.moving_share(change, active, window), indices) if window else None
        phase = act.phase(stats.frame_mass)
        if cfg.temporal_factor > 1:  # the scores and the window above stay frame-exact
            if n_frames < 1 or (n_frames - 1) % cfg.temporal_factor:
                raise AnnotatorError(
                    "bad_event_frames",
                    f"{n_frames} frames do not make whole latent frames at temporal factor {cfg.temporal_factor}",
                )
            activity, active, phase = act.latent_frame_maps(activity, active, phase, cfg.temporal_factor)
        return {
            "event_activity": activity.astype(np.float16),
            "event_active": active,
            "event_phase": phase.astype(np.float16),
            "event_score": stats.score,
            "event_confidence": stats.confidence,
            "event_entropy": stats.entropy,
            "event_gini": stats.gini,
            "event_diffuse": bool(diffuse),
            "event_start_frame": bounds[0] if bounds else None,
            "event_end_frame": bounds[1] if bounds else None,
        }

    def from_latents(
        self,
        latents: np.ndarray | None,
        flow: np.ndarray | None,
        homographies: np.ndarray | None,
        frames: np.ndarray,
        frame_indices: np.ndarray,
    ) -> dict:
        """Recipe B: the maps from latent change, already at the latent frames (`activity.latent_change_maps`)."""
        cfg, factor = self.cfg, self.cfg.temporal_factor
        if latents is None:
            raise AnnotatorError("no_latents", "events.source=latent needs the latents of the clip")
        grid = event_grid(frames.shape[1], frames.shape[2], cfg.cell)
        n_frames, t_latent = len(frames), latents.shape[1]
        if n_frames > 1 and (flow is None or homographies is None):
            raise AnnotatorError("no_flow", "recipe B aligns latent frames with the flow's camera homographies")
        if t_latent > 1:
            size = np.asarray(flow).shape[2:4]
            change = act.latent_change_maps(latents, np.asarray(homographies), size, factor, grid)
            floors = np.full(len(change), cfg.latent_min_change)
            activity, active = act.activity_maps(change, floors, cfg.params)
        else:
            change = np.zeros((0, *grid), np.float32)
            activity, active = np.zeros((1, *grid), np.float32), np.zeros((1, *grid), np.uint8)
        stats = act.event_stats(activity, active, change)
        diffuse = stats.entropy >= cfg.diffuse_entropy or stats.active_share >= cfg.diffuse_share
        window, indices = stats.window, np.asarray(frame_indices, np.int64)
        source_frame = lambda k: int(indices[min(factor * k, n_frames - 1)])  # noqa: E731  (latent k -> frame)
        return {
            "event_activity": activity.astype(np.float16),
            "event_active": active,
            "event_phase": act.phase(stats.frame_mass).astype(np.float16),
            "event_score": stats.score,
            "event_confidence": stats.confidence,
            "event_entropy": stats.entropy,
            "event_gini": stats.gini,
            "event_diffuse": bool(diffuse),
            # Latent frame `first` holds the change from latent frame first-1, i.e. from source frame 4(first-1).
            "event_start_frame": source_frame(max(window[0] - 1, 0)) if window else None,
            "event_end_frame": source_frame(window[1]) if window else None,
        }
