"""Data types shared by the sample-corpus builders, the registry and the writer."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VideoSpec", "Rendered", "CODEC_NAMES", "video_rng"]

# Encoder name -> codec name as ffprobe / PyAV report it when decoding.
CODEC_NAMES: dict[str, str] = {
    "libx264": "h264",
    "libx265": "hevc",
    "libvpx-vp9": "vp9",
    "libsvtav1": "av1",
    "mpeg4": "mpeg4",
    "mjpeg": "mjpeg",
}


@dataclass(frozen=True)
class VideoSpec:
    """One video of the corpus: how to encode it and which builder renders it (``kind`` + ``params``).

    ``width`` x ``height`` is the display size the builder renders. ``rotation`` (clockwise degrees, 0/90/180/270)
    stores the frames turned the other way with a display matrix that turns them back, as phones write portrait
    video: the coded size is then ``coded_size``.
    """

    name: str
    kind: str
    encoder: str
    container: str  # file extension, also picks the muxer: mp4, avi, webm, mkv
    fps: int
    width: int
    height: int
    n_frames: int
    tags: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    pix_fmt: str = "yuv420p"
    rotation: int = 0

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"{self.name}: rotation must be 0, 90, 180 or 270, got {self.rotation}")

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the encoded stream: the display size, swapped by a quarter turn."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    @property
    def file_name(self) -> str:
        """Video file name inside the corpus directory."""
        return f"{self.name}.{self.container}"

    def video_path(self, out_dir: Path) -> Path:
        """Where the encoded video lives in ``out_dir``."""
        return out_dir / self.file_name

    def truth_path(self, out_dir: Path) -> Path:
        """Where the sidecar truth JSON lives in ``out_dir``."""
        return out_dir / f"{self.name}.json"


@dataclass
class Rendered:
    """Output of a builder: RGB uint8 frames, truth fields to merge into the sidecar, optional true flow.

    ``flow`` has shape (n_frames - 1, rows, cols, 2), float32, in pixels of the stored resolution.
    """

    frames: list[np.ndarray]
    truth: dict[str, Any]
    flow: np.ndarray | None = None


def video_rng(spec: VideoSpec, seed: int) -> np.random.Generator:
    """The generator a video's pixels come from: depends only on the corpus seed and the video name."""
    return np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
