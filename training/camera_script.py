"""Camera scripts for streaming: per-step QCM commands or poses, parsed from text or JSON, as QCM tokens and as
the relative pose of each step (for camera-ray models, turned into rays scaled as the loader scales a clip's).
The formats are documented in `training.stream`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotators import qcm
from training.camera_rays import (
    chain_poses,
    intrinsics_size,
    origin_std_for,
    pinhole_intrinsics,
    ray_embedding,
    scale_intrinsics,
)
from training.train import UsageError

# Mouse words as (vertical, horizontal) signs: up = pitch up (+), right = yaw right (+).
MOUSE_WORDS: dict[str, tuple[int, int]] = {
    "right": (0, 1),
    "left": (0, -1),
    "up": (1, 0),
    "down": (-1, 0),
    "→": (0, 1),
    "←": (0, -1),
    "↑": (1, 0),
    "↓": (-1, 0),
}
KEY_WORDS = ("w", "s", "a", "d")
# W/S/A/D per latent step, in ray-origin std (`camera_rays.origin_std_for`, the corpus scale the loader divides by):
# a clear move, inside the corpus's range (its real moves reach about 6 std forward, 8.5 sideways).
STEP_TRANSLATION_STD = 4.0
STEP_DEGREES = 3.0  # per latent step: ~18 deg/s at 6 latent frames/s, a deliberate pan
FOV_DEG = 60.0  # horizontal field of view, as the camera annotator assumes for source videos


# -- camera scripts -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CameraScript:
    """Per-step camera commands: a label, a QCM token and the relative pose (camera k+1 in camera k) of each."""

    source: str
    labels: tuple[str, ...]
    tokens: tuple[int, ...]
    poses: np.ndarray  # (S, 4, 4) float64
    k: np.ndarray | None = None  # (3, 3) K of a run clip on its flow grid (None: a pinhole of --fov degrees)

    def steps(self, n: int) -> CameraScript:
        """The first n steps, the last one repeated when the script is shorter."""
        idx = [min(i, len(self.labels) - 1) for i in range(n)]
        labels, tokens = tuple(self.labels[i] for i in idx), tuple(self.tokens[i] for i in idx)
        return CameraScript(self.source, labels, tokens, self.poses[idx], self.k)


def parse_command(text: str) -> int:
    """'W+right', 'w/up-left', 'S+A+↓', 'none' -> the QCM token; ValueError naming what is wrong."""
    parts = [p.strip().lower() for p in text.replace("/", "+").split("+")]
    if any(not p for p in parts):
        raise ValueError(f"empty part in {text!r}")
    keys: set[str] = set()
    vertical: set[int] = set()
    horizontal: set[int] = set()
    for part in parts:
        if part == "none":
            continue
        if part in KEY_WORDS:
            keys.add(part)
            continue
        words = part.split("-") if "-" in part else [part] if part in MOUSE_WORDS else list(part)
        if not words or any(w not in MOUSE_WORDS for w in words):
            known = "W S A D, right left up down (or up-right, ..., arrows), none"
            raise ValueError(f"unknown camera command {part!r} in {text!r} (known: {known})")
        for w in words:
            v, h = MOUSE_WORDS[w]
            if v:
                vertical.add(v)
            if h:
                horizontal.add(h)
    for a, b in (("w", "s"), ("a", "d")):
        if {a, b} <= keys:
            raise ValueError(f"{text!r} holds {a.upper()} and {b.upper()} at once")
    if len(vertical) > 1 or len(horizontal) > 1:
        raise ValueError(f"{text!r} turns in opposite directions at once")
    fwd = "W" if "w" in keys else "S" if "s" in keys else ""
    side = "A" if "a" in keys else "D" if "d" in keys else ""
    key_state = "+".join(k for k in (fwd, side) if k) or "none"
    v, h = next(iter(vertical), 0), next(iter(horizontal), 0)
    mouse = {1: "↑", -1: "↓", 0: ""}[v] + {1: "→", -1: "←", 0: ""}[h] or "none"
    return qcm.token_of(key_state, mouse)


def command_name(token: int) -> str:
    """The canonical command of a QCM token: 'W+A+up-right', 'D', 'left', 'none'."""
    keys, mouse = qcm.split_token(token)
    words = {"↑": "up", "↓": "down", "→": "right", "←": "left"}
    turn = "-".join(words[c] for c in mouse) if mouse != "none" else ""
    return "+".join(p for p in (keys if keys != "none" else "", turn) if p) or "none"


def step_translation(temporal_factor: int = 1) -> float:
    """The default W/S/A/D step per latent frame, in the annotator's (parallax) units."""
    return STEP_TRANSLATION_STD * origin_std_for(temporal_factor)


def command_pose(token: int, translation: float | None = None, degrees: float = STEP_DEGREES) -> np.ndarray:
    """(4, 4) relative pose of one command step in annotators.qcm's conventions (OpenCV axes; R = Ry(yaw) Rx(pitch),
    yaw > 0 turns right, pitch > 0 tilts up), so the QCM quantiser gives the command's token back."""
    keys, mouse = qcm.split_token(token)
    move = np.zeros(3)
    for k in keys.split("+"):
        move += {"W": (0, 0, 1), "S": (0, 0, -1), "A": (-1, 0, 0), "D": (1, 0, 0), "none": (0, 0, 0)}[k]
    turn = np.zeros(2)  # (yaw, pitch)
    for c in mouse if mouse != "none" else "":
        turn += {"→": (1, 0), "←": (-1, 0), "↑": (0, 1), "↓": (0, -1)}[c]
    # Unit direction times the step size: a diagonal moves as fast as a straight key, not sqrt(2) faster.
    move = move / max(np.linalg.norm(move), 1.0) * (step_translation() if translation is None else translation)
    yaw, pitch = np.radians(turn / max(np.linalg.norm(turn), 1.0) * degrees)
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = ry @ rx, move
    return pose


def _commands_script(
    source: str, items: list[tuple[str, str, int]], translation: float | None, degrees: float
) -> CameraScript:
    """(where, command, repeat) triples -> CameraScript; UsageError naming `where` of a bad one."""
    labels, tokens = [], []
    for where, command, repeat in items:
        try:
            token = parse_command(command)
        except ValueError as e:
            raise UsageError(f"--camera {source} {where}: {e}") from e
        labels += [command_name(token)] * repeat
        tokens += [token] * repeat
    if not tokens:
        raise UsageError(f"--camera {source}: no camera command in the script")
    poses = np.stack([command_pose(t, translation, degrees) for t in tokens])
    return CameraScript(source, tuple(labels), tuple(tokens), poses)


def _text_items(source: str, text: str) -> list[tuple[str, str, int]]:
    items = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        command, star, count = line.partition("*")
        repeat = 1
        if star:
            try:
                repeat = int(count.strip())
            except ValueError:
                raise UsageError(
                    f"--camera {source} line {n}: repeat count {count.strip()!r} is not an integer"
                ) from None
            if repeat < 1:
                raise UsageError(f"--camera {source} line {n}: repeat count must be >= 1, got {repeat}")
        items.append((f"line {n}", command.strip(), repeat))
    return items


def _poses_script(source: str, c2w: Any, stride: int = 1, k: np.ndarray | None = None) -> CameraScript:
    """Camera-to-world poses (T, 4, 4), one per latent frame -> T-1 steps (relative poses, quantised tokens)."""
    try:
        poses = np.asarray(c2w, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--camera {source}: poses are not numeric 4x4 matrices ({e})") from None
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) < 2:
        raise UsageError(f"--camera {source}: poses must be a list of at least two 4x4 matrices, got {poses.shape}")
    if not np.isfinite(poses).all():
        raise UsageError(f"--camera {source}: poses hold non-finite values")
    rot = poses[:, :3, :3]
    bad = np.abs(rot @ np.swapaxes(rot, 1, 2) - np.eye(3)).max(axis=(1, 2)) > 1e-3
    bad |= np.abs(poses[:, 3] - np.array([0, 0, 0, 1.0])).max(axis=1) > 1e-6
    if bad.any():
        raise UsageError(f"--camera {source}: pose {int(np.argmax(bad))} is not a rigid camera-to-world matrix")
    rel = qcm.relative_poses(poses)
    tokens = [int(t) for t in qcm.quantize_steps(poses, None, None, stride, qcm.QCMConfig())]
    labels = tuple(f"pose {i}: {command_name(t)}" for i, t in enumerate(tokens))
    return CameraScript(source, labels, tuple(tokens), rel, k)


def _run_clip_poses(
    source: str, run: str, clip_id: str | None, temporal_factor: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """A curated clip's stored camera_c2w at its latent frames (every `temporal_factor`-th frame, as the loader takes
    them for rays) and its camera_intrinsics."""
    from curation.shards import iter_clips

    try:
        rows = iter_clips(run, columns=["clip_id", "camera_c2w", "camera_intrinsics"])
        row = next((r for r in rows if clip_id is None or r["clip_id"] == clip_id), None)
    except (OSError, ValueError) as e:
        raise UsageError(f"--camera {source}: cannot read the clips of {run} ({e})") from None
    if row is None:
        raise UsageError(f"--camera {source}: {run} has no curated clip {clip_id}")
    if row.get("camera_c2w") is None:
        raise UsageError(f"--camera {source}: clip {row['clip_id']} of {run} has no camera_c2w")
    k = row.get("camera_intrinsics")
    return np.asarray(row["camera_c2w"])[:: max(1, temporal_factor)], None if k is None else np.asarray(k)


def load_camera_script(
    path: str | Path,
    translation: float | None = None,
    degrees: float = STEP_DEGREES,
    temporal_factor: int = 1,
) -> CameraScript:
    """Parse a camera script file (text or JSON, see the module docstring); UsageError naming the bad line/item.
    `translation` None: `step_translation(temporal_factor)`."""
    if translation is None:
        translation = step_translation(temporal_factor)
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--camera {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--camera {path}: cannot read it ({e})") from None
    source = str(path)
    if p.suffix.lower() != ".json" and not text.lstrip().startswith(("[", "{")):
        return _commands_script(source, _text_items(source, text), translation, degrees)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--camera {path}: invalid JSON ({e})") from None
    if isinstance(doc, dict):
        known = ("commands", "c2w", "run")
        found = [k for k in known if k in doc]
        if len(found) != 1:
            raise UsageError(f"--camera {path}: a JSON object needs exactly one of {', '.join(known)}")
        if found == ["run"]:
            clip = doc.get("clip_id")
            poses, k = _run_clip_poses(source, str(doc["run"]), None if clip is None else str(clip), temporal_factor)
            return _poses_script(source, poses, temporal_factor, k)
        doc = doc[found[0]]
    if not isinstance(doc, list) or not doc:
        raise UsageError(f"--camera {path}: expected a non-empty list of commands or 4x4 poses")
    if all(isinstance(item, str) for item in doc):
        return _commands_script(source, [(f"item {i}", c, 1) for i, c in enumerate(doc)], translation, degrees)
    if any(isinstance(item, str) for item in doc):
        i = next(i for i, item in enumerate(doc) if not isinstance(item, str))
        raise UsageError(f"--camera {path} item {i}: mixes commands and poses")
    return _poses_script(source, doc)


def script_rays(
    script: CameraScript, h: int, w: int, fov_deg: float = FOV_DEG, temporal_factor: int = 1
) -> torch.Tensor:
    """(1, 6, S, h, w) ray embedding of the script's steps (entry i: the step into generated frame i), scaled as the
    loader scales a clip's rays (`origin_std_for(temporal_factor)`, `DIRECTION_STD`)."""
    c2w = chain_poses(torch.from_numpy(script.poses))  # from the first frame, at the identity
    if script.k is not None:  # a run clip's own K, moved from its flow grid to the latent grid as the loader does
        k = torch.from_numpy(np.asarray(script.k, dtype=np.float64))
        k = scale_intrinsics(k, intrinsics_size(k), (w, h))
    else:
        k = pinhole_intrinsics(h, w, fov_deg)
    emb = ray_embedding(c2w, k, h, w, relative_to="previous", origin_std=origin_std_for(temporal_factor))
    return emb[1:].permute(1, 0, 2, 3)[None].contiguous()  # entry 0 is frame 0's identity step
