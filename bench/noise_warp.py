"""Benchmark: our distribution-preserving noise warp vs a bilinear grid_sample warp of the same noise.

Same noise, same flows (translation, zoom in/out and rotation fields at --size), on CPU: per-frame time of
`warp_step` vs `bilinear_warp` (warm-up, then the median over repeats, the two methods interleaved so machine load
hits both alike), the time ratio ours/bilinear, and both outputs' statistics after --frames frames (mean, std,
KS D and p against N(0,1), Moran's I). Bilinear warping is the usual naive choice; its variance collapses.

    python bench/noise_warp.py [--size 256] [--channels 4] [--frames 16] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators.noise_warp import bilinear_warp, ks_normal, morans_i, warp_step  # noqa: E402


def motion_fields(size: int) -> dict[str, torch.Tensor]:
    """Forward flows (2, size, size) in pixels: sub-pixel pan, zoom in/out about the centre, 2-degree rotation."""
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    dx, dy = xs - (size - 1) / 2, ys - (size - 1) / 2
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
    size = flow.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn((channels, size, size), generator=gen)
    ours, density, bil = start, torch.ones(size, size), start
    ours_t: list[float] = []
    bil_t: list[float] = []

    def timed(fn: Callable[[], torch.Tensor | tuple[torch.Tensor, torch.Tensor]], into: list[float]) -> None:
        t0 = time.perf_counter()
        fn()
        into.append(time.perf_counter() - t0)

    # The trajectory (frames steps) gives the statistics; timing repeats warp the final state further.
    for _ in range(frames):
        ours, density = warp_step(ours, density, flow, gen)
        bil = bilinear_warp(bil, flow)
    result: dict = {"ours": stats(ours), "bilinear": stats(bil)}
    result["density_range"] = [float(density.min()), float(density.max())]
    state = (ours, density)
    for _ in range(3):  # warm-up
        warp_step(*state, flow, gen)
        bilinear_warp(bil, flow)
    for _ in range(repeats):  # interleaved, so a load spike from other processes hits both methods alike
        timed(lambda: warp_step(*state, flow, gen), ours_t)
        timed(lambda: bilinear_warp(bil, flow), bil_t)
    result["ours_ms"] = round(statistics.median(ours_t) * 1e3, 3)
    result["bilinear_ms"] = round(statistics.median(bil_t) * 1e3, 3)
    result["ratio_ours_over_bilinear"] = round(result["ours_ms"] / result["bilinear_ms"], 3)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--frames", type=int, default=16, help="warp steps before the statistics are taken")
    p.add_argument("--repeats", type=int, default=60, help="timed steps per method and motion")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    motions = {
        name: run_motion(flow, args.channels, args.frames, args.repeats, args.seed)
        for name, flow in motion_fields(args.size).items()
    }
    ours_ms = statistics.mean(m["ours_ms"] for m in motions.values())
    bil_ms = statistics.mean(m["bilinear_ms"] for m in motions.values())
    result = {
        "size": args.size,
        "channels": args.channels,
        "frames": args.frames,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ours_ms_per_frame": round(ours_ms, 3),
        "bilinear_ms_per_frame": round(bil_ms, 3),
        "ratio_ours_over_bilinear": round(ours_ms / bil_ms, 3),
        "motions": motions,
    }
    header = f"{'motion':<10} {'method':<9} {'ms':>7} {'mean':>8} {'std':>7} {'KS D':>7} {'KS p':>7} {'Moran I':>8}"
    print(header)
    for name, m in motions.items():
        for method in ("ours", "bilinear"):
            s = m[method]
            print(
                f"{name:<10} {method:<9} {m[method + '_ms']:>7.3f} {s['mean']:>8.4f} {s['std']:>7.4f} "
                f"{s['ks_d']:>7.4f} {s['ks_p']:>7.4f} {s['morans_i']:>8.4f}"
            )
    print(
        f"mean ms/frame: ours {ours_ms:.3f}, bilinear {bil_ms:.3f}, ratio ours/bilinear {ours_ms / bil_ms:.3f} "
        f"({args.size}x{args.size}x{args.channels}, {torch.get_num_threads()} threads)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
