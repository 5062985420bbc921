"""Benchmark: our distribution-preserving noise warp (torch reference and numba-fused) vs a bilinear grid_sample.

Same noise, same flows (translation, zoom in/out and rotation fields), on CPU, at every --threads count and every
grid: per-frame time of the reference `warp_step`, the fused one (a `WarpState` step, as in the pipeline's frame
loop) and `bilinear_warp` (warm-up, which also compiles or loads numba's cached kernels, then the median over
repeats, the methods interleaved so machine load hits all alike), the ratios to bilinear, and the outputs'
statistics after --frames frames (mean, std, KS D and p against N(0,1), Moran's I). Bilinear warping is the usual
naive choice; its variance collapses. Grids: `256` is 256x256x4;
`wan` is the warp grid of a Wan latent (16 channels at 1/8 of a 448x256 (WxH) bucket, x16 warp_scale: 512x896).

With --run-json (a finished run's `_run.json`, e.g. of `make run`), it also reports the warped-noise annotator's
share of the clip step's annotator worker-seconds in that run.

    python bench/noise_warp.py [--grids 256,wan] [--threads 1,2] [--frames 16] [--repeats 60] [--json OUT]
                               [--run-json RUN/_run.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators import noise_warp_fused  # noqa: E402
from annotators.noise_warp import bilinear_warp, ks_normal, morans_i, warp_step  # noqa: E402

# name -> (channels, height, width) of the warp grid
GRIDS: dict[str, tuple[int, int, int]] = {"256": (4, 256, 256), "wan": (16, 256 // 8 * 16, 448 // 8 * 16)}
METHODS = ("fused", "reference", "bilinear")


def motion_fields(h: int, w: int) -> dict[str, torch.Tensor]:
    """Forward flows (2, h, w) in pixels: sub-pixel pan, zoom in/out about the centre, 2-degree rotation."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
    cos, sin = math.cos(math.radians(2.0)), math.sin(math.radians(2.0))
    return {
        "translate": torch.stack((torch.full_like(xs, 3.4), torch.full_like(xs, -1.7))),
        "zoom_in": torch.stack((0.04 * dx, 0.04 * dy)),
        "zoom_out": torch.stack((-0.04 * dx, -0.04 * dy)),
        "rotate": torch.stack((cos * dx - sin * dy - dx, sin * dx + cos * dy - dy)),
    }


def stats(x: torch.Tensor) -> dict[str, float]:
    d, p = ks_normal(x)
    return {
        "mean": round(float(x.mean()), 5),
        "std": round(float(x.std()), 5),
        "ks_d": round(d, 5),
        "ks_p": round(p, 4),
        "morans_i": round(morans_i(x), 5),
    }


def run_motion(flow: torch.Tensor, channels: int, frames: int, repeats: int, seed: int) -> dict:
    h, w = flow.shape[-2:]
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn((channels, h, w), generator=gen)
    ours, density, bil = start, torch.ones(h, w), start
    # The trajectory (frames steps) gives the statistics; the fused warp is bit-identical, so one trajectory serves
    # both of ours. Timing repeats warp the final state further.
    for _ in range(frames):
        ours, density = noise_warp_fused.warp_step(ours, density, flow, gen)
        bil = bilinear_warp(bil, flow)
    result: dict = {
        "ours": stats(ours),
        "bilinear": stats(bil),
        "density_range": [float(density.min()), float(density.max())],
    }
    # The fused warp steps a WarpState, as the pipeline's frame loop does: its state stays in the kernels'
    # pixel-major layout between frames (warp_step would convert a (C, H, W) tensor in and out every call).
    fused = noise_warp_fused.WarpState.of(ours, density, gen)
    flow_np = flow.contiguous().numpy()
    step: dict[str, Callable[[], object]] = {
        "fused": lambda: fused.step(flow_np),
        "reference": lambda: warp_step(ours, density, flow, gen),
        "bilinear": lambda: bilinear_warp(bil, flow),
    }
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(3):  # warm-up
        for fn in step.values():
            fn()
    for _ in range(repeats):  # interleaved, so a load spike from other processes hits every method alike
        for m, fn in step.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
    for m in METHODS:
        result[f"{m}_ms"] = round(statistics.median(times[m]) * 1e3, 3)
    for m in ("fused", "reference"):
        result[f"ratio_{m}_over_bilinear"] = round(result[f"{m}_ms"] / result["bilinear_ms"], 3)
    return result


def run_grid(name: str, threads: int, frames: int, repeats: int, seed: int) -> dict:
    torch.set_num_threads(threads)  # the fused kernel follows torch's thread count
    channels, h, w = GRIDS[name]
    motions = {m: run_motion(flow, channels, frames, repeats, seed) for m, flow in motion_fields(h, w).items()}
    ms = {m: statistics.mean(r[f"{m}_ms"] for r in motions.values()) for m in METHODS}
    result = {"grid": name, "channels": channels, "height": h, "width": w, "threads": torch.get_num_threads()}
    result |= {f"{m}_ms_per_frame": round(ms[m], 3) for m in METHODS}
    result |= {f"ratio_{m}_over_bilinear": round(ms[m] / ms["bilinear"], 3) for m in ("fused", "reference")}
    return result | {"motions": motions}


def run_share(path: Path) -> dict:
    """Warped noise's share of the clip step's annotator seconds (`worker_seconds["clips/<annotator>"]`)."""
    seconds = json.loads(path.read_text()).get("worker_seconds", {})
    annotators = {k.split("/", 1)[1]: v for k, v in seconds.items() if k.startswith("clips/")}
    if "warped_noise" not in annotators:
        raise SystemExit(f"{path}: no clips/warped_noise in worker_seconds (was [noise] enabled?)")
    total = sum(annotators.values())
    return {
        "run_json": str(path),
        "annotator_seconds": {k: round(v, 3) for k, v in sorted(annotators.items(), key=lambda kv: -kv[1])},
        "warped_noise_share": round(annotators["warped_noise"] / total, 4) if total else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", default="256,wan", help=f"comma-separated, of {', '.join(GRIDS)}")
    p.add_argument("--threads", default="1,2", help="comma-separated torch (and numba) thread counts")
    p.add_argument("--frames", type=int, default=16, help="warp steps before the statistics are taken")
    p.add_argument("--repeats", type=int, default=60, help="timed steps per method and motion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--run-json", type=Path, help="a finished run's _run.json: report warped noise's share")
    args = p.parse_args()
    share = run_share(args.run_json) if args.run_json else None
    noise_warp_fused.warm_up()  # compile or load the cached kernels: not part of any timing
    runs = [
        run_grid(g, int(t), args.frames, args.repeats, args.seed)
        for g in args.grids.split(",")
        for t in args.threads.split(",")
    ]
    print(f"{'grid':<5} {'thr':>3} {'motion':<10} {'fused':>8} {'ref':>8} {'bilin':>8} {'fus/bil':>7} {'ref/bil':>7}")
    for r in runs:
        for name, m in r["motions"].items():
            print(
                f"{r['grid']:<5} {r['threads']:>3} {name:<10} {m['fused_ms']:>8.3f} {m['reference_ms']:>8.3f} "
                f"{m['bilinear_ms']:>8.3f} {m['ratio_fused_over_bilinear']:>7.3f} "
                f"{m['ratio_reference_over_bilinear']:>7.3f}"
            )
        print(
            f"{r['grid']:<5} {r['threads']:>3} {'mean':<10} {r['fused_ms_per_frame']:>8.3f} "
            f"{r['reference_ms_per_frame']:>8.3f} {r['bilinear_ms_per_frame']:>8.3f} "
            f"{r['ratio_fused_over_bilinear']:>7.3f} {r['ratio_reference_over_bilinear']:>7.3f}"
            f"  ({r['channels']}x{r['height']}x{r['width']})"
        )
    for r in runs[:1]:
        for name, m in r["motions"].items():
            for method in ("ours", "bilinear"):
                s = m[method]
                print(
                    f"stats {r['grid']} {name:<10} {method:<9} mean {s['mean']:>8.4f} std {s['std']:>7.4f} "
                    f"KS D {s['ks_d']:>7.4f} p {s['ks_p']:>7.4f} Moran I {s['morans_i']:>8.4f}"
                )
    if share:
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(share["annotator_seconds"].items())[:6])
        print(f"run {share['run_json']}: warped_noise share {share['warped_noise_share']:.1%} ({top} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "runs": runs, "run": share}, indent=1))


if __name__ == "__main__":
    main()
