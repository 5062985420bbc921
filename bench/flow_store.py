"""Benchmark: storing flow at a lower resolution (`flow.store_scale`): bytes saved, and what it does to warped noise
computed from the stored flow instead of the full one.

For every curated clip of a run (stored at store_scale 1), the warped noise is recomputed from the stored flow
as it is (the reference), and from the flow downscaled by 2, 4 and 8 as `flow.store_scale` would keep it, with the
run's own noise settings (manifest `noise`: channels, grid, warp scale, seed). Reported per scale: flow bytes per
clip, the correlation of each noise frame after the first with the reference's (1 = the same noise; frame 0 is
the seed frame, identical by construction), the share of noise values within 0.1 of the reference, and the mean
and std of the noise (warped noise must stay N(0, 1)). No assertions.

    python bench/flow_store.py [RUN_DIR=runs/sample] [--clips 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators.flow import downscale_flow  # noqa: E402
from annotators.noise_warp import warped_noise_video  # noqa: E402
from curation.shards import iter_clips, read_manifest  # noqa: E402

SCALES = (2, 4, 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default=str(ROOT / "runs" / "sample"))
    p.add_argument("--clips", type=int, default=20)
    args = p.parse_args()
    manifest = read_manifest(args.run_dir)
    noise = manifest["noise"]
    if manifest.get("flow", {}).get("store_scale", 1) != 1:
        sys.exit(f"{args.run_dir} stores flow at 1/{manifest['flow']['store_scale']}: use a run with store_scale 1")
    settings = {"channels": noise["channels"], "noise_size": tuple(noise["grid"]), "warp_scale": noise["warp_scale"]}
    stats: dict[int, dict[str, list[float]]] = {s: {"corr": [], "close": [], "mean": [], "std": []} for s in SCALES}
    flow_bytes: dict[int, list[int]] = {1: [], **{s: [] for s in SCALES}}
    n = 0
    stored_corr: list[float] = []  # the reference (from float16 flow) against the run's own warped noise
    for clip in iter_clips(args.run_dir, columns=["clip_id", "flow", "noise_seed", "warped_noise"]):
        if n >= args.clips or clip.get("flow") is None:
            continue
        n += 1
        flow = clip["flow"].astype(np.float32)
        seed = int(clip["noise_seed"])
        reference = warped_noise_video(flow, seed=seed, **settings).numpy()
        own = clip["warped_noise"].astype(np.float32)
        stored_corr.append(float(np.corrcoef(reference[1:].ravel(), own[1:].ravel())[0, 1]))
        flow_bytes[1].append(clip["flow"].nbytes)
        for s in SCALES:
            stored = downscale_flow(flow, s).astype(np.float16)
            flow_bytes[s].append(stored.nbytes)
            got = warped_noise_video(stored.astype(np.float32), seed=seed, **settings).numpy()
            a, b = reference[1:].reshape(reference.shape[0] - 1, -1), got[1:].reshape(got.shape[0] - 1, -1)
            stats[s]["corr"].append(float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)])))
            stats[s]["close"].append(float(np.mean(np.abs(a - b) < 0.1)))
            stats[s]["mean"].append(float(got.mean()))
            stats[s]["std"].append(float(got.std()))
    print(f"{args.run_dir}: {n} clips, noise {settings}; flow {manifest['tensors']['flow']['shape']}")
    print(
        f"store_scale 1: {statistics.mean(flow_bytes[1]) / 1e6:.2f} MB flow per clip (reference); its noise against "
        f"the run's own (computed from float32 flow): corr {statistics.mean(stored_corr):.3f}"
    )
    print(f"{'scale':>5s} {'MB/clip':>8s} {'corr':>6s} {'within 0.1':>10s} {'mean':>7s} {'std':>6s}")
    for s in SCALES:
        st = stats[s]
        print(
            f"{s:5d} {statistics.mean(flow_bytes[s]) / 1e6:8.3f} {statistics.mean(st['corr']):6.3f} "
            f"{statistics.mean(st['close']):10.3f} {statistics.mean(st['mean']):7.3f} {statistics.mean(st['std']):6.3f}"
        )


if __name__ == "__main__":
    main()
