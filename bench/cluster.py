"""Benchmark: clips/s of the whole pipeline on a real Ray cluster with 1, then 2 worker nodes.

Starts a head that only coordinates (0 CPUs) plus K worker nodes of 1 CPU each, all on this machine's loopback
(`tests.cluster.LocalCluster`), runs `python -m pipelines.run --stage=all --ray-address ...` over the same tiny
generated corpus, and reports clips/s of the scenes+clips steps for K = 1 and K = 2 and their ratio (both runs
in the same invocation: these machines are noisy). On a 2-core machine the ideal ratio is 2.0 minus what the
driver, the head and Ray's own processes take from the two cores.

    python bench/cluster.py [--videos 60] [--config pipelines/configs/smoke.toml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.samples.tiny import generate_tiny_corpus  # noqa: E402
from tests.cluster import LocalCluster  # noqa: E402


def run_on(workers: int, videos: list[Path], config: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(num_workers=workers, head_cpus=0) as cluster:
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("".join(f"{v}\n" for v in videos))
        cmd = [sys.executable, "-m", "pipelines.run", "--config", config, "--ray-address", cluster.address]
        cmd += ["--input", str(listing), "--output", f"{tmp}/run"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pipeline failed on {workers} workers:\n{proc.stderr[-3000:]}")
        run = json.loads(Path(f"{tmp}/run/_run.json").read_text())
        wall = run["wall_seconds"]["scenes+clips"]
        return {
            "worker_nodes": workers,
            "cpus": run["ray"]["cpus"],
            "clips": run["counts"]["clips"],
            "scenes_clips_wall_s": round(wall, 1),
            "clips_per_s": round(run["counts"]["clips"] / wall, 3),
            "rows_per_node": run["throughput"]["clips"]["rows_per_node"],
            "busy_s": {s: f["busy_s"] for s, f in run["throughput"].items() if s != "ingest"},
            "utilisation": {s: f["utilisation"] for s, f in run["throughput"].items() if s != "ingest"},
            "total_s": round(time.perf_counter() - started, 1),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--seconds", type=float, default=16.0, help="length of each generated video")
    p.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "smoke.toml"))
    p.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "tiny"))
    args = p.parse_args()
    # Videos long enough that each task does about a second of decoding and annotation: with less, Ray's
    # per-task overhead on the driver and the head (which share the same 2 cores) is what gets measured.
    videos = generate_tiny_corpus(args.cache, args.videos, seconds=args.seconds, size=(320, 240))
    one, two = run_on(1, videos, args.config), run_on(2, videos, args.config)
    ratio = round(two["clips_per_s"] / one["clips_per_s"], 3)
    print(json.dumps({"1_worker": one, "2_workers": two, "clips_per_s_ratio_2_over_1": ratio}, indent=1))


if __name__ == "__main__":
    main()
