"""Builder for the opt-in motion corpus (``specs.MOTION_SPECS``): world-anchored objects, at rest and moving, under
every camera motion the corpus renders (pan, tilt, dolly forward, strafe, zoom, handheld shake).

The world is a stack of textured fronto-parallel planes (an opaque background and a layer of shapes, as in
``layers.py``) plus one plane per object, composited back to front. Every plane reaches the image through its exact
homography, so any camera path (rotation, translation, focal length) renders with real parallax, and an object at
rest moves in the image exactly like the world point it sits on. Objects are given in frame-0 pixels at their depth
(``start``, ``size``, ``velocity`` px/frame during ``move``); their truth boxes are the bounding boxes of the object
rectangles projected into every frame, ``moving`` flags their motion in the world.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .layers import Plane, layer_alpha
from .model import Rendered, VideoSpec
from .objects import make_sprites, object_positions, objects_truth
from .render import apply_homography, intrinsics, make_c2w, plane_homography, rot_x, rot_y, rot_z, warp_inverse
from .scenes import DEFAULT_FOV, camera_truth, single_shot, to_uint8
from .textures import make_texture, random_palette

__all__ = ["MOTION_LAYOUT", "build_motion", "camera_path", "projected_boxes", "shake_angles"]

# (depth, coverage, min radius, max radius) in world units, back to front; coverage None = opaque background. The
# objects sit at depth 6, in front of both, so nothing in the world ever hides them.
MOTION_LAYOUT: tuple[tuple[float, float | None, float, float], ...] = ((20.0, None, 0.0, 0.0), (9.0, 0.22, 0.4, 1.1))
OBJECT_DEPTH = 6.0
MARGIN = 0.05  # share of each plane's extent added on every side, so bilinear taps never reach the border
# Handheld shake stays below the QCM thresholds in every step (0.1 deg and 4e-4 rad of parallax per source frame,
# times the stride), so its truth is `none` at any stride: per-frame yaw / pitch steps up to 0.08 deg (about 0.6 px
# at 480 px and 60 deg; the sway spans about 0.4 deg, 3 px), per-frame translation up to 1.2e-3 world units (2e-4
# rad of parallax at the objects' depth).
SHAKE_ROTATION_STEP = 0.08
SHAKE_ROLL_STEP = 0.05  # roll is no QCM motion, but a hand rolls the camera too
SHAKE_TRANSLATION_STEP = 1.2e-3


def shake_angles(rng: np.random.Generator, n: int, dims: int, max_step: float) -> np.ndarray:
    """(n, dims) handheld jitter starting at 0: a damped random walk whose velocity is itself a damped random walk
    (smooth sway, as a hand makes), pulled back toward 0 so no direction builds up, scaled so the largest per-frame
    step (Euclidean norm over ``dims``) is exactly ``max_step``. Its swing is several times that step."""
    walk, velocity = np.zeros((n, dims)), np.zeros(dims)
    for t in range(1, n):
        velocity = 0.8 * velocity + rng.normal(0.0, 1.0, dims)
        walk[t] = 0.92 * walk[t - 1] + velocity
    steps = np.linalg.norm(np.diff(walk, axis=0), axis=1)
    return walk * (max_step / max(float(steps.max()), 1e-12))


def camera_path(p: dict[str, Any], n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[float]]:
    """Camera-to-world poses and focal scales of the ``camera`` param: ``yaw`` / ``pitch`` (deg per frame),
    ``velocity`` (world units per frame), ``zoom_end`` (final focal scale, geometric ramp) or ``shake`` (true:
    random rotation and translation jitter below the QCM thresholds)."""
    if p.get("shake"):
        yaw_pitch = shake_angles(rng, n, 2, SHAKE_ROTATION_STEP)  # the QCM's mouse magnitude: hypot(yaw, pitch)
        roll = shake_angles(rng, n, 1, SHAKE_ROLL_STEP)[:, 0]
        centres = shake_angles(rng, n, 3, SHAKE_TRANSLATION_STEP)
        rots = [rot_y(a) @ rot_x(b) @ rot_z(c) for (a, b), c in zip(yaw_pitch, roll, strict=True)]
    else:
        step = rot_y(float(p.get("yaw", 0.0))) @ rot_x(float(p.get("pitch", 0.0)))
        rots = [np.linalg.matrix_power(step, t) for t in range(n)]
        centres = [np.asarray(p.get("velocity", (0.0, 0.0, 0.0)), float) * t for t in range(n)]
    zoom_end = float(p.get("zoom_end", 1.0))
    scales = [zoom_end ** (t / max(n - 1, 1)) for t in range(n)]
    return [make_c2w(r, c) for r, c in zip(rots, centres, strict=True)], scales


def _plane_extent(ks: Sequence[np.ndarray], poses: Sequence[np.ndarray], w: int, h: int, depth: float) -> np.ndarray:
    """World rectangle [x0, y0, x1, y1] of plane z = depth seen by any of the cameras (frame corners cast onto it)."""
    corners = np.array([[-0.5, w - 0.5, -0.5, w - 0.5], [-0.5, -0.5, h - 0.5, h - 0.5], [1.0, 1.0, 1.0, 1.0]])
    xs, ys = [], []
    for k, c2w in zip(ks, poses, strict=True):
        rays = c2w[:3, :3] @ np.linalg.inv(k) @ corners
        s = (depth - c2w[2, 3]) / rays[2]
        xs.append(c2w[0, 3] + s * rays[0])
        ys.append(c2w[1, 3] + s * rays[1])
    x, y = np.concatenate(xs), np.concatenate(ys)
    mx, my = MARGIN * (x.max() - x.min()), MARGIN * (y.max() - y.min())
    return np.array([x.min() - mx, y.min() - my, x.max() + mx, y.max() + my])


def _world(
    rng: np.random.Generator, ks: Sequence[np.ndarray], poses: Sequence[np.ndarray], w: int, h: int, hue: float
) -> list[Plane]:
    """The background planes, back to front: texels no larger than a screen pixel at the closest approach."""
    focal = max(float(k[0, 0]) for k in ks)
    nearest = max(float(c2w[2, 3]) for c2w in poses)
    planes = []
    for depth, coverage, r_min, r_max in MOTION_LAYOUT:
        x0, y0, x1, y1 = _plane_extent(ks, poses, w, h, depth)
        texel = (depth - nearest) / focal
        cols, rows = int(np.ceil((x1 - x0) / texel)), int(np.ceil((y1 - y0) / texel))
        rgb = make_texture(rng, rows, cols, random_palette(rng, hue=hue), detail=depth / (texel * ks[0][0, 0]))
        alpha = layer_alpha(rng, (rows, cols), coverage, (r_min, r_max), (x1 - x0) * (y1 - y0), texel)
        planes.append(Plane(depth, np.dstack([rgb, alpha]).astype(np.float32), float(x0), float(y0), texel))
    return planes


def _composite(planes: Sequence[Plane], k: np.ndarray, c2w: np.ndarray, w: int, h: int) -> np.ndarray:
    """Float RGB image of the planes (back to front) for one camera."""
    out = np.zeros((h, w, 3), np.float32)
    for i, plane in enumerate(planes):
        to_tex = np.linalg.inv(plane_homography(k, c2w, plane.tex_to_world))
        # only the background fills the frame; an opaque (rectangular) object must not repeat past its edges
        border = cv2.BORDER_REFLECT if i == 0 and plane.opaque else cv2.BORDER_CONSTANT
        rgba = warp_inverse(plane.rgba, to_tex, w, h, border)
        alpha = rgba[..., 3:4]
        out = out * (1.0 - alpha) + rgba[..., :3] * alpha
    return out


def projected_boxes(plane: Plane, size: tuple[int, int], k: np.ndarray, c2w: np.ndarray) -> list[int]:
    """Integer box [x0, y0, x1, y1) (end exclusive) of the pixels an object texture of ``size`` covers: its
    outline (texel edges at -0.5 and size - 0.5) projected into the frame; an unmoved frame-0 object gives exactly
    the [x, y, x + w, y + h] of ``objects.py``."""
    w, h = size
    hom = plane_homography(k, c2w, plane.tex_to_world)
    fx, fy = apply_homography(hom, np.array([-0.5, w - 0.5, -0.5, w - 0.5]), np.array([-0.5, -0.5, h - 0.5, h - 0.5]))
    # 1e-6 absorbs float error, so an edge exactly on a pixel boundary does not grow the box by a pixel
    lo_x, lo_y = np.floor(fx.min() + 0.5 + 1e-6), np.floor(fy.min() + 0.5 + 1e-6)
    hi_x, hi_y = np.ceil(fx.max() + 0.5 - 1e-6), np.ceil(fy.max() + 0.5 - 1e-6)
    return [int(lo_x), int(lo_y), int(hi_x), int(hi_y)]


def build_motion(spec: VideoSpec, seed: int) -> Rendered:
    """World-anchored objects under a moving camera (see the module docstring).

    params: ``scene`` (world id: clips with the same id, size and camera share the world, the sprites and the
    camera path, so ``pan_camera``, ``pan_rest`` and ``pan_movers`` differ only in their objects), ``camera`` (see
    `camera_path`), ``objects`` (as in ``objects.build_objects``, frame-0 pixels at depth ``OBJECT_DEPTH``; may be
    empty), ``motion`` / ``keys`` / ``mouse`` labels, ``fov``.
    """
    p: dict[str, Any] = dict(spec.params)
    w, h, n = spec.width, spec.height, spec.n_frames
    fov = float(p.get("fov", DEFAULT_FOV))
    # Seeded by the scene id, not the video name: the rest / movers / camera-only clips of one motion share it.
    rng = np.random.default_rng([seed, zlib.crc32(str(p["scene"]).encode())])
    poses, scales = camera_path(dict(p["camera"]), n, rng)
    ks = [intrinsics(w, h, fov, s) for s in scales]
    hue = float(rng.random())
    planes = _world(rng, ks, poses, w, h, hue)
    objs = list(p.get("objects", ()))
    # Sprites come from their own stream, so adding objects never changes the world's textures.
    sprites = make_sprites(np.random.default_rng([seed, zlib.crc32(f"{p['scene']}/objects".encode())]), objs, hue)
    texel = OBJECT_DEPTH / ks[0][0, 0]  # one texel per frame-0 pixel at the objects' depth
    cx, cy = ks[0][0, 2], ks[0][1, 2]
    positions = [object_positions(o, n) for o in objs]
    frames, boxes = [], [[] for _ in objs]
    for t in range(n):
        movers = [
            Plane(OBJECT_DEPTH, sprite, float((pos[t][0] - cx) * texel), float((pos[t][1] - cy) * texel), texel)
            for sprite, pos in zip(sprites, positions, strict=True)
        ]
        frames.append(to_uint8(_composite([*planes, *movers], ks[t], poses[t], w, h)))
        for i, (o, plane) in enumerate(zip(objs, movers, strict=True)):
            boxes[i].append(projected_boxes(plane, tuple(o["size"]), ks[t], poses[t]))
    for o, obj_boxes in zip(objs, boxes, strict=True):
        b = np.asarray(obj_boxes)
        if b[:, :2].min() < 0 or b[:, 2].max() > w or b[:, 3].max() > h:
            raise ValueError(f"{spec.name}: object {o} leaves the frame")
    truth = single_shot(n)
    zoom = float(dict(p["camera"]).get("zoom_end", 1.0)) != 1.0
    truth["camera"] = camera_truth(ks[0], fov, poses, p, scales if zoom else None)
    truth["camera"]["plane_depths"] = [pl.depth for pl in planes]
    truth["objects"] = objects_truth(objs, positions)  # moving flags and events from the world positions
    for obj, obj_boxes in zip(truth["objects"], boxes, strict=True):
        obj["boxes"] = obj_boxes
        obj["depth"] = OBJECT_DEPTH
    truth["motion_clip"] = {"family": p["family"], "role": p["role"]}  # how the benches group the clips
    return Rendered(frames, truth)
