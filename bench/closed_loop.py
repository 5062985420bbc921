"""Closed-loop camera check (issue 20): stream videos from an AAPT causal checkpoint under constant camera scripts,
run them back through the pipeline's flow -> camera -> QCM annotators, and count how often the estimated clip-level
token matches the commanded one. A measurement, not a gate: an untrained CPU debug model is expected to miss.

    python bench/closed_loop.py --checkpoint OUT [--frames 16] [--scripts none W right ...] [--seeds 3]
        [--image IMG] [--vae DIR] [--stride S] [--upscale U] [--set section.key=value ...] [--out DIR] [--tag T]
        [--videos DIR] [--quick]
    python bench/closed_loop.py --shards RUN [--train-steps 200] ...     # no checkpoint: train a tiny adapt one first
    python bench/closed_loop.py --sanity [--checkpoint OUT | --size 32 56] [--gains 1 4] ...

Generation. Per script and seed, `training.stream` (in process: `prepare`, then `stream` with the seed's noise)
streams `--frames` latent frames after the first one with the script as the camera input; the first frame is
`--image` or the first frame of the checkpoint's training data, as in `python -m training.stream`. A script is one
command held for every step (`training.stream` syntax: `W`, `right`, `W+right`, `none`, ...).

Analysis, as the pipeline annotates a clip (`pipelines.annotate`): the flow and camera settings come from the
pipeline's default preset (`--set flow.short_side=256` etc. override it like the pipeline CLI), `FlowAnnotator` then
`CameraEstimator` run on a batch of one clip. The clip is the generated frames as uint8 (pixel space: the latent
frames themselves; latent space: the VAE decode, every temporal_factor-th frame so that steps stay latent steps).
Frames below the flow's 16 px minimum (the debug corpus's 8x8 grid) are first upscaled bicubically by the smallest
integer that lifts them to it (`--upscale` overrides; larger factors of an area-reduced frame make the sanity
videos' turns read as moves). source_size = decoded_size = the frame size, so K is a 60 degree pinhole on the frame
grid, the camera the stream's rays assume. frame_indices step by `--stride`: the QCM thresholds scale with the
frame stride, and the tokens the model learned were quantised at the stride of its training clips, so the default
is their median frame step (read from the checkpoint's training data; 4, the sample corpus's 24-30 fps sources at
8 fps, when that is gone).

Scores per script: `clip_match` (estimated clip token == the commanded clip token, `annotators.qcm.clip_token` of
the commanded steps), its key and mouse halves, `step_agreement` (estimated step token == commanded step token,
over all steps), the mean `camera_confidence`, and `unusable` (flow or camera rejected the clip, or its confidence
is 0: every step unknown). Unusable videos count as misses. Overall: the same over every video, and the chance rate
1 / (distinct commanded clip tokens); `seed_dominance`: the share of videos whose estimate is their seed's most
common one across scripts (1: the noise, not the command, decides the motion). `ceiling`: the clip match of one
sanity video (below) of the generated size per script; `clip_match_resolved`: the overall match over the scripts
whose ceiling is 1, the ones the measurement can read at all at this size.

Sanity (`--sanity`): the same analysis on synthetic videos that truly execute each script (layered textured planes
of `pipelines.samples.layers`, rendered at `--render-factor` x the frame grid and area-reduced to it, as the pixel
loader reduces stored frames): the mouse turns the stream's 3 degrees per step, W/S/A/D moves so that the background
(depth 20) shifts by the commanded parallax (`training.stream.step_translation()`) times each `--gains` entry. It
shows which commands the measurement can resolve at this frame size, so a low score of a model is the model's. On
small grids the commanded W/S/A/D step (0.0024 rad of parallax, 1.5x the key threshold at stride 4) is a fraction of
a pixel and reads as `none`: keys are only measurable with real parallax (gain 4) and flow at the stored size.

Output: DIR/closed_loop[_TAG].json and .md (sanity: closed_loop_sanity[_TAG].*), the table also printed.
`--shards RUN` without `--checkpoint` runs `python -m training.train --stage adapt --config training/configs/debug.toml
--set steps=N` into DIR/closed_loop_adapt first. On 2 CPU cores a step takes ~0.02 s on an 8x8 pixel grid (64 px
stored frames: 200 steps in seconds) and ~2 s on the sample run's 32x56 grid (~7 min for 200 steps). An adapt
checkpoint is a diffusion model streamed at one step: expect blurry frames.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators.flow import MIN_SIDE  # noqa: E402
from bench.camera_loop import (  # noqa: E402, F401 - seed_dominance, synthetic_video: re-exported for tests
    RENDER_FACTOR,
    Analysis,
    annotate,
    markdown,
    sanity_records,
    score,
    seed_dominance,
    summarise,
    synthetic_video,
)

# One constant command per QCM family the camera annotator can tell apart: still, the four keys, the four turns,
# and one key + turn combination.
DEFAULT_SCRIPTS = ("none", "W", "S", "A", "D", "right", "left", "up", "down", "W+right")
QUICK_SCRIPTS = ("none", "right")
DEFAULT_STRIDE = 4  # the sample corpus: 24-30 fps sources sampled at 8 fps


# -- generation -------------------------------------------------------------------------------------------------


def training_stride(state: dict[str, Any]) -> tuple[int, str]:
    """The median frame step of the checkpoint's training clips (the stride their camera tokens were quantised
    at), and where it came from; DEFAULT_STRIDE when the data cannot be read."""
    from curation.shards import iter_clips

    path = (state.get("lineage") or {}).get("path")
    if not path:
        return DEFAULT_STRIDE, "default (the checkpoint records no training data)"
    try:
        steps = [d for row in iter_clips(path, columns=["frame_indices"]) for d in np.diff(row["frame_indices"])]
    except (OSError, ValueError, KeyError) as e:
        return DEFAULT_STRIDE, f"default (cannot read {path}: {e})"
    if not steps:
        return DEFAULT_STRIDE, f"default ({path} has no clips)"
    return max(1, int(round(statistics.median(steps)))), f"median frame step of the clips of {path}"


def write_script(folder: Path, command: str) -> Path:
    """A one-line camera script file (`training.stream` text format): the command, repeated for every step."""
    safe = command.replace("+", "_").replace("/", "_") or "none"
    path = folder / f"{safe}.txt"
    path.write_text(f"{command}\n")
    return path


def generate(
    args: argparse.Namespace, script: Path, seeds: Sequence[int]
) -> Iterator[tuple[int, np.ndarray, list[int], dict[str, Any]]]:
    """(seed, uint8 (T, H, W, 3) frames at latent-frame steps, commanded step tokens, run info) per seed: the
    checkpoint is prepared once per script, then streamed with each seed's noise."""
    from training.sample import to_video_frames
    from training.stream import parse_args, prepare, stream, stream_noise

    argv = ["--checkpoint", str(args.checkpoint), "--out", "unused.mp4", "--frames", str(args.frames)]
    argv += ["--camera", str(script), "--device", args.device, "--precision", args.precision]
    for flag in ("image", "vae", "text"):
        if getattr(args, flag):
            argv += [f"--{flag}", str(getattr(args, flag))]
    run = prepare(parse_args(argv))
    info = {
        "checkpoint": str(run.checkpoint),
        "step": run.state.get("step"),
        "stage": run.state.get("stage"),
        "first_frame": run.first_source,
        "camera_input": _camera_input(run),
    }
    for seed in seeds:
        noise = stream_noise(seed, tuple(run.noise.shape)).to(run.device)
        frames, _ = stream(
            run.model,
            run.first,
            run.text_emb,
            run.text_mask,
            noise,
            run.camera_tokens,
            run.rays,
            precision=args.precision,
        )
        x = torch.cat([run.first.float(), frames], dim=2)
        if run.vae is not None:  # decoded video frames; keep one per latent frame so steps stay latent steps
            video = np.asarray(run.vae.decode(x))[0][:: run.vae.spec.temporal_factor]
        else:
            video = to_video_frames(x, 1)
        yield seed, np.ascontiguousarray(video), list(run.script.tokens), info


def _camera_input(run: Any) -> list[str]:
    return [k for k, on in (("tokens", run.camera_tokens), ("rays", run.rays)) if on is not None]


def train_adapt(shards: str, out: Path, steps: int) -> Path:
    """A tiny adapt-stage checkpoint of the debug config on `shards` (the fallback when no --checkpoint is given)."""
    cmd = [sys.executable, "-m", "training.train", "--shards", shards, "--out", str(out), "--stage", "adapt"]
    cmd += ["--config", str(ROOT / "training" / "configs" / "debug.toml"), "--set", f"steps={steps}"]
    cmd += ["--set", f"checkpoint_every={steps}"]
    print("training:", " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"trained {steps} adapt steps in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def run_closed_loop(args: argparse.Namespace, analysis: Analysis) -> dict[str, Any]:
    """Stream every script x seed, annotate, score; the JSON document."""
    models = analysis.annotators()
    records = []
    run_info: dict[str, Any] = {}
    min_steps = analysis.camera.qcm.min_segment_steps
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for command in args.scripts:
            script = write_script(Path(tmp), command)
            for seed, video, tokens, info in generate(args, script, args.seed_list):
                estimate = annotate(video, analysis, models)
                rec = {"script": command, "seed": seed, **score(tokens, estimate, min_steps)}
                records.append(rec)
                run_info = info
                if args.videos:
                    _save_video(args.videos / f"{script.stem}_{seed}.mp4", video)
                got = rec["estimated"] or "unusable"
                print(
                    f"{command:>10} seed {seed}: estimated {got} (conf {rec['confidence']:.2f}, "
                    f"steps agree {rec['step_agreement']:.2f})",
                    flush=True,
                )
    # The ceiling: the same analysis on synthetic videos of the generated size that do follow the scripts.
    size = (int(video.shape[1]), int(video.shape[2]))
    sanity = sanity_records(args.scripts, [0], args.frames, size, analysis, models, factor=args.render_factor)
    ceiling = {r["script"]: float(r["clip_match"]) for r in sanity}
    return {
        "kind": "closed_loop",
        **run_info,
        "frames": args.frames,
        "frame_size": list(video.shape[1:3]),
        "seeds": list(args.seed_list),
        **analysis.record(args.stride_source),
        "seconds": round(time.perf_counter() - started, 1),
        **with_ceiling(summarise(records), ceiling),
        "videos": records,
    }


def with_ceiling(summary: dict[str, Any], ceiling: dict[str, float]) -> dict[str, Any]:
    """Add each script's measurement ceiling (the sanity clip match of a video that truly follows it, same size and
    analysis) and the overall match over the scripts the measurement resolves (ceiling 1)."""
    per_script = {k: {**v, "ceiling": ceiling[k]} for k, v in summary["per_script"].items()}
    resolved = {k: v for k, v in per_script.items() if ceiling[k] >= 1.0}
    n = sum(v["videos"] for v in resolved.values())
    overall = {
        **summary["overall"],
        "resolved_scripts": list(resolved),
        "clip_match_resolved": round(sum(v["clip_match"] * v["videos"] for v in resolved.values()) / n, 4)
        if n
        else None,
        "chance_resolved": round(1 / len({v["commanded"] for v in resolved.values()}), 4) if resolved else None,
    }
    return {"overall": overall, "per_script": per_script}


def _save_video(path: Path, frames: np.ndarray, scale: int = 4) -> None:
    from training.sample import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    big = np.stack([cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for f in frames])
    write_video(big, path, 8.0)


def run_sanity(args: argparse.Namespace, analysis: Analysis, size: tuple[int, int]) -> dict[str, Any]:
    """The closed-loop scores of synthetic videos that truly follow each script, per translation gain."""
    models = analysis.annotators()
    started = time.perf_counter()
    by_gain = {}
    for gain in args.gains:
        records = sanity_records(
            args.scripts, args.seed_list, args.frames, size, analysis, models, gain=gain, factor=args.render_factor
        )
        by_gain[f"{gain:g}"] = {**summarise(records), "videos": records}
    return {
        "kind": "closed_loop_sanity",
        "frame_size": list(size),
        "render_factor": args.render_factor,
        "frames": args.frames,
        "seeds": list(args.seed_list),
        **analysis.record(args.stride_source),
        "seconds": round(time.perf_counter() - started, 1),
        "gains": by_gain,
    }


def auto_upscale(size: tuple[int, int]) -> int:
    """The smallest integer factor that lifts the short side to the flow's minimum (1 when it is there already).
    No more: on the sanity videos larger factors of an area-reduced frame make turns read as moves."""
    return max(1, math.ceil(MIN_SIDE / min(size)))


def checkpoint_frame_size(state: dict[str, Any]) -> tuple[int, int] | None:
    """(h, w) of the frames a checkpoint streams in pixel space (its latent grid) or decodes (x the VAE's spatial
    factor); None when a latent checkpoint does not record that factor."""
    _, _, h, w = state["latent_shape"]
    if state["config"]["data"].get("space") == "latent":
        factor = ((state.get("space") or {}).get("vae") or {}).get("spatial_factor")
        return (h * int(factor), w * int(factor)) if factor else None
    return int(h), int(w)


# -- command line ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="causal training output directory (newest checkpoint) or a .pt file")
    p.add_argument("--shards", help="no --checkpoint: train a tiny adapt checkpoint on this run directory first")
    p.add_argument("--train-steps", type=int, default=200, help="steps of that adapt training")
    p.add_argument("--frames", type=int, default=16, help="latent frames streamed after the first (= camera steps)")
    p.add_argument("--scripts", nargs="+", help=f"commands, one script each (default: {' '.join(DEFAULT_SCRIPTS)})")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds per script (0 .. K-1)")
    p.add_argument("--image", help="first frame (default: the training data's first clip, as training.stream)")
    p.add_argument("--vae", help="latent-space checkpoints: the VAE folder")
    p.add_argument("--text", help="prompt (default: training.stream's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--stride", type=int, help="frame stride for the QCM thresholds (default: the training clips')")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the pipeline preset's flow/camera settings (e.g. flow.short_side=256)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for closed_loop*.json|md")
    p.add_argument("--tag", help="write closed_loop[_sanity]_TAG.json|md (several checkpoints in one folder)")
    p.add_argument("--videos", type=Path, help="also write every generated video here (4x nearest upscale)")
    p.add_argument("--sanity", action="store_true", help="score synthetic videos that follow the scripts instead")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="sanity frame size (default: checkpoint's)")
    p.add_argument("--gains", type=float, nargs="+", default=[1.0, 4.0], help="sanity: W/S/A/D step x these")
    p.add_argument(
        "--upscale",
        type=int,
        help="bicubic upscale before the annotators (default: 1, or what lifts "
        f"frames below the flow's {MIN_SIDE} px minimum to it)",
    )
    p.add_argument("--render-factor", type=int, default=RENDER_FACTOR, help="sanity: render at this x the size")
    p.add_argument("--quick", action="store_true", help=f"{' '.join(QUICK_SCRIPTS)}, 1 seed, 6 frames (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.scripts = args.scripts or list(QUICK_SCRIPTS)
        args.seeds, args.frames = 1, min(args.frames, 6)
    args.scripts = args.scripts or list(DEFAULT_SCRIPTS)
    args.seed_list = list(range(args.seeds))
    if args.frames < 2 or args.seeds < 1:
        p.error("--frames must be >= 2 and --seeds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from training.stream import parse_command
    from training.train import UsageError, load_checkpoint

    args = parse_args(argv)
    for command in args.scripts:
        try:
            parse_command(command)
        except ValueError as e:
            print(f"error: --scripts: {e}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None and args.shards and not args.sanity:
        args.checkpoint = train_adapt(args.shards, args.out / "closed_loop_adapt", args.train_steps)
    if args.checkpoint is None and not (args.sanity and args.size):
        print("error: give --checkpoint (or --shards RUN to train one; --sanity --size needs none)", file=sys.stderr)
        return 2
    state = None
    if args.checkpoint is not None:
        from training.sample import find_checkpoint

        try:
            state = load_checkpoint(find_checkpoint(args.checkpoint))
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.stride is not None:
        args.stride_source = "--stride"
    elif state is not None:
        args.stride, args.stride_source = training_stride(state)
    else:
        args.stride, args.stride_source = DEFAULT_STRIDE, "default (no checkpoint)"
    size = tuple(args.size) if args.size else checkpoint_frame_size(state)
    if args.sanity and size is None:
        print("error: --sanity on a latent-space checkpoint: give the decoded frame size with --size", file=sys.stderr)
        return 2
    upscale = args.upscale or (auto_upscale(size) if size else 1)
    analysis = Analysis.from_pipeline(args.overrides, args.stride, upscale)

    if args.sanity:
        result = run_sanity(args, analysis, size)
        tables = [markdown(s, f"sanity, {size[0]}x{size[1]}, W/S/A/D step x{g}") for g, s in result["gains"].items()]
        stem = "closed_loop_sanity"
    else:
        try:
            result = run_closed_loop(args, analysis)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        title = f"closed loop, {result['checkpoint']} (stage {result['stage']}, step {result['step']})"
        tables = [markdown(result, title)]
        stem = "closed_loop"
    note = (
        f"\nstride {analysis.stride} ({args.stride_source}); flow {analysis.flow.label}; frames upscaled "
        f"x{analysis.upscale} before the annotators; {result['frames']} steps.\n"
    )
    text = "\n".join(tables) + note
    stem += f"_{args.tag}" if args.tag else ""
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / f'{stem}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
