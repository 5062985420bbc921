"""Quantized camera motion (QCM, after Yume §3.1-3.2): camera trajectories -> keyboard/mouse tokens and text.

Pure numpy, so the same code labels an estimated trajectory and a ground-truth one.

Conventions
-----------
* Camera axes are OpenCV: x right, y down, z forward. Poses are camera-to-world 4x4 (``c2w``), assumed rigid.
* Step t is the relative motion ``T_rel = inv(C_t) @ C_{t+1}``: camera t+1 expressed in camera t's frame.
  Its rotation is decomposed as ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (right-handed rotations about the camera
  axes, as in ``pipelines.samples.render``): yaw > 0 turns the optical axis toward +x (turn right), pitch > 0
  turns it toward -y (tilt up). Roll is ignored.
* Its translation ``T_rel[:3, 3]`` is the direction of travel only: a monocular estimate has no metric scale. The
  magnitude that decides "moving or not" is a separate scale-free ``parallax`` per step (radians of view angle,
  e.g. median translation-induced flow / focal length). For a metric ground-truth trajectory, use
  ``translation_parallax(c2w, depth)`` (|t| / scene depth, the small-angle parallax of a point at that depth).
  Vertical (y) translation is ignored.

Vocabulary (fixed): ``KEYS`` = none, W, S, A, D, W+A, W+D, S+A, S+D; ``MOUSE`` = none, →, ←, ↑, ↓, ↑→, ↑←, ↓→, ↓←;
``token = key_index * 9 + mouse_index`` (81 tokens, 0 = no motion).

Quantization rule (both halves): a step moves when its magnitude exceeds the per-source-frame threshold times the
frame stride (as Yume scales its thresholds by the stride). The direction is then snapped to one of 8 sectors: an
axis counts when its share of the unit motion vector exceeds ``direction_cos`` (cos 67.5 deg), so a motion within
22.5 deg of an axis is pure and anything between gets the diagonal. Yume's released code thresholds each axis on
its own instead; with noisy monocular estimates that turns a strong pan with a little pitch noise into a diagonal,
which the sector rule avoids (for keys the sector is taken on the 3-D unit direction, so climbing is not "W").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KEYS: tuple[str, ...] = ("none", "W", "S", "A", "D", "W+A", "W+D", "S+A", "S+D")
MOUSE: tuple[str, ...] = ("none", "→", "←", "↑", "↓", "↑→", "↑←", "↓→", "↓←")
NUM_TOKENS = len(KEYS) * len(MOUSE)  # 81: token = key_index * 9 + mouse_index
N_TOKENS = len(KEYS) * len(MOUSE)
_KEY_INDEX = {k: i for i, k in enumerate(KEYS)}
_MOUSE_INDEX = {m: i for i, m in enumerate(MOUSE)}
_EPS = 1e-12  # below this a direction vector has no meaningful direction


def token_of(keys: str, mouse: str) -> int:
    """The combined token of a key state and a mouse state (``key_index * 9 + mouse_index``)."""
    if keys not in _KEY_INDEX:
        raise ValueError(f"unknown key state {keys!r}; expected one of {KEYS}")
    if mouse not in _MOUSE_INDEX:
        raise ValueError(f"unknown mouse state {mouse!r}; expected one of {MOUSE}")
    return _KEY_INDEX[keys] * len(MOUSE) + _MOUSE_INDEX[mouse]


def split_token(token: int) -> tuple[str, str]:
    """(keys, mouse) of a combined token."""
    t = int(token)
    if not 0 <= t < N_TOKENS:
        raise ValueError(f"QCM token must be in [0, {N_TOKENS}), got {token}")
    return KEYS[t // len(MOUSE)], MOUSE[t % len(MOUSE)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QCMConfig:
    """Thresholds of the camera-motion quantizer (the ``camera`` config section).

    ``rotation_deg_per_frame``: Yume uses 1e-3 rad (0.057 deg) per frame on 30 fps MegaSaM trajectories, which
    are smoothed by global bundle adjustment. Our per-pair monocular estimates are noisier: 0.1 deg is about
    0.7 px of image motion at 480 px width and a 60 deg field of view, roughly the noise floor of frame-to-frame
    flow plus a robust fit, while still only 3 deg/s at 30 fps, well below any deliberate pan (the slowest pan of
    the sample corpus is 0.15 deg/frame).
    ``parallax_per_frame``: 4e-4 rad (about 0.17 px at 480 px / 60 deg) of translation-induced parallax per
    frame; the scale-free stand-in for Yume's absolute 1e-4 translation threshold.
    """

    rotation_deg_per_frame: float = 0.1  # mouse threshold per SOURCE frame (x stride)
    parallax_per_frame: float = 0.0004  # key threshold: translational parallax (radians) per source frame (x stride)
    direction_cos: float = 0.38  # an axis counts when its share of the unit motion exceeds this (cos 67.5 deg)
    min_confidence: float = 0.3  # steps whose pose confidence is below this are `none` (token 0)
    min_segment_steps: int = 2  # runs shorter than this are merged into a neighbour when building segments

    def __post_init__(self) -> None:
        for name in ("rotation_deg_per_frame", "parallax_per_frame"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"camera.qcm.{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.direction_cos, int | float) and 0.0 <= self.direction_cos < 1.0):
            raise ValueError(f"camera.qcm.direction_cos must be in [0, 1), got {self.direction_cos!r}")
        if not (isinstance(self.min_confidence, int | float) and 0.0 <= self.min_confidence <= 1.0):
            raise ValueError(f"camera.qcm.min_confidence must be in [0, 1], got {self.min_confidence!r}")
        if isinstance(self.min_segment_steps, bool) or not isinstance(self.min_segment_steps, int):
            raise ValueError(f"camera.qcm.min_segment_steps must be an int >= 1, got {self.min_segment_steps!r}")
        if self.min_segment_steps < 1:
            raise ValueError(f"camera.qcm.min_segment_steps must be >= 1, got {self.min_segment_steps}")


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    return int(stride)


def yaw_pitch_deg(rotation: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of ``rotation = Ry(yaw) @ Rx(pitch) @ Rz(roll)``; yaw > 0 right, pitch > 0 up."""
    r = np.asarray(rotation, dtype=np.float64)
    yaw = math.atan2(r[0, 2], r[2, 2])
    pitch = math.asin(max(-1.0, min(1.0, -r[1, 2])))
    return math.degrees(yaw), math.degrees(pitch)


def _sector_axes(a: float, b: float, cos_limit: float) -> tuple[int, int]:
    """Signs (-1, 0, +1) of the two components that count in the sector rule (the vector is non-zero)."""
    norm = math.hypot(a, b)
    return (
        int(np.sign(a)) if abs(a) > cos_limit * norm else 0,
        int(np.sign(b)) if abs(b) > cos_limit * norm else 0,
    )


def step_mouse(rotation: np.ndarray, stride: int, cfg: QCMConfig) -> str:
    """Mouse state of one step's relative rotation (roll ignored)."""
    stride = _check_stride(stride)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.isfinite(r).all():
        return "none"
    yaw, pitch = yaw_pitch_deg(r)
    # The magnitude is the joystick deflection: the combined yaw/pitch change, not each axis on its own.
    if math.hypot(yaw, pitch) <= cfg.rotation_deg_per_frame * stride:
        return "none"
    h, v = _sector_axes(yaw, pitch, cfg.direction_cos)
    return {1: "↑", -1: "↓", 0: ""}[v] + {1: "→", -1: "←", 0: ""}[h] or "none"


def step_keys(direction: np.ndarray, parallax: float, stride: int, cfg: QCMConfig) -> str:
    """Key state of one step: ``direction`` is the relative translation (any length), ``parallax`` its magnitude."""
    stride = _check_stride(stride)
    d = np.asarray(direction, dtype=np.float64).reshape(-1)
    if d.shape != (3,) or not np.isfinite(d).all() or not math.isfinite(parallax):
        return "none"
    if parallax <= cfg.parallax_per_frame * stride:
        return "none"
    norm = float(np.linalg.norm(d))
    if norm <= _EPS:
        return "none"
    # Sectors on the 3-D unit direction: a mostly vertical move has small x/z shares and stays `none`.
    x, z = d[0] / norm, d[2] / norm
    c = cfg.direction_cos
    fwd = "W" if z > c else "S" if z < -c else ""
    side = "D" if x > c else "A" if x < -c else ""
    return "+".join(k for k in (fwd, side) if k) or "none"


def _as_poses(c2w: np.ndarray) -> np.ndarray:
    poses = np.asarray(c2w, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be (T, 4, 4), got {poses.shape}")
    return poses


def relative_poses(c2w: np.ndarray) -> np.ndarray:
    """(T-1, 4, 4) ``inv(C_t) @ C_{t+1}``, using the rigid inverse (exact for poses, never singular)."""
    poses = _as_poses(c2w)
    rot, pos = poses[:-1, :3, :3], poses[:-1, :3, 3]
    rot_t = np.swapaxes(rot, 1, 2)
    inv = np.zeros_like(poses[:-1])
    inv[:, :3, :3] = rot_t
    inv[:, :3, 3] = -np.einsum("nij,nj->ni", rot_t, pos)
    inv[:, 3, 3] = 1.0
    return inv @ poses[1:]


def translation_parallax(c2w: np.ndarray, depth: float = 1.0) -> np.ndarray:
    """(T-1,) parallax of a metric trajectory: |relative translation| / ``depth`` (small-angle, radians).

    For ground truth, pass the typical scene depth (e.g. the median plane depth of a synthetic scene).
    """
    if not depth > 0:
        raise ValueError(f"depth must be > 0, got {depth}")
    return np.linalg.norm(relative_poses(c2w)[:, :3, 3], axis=1) / depth


def _per_step(values: np.ndarray | None, n: int, name: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(n, default)
    out = np.asarray(values, dtype=np.float64)
    if out.ndim == 0:  # one value for every step (e.g. a constant frame interval)
        return np.full(n, float(out))
    if out.shape != (n,):
        raise ValueError(f"{name} must have one value per step ({n}), got shape {out.shape}")
    return out


def quantize_steps(
    c2w: np.ndarray,
    parallax: np.ndarray | None,
    confidence: np.ndarray | None,
    stride: int,
    cfg: QCMConfig,
) -> np.ndarray:
    """(T-1,) int16 tokens of a trajectory's consecutive pose pairs.

    ``c2w`` (T, 4, 4) is the trajectory as sampled (every ``stride``-th source frame); ``parallax`` (T-1,) the
    translational parallax per step (None: the relative translation length, i.e. a metric trajectory of a scene
    at unit depth); ``confidence`` (T-1,) in [0, 1] (None: all 1). Steps with low confidence or non-finite poses
    get token 0.
    """
    stride = _check_stride(stride)
    poses = _as_poses(c2w)
    n = max(0, len(poses) - 1)
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    rel = relative_poses(poses)
    par = np.linalg.norm(rel[:, :3, 3], axis=1) if parallax is None else _per_step(parallax, n, "parallax", 0.0)
    conf = _per_step(confidence, n, "confidence", 1.0)
    tokens = np.zeros(n, dtype=np.int16)
    for t in range(n):
        # NaN confidence fails the comparison and stays `none`, like a low one.
        if not conf[t] >= cfg.min_confidence or not np.isfinite(rel[t]).all():
            continue
        keys = step_keys(rel[t, :3, 3], float(par[t]), stride, cfg)
        mouse = step_mouse(rel[t, :3, :3], stride, cfg)
        tokens[t] = token_of(keys, mouse)
    return tokens


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise angle between vectors in degrees (cosine clipped so rounding never gives NaN)."""
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def speed_indicators(
    c2w: np.ndarray, parallax: np.ndarray | None, step_seconds: np.ndarray | float
) -> dict[str, float]:
    """Yume's three speed indicators (Alg. 4), adapted to scale-free trajectories.

    * ``translation_speed``: mean translational parallax per second (radians/s of view angle, NOT metres);
      ``parallax`` None uses the relative translation length as in ``quantize_steps``.
    * ``path_turn_deg``: mean angle (degrees, per step) between successive world-frame travel directions; pairs
      where either step has ~zero translation or parallax are skipped (their direction is noise).
    * ``view_rotation_deg_per_s``: mean angle between successive optical axes (3rd column of the c2w rotation)
      per second; roll is invisible to it, as in Yume.

    Steps with non-finite values or non-positive durations are skipped; an indicator with nothing left is 0.0.
    """
    poses = _as_poses(c2w)
    n = max(0, len(poses) - 1)
    out = {"translation_speed": 0.0, "path_turn_deg": 0.0, "view_rotation_deg_per_s": 0.0}
    if n == 0:
        return out
    dt = _per_step(step_seconds, n, "step_seconds", 0.0)
    disp = np.diff(poses[:, :3, 3], axis=0)  # world-frame travel per step; only its direction is meaningful
    par = np.linalg.norm(relative_poses(poses)[:, :3, 3], axis=1) if parallax is None else parallax
    par = _per_step(par, n, "parallax", 0.0)
    good_dt = np.isfinite(dt) & (dt > 0)

    speed_ok = good_dt & np.isfinite(par)
    if speed_ok.any():
        out["translation_speed"] = float(np.mean(par[speed_ok] / dt[speed_ok]))

    moving = np.isfinite(par) & (par > 0) & np.isfinite(disp).all(axis=1) & (np.linalg.norm(disp, axis=1) > _EPS)
    pair_ok = moving[:-1] & moving[1:]
    if pair_ok.any():
        out["path_turn_deg"] = float(np.mean(_angle_deg(disp[:-1][pair_ok], disp[1:][pair_ok])))

    axes = poses[:, :3, 2]
    rot_ok = good_dt & np.isfinite(axes[:-1]).all(axis=1) & np.isfinite(axes[1:]).all(axis=1)
    rot_ok &= (np.linalg.norm(axes[:-1], axis=1) > _EPS) & (np.linalg.norm(axes[1:], axis=1) > _EPS)
    if rot_ok.any():
        out["view_rotation_deg_per_s"] = float(np.mean(_angle_deg(axes[:-1][rot_ok], axes[1:][rot_ok]) / dt[rot_ok]))
    return out


def motion_segments(tokens: np.ndarray, min_steps: int) -> list[tuple[int, int, int]]:
    """Runs of consistent motion as ``(start, end, token)`` with ``end`` exclusive, covering every step in order.

    Maximal runs of one token first; then, while some run is shorter than ``min_steps`` and there is more than
    one run, the shortest such run (the earliest on ties) takes the token of its longer neighbour (the earlier
    neighbour on ties) and joins it, and equal neighbours coalesce. Shortest first means a one-step blip is
    absorbed before it can decide the fate of a longer short run next to it.
    """
    toks = np.asarray(tokens).reshape(-1)
    if toks.size == 0:
        return []
    change = np.flatnonzero(toks[1:] != toks[:-1]) + 1
    bounds = np.concatenate([[0], change, [toks.size]])
    runs = [[int(s), int(e), int(toks[s])] for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    while len(runs) > 1:
        short = [i for i, (s, e, _) in enumerate(runs) if e - s < min_steps]
        if not short:
            break
        i = min(short, key=lambda j: (runs[j][1] - runs[j][0], j))
        left = runs[i - 1] if i > 0 else None
        right = runs[i + 1] if i + 1 < len(runs) else None
        if right is None or (left is not None and left[1] - left[0] >= right[1] - right[0]):
            left[1] = runs[i][1]
        else:
            right[0] = runs[i][0]
        del runs[i]
        merged: list[list[int]] = []
        for run in runs:  # coalesce neighbours that now share a token
            if merged and merged[-1][2] == run[2]:
                merged[-1][1] = run[1]
            else:
                merged.append(run)
        runs = merged
    return [(s, e, t) for s, e, t in runs]


def clip_token(tokens: np.ndarray, min_steps: int) -> int:
    """The clip's dominant consistent motion: the token of the longest segment after merging.

    Ties go to the token covering more steps over all its (merged) segments, then to the earlier segment.
    0 for an empty input.
    """
    segments = motion_segments(tokens, min_steps)
    if not segments:
        return 0
    coverage: dict[int, int] = {}
    for s, e, t in segments:
        coverage[t] = coverage.get(t, 0) + e - s
    best = min(range(len(segments)), key=lambda i: (-(segments[i][1] - segments[i][0]), -coverage[segments[i][2]], i))
    return segments[best][2]


_KEY_TEXT = {
    "none": "The camera stays in place.",
    "W": "The camera moves forward.",
    "S": "The camera moves backward.",
    "A": "The camera moves to the left.",
    "D": "The camera moves to the right.",
    "W+A": "The camera moves forward and to the left.",
    "W+D": "The camera moves forward and to the right.",
    "S+A": "The camera moves backward and to the left.",
    "S+D": "The camera moves backward and to the right.",
}
_MOUSE_TEXT = {
    "none": "The view direction holds steady.",
    "→": "The view turns right.",
    "←": "The view turns left.",
    "↑": "The view tilts up.",
    "↓": "The view tilts down.",
    "↑→": "The view tilts up while turning right.",
    "↑←": "The view tilts up while turning left.",
    "↓→": "The view tilts down while turning right.",
    "↓←": "The view tilts down while turning left.",
}


def _two_significant(x: float) -> str:
    """Two significant digits in plain notation (parallax speeds span 1e-4..1 rad/s), at most 5 decimals."""
    if not math.isfinite(x) or x == 0:
        return "0"
    decimals = min(5, max(0, 1 - math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def condition_text(keys: str, mouse: str, speeds: dict[str, float] | None) -> str:
    """Condition sentence(s) for a (keys, mouse) state, plus a speed sentence unless ``speeds`` is None."""
    if keys not in _KEY_TEXT:
        raise ValueError(f"unknown key state {keys!r}; expected one of {KEYS}")
    if mouse not in _MOUSE_TEXT:
        raise ValueError(f"unknown mouse state {mouse!r}; expected one of {MOUSE}")
    parts = [_KEY_TEXT[keys], _MOUSE_TEXT[mouse]]
    if speeds is not None:
        v = float(speeds["translation_speed"])
        d = float(speeds["path_turn_deg"])
        r = float(speeds["view_rotation_deg_per_s"])
        parts.append(
            f"Translation speed {_two_significant(v)} rad/s of parallax, path turn {d if math.isfinite(d) else 0:.1f}"
            f" degrees per step, view rotation {r if math.isfinite(r) else 0:.1f} degrees per second."
        )
    return " ".join(parts)
