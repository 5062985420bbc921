"""Stream a video from an AAPT causal checkpoint: one network evaluation per latent frame through the KV cache.

    python -m training.stream --checkpoint OUT|FILE.pt --out FILE.mp4 --frames N [--camera SCRIPT] [--image IMG]
        [--text PROMPT] [--seed 0] [--device auto] [--vae DIR] [--window W] [--save-latents FILE.pt]

N is the number of latent frames to generate after the first frame (a latent frame is one video frame in pixel
space, `temporal_factor` video frames after a video VAE's decode). Every frame costs one network evaluation at
t = 0 (`training.causal.rollout`: the 1-NFE generator recycles its own output); with a window the KV cache holds
at most sink + window frames, so the cost per frame stops growing once the window is full. `latency_s` in the JSON
is measured per frame with the device synchronised (CUDA), after `--warmup` untimed steps on a throwaway cache.

First frame. `--image IMG` is centre-cropped to the checkpoint's frame aspect and area-resized to its frame size
(pixel space) or VAE-encoded at the VAE's frame size (latent space, needs `--vae DIR`). Without it the first frame
is the first frame of the first curated clip of the checkpoint's training data (its `lineage` path, in source
order, decoded the way training saw it; that clip's caption or stored text embedding is the prompt unless `--text`
is given); when that data is gone, an error asks for `--image`.

Camera script (`--camera FILE`), one entry per generated latent frame: entry i is the camera step that leads to
generated frame i (entry 0 moves away from the first frame). A script shorter than N repeats its last entry; a
longer one is cut. Formats:
- text: one command per line, `#` starts a comment, blank lines skipped; `COMMAND * K` repeats a command K times.
  A command is `none` or keys and mouse joined by `+` (or `/`), case-insensitive: keys W S A D (W+A, S+D, ...),
  mouse right left up down (up-right, ..., or the arrows of annotators.qcm), e.g. `W`, `W+right`, `S+A/up-left`;
- JSON: a list of such commands; a list of camera-to-world 4x4 matrices (OpenCV axes, translation in the units of
  the shards' camera_c2w, one per latent frame: their consecutive relative poses are the steps); or an object with
  one of `commands`, `c2w`, or `run` (a run directory) plus optional `clip_id` (default: the first curated clip),
  whose stored `camera_c2w` is taken at the latent frames (every `temporal_factor`-th frame).
Commands become QCM tokens (`annotators.qcm.token_of`) for a model with QCM camera embeddings (`model.camera`), and
a relative pose per step for a model with camera rays (`model.camera_rays`): W/S move +-`--step-translation` along
the optical axis (default: 4 std of the ray-origin scale the loader normalises by, `camera_rays.origin_std_for`),
A/D sideways, the mouse turns by `--step-degrees` (yaw right, pitch up; diagonals keep the same magnitude), turned
into ray maps scaled as the loader scales a clip's (`training.camera_rays`, a pinhole of `--fov` degrees on the
latent grid, or a run clip's own intrinsics).
Poses become tokens through the QCM quantiser. Without `--camera` the model gets no camera signal (null tokens).

Output: FILE.mp4 (the first frame, then the generated ones) and FILE.json beside it: `latency_s` (seconds per
generated latent frame; per token frame of pt latent frames for a temporal patch pt > 1), `latency_median_s`, `fps`
(generated latent frames per second of network time), `fps_video` (generated video frames per second: `fps` times
`video_frames_per_latent_frame`, the VAE's temporal factor; decoding, timed apart in `decode_s`, not included),
`frames`, `latent_shape`, `video_frames`, `window`, `sink`, `device`, `precision`, `seed`, `checkpoint`, `step`,
`stage`, `first_frame`, `text`, `camera` (the command of every step, null without a script), `camera_tokens`,
`camera_source`, `camera_input` (tokens and/or rays), `space`, `vae`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotators import qcm
from training.camera_rays import chain_poses, intrinsics_size, origin_std_for, ray_embedding, scale_intrinsics
from training.causal import KVCache, rollout
from training.config import ConfigError
from training.train import UsageError, load_checkpoint

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


def intrinsics(h: int, w: int, fov_deg: float = FOV_DEG) -> torch.Tensor:
    """Pinhole K (3, 3) on an (h, w) grid with a horizontal field of view, square pixels, centred."""
    f = (w / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


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
        k = intrinsics(h, w, fov_deg)
    emb = ray_embedding(c2w, k, h, w, relative_to="previous", origin_std=origin_std_for(temporal_factor))
    return emb[1:].permute(1, 0, 2, 3)[None].contiguous()  # entry 0 is frame 0's identity step


# -- first frame, text, noise --------------------------------------------------------------------------------------


def read_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """uint8 (height, width, 3) RGB: the image centre-cropped to the target aspect, then area-resized."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UsageError(f"--image {path}: not a readable image file")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    ih, iw = img.shape[:2]
    if iw * height > ih * width:  # too wide: crop columns
        cw = max(1, round(ih * width / height))
        img = img[:, (iw - cw) // 2 : (iw - cw) // 2 + cw]
    else:
        ch = max(1, round(iw * height / width))
        img = img[(ih - ch) // 2 : (ih - ch) // 2 + ch]
    interp = cv2.INTER_AREA if img.shape[0] >= height else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=interp))


def image_first_frame(path: str | Path, latent_hw: tuple[int, int], pt: int, vae: Any = None) -> torch.Tensor:
    """(1, C, pt, h, w): the image as the first token frame (repeated over pt latent frames: a still start)."""
    h, w = latent_hw
    if vae is None:
        img = read_image(path, h, w)
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0
        return x[None, :, None].expand(1, 3, pt, h, w).contiguous()
    sf, tf = vae.spec.spatial_factor, vae.spec.temporal_factor
    img = read_image(path, h * sf, w * sf)
    frames = pt if tf == 1 else 1 + tf * (pt - 1)  # video frames that encode to pt latent frames
    return vae.encode(np.broadcast_to(img, (1, frames, *img.shape)).copy()).cpu()


def stream_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The input noise of every step, drawn on the CPU: one seed gives the same video on any device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- streaming ------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for auto/bf16 (as training), nothing for fp32 or off CUDA with auto."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def stream(
    model: Any,
    first: torch.Tensor,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    noise: torch.Tensor,
    camera_tokens: torch.Tensor | None = None,
    rays: torch.Tensor | None = None,
    window: int | None = None,
    warmup: int = 0,
    precision: str = "auto",
    on_frame: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """(generated frames (B, C, N, h, w), seconds per network evaluation) of a `rollout` through a fresh KV cache:
    one latency per latent frame (per token frame of pt latent frames when the temporal patch pt > 1).

    `window` None = the model's; `warmup` untimed steps run first on a throwaway cache (kernel selection and
    allocation would otherwise land on frame 0)."""
    device = noise.device
    overrides = {} if window is None else {"window": window}
    pt = model.patch[0]
    with autocast(device, precision):
        if warmup > 0:
            n = min(warmup * pt, noise.shape[2])
            cam = camera_tokens[:, :n] if camera_tokens is not None else None
            ray = rays[:, :, :n] if rays is not None else None
            warm_cache = KVCache.for_model(model, **overrides)
            rollout(model, first, text_emb, text_mask, noise[:, :, :n], cache=warm_cache, camera_tokens=cam, rays=ray)
        latencies: list[float] = []
        _sync(device)
        last = time.perf_counter()

        def timed(j: int, frame: torch.Tensor) -> None:
            nonlocal last
            _sync(device)
            now = time.perf_counter()
            latencies.append(now - last)
            if on_frame is not None:  # e.g. decode and show it; not the generator's latency
                on_frame(j, frame)
                _sync(device)
                now = time.perf_counter()
            last = now

        cache = KVCache.for_model(model, **overrides)
        frames = rollout(
            model, first, text_emb, text_mask, noise, cache=cache, camera_tokens=camera_tokens, rays=rays, on_step=timed
        )
    return frames.float(), latencies


# -- the command line -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """Everything one stream needs, ready on the device (what `main` runs; tests rerun it through `rollout`)."""

    model: Any
    state: dict[str, Any]
    checkpoint: Path
    device: torch.device
    first: torch.Tensor
    text_emb: torch.Tensor
    text_mask: torch.Tensor
    noise: torch.Tensor
    camera_tokens: torch.Tensor | None
    rays: torch.Tensor | None
    script: CameraScript | None
    vae: Any
    prompt: str | None
    first_source: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available")
    return torch.device(name)


def _data_first_frame(state: dict[str, Any], patch: tuple[int, int, int]) -> dict[str, Any]:
    """The first curated clip of the checkpoint's training data, as training decoded it."""
    from training.sample import driving_clip

    lineage = state.get("lineage") or {}
    path = lineage.get("path")
    if not path:
        raise UsageError("no --image, and the checkpoint records no training data (lineage) to take one from")
    try:
        return driving_clip(path, None, state, patch)
    except (OSError, ValueError) as e:
        raise UsageError(f"no --image, and the checkpoint's training data {path} cannot be read ({e})") from None


def prepare(args: argparse.Namespace) -> Prepared:
    """Load the checkpoint and build the first frame, text, noise and camera inputs; UsageError on bad input."""
    from training.latent import load_checked_vae
    from training.sample import find_checkpoint, model_from_state, prompt_embeddings

    if args.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {args.frames}")
    if args.window is not None and args.window < 0:
        raise UsageError(f"--window must be >= 0, got {args.window}")
    device = resolve_device(args.device)
    ckpt = find_checkpoint(args.checkpoint)
    state = load_checkpoint(ckpt)
    mcfg = state["config"]["model"]
    if not mcfg.get("causal"):
        raise UsageError(
            f"{ckpt} is a bidirectional checkpoint (model.causal = false): streaming needs an AAPT causal one "
            "(python -m training.sample samples this one)"
        )
    data_cfg = state["config"]["data"]
    latent = data_cfg.get("space") == "latent"
    if latent and not args.vae:
        raise UsageError("the checkpoint was trained on VAE latents: give --vae DIR (to encode --image and decode)")
    vae = load_checked_vae(args.vae, state, str(device)) if args.vae else None
    tf = vae.spec.temporal_factor if vae is not None else 1
    script = None
    if args.camera:
        if not (mcfg.get("camera", True) or mcfg.get("camera_rays")):
            raise UsageError("--camera: the checkpoint takes no camera input (model.camera and model.camera_rays off)")
        script = load_camera_script(args.camera, args.step_translation, args.step_degrees, tf)
    model, text_encoder = model_from_state(state, device)
    pt = model.patch[0]
    if args.frames % pt:
        raise UsageError(f"--frames must be a multiple of the temporal patch {pt}, got {args.frames}")
    c, _, h, w = state["latent_shape"]
    clip = None
    if args.image:
        first = image_first_frame(args.image, (h, w), pt, vae)
        first_source: dict[str, Any] = {"kind": "image", "path": str(args.image)}
    else:
        clip = _data_first_frame(state, tuple(model.patch))
        first = clip["latents"][:, :, :pt].float().cpu()
        c, h, w = first.shape[1], first.shape[3], first.shape[4]  # the clip's own bucket
        first_source = {"kind": "training data", "path": state["lineage"]["path"], "clip_id": clip["clip_id"][0]}
    model.token_grid((c, args.frames, h, w))  # a clear error for a size the patch does not divide

    prompt = args.text
    if mcfg["text"].get("kind") == "precomputed":
        if prompt and not args.text_encoder:
            raise UsageError("the model reads precomputed text embeddings: --text needs --text-encoder DIR")
        if prompt:
            text_emb, text_mask = prompt_embeddings(args.text_encoder, [prompt], state)
        elif clip is not None and "text_embedding" in clip:
            text_emb, text_mask = clip["text_embedding"].float(), clip["text_mask"]
        else:
            text_emb, text_mask = text_encoder.null(1)
    else:
        if prompt is None:
            prompt = str(clip["text"][0]) if clip is not None else ""
        with torch.no_grad():
            text_emb, text_mask = text_encoder([prompt])

    cam, rays = None, None
    if script is not None:
        script = script.steps(args.frames)
        if mcfg.get("camera", True):
            cam = torch.tensor([script.tokens], dtype=torch.long, device=device)
        if mcfg.get("camera_rays"):
            rays = script_rays(script, h, w, args.fov, tf).to(device)
    return Prepared(
        model=model,
        state=state,
        checkpoint=ckpt,
        device=device,
        first=first.to(device),
        text_emb=text_emb.float().to(device),
        text_mask=text_mask.to(device),
        noise=stream_noise(args.seed, (1, c, args.frames, h, w)).to(device),
        camera_tokens=cam,
        rays=rays,
        script=script,
        vae=vae,
        prompt=prompt,
        first_source=first_source,
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        prog="python -m training.stream",
        description=head,
        epilog=rest.split("\n\n", 1)[1],  # everything after the usage line: first frame, camera scripts, output
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="training output directory (newest checkpoint) or a .pt file")
    p.add_argument("--out", required=True, help="FILE.mp4 (or .gif); FILE.json is written beside it")
    p.add_argument(
        "--frames",
        type=int,
        required=True,
        help="N = latent frames to generate after the first frame, one network evaluation each",
    )
    p.add_argument("--camera", help="camera script: text (one command a line) or JSON; the last command repeats")
    p.add_argument("--image", help="first frame (default: the first frame of the training data's first clip)")
    p.add_argument("--text", help="prompt (default: the data clip's caption with the data first frame, else empty)")
    p.add_argument("--text-encoder", help="precomputed text: the local encoder folder, to embed --text")
    p.add_argument("--vae", help="latent space: the local diffusers VAE folder the shards were encoded with")
    p.add_argument("--seed", type=int, default=0, help="noise seed (drawn on the CPU: same video on any device)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--window", type=int, help="KV-cache window in token frames (0 = all; default: the model's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on a throwaway cache before timing")
    p.add_argument("--video-fps", type=float, default=8.0, help="playback rate of the written video")
    p.add_argument("--scale", type=int, help="nearest-neighbour upscaling (default 4 in pixel space, 1 decoded)")
    p.add_argument("--fov", type=float, default=FOV_DEG, help="camera rays: horizontal field of view in degrees")
    p.add_argument(
        "--step-translation",
        type=float,
        help=f"camera rays: W/S/A/D per step (default {STEP_TRANSLATION_STD:g} ray-origin std of the corpus scale)",
    )
    p.add_argument("--step-degrees", type=float, default=STEP_DEGREES, help="camera rays: mouse turn per step")
    p.add_argument("--save-latents", help="also save the generated frames (1, C, N, h, w) with torch.save")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from training.sample import side_by_side, to_video_frames, write_video

    args = parse_args(argv)
    try:
        out = Path(args.out)
        if out.suffix.lower() not in (".mp4", ".gif"):
            raise UsageError(f"--out {out}: write .mp4 or .gif")
        if args.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
        run = prepare(args)
        if run.state.get("stage") == "adapt":  # a diffusion model: one step at t = 0 is not what it learned
            print(
                "warning: an 'adapt' (diffusion) checkpoint is no 1-step generator: expect blurry frames",
                file=sys.stderr,
            )
        window = run.model.cfg.window if args.window is None else args.window
        frames, latencies = stream(
            run.model,
            run.first,
            run.text_emb,
            run.text_mask,
            run.noise,
            run.camera_tokens,
            run.rays,
            window=args.window,
            warmup=args.warmup,
            precision=args.precision,
        )
        video_start = time.perf_counter()
        x = torch.cat([run.first.float(), frames], dim=2)
        if run.vae is not None:
            video = side_by_side(run.vae.decode(x), args.scale or 1)
            per_latent = run.vae.spec.temporal_factor
        else:
            video = to_video_frames(x, 4 if args.scale is None else args.scale)
            per_latent = 1
        decode_s = time.perf_counter() - video_start
        write_video(video, out, args.video_fps)
        if args.save_latents:
            torch.save(frames.cpu(), args.save_latents)
    except (ConfigError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(latencies)
    fps = len(latencies) * run.model.patch[0] / total if total > 0 else float("inf")
    mcfg = run.model.cfg
    record = {
        "checkpoint": str(run.checkpoint),
        "step": run.state.get("step"),
        "stage": run.state.get("stage"),
        "lineage": run.state.get("lineage"),
        "frames": args.frames,
        "latent_shape": list(frames.shape[1:]),
        "video_frames": len(video),
        "latency_s": [round(s, 6) for s in latencies],
        "latency_median_s": round(statistics.median(latencies), 6),
        "fps": round(fps, 3),  # generated latent frames per second (network time only)
        "fps_video": round(fps * per_latent, 3),  # generated video frames per second (decode not included)
        "video_frames_per_latent_frame": per_latent,
        "decode_s": round(decode_s, 4),
        "window": window,
        "sink": mcfg.sink,
        "device": _device_name(run.device),
        "precision": args.precision,
        "warmup": args.warmup,
        "seed": args.seed,
        "first_frame": run.first_source,
        "text": run.prompt,
        "camera": list(run.script.labels) if run.script else None,
        "camera_tokens": list(run.script.tokens) if run.script else None,
        "camera_source": run.script.source if run.script else None,
        "camera_input": [k for k, on in (("tokens", run.camera_tokens), ("rays", run.rays)) if on is not None],
        "space": run.state["config"]["data"].get("space", "pixel"),
        "vae": {"path": args.vae, "vae_hash": run.vae.spec.vae_hash} if run.vae is not None else None,
        "playback_fps": args.video_fps,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    print(
        f"wrote {out}: {args.frames} latent frames at {fps:.1f} frames/s "
        f"(median {1000 * record['latency_median_s']:.1f} ms/frame, window {window}, {record['device']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
