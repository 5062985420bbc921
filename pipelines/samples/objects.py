"""Builders for textured objects that rest, glide along a line, and stop: under a still camera, or drawn over a
panning camera's view (a pure rotation, so the background's motion is an exact homography).

Objects move by whole pixels in the image, so their boxes are exact integers and their flow is exactly the
displacement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import Rendered, VideoSpec, video_rng
from .render import apply_homography, flow_grid, intrinsics, make_c2w, warp_inverse
from .scenes import DEFAULT_FOV, FLOW_SCALE, camera_truth, panorama_setup, rotation_path, single_shot, to_uint8
from .textures import make_texture, random_palette

__all__ = ["build_objects", "build_pan_objects", "object_positions"]


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


def check_inside(spec: VideoSpec, objs: list[dict[str, Any]]) -> list[np.ndarray]:
    """Integer positions (n_frames, 2) of each object; raises if an object would leave the frame."""
    positions = [object_positions(o, spec.n_frames).astype(int) for o in objs]
    for o, pos in zip(objs, positions, strict=True):
        ow, oh = o["size"]
        if pos.min() < 0 or (pos[:, 0] + ow).max() > spec.width or (pos[:, 1] + oh).max() > spec.height:
            raise ValueError(f"{spec.name}: object {o} leaves the frame")
    return positions


def draw_sprites(img: np.ndarray, sprites: list[np.ndarray], top_lefts: list[np.ndarray]) -> None:
    """Alpha-blend the sprites onto a float image in place, in list order (later on top)."""
    for sprite, (x, y) in zip(sprites, top_lefts, strict=True):
        sh, sw = sprite.shape[:2]
        alpha = sprite[..., 3:]
        img[y : y + sh, x : x + sw] = img[y : y + sh, x : x + sw] * (1.0 - alpha) + sprite[..., :3] * alpha


def composite_objects(
    frames: list[np.ndarray],
    flows: np.ndarray | None,
    sprites: list[np.ndarray],
    positions: list[np.ndarray],
    grid: tuple[np.ndarray, np.ndarray],
) -> None:
    """Draw the sprites over float frames in place, in list order (later on top); where ``flows`` is given, its
    samples (``grid`` = their full-resolution row and column indices) that an object covers take its motion."""
    gi, gj = grid
    for t, img in enumerate(frames):
        draw_sprites(img, sprites, [pos[t] for pos in positions])
        mask = np.zeros(img.shape[:2], np.float32)
        motion = np.zeros((*img.shape[:2], 2), np.float32)
        for sprite, pos in zip(sprites, positions, strict=True):
            x, y = pos[t]
            sh, sw = sprite.shape[:2]
            alpha = sprite[..., 3:]
            if flows is not None and t + 1 < len(frames):
                covered = alpha[..., 0] >= 0.5
                mask[y : y + sh, x : x + sw][covered] = 1.0
                motion[y : y + sh, x : x + sw][covered] = pos[t + 1] - pos[t]
        if flows is not None and t + 1 < len(frames):
            on_object = mask[gi, gj] > 0
            flows[t][on_object] = motion[gi, gj][on_object]


def objects_truth(objs: list[dict[str, Any]], positions: list[np.ndarray]) -> list[dict[str, Any]]:
    return [_object_truth(i, o, pos, tuple(o["size"])) for i, (o, pos) in enumerate(zip(objs, positions, strict=True))]


def make_sprites(rng: np.random.Generator, objs: list[dict[str, Any]], hue: float) -> list[np.ndarray]:
    """One textured sprite per object, hues spread away from the background's."""
    return [_sprite(rng, o["shape"], *o["size"], (hue + 0.33 * (i + 1)) % 1.0) for i, o in enumerate(objs)]


def build_objects(spec: VideoSpec, seed: int) -> Rendered:
    """Static textured background plus moving objects. params ``objects``: list of dicts with ``shape``
    (rect | disc), ``size`` [w, h], ``start`` [x, y] (top-left), ``velocity`` [vx, vy] px/frame and
    ``move`` [start, end) frames; objects are drawn in list order (later on top)."""
    rng = video_rng(spec, seed)
    w, h, n = spec.width, spec.height, spec.n_frames
    hue = float(rng.random())
    background = make_texture(rng, h, w, random_palette(rng, hue=hue))
    objs = list(spec.params["objects"])
    sprites = make_sprites(rng, objs, hue)
    positions = check_inside(spec, objs)
    gx, gy = flow_grid(w, h, FLOW_SCALE)
    grid = (np.rint(gy).astype(int), np.rint(gx).astype(int))  # nearest full-res pixel of each grid sample
    frames = [background.copy() for _ in range(n)]
    flows = np.zeros((n - 1, *gx.shape, 2), np.float32)
    composite_objects(frames, flows, sprites, positions, grid)
    truth = single_shot(n)
    truth["camera"] = camera_truth(intrinsics(w, h, DEFAULT_FOV), DEFAULT_FOV, [make_c2w()] * n, {})
    truth["objects"] = objects_truth(objs, positions)
    return Rendered([to_uint8(f) for f in frames], truth, flows)


def build_pan_objects(spec: VideoSpec, seed: int) -> Rendered:
    """A camera turning at a constant rate (params ``yaw``/``pitch`` deg per frame, ``fov``) over a textured world
    in which objects rest, move and rest (params ``objects`` as in `build_objects`, ``start`` in frame-0 pixels,
    ``velocity`` in world pixels per frame): object motion under camera motion. The objects lie on the world
    plane, so while they rest they move in the image exactly like the background; truth boxes are the bounding
    boxes of their projections, ``moving`` flags their motion in the world."""
    p = dict(spec.params)
    rng = video_rng(spec, seed)
    w, h, n = spec.width, spec.height, spec.n_frames
    fov = float(p.get("fov", DEFAULT_FOV))
    rots = rotation_path(n, p.get("yaw", 0.0), p.get("pitch", 0.0), 0.0)
    k = intrinsics(w, h, fov)
    hue = float(rng.random())
    to_pano, (pano_w, pano_h) = panorama_setup(w, h, [k] * n, rots)
    pano = make_texture(rng, pano_h, pano_w, random_palette(rng, hue=hue))
    objs = list(p["objects"])
    sprites = make_sprites(rng, objs, hue)
    origin = np.rint(np.array(apply_homography(to_pano[0], 0.0, 0.0), float))  # frame-0 pixel (0, 0) in the pano
    positions = [(object_positions(o, n) + origin).astype(int) for o in objs]
    gx, gy = flow_grid(w, h, FLOW_SCALE)
    flows, frames = [], []
    for t in range(n):
        canvas = pano.copy()
        draw_sprites(canvas, sprites, [pos[t] for pos in positions])
        frames.append(warp_inverse(canvas, to_pano[t], w, h))
        if t + 1 < n:
            px, py = apply_homography(to_pano[t], gx, gy)  # where each flow sample sits in the world
            for sprite, pos in zip(sprites, positions, strict=True):  # objects carry their samples along
                sx, sy = np.floor(px - pos[t][0]).astype(int), np.floor(py - pos[t][1]).astype(int)
                sh, sw = sprite.shape[:2]
                inside = (sx >= 0) & (sx < sw) & (sy >= 0) & (sy < sh)
                on = np.zeros_like(inside)
                on[inside] = sprite[sy[inside], sx[inside], 3] >= 0.5
                px[on] += pos[t + 1][0] - pos[t][0]
                py[on] += pos[t + 1][1] - pos[t][1]
            nx, ny = apply_homography(np.linalg.inv(to_pano[t + 1]), px, py)
            flows.append(np.stack([nx - gx, ny - gy], axis=-1).astype(np.float32))
    truth = single_shot(n)
    truth["camera"] = camera_truth(k, fov, [make_c2w(r) for r in rots], p)
    truth["objects"] = []
    for i, (o, pos) in enumerate(zip(objs, positions, strict=True)):
        obj = _object_truth(i, o, pos, tuple(o["size"]))
        obj["boxes"] = [_projected_box(np.linalg.inv(to_pano[t]), pos[t], o["size"]) for t in range(n)]
        truth["objects"].append(obj)
    return Rendered([to_uint8(f) for f in frames], truth, np.stack(flows))


def _projected_box(pano_to_frame: np.ndarray, xy: np.ndarray, size: tuple[int, int]) -> list[int]:
    """Integer bounding box [x0, y0, x1, y1) in the frame of a world box at top-left ``xy`` of ``size``."""
    xs = np.array([xy[0], xy[0] + size[0], xy[0], xy[0] + size[0]], float)
    ys = np.array([xy[1], xy[1], xy[1] + size[1], xy[1] + size[1]], float)
    fx, fy = apply_homography(pano_to_frame, xs, ys)
    return [int(np.floor(fx.min())), int(np.floor(fy.min())), int(np.ceil(fx.max())), int(np.ceil(fy.max()))]
