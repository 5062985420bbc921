"""Builder for near-duplicates: another video of the corpus, re-rendered, optionally centre-cropped and resized, and
encoded with this spec's own encoder and container.

The source is rendered by its own builder from a spec that keeps the SOURCE's name (so ``video_rng`` gives the
very same pixels), with ``overrides`` merged into its params. Frame-index truth (cuts, fades, shots, brightness
gains) carries over; pixel-geometry truth (camera, objects, flow) only when the copy has the source's geometry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from .model import Rendered, VideoSpec

__all__ = ["build_copy", "crop_box", "transform_frame"]

GEOMETRY_KEYS = ("camera", "objects")  # truth in source pixel coordinates, invalid after a crop or resize


def crop_box(width: int, height: int, crop: float) -> tuple[int, int, int, int]:
    """Centre crop removing ``crop`` of the width and of the height from each side: (x0, y0, x1, y1), end exclusive."""
    if not 0.0 <= crop < 0.5:
        raise ValueError(f"crop must be in [0, 0.5), got {crop}")
    dx, dy = round(crop * width), round(crop * height)
    return dx, dy, width - dx, height - dy


def transform_frame(frame: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop ``frame`` to ``box`` and resize it to ``size`` = (width, height); INTER_AREA when shrinking."""
    x0, y0, x1, y1 = box
    out = frame[y0:y1, x0:x1]
    if (x1 - x0, y1 - y0) == size:
        return np.ascontiguousarray(out)
    shrink = size[0] <= x1 - x0 and size[1] <= y1 - y0
    return cv2.resize(out, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def source_spec(spec: VideoSpec) -> VideoSpec:
    """The spec the copy's frames are rendered from: the source with ``overrides`` applied, under the source's
    name (hence the source's random stream). Raises ValueError if the copy cannot match the source frame for
    frame."""
    from .specs import get_spec  # the registry imports this module

    p = spec.params
    if "of" not in p:
        raise ValueError(f"{spec.name}: a copy needs params['of'], the source video's name")
    source = get_spec(p["of"])
    if source.kind == "copy" or source.name == spec.name:
        raise ValueError(f"{spec.name}: the source of a copy must be an original video, not {source.name!r}")
    if (spec.n_frames, spec.fps) != (source.n_frames, source.fps):
        raise ValueError(
            f"{spec.name}: a copy must keep its source's n_frames and fps; {source.name} has "
            f"{source.n_frames} frames at {source.fps} fps, the copy {spec.n_frames} at {spec.fps}"
        )
    overrides: Mapping[str, Any] = p.get("overrides", {})
    if not overrides:
        return source
    return dataclasses.replace(source, params={**source.params, **overrides})


def build_copy(spec: VideoSpec, seed: int) -> Rendered:
    """A (possibly cropped / resized / re-rendered) duplicate of another video of the corpus.

    params: ``of`` (source video name), ``crop`` (fraction cut from each side, default 0), ``overrides`` (source
    params replaced before rendering, e.g. ``{"blur_sigma": 0}``), ``twin`` (also record ``twin_of``).
    """
    from .specs import BUILDERS

    src = source_spec(spec)
    crop = float(spec.params.get("crop", 0.0))
    box = crop_box(src.width, src.height, crop)
    size = (spec.width, spec.height)
    rendered = BUILDERS[src.kind](src, seed)
    frames = [transform_frame(f, box, size) for f in rendered.frames]
    same_geometry = box == (0, 0, src.width, src.height) and size == (src.width, src.height)
    truth = {k: v for k, v in rendered.truth.items() if same_geometry or k not in GEOMETRY_KEYS}
    if not same_geometry:
        truth["objects"] = []
    truth["duplicate_of"] = src.name
    truth["copy_transform"] = {
        "crop": crop,
        "crop_box": list(box),
        "size": list(size),
        "encoder": spec.encoder,
        "overrides": dict(spec.params.get("overrides", {})),
    }
    if spec.params.get("twin"):
        truth["twin_of"] = src.name
    return Rendered(frames, truth, rendered.flow if same_geometry else None)
