"""Clip frame sampling: which source frames a clip stores, and the resize/crop policy that shapes them.

With `[buckets]` (curation.buckets): each video is stored at the bucket shape nearest its aspect ratio (scaled to
cover it, centre-cropped by what the aspect difference forces), and each clip is cut into up to `frames.windows`
consecutive windows sampled at `frames.fps`, each of the largest bucket frame count that still fits; a clip that
cannot fill the smallest count is rejected (`too_short_for_bucket`). `video_layout` and `clip_windows` below.

Without (the fixed-size behaviour): a clip stores `num_frames` frames taken every `stride` source frames
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

from curation.buckets import BucketConfig, cover_plan, nearest_shape, plan_windows
from curation.video_store import VideoCodec

RESIZE_MODES = ("cover", "fit", "stretch")
STORES = ("raw", "video", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FramesConfig:
    """How many frames each clip stores, how far apart, and at what size."""

    num_frames: int = 16
    fps: float = 8.0  # target sampling rate; stride = round(source fps / fps)
    stride: int = 0  # > 0 overrides `fps` with a fixed source-frame stride
    width: int = 256
    height: int = 256
    resize: str = "cover"
    windows: int = 1  # with [buckets]: windows at most per clip, consecutive, covering it (without: one, centred)
    store: str = "raw"  # raw (uint8 bytes) | video (an encoded stream, curation.video_store) | none (annotations only)
    codec: str = "h264"  # store = video: h264 | av1
    crf: int = 11  # store = video: constant quality (lower = better, larger)
    preset: str = "faster"  # store = video: libx264 preset, or libsvtav1's 0-13
    pix_fmt: str = "yuv444p"  # store = video: yuv444p | yuv420p | rgb24 (h264: the RGB planes, no YUV step)
    fast_decode: bool = True  # store = video, h264: x264's tune=fastdecode (about half the decode time, +12 % bytes)

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise ValueError(f"frames.store must be one of {', '.join(STORES)}, got {self.store!r}")
        if self.store == "video":
            self.video_codec  # noqa: B018  (validates codec, crf and pix_fmt up front)
        if self.num_frames < 1 or self.width < 8 or self.height < 8:
            raise ValueError("frames.num_frames must be >= 1 and frames.width/height >= 8")
        if self.windows < 1:
            raise ValueError(f"frames.windows must be >= 1, got {self.windows}")
        if self.stride < 0 or (self.stride == 0 and self.fps <= 0):
            raise ValueError("frames needs stride > 0 or fps > 0")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"frames.resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    @property
    def video_codec(self) -> VideoCodec:
        """How `frames.store = video` encodes the stored frames."""
        return VideoCodec(
            codec=self.codec, crf=self.crf, preset=self.preset, pix_fmt=self.pix_fmt, fast_decode=self.fast_decode
        )


def sampling_stride(source_fps: float, cfg: FramesConfig) -> int:
    """Source frames between two stored frames: `frames.stride`, else round(source fps / frames.fps), at least 1."""
    return cfg.stride or max(1, round(source_fps / cfg.fps))


def sample_indices(start: int, end: int, source_fps: float, cfg: FramesConfig) -> tuple[list[int], int] | None:
    """Source frame indices stored for clip [start, end) and the stride used; None if the clip is too short."""
    stride = sampling_stride(source_fps, cfg)
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


@dataclasses.dataclass(frozen=True)
class VideoLayout:
    """How one video's clips are stored: `frames` is the [frames] config with the video's stored size (its bucket's
    with buckets), what the resize crops away, and the frame counts a window may take."""

    frames: FramesConfig
    crop_fraction: float
    counts: tuple[int, ...]
    bucketed: bool
    problem: str = ""  # why this video cannot be stored at its bucket (too small to scale up); empty when fine


def video_layout(width: int, height: int, frames: FramesConfig, buckets: BucketConfig) -> VideoLayout:
    """The layout of a video of display size (width, height)."""
    if not buckets.enabled:
        crop = cover_plan(width, height, frames.height, frames.width).crop_fraction if frames.resize == "cover" else 0.0
        return VideoLayout(frames, crop, (frames.num_frames,), bucketed=False)
    shape = nearest_shape(width, height, buckets.shapes())
    plan = cover_plan(width, height, *shape)
    stored = dataclasses.replace(frames, height=shape[0], width=shape[1], resize="cover")
    problem = ""
    if plan.scale > buckets.max_upscale + 1e-9:
        problem = (
            f"{width}x{height} needs {plan.scale:.2f}x scaling to cover its bucket {shape[1]}x{shape[0]}, more than "
            f"buckets.max_upscale={buckets.max_upscale:g}"
        )
    return VideoLayout(stored, plan.crop_fraction, tuple(buckets.frame_counts(shape)), bucketed=True, problem=problem)


def clip_windows(start: int, end: int, source_fps: float, layout: VideoLayout) -> list[tuple[list[int], int]]:
    """(source frame indices, stride) of each window stored for clip [start, end); empty when it is too short."""
    fc = layout.frames
    if not layout.bucketed:
        sampled = sample_indices(start, end, source_fps, fc)
        return [sampled] if sampled else []
    stride = sampling_stride(source_fps, fc)
    return [(w, stride) for w in plan_windows(start, end, stride, list(layout.counts), fc.windows)]
