"""Classical image quality of a clip, always on and CPU only: sharpness, exposure, contrast, colourfulness, plus
perceptual hashes of key frames for near-duplicate detection.

Scores are computed on a few of the clip's stored frames (all clips of a run share one stored size, so the scores
compare across sources) and averaged:
- `sharpness`: variance of the Laplacian of the luma (0-255 scale); blur and heavy compression lower it.
- `brightness`: mean luma in [0, 1]; `clipped_dark` / `clipped_bright`: share of pixels at the ends of the range.
- `contrast`: RMS contrast, the standard deviation of luma in [0, 1].
- `colorfulness`: Hasler and Suesstrunk's metric on 0-255 RGB (0 for grey; about 100+ for vivid footage).
`key_frame_hashes` holds a 64-bit DCT perceptual hash (16 hex digits) of the first, middle and last stored frame;
a frame too flat to hash meaningfully gets null.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import AnnotatorError, Batch, per_clip, spread_indices

HASH_SIZE = 32  # the grey thumbnail a perceptual hash is computed from
HASH_BITS = 8  # low-frequency DCT block kept: 8 x 8 = 64 bits
FLAT_STD = 2.0  # a thumbnail flatter than this (0-255 grey levels) has no structure to hash
DARK_LEVEL, BRIGHT_LEVEL = 4, 251  # luma at or beyond these counts as clipped


@dataclasses.dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """Classical quality settings."""

    num_frames: int = 4  # stored frames scored per clip, evenly spaced
    hash_frames: int = 3  # key frames hashed for dedup: first, middle, last (1 = the middle one)

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError("quality.num_frames must be >= 1")
        if self.hash_frames < 1:
            raise ValueError("quality.hash_frames must be >= 1")


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (H, W, 3) uint8 RGB image, float32 on the 0-255 scale."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of a 0-255 grey image."""
    return float(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F, ksize=1).var())


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003): sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), on 0-255 RGB."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def frame_scores(rgb: np.ndarray) -> dict[str, float]:
    """Every classical score of one (H, W, 3) uint8 RGB frame."""
    y = luma(rgb)
    return {
        "sharpness": sharpness(y),
        "brightness": float(y.mean() / 255.0),
        "contrast": float(y.std() / 255.0),
        "colorfulness": colorfulness(rgb),
        "clipped_dark": float((y <= DARK_LEVEL).mean()),
        "clipped_bright": float((y >= BRIGHT_LEVEL).mean()),
    }


def perceptual_hash(rgb: np.ndarray) -> int | None:
    """64-bit DCT hash: the signs of the 8x8 lowest frequencies of a 32x32 grey thumbnail against their median.

    Re-encoding, resizing and small crops flip few bits; unrelated images differ in about half. None for a frame
    too flat to hash (its bits would be noise).
    """
    thumb = cv2.resize(luma(rgb), (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA)
    if thumb.std() < FLAT_STD:
        return None
    block = cv2.dct(thumb)[:HASH_BITS, :HASH_BITS].ravel()
    bits = block > np.median(block[1:])  # the DC term would dominate the median; leave it out
    return int(np.packbits(bits).view(">u8")[0])


def hash_hex(value: int | None) -> str | None:
    return None if value is None else f"{value:016x}"


def clip_quality(frames: np.ndarray, cfg: QualityConfig) -> dict:
    """The quality columns of one clip from its stored frames (T, H, W, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
        raise AnnotatorError("bad_frames", f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    per_frame = [frame_scores(frames[i]) for i in spread_indices(len(frames), cfg.num_frames)]
    out: dict = {k: float(np.mean([s[k] for s in per_frame])) for k in per_frame[0]}
    out["key_frame_hashes"] = [
        hash_hex(perceptual_hash(frames[i])) for i in spread_indices(len(frames), cfg.hash_frames)
    ]
    return out


class QualityScorer:
    """Classical quality scores and key-frame hashes per clip, from the stored frames."""

    name: ClassVar[str] = "quality"
    output_columns: ClassVar[tuple[str, ...]] = (
        "sharpness",
        "brightness",
        "contrast",
        "colorfulness",
        "clipped_dark",
        "clipped_bright",
        "key_frame_hashes",
        "quality_error",
    )

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        columns = per_clip(self.name, self.output_columns, zip(batch["frames"]), self.score)
        return {"clip_id": batch["clip_id"], **columns}

    def score(self, frames: np.ndarray | None) -> dict:
        if frames is None:
            raise AnnotatorError("no_frames", "the clip has no decoded frames")
        return clip_quality(frames, self.cfg)
