"""Builder for a translating camera in a world of textured fronto-parallel planes (real parallax).

Each plane z = Z carries an RGBA texture; it reaches the image through its exact homography
``K R^T (A - C e3^T)`` and planes are composited back to front (painter's algorithm). The true flow of a pixel is
the flow of the front-most plane that covers it (alpha >= 0.5), which is how the renderer decides visibility.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .model import Rendered, VideoSpec
from .render import apply_homography, flow_grid, intrinsics, make_c2w, plane_homography, warp_inverse
from .scenes import DEFAULT_FOV, FLOW_SCALE, camera_truth, single_shot, to_uint8
from .textures import make_texture, shape_mask

logger = logging.getLogger(__name__)

__all__ = ["Plane", "build_layers", "build_world", "planes_flow", "render_planes"]

# Camera centres the shared world must cover, ((x0, x1), (y0, y1), (z0, z1)) in world units. Every video built
# from the same scene id and size sees the same world, so `forward` and `backward` show one scene.
CAMERA_BOX = ((-0.5, 2.5), (-0.3, 0.3), (-2.5, 2.5))
# (depth, coverage, min radius, max radius) in world units; coverage None = opaque background.
Layout = tuple[float, float | None, float, float]
LAYOUT: tuple[Layout, ...] = ((20.0, None, 0.0, 0.0), (8.0, 0.22, 0.4, 1.1), (4.0, 0.12, 0.2, 0.5))
MAX_TEXTURE = 2048


@dataclass
class Plane:
    """A textured plane z = ``depth``; texel (u, v) sits at world (x0 + u * texel, y0 + v * texel, depth)."""

    depth: float
    rgba: np.ndarray  # float32 (rows, cols, 4): RGB 0..255 plus alpha 0..1
    x0: float
    y0: float
    texel: float

    @property
    def tex_to_world(self) -> np.ndarray:
        """3x3 map from homogeneous texture pixels to world points on the plane."""
        return np.array([[self.texel, 0.0, self.x0], [0.0, self.texel, self.y0], [0.0, 0.0, self.depth]])

    @property
    def opaque(self) -> bool:
        """Whether the plane covers everything (the background)."""
        return bool(self.rgba[..., 3].min() >= 1.0)


def _plane_extent(k: np.ndarray, width: int, height: int, depth: float) -> tuple[float, float, float, float]:
    """World-space rectangle of plane z = depth visible from any camera centre inside CAMERA_BOX."""
    kinv = np.linalg.inv(k)
    (bx0, bx1), (by0, by1), (bz0, _) = CAMERA_BOX
    far = depth - bz0  # the widest view comes from the rear-most camera position
    corners = kinv @ np.array(
        [[-0.5, width - 0.5, -0.5, width - 0.5], [-0.5, -0.5, height - 0.5, height - 0.5], [1.0, 1.0, 1.0, 1.0]]
    )
    xs, ys = corners[0] * far, corners[1] * far
    return float(xs.min() + bx0), float(ys.min() + by0), float(xs.max() + bx1), float(ys.max() + by1)


def layer_alpha(
    rng: np.random.Generator,
    shape: tuple[int, int],
    coverage: float | None,
    radii: tuple[float, float],
    area: float,
    texel: float,
) -> np.ndarray:
    """(rows, cols) alpha of a plane: opaque when `coverage` is None, else discs of radius in `radii` (world units)
    covering about `coverage` of the plane's `area` (world units squared)."""
    rows, cols = shape
    if coverage is None:
        return np.ones((rows, cols), np.float32)
    r_min, r_max = radii
    r_mean = (r_min + r_max) / 2
    count = max(3, round(coverage * area / (np.pi * r_mean**2)))
    return shape_mask(rng, rows, cols, count, r_min / texel, r_max / texel)


def _make_plane(rng: np.random.Generator, k: np.ndarray, width: int, height: int, layout: Layout) -> Plane:
    """One plane of LAYOUT: texture sized so a texel is at most one screen pixel at the closest approach."""
    depth, coverage, r_min, r_max = layout
    x0, y0, x1, y1 = _plane_extent(k, width, height, depth)
    texel = (depth - CAMERA_BOX[2][1]) / k[0, 0]
    texel = max(texel, max(x1 - x0, y1 - y0) / MAX_TEXTURE)
    cols, rows = int(np.ceil((x1 - x0) / texel)), int(np.ceil((y1 - y0) / texel))
    px_per_texel = texel * k[0, 0] / depth  # on screen at the start; keeps features a similar size everywhere
    rgb = make_texture(rng, rows, cols, detail=1.0 / px_per_texel)
    alpha = layer_alpha(rng, (rows, cols), coverage, (r_min, r_max), (x1 - x0) * (y1 - y0), texel)
    logger.debug("plane z=%.1f: %dx%d texels of %.4f", depth, cols, rows, texel)
    return Plane(depth, np.dstack([rgb, alpha]).astype(np.float32), x0, y0, texel)


def build_world(scene_seed: int, scene_id: str, width: int, height: int, fov: float) -> list[Plane]:
    """Planes of a layered world, ordered back to front; deterministic in (seed, id, size, fov)."""
    rng = np.random.default_rng([scene_seed, zlib.crc32(scene_id.encode())])
    k = intrinsics(width, height, fov)
    return [_make_plane(rng, k, width, height, layout) for layout in LAYOUT]


def render_planes(planes: list[Plane], k: np.ndarray, c2w: np.ndarray, width: int, height: int) -> np.ndarray:
    """Composite the planes back to front for one camera pose; float32 RGB."""
    out = np.zeros((height, width, 3), np.float32)
    for plane in planes:
        to_tex = np.linalg.inv(plane_homography(k, c2w, plane.tex_to_world))
        border = cv2.BORDER_REFLECT if plane.opaque else cv2.BORDER_CONSTANT
        rgba = warp_inverse(plane.rgba, to_tex, width, height, border)
        alpha = rgba[..., 3:4]
        out = out * (1.0 - alpha) + rgba[..., :3] * alpha
    return out


def planes_flow(
    planes: list[Plane], k: np.ndarray, pose_a: np.ndarray, pose_b: np.ndarray, gx: np.ndarray, gy: np.ndarray
) -> np.ndarray:
    """True flow a -> b on the grid: each sample follows the front-most plane with alpha >= 0.5 at pose a."""
    flow = np.zeros((*gx.shape, 2), np.float32)
    for plane in planes:  # back to front: nearer planes overwrite
        h_a = plane_homography(k, pose_a, plane.tex_to_world)
        h_b = plane_homography(k, pose_b, plane.tex_to_world)
        u, v = apply_homography(np.linalg.inv(h_a), gx, gy)
        if plane.opaque:
            covered = np.ones(gx.shape, bool)
        else:
            alpha = cv2.remap(
                plane.rgba[..., 3],
                u.astype(np.float32),
                v.astype(np.float32),
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            covered = alpha >= 0.5
        xb, yb = apply_homography(h_b, u, v)
        flow[covered] = np.stack([xb - gx, yb - gy], axis=-1)[covered]
    return flow


def build_layers(spec: VideoSpec, seed: int) -> Rendered:
    """Camera translating at constant velocity through the layered world.

    params: ``velocity`` (world units per frame, camera axes = world axes), ``scene`` (world id),
    ``motion``/``keys``/``mouse`` labels, ``flow``. The world is seeded by (seed, scene id), not by the video
    name, so several videos can share it.
    """
    p: dict[str, Any] = dict(spec.params)
    w, h, n = spec.width, spec.height, spec.n_frames
    fov = float(p.get("fov", DEFAULT_FOV))
    planes = build_world(seed, str(p.get("scene", "layers")), w, h, fov)
    k = intrinsics(w, h, fov)
    vel = np.asarray(p["velocity"], float)
    poses = [make_c2w(center=vel * t) for t in range(n)]
    frames = [to_uint8(render_planes(planes, k, c2w, w, h)) for c2w in poses]
    truth = single_shot(n)
    truth["camera"] = camera_truth(k, fov, poses, p)
    truth["camera"]["plane_depths"] = [pl.depth for pl in planes]
    flow = None
    if p.get("flow"):
        gx, gy = flow_grid(w, h, FLOW_SCALE)
        flow = np.stack([planes_flow(planes, k, poses[t], poses[t + 1], gx, gy) for t in range(n - 1)])
    return Rendered(frames, truth, flow)
