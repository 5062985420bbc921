"""Benchmark: streaming latency per latent frame of a causal VideoDiT vs frame index, with and without the KV cache;
and (`--drift`) the per-frame latent statistics of long rollouts against real clips.

Latency. One first frame, then `--factor` x `--train-frames` latent frames (4x a training clip by default), one
network evaluation each at t = 0 (the 1-NFE generator), in three modes:
- cache_window: the KV cache with a sliding window (`--window`, `--sink`): the cost per frame stops growing once the
  window is full;
- cache_full: the KV cache without a window: every frame attends to all earlier ones (attention grows linearly);
- recompute: no cache: step j runs the full block-causal masked forward over positions 0..j (the whole prefix
  again every step; grows linearly in the MLPs and quadratically in attention). Its frames must equal
  cache_window's (same mask): `recompute_max_abs_diff` checks it.
Every step is timed with the device synchronised, after `--warmup` untimed steps; the modes run `--passes` times in
alternating order and each frame index keeps its fastest pass (load on a shared machine only adds time). last/first
= the median latency of the last `--ends` frames over the median of the first `--ends` (medians again, against the
noise of single frames); fps = generated frames / the sum of those per-frame latencies. Goal: cache + window last/first
<= 1.3x. The model is a randomly initialised causal VideoDiT of `--size` (every weight perturbed, so no layer is
exactly zero), or `--checkpoint` (its latent shape, window and training length unless given). No assertions.

Drift. For each `--checkpoint` (e.g. before and after the long-video stage), the first `--clips` curated clips of
`--shards RUN` are decoded the way the checkpoint trained (`training.sample.clip_loader_config`); from each clip's
real first frame and its caption (or stored text embedding) the model streams `--factor` x the clip's latent frames
(no camera signal: null tokens). Reported per latent frame: the mean and std over (C, h, w) of the generated
latents (frame 0 is the real first frame), averaged over clips, next to the real clips' own per-frame mean/std;
and a summary: generated std / real std and |generated mean - real mean| over the first and the last clip length.
A generator that drifts (colour shift, fading, blow-up) shows it in the last segment.

    python bench/stream.py [--size debug] [--train-frames 8] [--factor 4] [--window 4] [--sink 1] [--height 16]
        [--width 16] [--channels 16] [--checkpoint OUT] [--device auto] [--precision auto] [--quick] [--json OUT]
    python bench/stream.py --drift --checkpoint A [--checkpoint B ...] --shards RUN [--clips 4] [--factor 4]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.causal import one_step  # noqa: E402
from training.model import ModelConfig, build_model  # noqa: E402
from training.stream import autocast, resolve_device, stream, stream_noise  # noqa: E402
from training.text import PrecomputedTextEncoder, TextConfig  # noqa: E402

GOAL = 1.3  # cache + window: last frame at most this many times the first


# -- latency ----------------------------------------------------------------------------------------------------


def random_model(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """A causal VideoDiT of `--size` with every weight perturbed, and its byte text encoder."""
    cfg = ModelConfig(
        size=args.size,
        patch=tuple(args.patch) if args.patch else None,
        causal=True,
        window=args.window,
        sink=args.sink,
        in_channels=args.channels,
        attention="sdpa",  # one kernel for all modes; flex would recompile for every prefix length
        event_head=False,
        event_injection=False,
        text=TextConfig(kind="byte", dim=64, layers=1, heads=2, max_length=64),
    )
    torch.manual_seed(0)
    model, text_encoder = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(device).eval(), text_encoder.to(device).eval()


def text_inputs(text_encoder: Any, device: torch.device, batch: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(embeddings, mask) of a clip's caption (stored embedding for precomputed text), else of the empty prompt."""
    with torch.no_grad():
        if isinstance(text_encoder, PrecomputedTextEncoder):
            if batch is not None and "text_embedding" in batch:
                emb, mask = batch["text_embedding"].float(), batch["text_mask"]
            else:
                emb, mask = text_encoder.null(1)
        else:
            emb, mask = text_encoder([str(batch["text"][0]) if batch is not None else ""])
    return emb.float().to(device), mask.to(device)


@torch.inference_mode()
def recompute(
    model: Any, first: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor, noise: torch.Tensor, warmup: int
) -> tuple[torch.Tensor, list[float]]:
    """Frames and seconds per step without a cache: step j is a full masked forward over positions 0..j whose
    recycled channels hold the first frame and every frame generated so far; its last position is the new frame."""
    pt, device = model.patch[0], noise.device
    steps = noise.shape[2] // pt

    def run(n: int, times: list[float] | None) -> list[torch.Tensor]:
        frames: list[torch.Tensor] = []
        for j in range(n):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            x = noise[:, :, : (j + 1) * pt]
            recycled = torch.cat([first, *frames], dim=2)
            v = model(x, 0.0, text_emb, text_mask, recycled=recycled).velocity
            frames.append(one_step(x[:, :, -pt:], v[:, :, -pt:].float(), 0.0))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if times is not None:
                times.append(time.perf_counter() - t0)
        return frames

    run(min(warmup, steps), None)
    times: list[float] = []
    return torch.cat(run(steps, times), dim=2), times


def summarise(latencies: list[float], ends: int, pt: int) -> dict[str, Any]:
    ends = max(1, min(ends, len(latencies) // 2 or 1))
    first, last = statistics.median(latencies[:ends]), statistics.median(latencies[-ends:])
    return {
        "latency_s": [round(s, 6) for s in latencies],
        "first_s": round(first, 6),
        "last_s": round(last, 6),
        "last_over_first": round(last / first, 3),
        "fps": round(len(latencies) * pt / sum(latencies), 2),
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.checkpoint:
        from training.sample import find_checkpoint, load_trained

        ckpt = find_checkpoint(args.checkpoint[0])
        model, text_encoder, state = load_trained(ckpt, device)
        if not model.cfg.causal:
            raise SystemExit(f"{ckpt} is not a causal checkpoint")
        c, t, h, w = state["latent_shape"]
        args.channels, args.height, args.width = c, h, w
        args.train_frames = args.train_frames or t
        if args.window is None:
            args.window = model.cfg.window
        # The recompute mode masks with model.cfg.window: keep it the cache's.
        model.cfg = dataclasses.replace(model.cfg, window=args.window, attention="sdpa")
    else:
        args.train_frames = args.train_frames or 8
        if args.window is None:
            args.window = max(1, args.train_frames // 2)
        model, text_encoder = random_model(args, device)
    pt = model.patch[0]
    n = args.factor * args.train_frames
    n -= n % pt
    shape = (1, args.channels, n, args.height, args.width)
    model.token_grid(shape)
    text_emb, text_mask = text_inputs(text_encoder, device)
    first = stream_noise(args.seed + 1, (1, args.channels, pt, args.height, args.width)).to(device)
    noise = stream_noise(args.seed, shape).to(device)
    common = {"warmup": args.warmup, "precision": args.precision}

    def run(mode: str) -> tuple[torch.Tensor, list[float]]:
        if mode == "recompute":
            with autocast(device, args.precision):
                return recompute(model, first, text_emb, text_mask, noise, args.warmup)
        window = args.window if mode == "cache_window" else 0
        return stream(model, first, text_emb, text_mask, noise, window=window, **common)

    modes = ("cache_window", "cache_full", "recompute")
    times: dict[str, list[list[float]]] = {m: [] for m in modes}
    frames: dict[str, torch.Tensor] = {}
    for k in range(args.passes):  # alternating order: a burst of machine load hits every mode alike
        for mode in modes if k % 2 == 0 else modes[::-1]:
            frames[mode], lat = run(mode)
            times[mode].append(lat)
    # Per frame index, the fastest pass: load on a shared machine only ever adds time, so a preempted step in one
    # pass does not make a spike.
    per_frame = {m: [min(col) for col in zip(*times[m], strict=True)] for m in modes}
    grid = model.token_grid(shape)
    return {
        "model": {
            "size": model.cfg.size,
            "hidden": model.cfg.hidden_dim,
            "depth": model.cfg.blocks,
            "heads": model.cfg.heads,
            "patch": list(model.patch),
            "parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint": args.checkpoint[0] if args.checkpoint else None,
        },
        "latent_frame": [args.channels, args.height, args.width],
        "tokens_per_frame": grid[1] * grid[2],
        "train_frames": args.train_frames,
        "factor": args.factor,
        "frames": n,
        "window": args.window,
        "sink": model.cfg.sink,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "precision": args.precision,
        "warmup": args.warmup,
        "ends": args.ends,
        "passes": args.passes,
        "modes": {m: summarise(per_frame[m], args.ends, pt) for m in modes},
        "recompute_max_abs_diff": float((frames["recompute"].float() - frames["cache_window"]).abs().max()),
    }


def report_latency(result: dict[str, Any]) -> None:
    modes = result["modes"]
    names = {"cache_window": "cache + window", "cache_full": "cache, no window", "recompute": "recompute prefix"}
    m = result["model"]
    print(
        f"{m['size']} model ({m['parameters'] / 1e6:.2f} M parameters), {result['tokens_per_frame']} tokens per "
        f"latent frame, {result['frames']} frames = {result['factor']} x {result['train_frames']} (training length), "
        f"window {result['window']} + sink {result['sink']}, {result['device']}, {result['precision']}"
    )
    n = result["frames"]
    every = max(1, n // 16)
    print(f"{'frame':>6}" + "".join(f"{names[k]:>20}" for k in modes) + "   (ms per latent frame)")
    for i in sorted({*range(0, n, every), n - 1}):
        print(f"{i:>6}" + "".join(f"{1000 * modes[k]['latency_s'][i]:>20.2f}" for k in modes))
    print(f"last/first = median of the last {result['ends']} frames / median of the first {result['ends']}")
    for key, r in modes.items():
        goal = ""
        if key == "cache_window":
            goal = f"   [goal <= {GOAL}x: {'met' if r['last_over_first'] <= GOAL else 'NOT met'}]"
        print(f"  {names[key]:<18} last/first {r['last_over_first']:>6.2f}x   {r['fps']:>9.1f} frames/s{goal}")
    print(f"recompute vs cache + window, max |frame difference|: {result['recompute_max_abs_diff']:.2e}")


# -- drift --------------------------------------------------------------------------------------------------------


def frame_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (mean, std) over (C, h, w) of (1, C, T, h, w)."""
    flat = x[0].float().transpose(0, 1).flatten(1)  # (T, C*h*w)
    return flat.mean(dim=1), flat.std(dim=1)


def drift(
    model: Any,
    text_encoder: Any,
    clips: Iterable[dict[str, Any]],
    factor: int = 4,
    seed: int = 0,
    precision: str = "auto",
) -> dict[str, Any]:
    """Per-frame latent mean/std of `factor` x T-frame rollouts from the clips' first frames, and of the real clips.

    Clips whose length differs from the first clip's are skipped (the curves are per frame index)."""
    device = next(model.parameters()).device
    pt = model.patch[0]
    real_m, real_s, gen_m, gen_s, used, skipped = [], [], [], [], 0, 0
    length = None
    for i, clip in enumerate(clips):
        latents = clip["latents"].float().to(device)
        length = length or latents.shape[2]
        if latents.shape[2] != length:
            skipped += 1
            continue
        c, t, h, w = latents.shape[1:]
        first = latents[:, :, :pt]
        n = factor * t - pt
        n -= n % pt
        text_emb, text_mask = text_inputs(text_encoder, device, clip)
        noise = stream_noise(seed + i, (1, c, n, h, w)).to(device)
        frames, _ = stream(model, first, text_emb, text_mask, noise, precision=precision)
        for x, means, stds in ((latents, real_m, real_s), (torch.cat([first, frames], dim=2), gen_m, gen_s)):
            mean, std = frame_stats(x)
            means.append(mean)
            stds.append(std)
        used += 1
    if not used:
        raise SystemExit("drift: no clips to roll out")
    rm, rs = torch.stack(real_m).mean(0), torch.stack(real_s).mean(0)
    gm, gs = torch.stack(gen_m).mean(0), torch.stack(gen_s).mean(0)
    t = rm.shape[0]
    ref_m, ref_s = float(rm.mean()), float(rs.mean())

    def segment(values: torch.Tensor, start: int) -> float:
        return float(values[start : start + t].mean())

    tail = gm.shape[0] - t
    summary = {
        "real_mean": round(ref_m, 4),
        "real_std": round(ref_s, 4),
        "std_ratio_first": round(segment(gs, 0) / ref_s, 4),
        "std_ratio_last": round(segment(gs, tail) / ref_s, 4),
        "mean_shift_first": round(abs(segment(gm, 0) - ref_m), 4),
        "mean_shift_last": round(abs(segment(gm, tail) - ref_m), 4),
    }
    return {
        "clips": used,
        "skipped_other_length": skipped,
        "train_frames": t,
        "factor": factor,
        "real": {"mean": [round(float(v), 4) for v in rm], "std": [round(float(v), 4) for v in rs]},
        "generated": {"mean": [round(float(v), 4) for v in gm], "std": [round(float(v), 4) for v in gs]},
        "summary": summary,
    }


def drift_run(args: argparse.Namespace) -> dict[str, Any]:
    from training.data import make_loader
    from training.sample import clip_loader_config, find_checkpoint, load_trained

    if not args.checkpoint or not args.shards:
        raise SystemExit("--drift needs --checkpoint (one or more) and --shards RUN")
    device = resolve_device(args.device)
    out: dict[str, Any] = {"shards": args.shards, "factor": args.factor, "clips": args.clips, "checkpoints": {}}
    for name in args.checkpoint:
        ckpt = find_checkpoint(name)
        model, text_encoder, state = load_trained(ckpt, device)
        if not model.cfg.causal:
            raise SystemExit(f"{ckpt} is not a causal checkpoint")
        cfg = clip_loader_config(args.shards, state, tuple(model.patch))
        with make_loader(dataclasses.replace(cfg, num_workers=0)) as loader:
            clips = []
            for batch in loader:
                clips.append(batch)
                if len(clips) >= args.clips:
                    break
        result = drift(model, text_encoder, clips, args.factor, args.seed, args.precision)
        result["stage"] = state.get("stage")
        out["checkpoints"][str(ckpt)] = result
    return out


def report_drift(result: dict[str, Any]) -> None:
    runs = result["checkpoints"]
    first = next(iter(runs.values()))
    t, n = first["train_frames"], len(first["generated"]["mean"])
    print(f"drift: {first['clips']} clips of {t} latent frames from {result['shards']}, rolled out to {n} frames")
    labels = [f"ckpt{i}" for i in range(len(runs))]
    for label, (path, r) in zip(labels, runs.items(), strict=True):
        print(f"  {label} = {path} (stage {r['stage']})")
    print(f"{'frame':>6}{'real mean/std':>18}" + "".join(f"{label + ' mean/std':>22}" for label in labels))
    every = max(1, n // 24)
    for i in sorted({*range(0, n, every), n - 1}):
        real = f"{first['real']['mean'][i]:>8.3f}/{first['real']['std'][i]:<8.3f}" if i < t else f"{'':>8} {'':<8}"
        gen = "".join(f"{r['generated']['mean'][i]:>12.3f}/{r['generated']['std'][i]:<9.3f}" for r in runs.values())
        print(f"{i:>6}  {real}{gen}")
    for label, r in zip(labels, runs.values(), strict=True):
        s = r["summary"]
        print(
            f"  {label}: std/real {s['std_ratio_first']:.3f} (first {t} frames) -> {s['std_ratio_last']:.3f} "
            f"(last {t}); |mean - real| {s['mean_shift_first']:.3f} -> {s['mean_shift_last']:.3f}"
        )


# -- command line -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], help="causal checkpoint or training dir (repeat)")
    p.add_argument("--drift", action="store_true", help="latent statistics of long rollouts vs real clips")
    p.add_argument("--shards", help="--drift: the run (or snapshot) directory of the real clips")
    p.add_argument("--clips", type=int, default=4, help="--drift: real clips to start from")
    p.add_argument("--size", default="debug", help="random model size: debug | small | base | large | xl")
    p.add_argument("--patch", type=int, nargs=3, metavar=("PT", "PH", "PW"), help="override the size's patch")
    p.add_argument("--train-frames", type=int, help="latent frames of a training clip (default 8, or the checkpoint's)")
    p.add_argument("--factor", type=int, default=4, help="generate this many training lengths")
    p.add_argument(
        "--window",
        type=int,
        help="cache window in token frames (default: the checkpoint's, else half the training length)",
    )
    p.add_argument("--sink", type=int, default=1)
    p.add_argument("--height", type=int, default=16, help="latent rows")
    p.add_argument("--width", type=int, default=16, help="latent columns")
    p.add_argument("--channels", type=int, default=16, help="latent channels")
    p.add_argument("--ends", type=int, default=4, help="frames at each end whose median latency is compared")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--passes", type=int, default=3, help="runs of every mode; per frame the fastest counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--quick", action="store_true", help="a seconds-long run (tests): 4 x 4 frames of 8x8x3")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if args.quick:
        args.train_frames, args.height, args.width, args.channels = 4, 8, 8, 3
        args.ends, args.warmup, args.passes = 2, 1, 2
        args.window = 2 if args.window is None else args.window
    if min(args.factor, args.clips, args.ends, args.passes) < 1 or args.warmup < 0:
        p.error("--factor, --clips, --ends and --passes must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.drift:
        result = drift_run(args)
        report_drift(result)
    else:
        result = latency(args)
        report_latency(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
