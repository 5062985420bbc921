"""Builders for the shot-boundary hard cases: motion that must NOT read as a cut (a whip pan, large objects
crossing the frame in a few frames), transitions whose ends must be found to the frame (a cross-dissolve, a hard
cut out of black, a short bright fade) and a video of flat frames only, which holds no shot at all.

Every builder here writes ``dissolves`` (a list, possibly empty) next to ``cuts`` / ``fades`` / ``shots``, and
tags each fade with a ``kind``: ``"fade"`` (a brightness ramp) or ``"black"`` (hard cuts into and out of black
frames). Frames ``[start, end)`` of a fade or dissolve belong to no shot, so shots, fades, dissolves and ``flats``
(the flat video's frames: all of them) tile ``[0, n_frames)``. The videos made before these carry neither
``dissolves`` nor ``kind``: consumers read ``truth.get("dissolves", [])`` and ``fade.get("kind", "fade")``.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .model import Rendered, VideoSpec, video_rng
from .objects import build_objects
from .render import intrinsics, make_c2w, rot_y
from .scenes import camera_truth, fade_gains, fade_parts, single_shot, textured_shot, to_uint8
from .textures import make_texture, random_palette

__all__ = [
    "build_cut_from_black",
    "build_dissolve",
    "build_fast_objects",
    "build_fade_exact",
    "build_flat",
    "build_whip_pan",
    "dissolve_shots",
    "whip_speeds",
]


def whip_speeds(n_steps: int, slow: float, peak: float, start: int, ramp: int, hold: int) -> list[float]:
    """Yaw per frame step (deg): ``slow``, a raised-cosine ramp of ``ramp`` steps from step ``start`` up to
    ``peak``, ``hold`` steps at ``peak``, the same ramp down, then ``slow`` again."""
    up = [slow + (peak - slow) * (1 - math.cos(math.pi * (k + 1) / (ramp + 1))) / 2 for k in range(ramp)]
    profile = [*up, *[peak] * hold, *up[::-1]]
    speeds = [slow] * n_steps
    if start < 0 or start + len(profile) > n_steps:
        raise ValueError(f"the whip ({len(profile)} steps from step {start}) does not fit in {n_steps} steps")
    speeds[start : start + len(profile)] = profile
    return speeds


def _angle_at(angles: np.ndarray, t: float) -> float:
    """Camera yaw (deg) at fractional frame time ``t``: linear between frames, extrapolated past the ends."""
    i = min(max(int(math.floor(t)), 0), len(angles) - 2)
    return float(angles[i] + (t - i) * (angles[i + 1] - angles[i]))


def build_whip_pan(spec: VideoSpec, seed: int) -> Rendered:
    """One shot: a camera turning right slowly, whipping round (yaw per step from `whip_speeds`) and slowing down
    again, with motion blur from a ``shutter`` (fraction of the frame interval) averaged over sub-frame renders.

    The world is a textured cylinder around the camera, so any total yaw renders without stretching (a flat
    panorama cannot hold a 90-degree turn); at the image centre one cylinder pixel is one image pixel. params:
    ``fov``, ``slow`` / ``peak`` (deg per frame), ``whip_start`` / ``ramp`` / ``hold`` (steps), ``shutter``,
    ``motion`` / ``mouse`` labels. Camera truth as for `build_rotation` (poses at the centre of each exposure);
    no flow (blurred frames match no single warp).
    """
    p: dict[str, Any] = dict(spec.params)
    rng = video_rng(spec, seed)
    n, w, h = spec.n_frames, spec.width, spec.height
    fov = float(p["fov"])
    k = intrinsics(w, h, fov)
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    speeds = whip_speeds(n - 1, p["slow"], p["peak"], p["whip_start"], p["ramp"], p["hold"])
    angles = np.concatenate([[0.0], np.cumsum(speeds)])
    shutter = float(p.get("shutter", 0.5))
    # Cylinder pixel of each frame pixel at yaw 0: column f * azimuth, row f * height on the unit cylinder.
    xs = (np.arange(w) - cx) / f
    ys = (np.arange(h) - cy) / f
    azimuth = np.arctan(xs)[None, :].repeat(h, 0)
    elevation = ys[:, None] / np.sqrt(1.0 + xs[None, :] ** 2)
    margin = 8.0
    lo = math.radians(_angle_at(angles, -shutter / 2)) + azimuth.min()
    hi = math.radians(_angle_at(angles, n - 1 + shutter / 2)) + azimuth.max()
    u0 = (f * (azimuth - lo) + margin).astype(np.float32)
    v0 = (f * elevation + (f * np.abs(elevation).max() + margin)).astype(np.float32)
    pano_w = int(math.ceil(f * (hi - lo) + 2 * margin))
    pano_h = int(math.ceil(2 * (f * np.abs(elevation).max() + margin)))
    pano = make_texture(rng, pano_h, pano_w, random_palette(rng))
    frames = []
    for t in range(n):
        # One sub-frame per ~1.5 px of motion during the exposure, at least one.
        travel = f * math.radians(abs(_angle_at(angles, t + shutter / 2) - _angle_at(angles, t - shutter / 2)))
        count = max(1, min(32, math.ceil(travel / 1.5)))
        times = [t] if count == 1 else np.linspace(t - shutter / 2, t + shutter / 2, count)
        acc = np.zeros((h, w, 3), np.float32)
        for s in times:
            shift = np.float32(f * math.radians(_angle_at(angles, float(s))))
            acc += cv2.remap(pano, u0 + shift, v0, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames.append(to_uint8(acc / len(times)))
    truth = single_shot(n)
    truth["dissolves"] = []
    truth["camera"] = camera_truth(k, fov, [make_c2w(rot_y(a)) for a in angles], p)
    truth["image_speed_px"] = [f * math.radians(s) for s in speeds]  # per step, at the image centre
    return Rendered(frames, truth)


def build_fast_objects(spec: VideoSpec, seed: int) -> Rendered:
    """`build_objects` (a still camera, objects that rest and move) with this module's truth keys: for large
    objects crossing the frame in a few frames, which must not read as a cut."""
    rendered = build_objects(spec, seed)
    rendered.truth["dissolves"] = []
    return rendered


def dissolve_shots(spec: VideoSpec, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """The two shots of a dissolve video and B's weight per frame: float32 frames of A for ``[0, end)``, of B for
    ``[start, n_frames)`` (B's frame 0 is video frame ``start``), weights 0 before ``start``, 1 from ``end``."""
    p = spec.params
    rng = video_rng(spec, seed)
    n = spec.n_frames
    start = int(p["a_len"])
    end = start + int(p["dissolve"])
    hue = float(rng.random())
    a = textured_shot(rng, spec, end, hue)  # A keeps moving under the blend
    b = textured_shot(rng, spec, n - start, (hue + 0.5) % 1.0)
    weights = [0.0] * start + [(t - start + 1) / (end - start + 1) for t in range(start, end)] + [1.0] * (n - end)
    return a, b, weights


def build_dissolve(spec: VideoSpec, seed: int) -> Rendered:
    """Shot A cross-dissolves into shot B (a linear blend, never through black). params ``a_len`` (first frame
    with any B mixed in) and ``dissolve`` (blend frames); B's weight on frame ``a_len + k`` is
    ``(k + 1) / (dissolve + 1)``, recorded per frame as ``dissolve_weight``."""
    a, b, weights = dissolve_shots(spec, seed)
    n, start = spec.n_frames, int(spec.params["a_len"])
    end = start + int(spec.params["dissolve"])
    frames = [
        a[t] if t < start else b[t - start] if t >= end else (1.0 - weights[t]) * a[t] + weights[t] * b[t - start]
        for t in range(n)
    ]
    truth = {
        "cuts": [],
        "fades": [],
        "dissolves": [{"start": start, "end": end}],
        "shots": [{"start": 0, "end": start}, {"start": end, "end": n}],
        "dissolve_weight": weights,
    }
    return Rendered([to_uint8(f) for f in frames], truth)


def build_cut_from_black(spec: VideoSpec, seed: int) -> Rendered:
    """Shot A, a hard cut to ``black`` pure black frames, then a hard cut (no ramp) into shot B. params ``a_len``,
    ``black``. The black stretch is a fade of kind ``"black"``: [first black frame, first frame of B)."""
    p = spec.params
    rng = video_rng(spec, seed)
    n, start = spec.n_frames, int(p["a_len"])
    end = start + int(p["black"])
    hue = float(rng.random())
    black = np.zeros((spec.height, spec.width, 3), np.float32)
    frames = [*textured_shot(rng, spec, start, hue), *[black] * (end - start)]
    frames += textured_shot(rng, spec, n - end, (hue + 0.5) % 1.0)
    truth = {
        "cuts": [],
        "fades": [{"start": start, "end": end, "kind": "black"}],
        "dissolves": [],
        "shots": [{"start": 0, "end": start}, {"start": end, "end": n}],
    }
    return Rendered([to_uint8(f) for f in frames], truth)


def _brighten(frames: list[np.ndarray], floor: float) -> list[np.ndarray]:
    """Lift the shadows: 0..255 -> floor..255, keeping the texture."""
    return [floor + f * (1.0 - floor / 255.0) for f in frames]


def build_fade_exact(spec: VideoSpec, seed: int) -> Rendered:
    """Like `build_fade` (same gains and truth, plus ``kind``) but meant for short ramps over bright shots, where
    every ramp frame differs from its neighbours by a large step, so a detector's off-by-one shows. params
    ``a_len``, ``fade_out``, ``black``, ``fade_in``, ``floor`` (darkest level of the brightened shots)."""
    shots, gains, start, end = fade_parts(spec, seed)
    frames = _brighten(shots, float(spec.params.get("floor", 0.0)))
    truth = {
        "cuts": [],
        "fades": [{"start": start, "end": end, "kind": "fade"}],
        "dissolves": [],
        "shots": [{"start": 0, "end": start}, {"start": end, "end": spec.n_frames}],
        "brightness_gain": gains,
    }
    return Rendered([to_uint8(f * g) for f, g in zip(frames, gains, strict=True)], truth)


def build_flat(spec: VideoSpec, seed: int) -> Rendered:
    """Flat frames only: colour ``first`` (RGB), a fade through black, then colour ``second``; no shot at all.
    params ``first``, ``second``, ``a_len``, ``fade_out``, ``black``, ``fade_in`` (as for `fade_gains`).

    Truth: ``shots`` is empty, ``flat`` is true and the one flat span ``flats`` covers the whole video (a dimmed
    flat colour is still a flat frame). ``fades`` stays empty: a fade is a transition between shots, and there is
    none here, so the consumers that expect a shot after each fade never look for one. The ramp is still in
    ``brightness_gain``.
    """
    p = spec.params
    a_part = int(p["a_len"]) + int(p["fade_out"])
    n = spec.n_frames
    gains = fade_gains(int(p["a_len"]), int(p["fade_out"]), int(p["black"]), int(p["fade_in"]))
    gains += [1.0] * (n - len(gains))
    colours = [np.asarray(p["first"] if t < a_part else p["second"], np.float32) for t in range(n)]
    frames = [np.broadcast_to(c * g, (spec.height, spec.width, 3)) for c, g in zip(colours, gains, strict=True)]
    truth = {
        "cuts": [],
        "fades": [],
        "dissolves": [],
        "shots": [],
        "flat": True,
        "flats": [{"start": 0, "end": n}],
        "brightness_gain": gains,
    }
    return Rendered([to_uint8(f) for f in frames], truth)
