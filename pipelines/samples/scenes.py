"""Builders for videos seen by a camera that only rotates / zooms about a fixed centre.

Such a camera sees a flat panorama exactly through the homography ``K_pano R_t K_t^-1``, so the frames, the
camera truth and the per-pixel flow are all analytic. Used for pans, tilts, zoom, static, dark, blurry, the
odd-sized and portrait clips, and for the shots of the cut and fade videos.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .model import Rendered, VideoSpec, video_rng
from .render import (
    corner_bounds,
    flow_grid,
    homography_flow,
    intrinsics,
    make_c2w,
    relative_homography,
    rot_x,
    rot_y,
    rot_z,
    source_homography,
    warp_inverse,
    yaw_pitch_roll,
)
from .textures import make_texture, random_palette

logger = logging.getLogger(__name__)

__all__ = [
    "FLOW_SCALE",
    "build_rotation",
    "panorama_setup",
    "render_panorama",
    "build_cuts",
    "build_fade",
    "camera_truth",
    "fade_gains",
    "single_shot",
    "textured_shot",
    "to_uint8",
]

FLOW_SCALE = 0.25  # flow grid downscale: keeps the float16 npz well under 2 MB per video
DEFAULT_FOV = 60.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def single_shot(n_frames: int) -> dict[str, Any]:
    """Shot-boundary truth of a one-shot video."""
    return {"cuts": [], "fades": [], "shots": [{"start": 0, "end": n_frames}]}


def camera_truth(
    k: np.ndarray,
    fov_x_deg: float,
    c2w: Sequence[np.ndarray],
    params: dict[str, Any],
    focal_scale: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The ``camera`` block of the truth JSON: intrinsics, per-frame poses, motion labels, relative rotations."""
    cam: dict[str, Any] = {
        "fov_x_deg": fov_x_deg,
        "K": k.tolist(),
        "c2w": [m.tolist() for m in c2w],
        "motion": params.get("motion", "static"),
        "expected_keys": params.get("keys", "none"),
        "expected_mouse": params.get("mouse", "none"),
    }
    rel = [yaw_pitch_roll(a[:3, :3].T @ b[:3, :3]) for a, b in zip(c2w[:-1], c2w[1:], strict=True)]
    if any(abs(v) > 1e-9 for r in rel for v in r):
        cam["per_frame_rotation_deg"] = [list(r) for r in rel]
    if focal_scale is not None:
        cam["focal_scale"] = list(focal_scale)
    return cam


def rotation_path(n: int, yaw: float, pitch: float, roll: float) -> list[np.ndarray]:
    """Camera rotations composed in the camera frame, so every frame-to-frame step is the same (yaw, pitch, roll)."""
    step = rot_y(yaw) @ rot_x(pitch) @ rot_z(roll)
    rots = [np.eye(3)]
    for _ in range(n - 1):
        rots.append(rots[-1] @ step)
    return rots


def panorama_setup(
    width: int, height: int, ks: Sequence[np.ndarray], rots: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Frame-pixel -> panorama-pixel homographies of cameras (K_t, R_t) sharing the optical centre, and the
    panorama's (width, height): the frame-0 image plane, extended just enough to cover every frame."""
    k0 = ks[0]
    to_src = [source_homography(k0, r, k) for k, r in zip(ks, rots, strict=True)]
    x0, y0, x1, y1 = corner_bounds(to_src, width, height)
    margin = 4.0
    shift = np.array([[1.0, 0.0, margin - x0], [0.0, 1.0, margin - y0], [0.0, 0.0, 1.0]])
    pano_w, pano_h = int(np.ceil(x1 - x0 + 2 * margin)), int(np.ceil(y1 - y0 + 2 * margin))
    logger.debug("panorama %dx%d for %d frames", pano_w, pano_h, len(ks))
    return [shift @ h for h in to_src], (pano_w, pano_h)


def render_panorama(
    rng: np.random.Generator,
    width: int,
    height: int,
    ks: Sequence[np.ndarray],
    rots: Sequence[np.ndarray],
    palette: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Render float32 frames of a textured panorama seen by cameras (K_t, R_t) sharing the optical centre."""
    to_pano, (pano_w, pano_h) = panorama_setup(width, height, ks, rots)
    pano = make_texture(rng, pano_h, pano_w, palette)
    return [warp_inverse(pano, h, width, height) for h in to_pano]


def _post(frames: list[np.ndarray], rng: np.random.Generator, params: dict[str, Any]) -> list[np.ndarray]:
    """Optional blur, exposure gain and sensor noise, then quantisation to uint8."""
    blur, gain, noise = params.get("blur_sigma", 0.0), params.get("gain", 1.0), params.get("noise_sigma", 0.0)
    out = []
    for f in frames:
        if blur:
            f = cv2.GaussianBlur(f, (0, 0), blur)
        if gain != 1.0:
            f = f * gain
        if noise:
            f = f + rng.normal(0.0, noise, f.shape).astype(np.float32)
        out.append(to_uint8(f))
    return out


def build_rotation(spec: VideoSpec, seed: int) -> Rendered:
    """Pure rotation and/or zoom about a fixed centre (pan, tilt, roll, zoom, static) with optional post-effects.

    params: ``yaw``/``pitch``/``roll`` (deg per frame), ``zoom_end`` (final focal scale, geometric ramp),
    ``fov``, ``motion``/``keys``/``mouse`` labels, ``flow`` (write true flow), ``blur_sigma``, ``gain``,
    ``noise_sigma``.
    """
    p = dict(spec.params)
    rng = video_rng(spec, seed)
    n, w, h = spec.n_frames, spec.width, spec.height
    fov = float(p.get("fov", DEFAULT_FOV))
    rots = rotation_path(n, p.get("yaw", 0.0), p.get("pitch", 0.0), p.get("roll", 0.0))
    zoom_end = float(p.get("zoom_end", 1.0))
    scales = [zoom_end ** (t / max(n - 1, 1)) for t in range(n)]
    ks = [intrinsics(w, h, fov, s) for s in scales]
    frames = _post(render_panorama(rng, w, h, ks, rots), rng, p)
    c2w = [make_c2w(r) for r in rots]
    truth = single_shot(n)
    truth["camera"] = camera_truth(ks[0], fov, c2w, p, scales if zoom_end != 1.0 else None)
    flow = None
    if p.get("flow"):
        gx, gy = flow_grid(w, h, FLOW_SCALE)
        flow = np.stack(
            [homography_flow(relative_homography(ks[t], rots[t], ks[t + 1], rots[t + 1]), gx, gy) for t in range(n - 1)]
        )
    return Rendered(frames, truth, flow)


def textured_shot(rng: np.random.Generator, spec: VideoSpec, n: int, hue: float) -> list[np.ndarray]:
    """A short shot (float32 frames) with mild random rotation over its own panorama, palette centred on ``hue``."""
    yaw, pitch = (float(v) for v in rng.uniform(-0.25, 0.25, 2))
    rots = rotation_path(n, yaw, pitch, 0.0)
    ks = [intrinsics(spec.width, spec.height, DEFAULT_FOV)] * n
    return render_panorama(rng, spec.width, spec.height, ks, rots, random_palette(rng, hue=hue))


def build_cuts(spec: VideoSpec, seed: int) -> Rendered:
    """Shots joined by hard cuts; params ``starts`` = first frame of each shot (must begin with 0)."""
    rng = video_rng(spec, seed)
    starts = list(spec.params["starts"])
    bounds = [*starts, spec.n_frames]
    base_hue = float(rng.random())
    frames: list[np.ndarray] = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        # Hues spread around the colour wheel so consecutive shots never look alike.
        frames += textured_shot(rng, spec, b - a, (base_hue + i / len(starts)) % 1.0)
    truth = {
        "cuts": starts[1:],
        "fades": [],
        "shots": [{"start": a, "end": b} for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
    }
    return Rendered([to_uint8(f) for f in frames], truth)


def fade_gains(a_len: int, fade_out: int, black: int, fade_in: int) -> list[float]:
    """Per-frame brightness: 1 for shot A, linear ramp down, zeros, linear ramp up, then 1 for shot B."""
    down = [1.0 - (k + 1) / (fade_out + 1) for k in range(fade_out)]
    up = [(k + 1) / (fade_in + 1) for k in range(fade_in)]
    return [1.0] * a_len + down + [0.0] * black + up


def fade_parts(spec: VideoSpec, seed: int) -> tuple[list[np.ndarray], list[float], int, int]:
    """The two textured shots of a fade video (before the gains), the per-frame gains, and the transition window
    [start, end). params: ``a_len``, ``fade_out``, ``black``, ``fade_in``."""
    p = spec.params
    rng = video_rng(spec, seed)
    start = int(p["a_len"])
    a_part = start + int(p["fade_out"])
    end = a_part + int(p["black"]) + int(p["fade_in"])
    hue = float(rng.random())
    gains = fade_gains(start, int(p["fade_out"]), int(p["black"]), int(p["fade_in"]))
    gains += [1.0] * (spec.n_frames - len(gains))
    frames = textured_shot(rng, spec, a_part, hue) + textured_shot(rng, spec, spec.n_frames - a_part, (hue + 0.5) % 1.0)
    return frames, gains, start, end


def build_fade(spec: VideoSpec, seed: int) -> Rendered:
    """Shot A, fade to black, a few black frames, fade in to shot B. params: ``a_len``, ``fade_out``, ``black``,
    ``fade_in``; the transition window is [a_len, a_len + fade_out + black + fade_in)."""
    frames, gains, start, end = fade_parts(spec, seed)
    truth = {
        "cuts": [],
        "fades": [{"start": start, "end": end}],
        "shots": [{"start": 0, "end": start}, {"start": end, "end": spec.n_frames}],
        "brightness_gain": gains,
    }
    return Rendered([to_uint8(f * g) for f, g in zip(frames, gains, strict=True)], truth)
