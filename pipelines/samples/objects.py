"""Builder for a static camera watching textured objects that rest, glide along a line, and stop.

Objects move by whole pixels, so their boxes are exact integers and their flow is exactly the displacement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import Rendered, VideoSpec, video_rng
from .render import flow_grid, intrinsics, make_c2w
from .scenes import DEFAULT_FOV, FLOW_SCALE, camera_truth, single_shot, to_uint8
from .textures import make_texture, random_palette

__all__ = ["build_objects", "object_positions"]


def object_positions(obj: dict[str, Any], n_frames: int) -> np.ndarray:
    """Integer top-left positions (n_frames, 2): rest, move at ``velocity`` px/frame during ``move``, rest."""
    start, end = obj["move"]
    steps = np.clip(np.arange(n_frames) - start, 0, end - start)[:, None]
    return np.asarray(obj["start"], float) + np.rint(steps * np.asarray(obj["velocity"], float))


def _sprite(rng: np.random.Generator, shape: str, width: int, height: int, hue: float) -> np.ndarray:
    """RGBA float32 sprite; a disc gets an analytically anti-aliased circular alpha."""
    rgb = make_texture(rng, height, width, random_palette(rng, hue=hue), detail=0.5)
    alpha = np.ones((height, width), np.float32)
    if shape == "disc":
        yy, xx = np.mgrid[0:height, 0:width]
        cx, cy = (width - 1) / 2, (height - 1) / 2
        dist = np.hypot((xx - cx) * height / width, yy - cy)  # elliptical if not square
        alpha = np.clip(height / 2 - dist + 0.5, 0.0, 1.0).astype(np.float32)
    return np.dstack([rgb, alpha])


def _events(moving: list[bool]) -> list[dict[str, int]]:
    """Maximal runs of True as [start, end) windows."""
    events, start = [], None
    for t, m in enumerate([*moving, False]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            events.append({"start": start, "end": t})
            start = None
    return events


def _object_truth(idx: int, obj: dict[str, Any], pos: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """Boxes [x0, y0, x1, y1] (end exclusive), forward ``moving`` flags and event windows for one object."""
    w, h = size
    boxes = [[int(x), int(y), int(x) + w, int(y) + h] for x, y in pos]
    moving = [bool(np.any(pos[t + 1] != pos[t])) for t in range(len(pos) - 1)] + [False]
    return {"id": idx, "shape": obj["shape"], "boxes": boxes, "moving": moving, "events": _events(moving)}


def build_objects(spec: VideoSpec, seed: int) -> Rendered:
    """Static textured background plus moving objects. params ``objects``: list of dicts with ``shape``
    (rect | disc), ``size`` [w, h], ``start`` [x, y] (top-left), ``velocity`` [vx, vy] px/frame and
    ``move`` [start, end) frames; objects are drawn in list order (later on top)."""
    rng = video_rng(spec, seed)
    w, h, n = spec.width, spec.height, spec.n_frames
    hue = float(rng.random())
    background = make_texture(rng, h, w, random_palette(rng, hue=hue))
    objs = list(spec.params["objects"])
    sprites = [_sprite(rng, o["shape"], *o["size"], (hue + 0.33 * (i + 1)) % 1.0) for i, o in enumerate(objs)]
    positions = [object_positions(o, n).astype(int) for o in objs]
    for o, pos in zip(objs, positions, strict=True):
        ow, oh = o["size"]
        if pos.min() < 0 or (pos[:, 0] + ow).max() > w or (pos[:, 1] + oh).max() > h:
            raise ValueError(f"{spec.name}: object {o} leaves the frame")
    gx, gy = flow_grid(w, h, FLOW_SCALE)
    gi, gj = np.rint(gy).astype(int), np.rint(gx).astype(int)  # nearest full-res pixel of each grid sample
    frames, flows = [], []
    for t in range(n):
        img = background.copy()
        flow = np.zeros((h, w, 2), np.float32)
        for sprite, pos in zip(sprites, positions, strict=True):
            x, y = pos[t]
            sh, sw = sprite.shape[:2]
            alpha = sprite[..., 3:]
            img[y : y + sh, x : x + sw] = img[y : y + sh, x : x + sw] * (1.0 - alpha) + sprite[..., :3] * alpha
            if t + 1 < n:
                region = flow[y : y + sh, x : x + sw]
                region[alpha[..., 0] >= 0.5] = pos[t + 1] - pos[t]
        frames.append(to_uint8(img))
        if t + 1 < n:
            flows.append(flow[gi, gj])
    truth = single_shot(n)
    truth["camera"] = camera_truth(intrinsics(w, h, DEFAULT_FOV), DEFAULT_FOV, [make_c2w()] * n, {})
    truth["objects"] = [
        _object_truth(i, o, pos, tuple(o["size"])) for i, (o, pos) in enumerate(zip(objs, positions, strict=True))
    ]
    return Rendered(frames, truth, np.stack(flows))
