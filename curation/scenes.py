"""Stage: scenes. Reads: a `videos` record. Writes: shots (`scenes` rows) and the clip spans cut from them.

Shots come from PySceneDetect (ContentDetector by default, AdaptiveDetector as an option) run on frames decoded
at a reduced width, the same downscaling rule as the `scenedetect` CLI. Gradual transitions through black are
found from the per-frame brightness and reported as `fade` boundaries: the whole ramp is excluded from both
neighbouring shots, so no clip starts or ends in the middle of a fade. Timestamps come from the decoder's
presentation times, never `index / fps`, so variable-frame-rate sources get exact times.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

DETECTORS = ("content", "adaptive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceneConfig:
    """Shot detection and the rules that turn shots into clips."""

    detector: str = "content"  # content | adaptive
    threshold: float = 27.0  # ContentDetector default (PySceneDetect)
    adaptive_threshold: float = 3.0  # AdaptiveDetector default (PySceneDetect)
    min_scene_len: int = 15  # frames; PySceneDetect default
    detect_width: int = 256  # frames are downscaled to about this width for detection (CLI rule); 0 = full size
    fade_black_level: float = 12.0  # mean luma (0-255) below which a frame counts as black
    fade_min_step: float = 0.6  # luma change per frame that still counts as part of a fade ramp
    trim_frames: int = 2  # frames dropped on each side of a cut or fade, where encoders smear shots together
    min_clip_s: float = 1.0
    max_clip_s: float = 10.0  # longer shots are split into equal parts no longer than this

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"scenes.detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.min_scene_len < 1 or self.trim_frames < 0 or self.detect_width < 0:
            raise ValueError("scenes.min_scene_len must be >= 1, trim_frames and detect_width >= 0")
        if not 0 < self.min_clip_s <= self.max_clip_s:
            raise ValueError("scenes needs 0 < min_clip_s <= max_clip_s")


@dataclasses.dataclass(frozen=True)
class Shot:
    """A shot [start, end) in source frames and how it began (start | cut | fade)."""

    start: int
    end: int
    transition: str


@dataclasses.dataclass
class FrameScan:
    """What one pass over a video's detection frames yields."""

    cuts: list[int]  # frame indices where ContentDetector/AdaptiveDetector starts a new shot
    luma: np.ndarray  # (N,) mean brightness per frame
    pts: np.ndarray  # (N,) presentation time per frame, seconds

    @property
    def n_frames(self) -> int:
        return len(self.pts)


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


def scan_frames(frames: Iterable[tuple[int, float, np.ndarray]], fps: float, cfg: SceneConfig) -> FrameScan:
    """Run the shot detector over `(index, pts, rgb)` frames in order; collect cuts, brightness and timestamps."""
    import cv2
    from scenedetect import FrameTimecode

    detector = make_detector(cfg)
    cuts: list[int] = []
    luma: list[float] = []
    pts: list[float] = []
    last = None
    for index, t, rgb in frames:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # PySceneDetect expects BGR; 3x faster than a numpy flip
        last = FrameTimecode(index, fps=fps)
        cuts.extend(tc.frame_num for tc in detector.process_frame(last, bgr))
        luma.append(float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean()))
        pts.append(t)
    if last is not None:
        cuts.extend(tc.frame_num for tc in detector.post_process(last))
    return FrameScan(cuts=sorted({c for c in cuts if 0 < c < len(pts)}), luma=np.asarray(luma), pts=np.asarray(pts))


def find_fades(luma: np.ndarray, black_level: float, min_step: float) -> list[tuple[int, int]]:
    """Gradual transitions through black as [start, end) frame spans: the dark run plus its fade-out/in ramps."""
    dark = luma < black_level
    fades: list[tuple[int, int]] = []
    i, n = 0, len(luma)
    while i < n:
        if not dark[i]:
            i += 1
            continue
        run_end = i
        while run_end < n and dark[run_end]:
            run_end += 1
        start = i
        while start > 0 and luma[start - 1] - luma[start] > min_step:  # walk back up the fade-out ramp
            start -= 1
        end = run_end
        while end < n and luma[end] - luma[end - 1] > min_step:  # walk forward up the fade-in ramp
            end += 1
        # The walk stops on the last frame at full brightness; the fade begins on the frame after it.
        fades.append((start + 1 if start < i else i, end))
        i = run_end
    return fades


def build_shots(n_frames: int, cuts: list[int], fades: list[tuple[int, int]]) -> list[Shot]:
    """Shots between hard cuts and fade spans; cuts inside (or touching) a fade are absorbed by the fade."""
    boundaries: list[tuple[int, int, str]] = []  # (end of previous shot, start of next shot, transition)
    for start, end in fades:
        boundaries.append((start, end, "fade"))
    for cut in cuts:
        if not any(s - 1 <= cut <= e + 1 for s, e in fades):
            boundaries.append((cut, cut, "cut"))
    boundaries.sort()
    shots: list[Shot] = []
    cursor, transition = 0, "start"
    for prev_end, next_start, kind in boundaries:
        if prev_end > cursor:
            shots.append(Shot(cursor, prev_end, transition))
        # A fade at the very start (fade-in from black) is not a transition between shots.
        transition = kind if shots else "start"
        cursor = max(cursor, next_start)
    if n_frames > cursor:
        shots.append(Shot(cursor, n_frames, transition))
    return shots


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
    start = shot.start + (cfg.trim_frames if shot.transition in ("cut", "fade") else 0)
    end = shot.end - (cfg.trim_frames if next_transition in ("cut", "fade") else 0)
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
