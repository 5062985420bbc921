"""Generate a video from a trained checkpoint.

    python -m training.sample --checkpoint OUT_DIR [--out sample.mp4|sample.gif] [--prompt TEXT]
        [--driving RUN_OR_SNAPSHOT [--clip-id ID]] [--camera W/right] [--steps 50] [--solver heun] [--cfg-scale 4]
        [--no-gating] [--seed 0] [--scale 4] [--bucket TxHxW]

`--checkpoint` is a training output directory (its newest checkpoint) or a checkpoint file; the EMA weights are used.
`--driving` takes a curated clip (the first one, or `--clip-id`) whose warped noise initialises the sample (its
motion carries over: EquiVDM), whose camera tokens steer the camera unless `--camera` is given, and whose first
frame conditions the sample with `--image` (STIV). The sample's (T, h, w) is the driving clip's, else the trained
bucket with the most clips, or `--bucket TxHxW`, another bucket the model was trained on. `--camera KEYS/MOUSE`
holds one QCM token for every step, keys in `none W S A D W+A W+D S+A S+D`, mouse in
`none right left up down up-right up-left down-right down-left` (or the arrows). A JSON file next to the video
records the checkpoint, its data lineage and every setting.

A model trained in latent space samples VAE latents: `--vae DIR` (the local diffusers folder of the VAE the shards
were encoded with; its hash must be the checkpoint's) decodes them to frames at full resolution (`--scale` 1 by
default). With precomputed text embeddings a `--prompt` needs `--text-encoder DIR` (the encoder the shards were
embedded with, hash checked); without one the driving clip's stored embedding conditions the sample, or no text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from annotators.qcm import KEYS, MOUSE
from training.config import ConfigError, TrainConfig
from training.latent import load_checked_vae
from training.sampling import SamplerConfig, sample
from training.train import UsageError, ema_weights_into, list_checkpoints, load_checkpoint

if TYPE_CHECKING:
    from training.data import DataConfig

MOUSE_NAMES = ("none", "right", "left", "up", "down", "up-right", "up-left", "down-right", "down-left")


def camera_token(spec: str) -> int:
    """'W/right' (or 'W+D/↑→') → the QCM token key_index * 9 + mouse_index."""
    keys, _, mouse = spec.partition("/")
    mouse = mouse or "none"
    if keys not in KEYS:
        raise UsageError(f"--camera {spec}: keys must be one of {' '.join(KEYS)}")
    if mouse in MOUSE:
        m = MOUSE.index(mouse)
    elif mouse in MOUSE_NAMES:
        m = MOUSE_NAMES.index(mouse)
    else:
        raise UsageError(f"--camera {spec}: mouse must be one of {' '.join(MOUSE_NAMES)}")
    return KEYS.index(keys) * 9 + m


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    found = list_checkpoints(p)
    if not found:
        raise UsageError(f"--checkpoint {path}: no checkpoint file, nor a training directory with checkpoints")
    return found[-1]


def load_trained(path: Path, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """(model, text encoder, checkpoint state) with the EMA weights, ready to sample."""
    state = load_checkpoint(path)
    model, text_encoder = model_from_state(state, device)
    return model, text_encoder, state


def model_from_state(state: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """(model, text encoder) of a loaded checkpoint state with its EMA weights, in eval mode on `device`."""
    from curation.typed_config import build
    from training.model import build_model

    cfg: TrainConfig = build(TrainConfig, state["config"], prefix="")
    model, text_encoder = build_model(cfg.model)
    ema_weights_into(model, text_encoder, state)
    return model.to(device).eval(), text_encoder.to(device).eval()


def trained_shapes(state: dict[str, Any]) -> dict[str, list[int]]:
    """bucket name -> [C, T, h, w] the checkpoint was trained on (one entry for checkpoints before buckets)."""
    if state.get("latent_shapes"):
        return dict(state["latent_shapes"])
    c, frames, h, w = state["latent_shape"]
    return {f"{frames}x{h}x{w}": [c, frames, h, w]}


def driving_clip(source: str, clip_id: str | None, state: dict[str, Any], patch: tuple[int, int, int]) -> dict:
    """One clip as the training loader decodes it (latents, warped noise, camera tokens, events on its token grid).
    A model trained on one shape decodes it at that shape; one trained on buckets at the clip's own bucket."""
    from training.data import make_loader

    shapes = trained_shapes(state)
    frames = state["latent_shape"][1]
    cfg = clip_loader_config(source, state, patch)
    with make_loader(cfg) as loader:
        if len(shapes) == 1 and {b.num_frames for b in loader.geo.buckets} != {frames}:
            found = sorted({b.num_frames for b in loader.geo.buckets})
            raise UsageError(f"--driving clips have {found} frames, the model {frames}")
        for batch in loader:
            if clip_id is None or batch["clip_id"][0] == clip_id:
                return batch
    raise UsageError(f"--clip-id {clip_id} is not among the curated clips of {source}")


def clip_loader_config(source: str, state: dict[str, Any], patch: tuple[int, int, int]) -> DataConfig:
    """A one-clip-per-batch, source-order `DataConfig` that decodes clips of `source` the way the checkpoint's
    training saw them (space, size, VAE and text encoder pinned)."""
    from training.data import DataConfig
    from training.train import resolve_source

    shapes = trained_shapes(state)
    _, _, h, w = state["latent_shape"]
    data = state["config"]["data"]
    latent = data.get("space") == "latent"
    size = None if latent else (h, w) if len(shapes) == 1 else data.get("latent_size")
    return DataConfig(
        source=str(resolve_source(source)),
        batch_size=1,
        shuffle_buffer=0,
        num_workers=0,
        space=data.get("space", "pixel"),
        latent_size=size,
        vae_hash=data.get("vae_hash", ""),  # a driving clip from another VAE is refused
        text_embeddings=bool(data.get("text_embeddings")),
        text_encoder_hash=data.get("text_encoder_hash", ""),
        token_patch=patch,
        drop_last=False,
    )


def to_video_frames(x: torch.Tensor, scale: int) -> np.ndarray:
    """(B, C, T, h, w) in [-1, 1] → (T, h*scale, B*w*scale, 3) uint8, samples side by side."""
    import cv2

    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = x.permute(2, 3, 0, 4, 1).flatten(2, 3).cpu().numpy()  # (T, h, B*w, C)
    if scale > 1:
        size = (frames.shape[2] * scale, frames.shape[1] * scale)
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_NEAREST) for f in frames])
    return frames


def side_by_side(frames: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (B, T, H, W, 3) → (T, H*scale, B*W*scale, 3), samples side by side."""
    import cv2

    out = np.concatenate(list(frames), axis=2)
    if scale > 1:
        size = (out.shape[2] * scale, out.shape[1] * scale)
        out = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_NEAREST) for f in out])
    return out


def prompt_embeddings(folder: str, prompts: list[str], state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts through the text encoder in `folder` (hash checked against the checkpoint's), zero-padded to the
    trained length with a mask: what the loader makes of stored embeddings."""
    from annotators.text_encoder import TextEncoder, TextEncoderConfig
    from training.data.space import text_encoder_id

    expected = state["config"]["data"].get("text_encoder_hash", "")
    if not expected:
        raise UsageError("--text-encoder: the checkpoint was not trained on precomputed text embeddings")
    length = int(state["config"]["model"]["text"]["max_length"])
    encoder = TextEncoder(TextEncoderConfig(model_path=folder, device="cpu", dtype="float32", max_length=length))
    loaded = encoder.encoder
    found = text_encoder_id(
        {"cls": loaded.cls, "weights_sha256": loaded.weights_sha256, "max_length": loaded.max_length}
    )
    if found != expected:
        raise UsageError(f"--text-encoder {folder}: encoder {found}, the checkpoint was trained on {expected}")
    rows = [torch.from_numpy(e.astype(np.float32)) for e in encoder.encode(prompts)]
    emb = torch.zeros((len(rows), length, rows[0].shape[1]))
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        emb[i, : len(r)], mask[i, : len(r)] = r, True
    return emb, mask


def write_video(frames: np.ndarray, path: Path, fps: float) -> None:
    """mp4 (H.264, or MPEG-4 part 2 where libx264 is missing) or gif, by the file extension."""
    import av

    if path.suffix.lower() not in (".mp4", ".gif"):
        raise UsageError(f"--out {path}: write .mp4 or .gif")
    t, h, w = frames.shape[:3]
    if path.suffix.lower() == ".mp4":  # yuv420p needs even sides
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with av.open(str(tmp), "w") as container:
        if path.suffix.lower() == ".gif":
            stream = container.add_stream("gif", rate=int(round(fps)))
            stream.pix_fmt = "rgb8"
        else:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=int(round(fps)))
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training output directory or checkpoint file")
    p.add_argument("--out", default="sample.mp4", help=".mp4 or .gif")
    p.add_argument("--prompt", action="append", default=[], help="text prompt (repeat for several samples)")
    p.add_argument("--driving", help="run or snapshot directory with the driving clip")
    p.add_argument("--clip-id", help="the driving clip (default: the first curated clip)")
    p.add_argument("--image", action="store_true", help="keep the driving clip's first frame (STIV conditioning)")
    p.add_argument("--camera", help="hold one QCM token: KEYS/MOUSE, e.g. W/right")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--solver", choices=("euler", "heun"), default="euler")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--no-gating", action="store_true", help="switch EVD event gating off")
    p.add_argument("--gate-floor", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, help="nearest-neighbour upscaling (default 4 in pixel space, 1 decoded)")
    p.add_argument("--vae", help="latent space: the local diffusers VAE folder the shards were encoded with")
    p.add_argument("--text-encoder", help="precomputed text: the local encoder folder, to embed --prompt")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--bucket", help="sample at this trained bucket's shape (TxHxW; default: the one with most clips)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if args.device == "auto" else args.device)
        ckpt = find_checkpoint(args.checkpoint)
        model, text_encoder, state = load_trained(ckpt, device)
        train_cfg = state["config"]
        latent = train_cfg["data"].get("space") == "latent"
        if latent and not args.vae:
            raise UsageError("the checkpoint was trained on VAE latents: give --vae DIR to decode them")
        vae = load_checked_vae(args.vae, state, str(device)) if args.vae else None  # before the slow part
        shapes = trained_shapes(state)
        if args.bucket and args.driving:
            raise UsageError("--bucket and --driving exclude each other: the driving clip's bucket sets the shape")
        if args.bucket and args.bucket not in shapes:
            raise UsageError(f"--bucket {args.bucket}: the model was trained on {', '.join(shapes)}")
        c, frames, h, w = shapes[args.bucket] if args.bucket else state["latent_shape"]
        sampler = SamplerConfig(
            steps=args.steps,
            solver=args.solver,
            cfg_scale=args.cfg_scale,
            time_shift=train_cfg["objective"]["time_shift"],
            event_gating=not args.no_gating,
            gate_floor=args.gate_floor,
            beta=train_cfg["objective"]["beta"],
        )
        drive = driving_clip(args.driving, args.clip_id, state, tuple(model.patch)) if args.driving else None
        if drive is not None:
            c, frames, h, w = drive["latents"].shape[1:]  # the driving clip's bucket
        model.token_grid((c, frames, h, w))  # a clear error for a shape the patch does not divide
        prompts = args.prompt or ([drive["text"][0]] if drive else [""])
        b = len(prompts)
        text = None
        if train_cfg["model"]["text"].get("kind") == "precomputed":
            if args.prompt and not args.text_encoder:
                raise UsageError("the model reads precomputed text embeddings: --prompt needs --text-encoder DIR")
            if args.prompt:
                text = prompt_embeddings(args.text_encoder, prompts, state)
            elif drive is not None:
                text = (drive["text_embedding"].float(), drive["text_mask"])
            else:
                text = text_encoder.null(b)
        camera = None
        if args.camera:
            camera = torch.full((b, frames - 1), camera_token(args.camera), dtype=torch.long)
        elif drive is not None and "camera_tokens" in drive and bool(drive["has_camera"][0]):
            camera = drive["camera_tokens"].expand(b, -1)
        noise = drive["noise"].expand(b, -1, -1, -1, -1) if drive is not None and "noise" in drive else None
        first = drive["latents"][:, :, 0].expand(b, -1, -1, -1) if drive is not None and args.image else None
        if args.image and drive is None:
            raise UsageError("--image needs --driving")
        generator = torch.Generator(device=device).manual_seed(args.seed)
        x, trace = sample(
            model,
            text_encoder,
            prompts,
            (c, frames, h, w),
            sampler,
            generator,
            warped_noise=noise,
            camera_tokens=camera,
            first_frame=first,
            text=text,
        )
        out = Path(args.out)
        if vae is not None:
            video = side_by_side(vae.decode(x), args.scale or 1)
        else:
            video = to_video_frames(x, 4 if args.scale is None else args.scale)
        write_video(video, out, args.fps)
    except (ConfigError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = {
        "checkpoint": str(ckpt),
        "step": state["step"],
        "lineage": state.get("lineage"),
        "prompts": prompts,
        "driving": {"source": args.driving, "clip_id": drive["clip_id"][0]} if drive else None,
        "camera": args.camera or ("driving clip" if camera is not None else None),
        "image_condition": bool(args.image),
        "sampler": dataclasses.asdict(sampler),
        "seed": args.seed,
        "gate_mean": trace["gate_mean"],
        "vae": {"path": args.vae, "vae_hash": vae.spec.vae_hash, "cls": vae.spec.cls} if vae else None,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out} ({len(prompts)} sample(s), {len(video)} frames, {args.steps} {args.solver} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
