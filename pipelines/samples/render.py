"""Pure camera / homography math used to render the sample videos and their exact optical flow.

Conventions (OpenCV): camera x right, y down, z forward; pixel centres sit at integer coordinates, so the
principal point of a ``w x h`` image is ``((w - 1) / 2, (h - 1) / 2)``. ``c2w`` is a 4x4 camera-to-world matrix
``[[R, C], [0, 1]]``; a world point X appears in the camera as ``R^T (X - C)``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "intrinsics",
    "rot_x",
    "rot_y",
    "rot_z",
    "yaw_pitch_roll",
    "make_c2w",
    "apply_homography",
    "grid_shape",
    "flow_grid",
    "homography_flow",
    "warp_inverse",
    "source_homography",
    "relative_homography",
    "plane_homography",
    "corner_bounds",
]


def intrinsics(width: int, height: int, fov_x_deg: float, focal_scale: float = 1.0) -> np.ndarray:
    """Pinhole K with square pixels; ``fov_x_deg`` spans the full image width (edge to edge) at scale 1."""
    f = focal_scale * (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    """Right-handed rotation about +x. Positive = pitch UP (the optical axis turns toward -y)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    """Right-handed rotation about +y (down). Positive = yaw RIGHT (the optical axis turns toward +x)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    """Right-handed rotation about +z (forward): the roll angle."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_pitch_roll(rot: np.ndarray) -> tuple[float, float, float]:
    """Decompose ``rot = rot_y(yaw) @ rot_x(pitch) @ rot_z(roll)``; angles in degrees."""
    pitch = math.asin(max(-1.0, min(1.0, -rot[1, 2])))
    yaw = math.atan2(rot[0, 2], rot[2, 2])
    roll = math.atan2(rot[1, 0], rot[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def make_c2w(rot: np.ndarray | None = None, center: np.ndarray | None = None) -> np.ndarray:
    """4x4 camera-to-world matrix from a rotation and a camera centre (defaults: identity, origin)."""
    c2w = np.eye(4)
    if rot is not None:
        c2w[:3, :3] = rot
    if center is not None:
        c2w[:3, 3] = center
    return c2w


def apply_homography(hom: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel coordinates through a 3x3 homography (element-wise over arrays)."""
    den = hom[2, 0] * x + hom[2, 1] * y + hom[2, 2]
    return (hom[0, 0] * x + hom[0, 1] * y + hom[0, 2]) / den, (hom[1, 0] * x + hom[1, 1] * y + hom[1, 2]) / den


def grid_shape(width: int, height: int, scale: float) -> tuple[int, int]:
    """(rows, cols) of the flow grid for a ``width x height`` video downscaled by ``scale``."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def flow_grid(width: int, height: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixel coordinates of the flow grid samples.

    Sample (r, c) sits at the centre of its cell, ``x = (c + 0.5) * width / cols - 0.5``, which is exactly where
    ``cv2.resize`` (bilinear) puts it, so resizing a flow field up or down stays aligned.
    """
    rows, cols = grid_shape(width, height, scale)
    xs = (np.arange(cols) + 0.5) * (width / cols) - 0.5
    ys = (np.arange(rows) + 0.5) * (height / rows) - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy


def homography_flow(hom: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Flow (rows, cols, 2) of grid points under a frame-to-next-frame pixel homography."""
    x1, y1 = apply_homography(hom, gx, gy)
    return np.stack([x1 - gx, y1 - gy], axis=-1).astype(np.float32)


def warp_inverse(
    src: np.ndarray, dst_to_src: np.ndarray, width: int, height: int, border: int = cv2.BORDER_REFLECT
) -> np.ndarray:
    """Bilinear inverse warp: output pixel p takes ``src`` at ``dst_to_src @ p``."""
    return cv2.warpPerspective(
        src,
        dst_to_src,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=0,
    )


def source_homography(k_src: np.ndarray, rot: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Frame pixel -> pixel of a source image taken by a camera (``k_src``, identity pose) at the same centre.

    This is the pure-rotation homography ``K_src R K^-1``: frame pixel -> ray in camera -> world ray -> source.
    """
    return k_src @ rot @ np.linalg.inv(k)


def relative_homography(k_a: np.ndarray, rot_a: np.ndarray, k_b: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Pixel of frame a -> pixel of frame b for two cameras sharing a centre (``K_b R_b^T R_a K_a^-1``)."""
    return k_b @ rot_b.T @ rot_a @ np.linalg.inv(k_a)


def plane_homography(k: np.ndarray, c2w: np.ndarray, tex_to_world: np.ndarray) -> np.ndarray:
    """Texture pixel (u, v) -> image pixel for a planar texture.

    ``tex_to_world`` (3x3) maps homogeneous texture pixels to the world point on the plane, e.g. for the
    fronto-parallel plane z = Z: ``[[s, 0, X0], [0, s, Y0], [0, 0, Z]]``.
    """
    rot, center = c2w[:3, :3], c2w[:3, 3]
    m = tex_to_world.copy()
    m[:, 2] -= center  # the texture's homogeneous 1 carries the camera-centre offset
    return k @ rot.T @ m


def corner_bounds(dst_to_src: list[np.ndarray], width: int, height: int) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) in the source of the frame outlines mapped through each homography.

    The image of a rectangle under a homography (all in front of the camera) is a quadrilateral, so the corners
    alone bound it.
    """
    cx = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    pts = [apply_homography(h, cx, cy) for h in dst_to_src]
    xs = np.concatenate([p[0] for p in pts])
    ys = np.concatenate([p[1] for p in pts])
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
