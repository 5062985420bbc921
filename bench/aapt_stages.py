"""Benchmark: AAPT's four stages in a row on one run, then the long-rollout drift before and after stage (d).

Trains adapt -> distill -> adversarial -> long (`python -m training.train --stage ...`, each `--init` the previous
output) at the given config, and reports per stage: steps, seconds per step, and the mean of every loss term over
the first and the last tenth of the steps. Then `bench/stream.py --drift` on the adversarial and long checkpoints:
per-frame latent mean/std of rollouts `--factor` x the training length against the real clips. No assertions.

    python bench/aapt_stages.py --shards RUN [--out DIR] [--config training/configs/debug.toml]
        [--steps 400,150,150,150] [--lr-adv 1e-4] [--extensions 3] [--factor 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("adapt", "distill", "adversarial", "long")
TERMS = ("loss", "fm", "cd", "g_loss", "d_loss", "rpgan_d", "r1", "r2", "d_real", "d_fake")


def train_stage(args: argparse.Namespace, stage: str, steps: int, previous: Path | None) -> Path:
    out = args.out / stage
    cmd = [sys.executable, "-m", "training.train", "--shards", str(args.shards), "--out", str(out)]
    cmd += ["--config", str(args.config), "--stage", stage, f"--set=steps={steps}", "--set=log_every=50"]
    cmd += [f"--set=checkpoint_every={max(1, steps // 2)}"]
    if previous is not None:
        cmd += ["--init", str(previous)]
    if stage in ("adversarial", "long"):
        cmd += [f"--set=optim.lr={args.lr_adv}"]
    if stage == "long":
        cmd += [f"--set=aapt.extensions={args.extensions}"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def summarise(out: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    tenth = max(1, len(rows) // 10)
    keys = [k for k in TERMS if k in rows[0]]
    mean = lambda part, k: round(sum(r[k] for r in part) / len(part), 5)  # noqa: E731
    return {
        "steps": len(rows),
        "s_per_step": round(sum(r["step_s"] for r in rows) / len(rows), 4),
        "first_tenth": {k: mean(rows[:tenth], k) for k in keys},
        "last_tenth": {k: mean(rows[-tenth:], k) for k in keys},
        **({"rollout_frames": rows[0]["rollout_frames"]} if "rollout_frames" in rows[0] else {}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, required=True, help="a run (or snapshot) directory")
    p.add_argument("--out", type=Path, default=Path("bench/aapt_out"), help="training outputs (one folder per stage)")
    p.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "debug.toml")
    p.add_argument("--steps", default="400,150,150,150", help="steps of adapt, distill, adversarial, long")
    p.add_argument("--lr-adv", type=float, default=1e-4, help="learning rate of the adversarial stages")
    p.add_argument("--extensions", type=int, default=3, help="long stage: rollout extensions")
    p.add_argument("--factor", type=int, default=4, help="drift: rollouts this many training lengths long")
    p.add_argument("--clips", type=int, default=8, help="drift: real clips to start from")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "aapt_stages.json")
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    if len(steps) != 4:
        p.error("--steps needs four numbers")
    result: dict[str, Any] = {"shards": str(args.shards), "config": str(args.config), "stages": {}}
    previous = None
    for stage, n in zip(STAGES, steps, strict=True):
        previous = train_stage(args, stage, n, previous)
        result["stages"][stage] = summarise(previous)
        print(stage, json.dumps(result["stages"][stage]))
    drift_json = args.out / "drift.json"
    drift = [sys.executable, str(ROOT / "bench" / "stream.py"), "--drift", "--shards", str(args.shards)]
    drift += ["--checkpoint", str(args.out / "adversarial"), "--checkpoint", str(args.out / "long")]
    drift += ["--clips", str(args.clips), "--factor", str(args.factor), "--json", str(drift_json)]
    subprocess.run(drift, cwd=ROOT, check=True)
    result["drift"] = json.loads(drift_json.read_text())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
