"""Aspect-ratio and duration buckets: the (num_frames, height, width) shapes clips are stored at.

A bucket keeps a clip's aspect ratio instead of forcing a square: each video goes to the spatial shape nearest its
display aspect ratio (log-ratio distance, so 2:1 and 1:2 are equally far from 1:1), is scaled to cover it and
centre-cropped by only what the difference in aspect ratio forces. Each window of a clip then takes the largest
frame count its duration fills at the target fps. Frame counts are 1 + 4k so that a causal video VAE with 4x
temporal compression maps them to whole latent frames (1 + k), and sides are multiples of `multiple` (16: an 8x
VAE with 2x2 patches divides them).

`[buckets]` either lists `explicit` (height, width, num_frames) shapes, or generates them: for every entry of
`aspect_ratios`, the shape of about `area` pixels with sides snapped to `multiple`, times every count in `frames`.
Empty both, the single shape of `[frames]` (width x height x num_frames) is used with its own resize policy: the
fixed-size behaviour of earlier runs.

Pure functions; `pipelines.steps` applies them per video and per clip.
"""

from __future__ import annotations

import dataclasses
import math

DEFAULT_ASPECTS = ("9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "2:1", "2.39:1")


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """A stored clip shape: `num_frames` frames of `height` x `width`."""

    num_frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        """`"TxHxW"`, e.g. `"33x256x448"`: the `bucket` column."""
        return f"{self.num_frames}x{self.height}x{self.width}"

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @classmethod
    def parse(cls, name: str) -> Bucket:
        t, h, w = (int(x) for x in name.split("x"))
        return cls(num_frames=t, height=h, width=w)


def parse_aspect(text: str) -> float:
    """`"16:9"` -> 1.777..., `"2.39:1"` -> 2.39 (width over height)."""
    try:
        w, h = (float(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"buckets.aspect_ratios: {text!r} is not `width:height`") from None
    if not (w > 0 and h > 0):
        raise ValueError(f"buckets.aspect_ratios: {text!r} needs positive sides")
    return w / h


def is_latent_aligned(num_frames: int) -> bool:
    """1 + 4k frames: what a 4x temporal VAE encodes into whole latent frames."""
    return num_frames >= 1 and (num_frames - 1) % 4 == 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class BucketConfig:
    """The `[buckets]` section: explicit shapes, or shapes generated from an area, a side multiple and aspect
    ratios; neither = the single `[frames]` shape (the fixed-size behaviour)."""

    explicit: tuple[tuple[int, int, int], ...] = ()  # (height, width, num_frames) each
    aspect_ratios: tuple[str, ...] = ()  # e.g. DEFAULT_ASPECTS; empty with explicit empty = the [frames] shape
    area: int = 256 * 448  # target pixels per frame of a generated shape
    multiple: int = 16  # generated sides (and explicit ones) are multiples of this
    frames: tuple[int, ...] = (17, 33, 49)  # frame counts of generated buckets, each 1 + 4k
    max_upscale: float = 2.0  # a source needing more than this scale to cover its bucket is rejected

    def __post_init__(self) -> None:
        if self.explicit and self.aspect_ratios:
            raise ValueError("buckets: give either explicit shapes or aspect_ratios, not both")
        if self.multiple < 1 or self.area < self.multiple**2:
            raise ValueError("buckets needs multiple >= 1 and area >= multiple^2")
        if self.max_upscale < 1.0:
            raise ValueError(f"buckets.max_upscale must be >= 1 (got {self.max_upscale})")
        counts = [t for *_, t in self.explicit] if self.explicit else list(self.frames)
        if self.enabled and (not counts or not all(is_latent_aligned(t) for t in counts)):
            raise ValueError(f"buckets: frame counts must be 1 + 4k (17, 33, 49, ...), got {sorted(set(counts))}")
        for shape in self.explicit:
            if len(shape) != 3 or min(shape[:2]) < self.multiple or any(s % self.multiple for s in shape[:2]):
                raise ValueError(
                    f"buckets.explicit: {list(shape)} is not [height, width, num_frames] with sides multiples of "
                    f"buckets.multiple={self.multiple}"
                )
        for text in self.aspect_ratios:
            parse_aspect(text)

    @property
    def enabled(self) -> bool:
        """False: the single shape of `[frames]` is used, as before buckets existed."""
        return bool(self.explicit or self.aspect_ratios)

    def buckets(self) -> list[Bucket]:
        """Every bucket, sorted by (num_frames, height, width)."""
        if self.explicit:
            return sorted({Bucket(num_frames=t, height=h, width=w) for h, w, t in self.explicit})
        shapes = {generated_shape(parse_aspect(a), self.area, self.multiple) for a in self.aspect_ratios}
        return sorted({Bucket(num_frames=t, height=h, width=w) for h, w in shapes for t in self.frames})

    def shapes(self) -> list[tuple[int, int]]:
        """The distinct (height, width) of the buckets."""
        return sorted({(b.height, b.width) for b in self.buckets()})

    def frame_counts(self, shape: tuple[int, int]) -> list[int]:
        """The frame counts available at one (height, width), ascending."""
        return sorted(b.num_frames for b in self.buckets() if (b.height, b.width) == shape)


def generated_shape(aspect: float, area: int, multiple: int) -> tuple[int, int]:
    """(height, width) of about `area` pixels at `aspect` (w/h), each side rounded to a multiple of `multiple`."""
    height = math.sqrt(area / aspect)
    width = aspect * height
    snap = lambda side: max(multiple, multiple * round(side / multiple))  # noqa: E731
    return snap(height), snap(width)


def nearest_shape(width: int, height: int, shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) whose aspect ratio is nearest the source's display aspect `width / height` (by log ratio;
    a tie goes to the larger shape, then the wider)."""
    source = math.log(width / height)
    return min(shapes, key=lambda s: (round(abs(math.log(s[1] / s[0]) - source), 12), -s[0] * s[1], -s[1]))


@dataclasses.dataclass(frozen=True)
class CoverPlan:
    """How a source frame becomes a bucket frame: decode at `decode_width` x `decode_height` (aspect kept, covering
    the bucket), then centre-crop to the bucket. `crop_fraction` is the share of the picture cut away."""

    decode_width: int
    decode_height: int
    crop_fraction: float
    scale: float  # decode size / source size (> 1: upscaled)


def cover_plan(width: int, height: int, bucket_height: int, bucket_width: int) -> CoverPlan:
    """Scale (width, height) to cover (bucket_width, bucket_height) keeping its aspect ratio."""
    scale = max(bucket_width / width, bucket_height / height)
    dw = max(bucket_width, round(width * scale))  # rounding must never leave the frame smaller than the bucket
    dh = max(bucket_height, round(height * scale))
    # exact share of the source picture outside the crop (from the ratios, not the rounded decode size)
    source, target = width / height, bucket_width / bucket_height
    crop = 1.0 - min(source, target) / max(source, target)
    return CoverPlan(decode_width=dw, decode_height=dh, crop_fraction=crop, scale=scale)


def available_frames(length: int, stride: int) -> int:
    """How many frames `stride` apart fit in `length` source frames."""
    return 0 if length < 1 else (length - 1) // stride + 1


def plan_windows(start: int, end: int, stride: int, counts: list[int], max_windows: int) -> list[list[int]]:
    """Source frame indices of the windows of clip [start, end): consecutive windows, `stride` apart inside each and
    from one window to the next, each as long as the remaining span allows among `counts` (largest first), at most
    `max_windows`, the group centred in the clip. Empty when the clip cannot fill the smallest count."""
    counts = sorted(counts)
    left = available_frames(end - start, stride)
    sizes: list[int] = []
    while len(sizes) < max_windows:
        fits = [t for t in counts if t <= left]
        if not fits:
            break
        sizes.append(fits[-1])
        left -= fits[-1]
    span = (sum(sizes) - 1) * stride + 1
    windows, at = [], start + (end - start - span) // 2
    for size in sizes:
        windows.append([at + k * stride for k in range(size)])
        at += size * stride
    return windows
