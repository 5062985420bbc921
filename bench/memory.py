"""Benchmark: peak memory of a whole run as the corpus grows (N videos, then 4N).

Runs `python -m pipelines.run --stage=all` on N and 4N distinct sample videos (the corpus generated with
different seeds) and samples the proportional set size (PSS: shared pages split between the processes that map
them) of the driver and every Ray process it started, every 0.2 s. Flat memory means the 4N peak stays close to
the N peak.

    python bench/memory.py [--seeds 1 4] [--config pipelines/configs/default.toml]
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

from pipelines.samples import generate_corpus  # noqa: E402


def corpus(cache: Path, seeds: int) -> list[Path]:
    videos: list[Path] = []
    for seed in range(seeds):
        videos += generate_corpus(cache / f"seed{seed}", seed=seed)
    return videos


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


def run_and_watch(videos: list[Path], config: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pipelines.run",
            "--stage=all",
            "--output",
            f"{tmp}/run",
            "--config",
            config,
            "--input",
            *map(str, videos),
        ]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0.0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_pss_mb(proc.pid))
                time.sleep(0.2)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        proc.wait()
        done.set()
        thread.join()
        if proc.returncode != 0:
            raise SystemExit(f"pipeline failed with status {proc.returncode}")
        counts = json.loads(Path(f"{tmp}/run/_run.json").read_text())["counts"]
        return {
            "videos": len(videos),
            "clips": counts["clips"],
            "rejected": counts["rejected"],
            "peak_pss_mb": round(peak, 1),
            "seconds": round(time.perf_counter() - started, 1),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs=2, default=(1, 4), help="corpus copies for N and 4N")
    p.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "default.toml"))
    p.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "memory"))
    args = p.parse_args()
    small, large = (run_and_watch(corpus(Path(args.cache), n), args.config) for n in args.seeds)
    print(
        json.dumps(
            {"N": small, "4N": large, "peak_ratio_4N_over_N": round(large["peak_pss_mb"] / small["peak_pss_mb"], 3)},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
