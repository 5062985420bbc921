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
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.camera_script import (  # noqa: F401 - re-exported: the script API callers import from here
    FOV_DEG,
    STEP_DEGREES,
    STEP_TRANSLATION_STD,
    CameraScript,
    _commands_script,
    command_name,
    command_pose,
    load_camera_script,
    parse_command,
    script_rays,
    step_translation,
)
from training.causal import KVCache, rollout
from training.config import ConfigError
from training.optim import autocast
from training.train import UsageError, load_checkpoint

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
