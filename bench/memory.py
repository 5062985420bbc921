"""Benchmark: peak memory of a whole run as the corpus grows (N tiny videos, then 10N).

Runs `python -m pipelines.run --stage=all` on N and 10N distinct tiny generated videos (`pipelines.samples.tiny`)
with an explicit object store limit, and samples the proportional set size (PSS: shared pages split between the
processes that map them) of the driver and every Ray process it started, every 0.2 s. Bounded memory means the
10N peak stays close to the N peak.

    python bench/memory.py [--n 30] [--factor 10] [--config pipelines/configs/smoke.toml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.samples.tiny import generate_tiny_corpus  # noqa: E402


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_pss_mb(root: int) -> float:
    """Proportional set size of a process tree: shared pages (Ray's object store) counted once in total."""
    total_kb = 0
    for pid in descendants(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)
    return total_kb / 1e3


def run_and_watch(videos: list[Path], config: str, overrides: list[str] = ()) -> dict[str, float]:
    """Run the pipeline on `videos` in a subprocess; peak PSS of its process tree, and what _run.json says."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "inputs.txt"  # a list file: hundreds of paths do not belong on a command line
        listing.write_text("".join(f"{v}\n" for v in videos))
        sets = [a for o in overrides for a in ("--set", o)]
        cmd = [sys.executable, "-m", "pipelines.run", "--stage=all", "--output", f"{tmp}/run", "--config", config]
        cmd += ["--input", str(listing), *sets]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0.0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_pss_mb(proc.pid))
                time.sleep(0.2)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        _, stderr = proc.communicate()
        done.set()
        thread.join()
        if proc.returncode != 0:
            raise SystemExit(f"pipeline failed with status {proc.returncode}:\n{stderr[-3000:]}")
        run = json.loads(Path(f"{tmp}/run/_run.json").read_text())
        manifest = json.loads(Path(f"{tmp}/run/shards/manifest.json").read_text())
        seconds = time.perf_counter() - started
        files = len(manifest["shards"])
        run_files = [f for f in Path(f"{tmp}/run").rglob("*") if f.is_file()]
        records = sum(1 for f in run_files if "_work" in f.parts)
        return {
            "videos": len(videos),
            "clips": run["counts"]["clips"],
            "rejected": run["counts"]["rejected"],
            "peak_pss_mb": round(peak, 1),
            "spilled_bytes": run.get("spilled_bytes"),
            "seconds": round(seconds, 1),
            "clips_per_s": round(run["counts"]["clips"] / run["wall_seconds"]["scenes+clips"], 2),
            "shard_files": files,
            "shard_rows": manifest["rows"],
            "files_per_1000_clips": round(1000 * files / max(1, manifest["rows"]), 2),
            # everything a finished run leaves (records, shards, tables, report and its samples), per input video
            "run_files": len(run_files),
            "record_files": records,
            "run_files_per_1000_videos": round(1000 * len(run_files) / len(videos), 1),
            "record_files_per_1000_videos": round(1000 * records / len(videos), 1),
            "shard_mb": round(manifest["bytes"] / 2**20, 2),
            "pack_s": round(run["wall_seconds"].get("pack", 0.0), 2),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=30, help="videos in the small corpus")
    p.add_argument("--factor", type=int, default=10, help="the large corpus has factor x n videos")
    p.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "smoke.toml"))
    p.add_argument("--object-store-mb", type=int, default=128, help="the run's object store limit")
    p.add_argument("--target-mb", type=float, default=512.0, help="shards.target_mb (the default preset's)")
    p.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "tiny"))
    args = p.parse_args()
    videos = generate_tiny_corpus(args.cache, args.n * args.factor)
    store = args.object_store_mb
    limits = [f"runtime.object_store_mb={store}", f"runtime.data_object_store_mb={store // 2}"]
    limits.append(f"shards.target_mb={args.target_mb}")
    small = run_and_watch(videos[: args.n], args.config, limits)
    large = run_and_watch(videos, args.config, limits)
    ratio = round(large["peak_pss_mb"] / small["peak_pss_mb"], 3)
    print(json.dumps({"N": small, f"{args.factor}N": large, f"peak_ratio_{args.factor}N_over_N": ratio}, indent=1))


if __name__ == "__main__":
    main()
