"""Stage: scenes. Reads: a `videos` record. Writes: shots (`scenes` rows) and the clip spans cut from them.

Hard cuts come from one of four detectors (`scenes.detector`):
- `content` / `adaptive`: PySceneDetect's ContentDetector / AdaptiveDetector on frames at a reduced width (the
  `scenedetect` CLI's downscale rule). Fast on a CPU; fast motion can look like a cut to them.
- `transnetv2`: the TransNetV2 network with its published weights, alone (`annotators.transnetv2`). Its
  multi-frame transitions become approximate gradual spans.
- `hybrid`: hard cuts from TransNetV2, gradual transitions from `curation.transitions`; a TransNetV2 boundary
  inside a gradual transition is part of it, not a second cut.

Gradual transitions (flat stretches, fades through them, cross-dissolves) are found frame-exactly by
`curation.transitions` for every detector but `transnetv2`: the whole transition is excluded from both neighbouring
shots, so no clip starts or ends in the middle of one. Timestamps come from the decoder's presentation times, never
`index / fps`, so variable-frame-rate sources get exact times.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from curation.transitions import find_dissolves, find_fades, flat_frames, runs

DETECTORS = ("content", "adaptive", "transnetv2", "hybrid")
TRANSITIONS = ("start", "cut", "fade", "dissolve")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceneConfig:
    """Shot detection and the rules that turn shots into clips."""

    detector: str = "content"  # content | adaptive | transnetv2 | hybrid
    threshold: float = 27.0  # ContentDetector default (PySceneDetect)
    adaptive_threshold: float = 3.0  # AdaptiveDetector default (PySceneDetect)
    min_scene_len: int = 15  # frames; PySceneDetect default
    detect_width: int = 256  # frames are downscaled to about this width for detection (CLI rule); 0 = full size
    transnet_threshold: float = 0.2  # TransNetV2 probability above which a frame is a boundary (best F1, measured)
    transnet_device: str = "auto"  # auto | cpu | cuda | cuda:N
    transnet_batch: int = 0  # 100-frame windows per forward pass; 0 = 2 on a CPU (fastest there), 8 on a GPU
    transnet_max_cut_frames: int = 2  # a TransNetV2 run of at most this many frames is a hard cut, longer is gradual
    fade_black_level: float = 12.0  # mean luma (0-255) below which a frame counts as black
    fade_min_step: float = 0.6  # change per frame (grey levels, towards or away from the flat frame) on a fade ramp
    flat_std: float = 2.0  # spatial std (grey levels, 48x27 thumbnail) below which a frame is flat (a slate)
    dissolves: bool = True  # look for cross-dissolves (not for detector = transnetv2)
    dissolve_min_change: float = 12.0  # grey levels between the two shots of a dissolve, at least
    dissolve_max_residual: float = 0.2  # of that change: how far a frame inside may be from a blend of the ends
    dissolve_max_frames: int = 48  # longest dissolve looked for
    keep_frames: bool = True  # one decode per video: keep the clips' frames from the detection scan
    frame_buffer_mb: int = 1024  # ... in memory up to this, per video
    frame_spill_mb: int = 16384  # ... then in a local spill file up to this; past it the clips step decodes again
    trim_frames: int = 2  # frames dropped on each side of a cut or fade, where encoders smear shots together
    min_clip_s: float = 1.0
    max_clip_s: float = 10.0  # longer shots are split into equal parts no longer than this

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"scenes.detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.min_scene_len < 1 or self.trim_frames < 0 or self.detect_width < 0:
            raise ValueError("scenes.min_scene_len must be >= 1, trim_frames and detect_width >= 0")
        if not 0.0 < self.transnet_threshold < 1.0:
            raise ValueError(f"scenes.transnet_threshold must be in (0, 1), got {self.transnet_threshold}")
        if self.transnet_batch < 0 or self.transnet_max_cut_frames < 1:
            raise ValueError("scenes.transnet_batch must be >= 0 and scenes.transnet_max_cut_frames >= 1")
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", self.transnet_device):
            raise ValueError(f"scenes.transnet_device must be auto, cpu, cuda or cuda:N, got {self.transnet_device!r}")
        if self.flat_std < 0 or self.fade_min_step < 0 or self.dissolve_min_change <= 0:
            raise ValueError("scenes.flat_std and fade_min_step must be >= 0, dissolve_min_change > 0")
        if not 0 < self.dissolve_max_residual < 1 or self.dissolve_max_frames < 4:
            raise ValueError("scenes needs 0 < dissolve_max_residual < 1 and dissolve_max_frames >= 4")
        if self.frame_buffer_mb < 0 or self.frame_spill_mb < 0:
            raise ValueError("scenes.frame_buffer_mb and frame_spill_mb must be >= 0")
        if not 0 < self.min_clip_s <= self.max_clip_s:
            raise ValueError("scenes needs 0 < min_clip_s <= max_clip_s")

    @property
    def uses_transnet(self) -> bool:
        return self.detector in ("transnetv2", "hybrid")

    @property
    def uses_scenedetect(self) -> bool:
        return self.detector in ("content", "adaptive")


@dataclasses.dataclass(frozen=True)
class Shot:
    """A shot [start, end) in source frames and how it began (start | cut | fade | dissolve)."""

    start: int
    end: int
    transition: str


@dataclasses.dataclass
class FrameScan:
    """What one pass over a video's detection frames yields."""

    cuts: list[int]  # frame indices where ContentDetector/AdaptiveDetector starts a new shot
    luma: np.ndarray  # (N,) mean brightness per frame
    pts: np.ndarray  # (N,) presentation time per frame, seconds
    thumbs: np.ndarray | None = None  # (N, 27, 48) uint8 grey thumbnails, for flat frames, fades and dissolves
    transnet: np.ndarray | None = None  # (N,) TransNetV2 transition probability per frame

    @property
    def n_frames(self) -> int:
        return len(self.pts)

    @functools.cached_property
    def contrast(self) -> np.ndarray | None:
        """(N,) spatial std of each thumbnail (computed once: the flat, fade and dissolve detectors all read it)."""
        if self.thumbs is None:
            return None
        return self.thumbs.reshape(len(self.thumbs), -1).std(axis=1)


def detection_size(width: int, height: int, detect_width: int) -> tuple[int, int]:
    """Frame size for detection: the `scenedetect` CLI's downscale rule (factor = width / detect_width)."""
    if detect_width <= 0 or width < detect_width:
        return width, height
    factor = width / float(detect_width)
    return max(1, round(width / factor)), max(1, round(height / factor))


def make_detector(cfg: SceneConfig) -> Any:
    from scenedetect import AdaptiveDetector, ContentDetector

    if cfg.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_scene_len)
    return ContentDetector(threshold=cfg.threshold, min_scene_len=cfg.min_scene_len)


THUMB_SIZE = (48, 27)  # (w, h): TransNetV2's input size, also the grey thumbnails of the gradual detectors


def scan_frames(
    frames: Iterable[tuple[int, float, np.ndarray]],
    fps: float,
    cfg: SceneConfig,
    *,
    detect_size: tuple[int, int] | None = None,
    net: Any = None,
    keep: Callable[[int, float, np.ndarray], None] | None = None,
) -> FrameScan:
    """One pass over `(index, pts, rgb)` frames in order: the scenedetect detector on frames at `detect_size`
    (when it is the configured one), 48x27 thumbnails for the gradual detectors and for `net` (a TransNetV2 stream:
    `push(rgb48x27)`, `finish() -> probabilities`), and each decoded frame handed to `keep` (the clips' frames)."""
    import cv2

    detector = make_detector(cfg) if cfg.uses_scenedetect else None
    cuts: list[int] = []
    luma: list[float] = []
    pts: list[float] = []
    thumbs: list[np.ndarray] = []
    last = None
    for index, t, rgb in frames:
        if keep is not None:
            keep(index, t, rgb)
        det = rgb
        if detect_size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(detect_size):
            det = cv2.resize(rgb, tuple(detect_size), interpolation=cv2.INTER_AREA)
        if detector is not None:
            from scenedetect import FrameTimecode

            bgr = cv2.cvtColor(det, cv2.COLOR_RGB2BGR)  # PySceneDetect expects BGR; 3x faster than a numpy flip
            last = FrameTimecode(index, fps=fps)
            cuts.extend(tc.frame_num for tc in detector.process_frame(last, bgr))
        small = cv2.resize(det, THUMB_SIZE, interpolation=cv2.INTER_AREA)
        if net is not None:
            net.push(small)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        thumbs.append(grey)
        luma.append(float(grey.mean()))
        pts.append(t)
    if detector is not None and last is not None:
        cuts.extend(tc.frame_num for tc in detector.post_process(last))
    return FrameScan(
        cuts=sorted({c for c in cuts if 0 < c < len(pts)}),
        luma=np.asarray(luma),
        pts=np.asarray(pts),
        thumbs=np.stack(thumbs) if thumbs else np.zeros((0, THUMB_SIZE[1], THUMB_SIZE[0]), np.uint8),
        transnet=net.finish() if net is not None else None,
    )


def build_shots(n_frames: int, cuts: Sequence[int], gradual: Sequence[tuple]) -> list[Shot]:
    """Shots between hard cuts and gradual spans `(start, end[, kind])` (kind `fade` when absent); a cut inside or
    touching a gradual span belongs to it."""
    spans = [(int(g[0]), int(g[1]), g[2] if len(g) > 2 else "fade") for g in gradual]
    boundaries: list[tuple[int, int, str]] = list(spans)  # (end of previous shot, start of next shot, transition)
    for cut in cuts:
        if not any(s - 1 <= cut <= e + 1 for s, e, _ in spans):
            boundaries.append((cut, cut, "cut"))
    boundaries.sort()
    shots: list[Shot] = []
    cursor, transition = 0, "start"
    for prev_end, next_start, kind in boundaries:
        if prev_end > cursor:
            shots.append(Shot(cursor, prev_end, transition))
        # A transition at the very start (fade-in from black) is not a transition between shots.
        transition = kind if shots else "start"
        cursor = max(cursor, next_start)
    if n_frames > cursor:
        shots.append(Shot(cursor, n_frames, transition))
    return shots


def transnet_boundaries(probs: np.ndarray, threshold: float, max_cut_frames: int) -> tuple[list[int], list[tuple]]:
    """TransNetV2's per-frame probabilities as (hard cuts, gradual spans). The net fires on the last frame of the
    outgoing shot, so a run of frames above `threshold` ending at frame e-1 starts the next shot at e; a run of more
    than `max_cut_frames` frames is a gradual transition covering the run (approximate: the net marks its middle)."""
    cuts: list[int] = []
    spans: list[tuple] = []
    for start, end in runs(np.asarray(probs) > threshold):
        if end - start <= max_cut_frames:
            cuts.append(end)
        else:
            spans.append((start, end, "dissolve"))
    n = len(probs)
    return [c for c in cuts if 0 < c < n], spans


def gradual_transitions(scan: FrameScan, cfg: SceneConfig) -> list[tuple]:
    """Flat stretches and fades (kind `fade`), then dissolves between frames that are in neither (kind `dissolve`)."""
    thumbs = None if scan.thumbs is None else scan.thumbs.astype(np.float32)
    contrast = scan.contrast
    fades = find_fades(
        scan.luma, cfg.fade_black_level, cfg.fade_min_step, contrast=contrast, flat_std=cfg.flat_std, thumbs=thumbs
    )
    spans: list[tuple] = [(s, e, "fade") for s, e in fades]
    if cfg.dissolves and thumbs is not None:
        excluded = flat_frames(scan.luma, contrast, cfg.fade_black_level, cfg.flat_std)
        for s, e in fades:
            excluded[s:e] = True
        found = find_dissolves(
            thumbs,
            min_change=cfg.dissolve_min_change,
            max_residual=cfg.dissolve_max_residual,
            max_frames=cfg.dissolve_max_frames,
            excluded=excluded,
        )
        spans += [(s, e, "dissolve") for s, e in found]
    return sorted(spans)


def detect_shots(scan: FrameScan, cfg: SceneConfig) -> list[Shot]:
    """The shots of one scanned video under `cfg.detector`."""
    if cfg.detector == "transnetv2":
        if scan.transnet is None:
            raise ValueError("scenes.detector = transnetv2 needs the scan's TransNetV2 predictions")
        cuts, spans = transnet_boundaries(scan.transnet, cfg.transnet_threshold, cfg.transnet_max_cut_frames)
        # Flat stretches are no shot under any detector: a slate or black gap never becomes a clip.
        flat = flat_frames(scan.luma, scan.contrast, cfg.fade_black_level, cfg.flat_std)
        spans = sorted(spans + [(s, e, "fade") for s, e in runs(flat)])
        return build_shots(scan.n_frames, cuts, _merge_spans(spans))
    gradual = gradual_transitions(scan, cfg)
    if cfg.detector == "hybrid":
        if scan.transnet is None:
            raise ValueError("scenes.detector = hybrid needs the scan's TransNetV2 predictions")
        cuts, net_spans = transnet_boundaries(scan.transnet, cfg.transnet_threshold, cfg.transnet_max_cut_frames)
        # A net's gradual run that overlaps one of ours is that transition; one we did not find stays as the net saw it.
        extra = [sp for sp in net_spans if not any(sp[0] < e + 1 and s - 1 < sp[1] for s, e, _ in gradual)]
        return build_shots(scan.n_frames, cuts, _merge_spans(sorted(gradual + extra)))
    return build_shots(scan.n_frames, scan.cuts, gradual)


def _merge_spans(spans: list[tuple]) -> list[tuple]:
    """Overlapping or touching spans as one (the first span's kind)."""
    merged: list[tuple] = []
    for s, e, kind in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]), merged[-1][2])
        else:
            merged.append((s, e, kind))
    return merged


def span_seconds(pts: np.ndarray, start: int, end: int, fps: float) -> tuple[float, float]:
    """Presentation time of `start` and the time just after frame `end - 1` (its pts plus one frame duration)."""
    last = pts[end - 1]
    nxt = pts[end] if end < len(pts) else last + (pts[end - 1] - pts[end - 2] if end >= 2 else 1.0 / fps)
    return float(pts[start]), float(nxt)


def clip_spans(
    shot: Shot, next_transition: str | None, pts: np.ndarray, fps: float, cfg: SceneConfig
) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """Split a shot into clips: trim at cuts/fades, split long shots evenly by time, drop short pieces.

    Returns (kept spans, dropped spans with their reason).
    """
    start = shot.start + (cfg.trim_frames if shot.transition != "start" else 0)
    end = shot.end - (cfg.trim_frames if next_transition not in (None, "start") else 0)
    if end - start < 1:
        return [], [(shot.start, shot.end, "too_short")]
    t0, t1 = span_seconds(pts, start, end, fps)
    pieces = max(1, math.ceil((t1 - t0) / cfg.max_clip_s - 1e-9))
    # Split points at equal times (VFR-safe): first frame whose pts reaches each boundary time.
    edges = [start] + [int(np.searchsorted(pts, t0 + k * (t1 - t0) / pieces)) for k in range(1, pieces)] + [end]
    kept: list[tuple[int, int]] = []
    dropped: list[tuple[int, int, str]] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        s0, s1 = span_seconds(pts, a, b, fps)
        if s1 - s0 >= cfg.min_clip_s - 1e-6:
            kept.append((a, b))
        else:
            dropped.append((a, b, "too_short"))
    return kept, dropped
