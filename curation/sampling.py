"""Clip frame sampling: which source frames a clip stores, and the resize/crop policy that shapes them.

Policy (documented in the README): a clip stores `num_frames` frames taken every `stride` source frames
(stride = round(source fps / target fps) unless set explicitly), centred in the clip. When the clip is too short
for that stride, the stride shrinks to the largest that fits; a clip shorter than `num_frames` frames is rejected.
Frames are resized so the output is exactly `width` x `height`:
- `cover` (default): scale to cover the target, then centre-crop (no borders, edges of wide frames are lost);
- `fit`: scale to fit inside the target, then pad with black (nothing lost, borders added);
- `stretch`: scale each axis independently (aspect ratio changes).
"""

from __future__ import annotations

import dataclasses

import numpy as np

RESIZE_MODES = ("cover", "fit", "stretch")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FramesConfig:
    """How many frames each clip stores, how far apart, and at what size."""

    num_frames: int = 16
    fps: float = 8.0  # target sampling rate; stride = round(source fps / fps)
    stride: int = 0  # > 0 overrides `fps` with a fixed source-frame stride
    width: int = 256
    height: int = 256
    resize: str = "cover"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.width < 8 or self.height < 8:
            raise ValueError("frames.num_frames must be >= 1 and frames.width/height >= 8")
        if self.stride < 0 or (self.stride == 0 and self.fps <= 0):
            raise ValueError("frames needs stride > 0 or fps > 0")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"frames.resize must be one of {RESIZE_MODES}, got {self.resize!r}")


def sample_indices(start: int, end: int, source_fps: float, cfg: FramesConfig) -> tuple[list[int], int] | None:
    """Source frame indices stored for clip [start, end) and the stride used; None if the clip is too short."""
    stride = cfg.stride or max(1, round(source_fps / cfg.fps))
    length = end - start
    if length < cfg.num_frames:
        return None
    if cfg.num_frames > 1:
        stride = min(stride, (length - 1) // (cfg.num_frames - 1))
    span = (cfg.num_frames - 1) * stride + 1
    first = start + (length - span) // 2
    return [first + k * stride for k in range(cfg.num_frames)], stride


def decode_size(width: int, height: int, cfg: FramesConfig) -> tuple[int, int]:
    """Size to ask the decoder for, so that `fit_to_target` only crops or pads afterwards."""
    if cfg.resize == "stretch":
        return cfg.width, cfg.height
    scale_w, scale_h = cfg.width / width, cfg.height / height
    scale = max(scale_w, scale_h) if cfg.resize == "cover" else min(scale_w, scale_h)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if cfg.resize == "cover":  # rounding must never leave the frame smaller than the target
        w, h = max(w, cfg.width), max(h, cfg.height)
    else:
        w, h = min(w, cfg.width), min(h, cfg.height)
    return w, h


def fit_to_target(frame: np.ndarray, cfg: FramesConfig) -> np.ndarray:
    """Centre-crop (cover) or centre-pad (fit) a decoded frame to exactly (height, width, 3)."""
    h, w = frame.shape[:2]
    if (h, w) == (cfg.height, cfg.width):
        return frame
    if h < cfg.height or w < cfg.width:  # fit: pad with black
        out = np.zeros((cfg.height, cfg.width, 3), dtype=frame.dtype)
        top, left = (cfg.height - h) // 2, (cfg.width - w) // 2
        out[top : top + h, left : left + w] = frame[: cfg.height, : cfg.width]
        return out
    top, left = (h - cfg.height) // 2, (w - cfg.width) // 2
    return frame[top : top + cfg.height, left : left + cfg.width]
