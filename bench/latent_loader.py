"""Benchmark: the training loader reading VAE latents against reading the raw frames of the same clips, in
samples/s, plus the data-wait share of a debug training run in latent space.

Both read the same curated rows of one run (made with `latents.model_path`) through `make_loader` with the same
batch size, workers and shuffle:
- latent: `data.space=latent`: the `latents` column (C, T', h, w) float16, the latent-grid warped noise, camera
          tokens aligned to latent steps, event maps, padded text embeddings;
- pixel:  `data.space=pixel`: the `frames` column (T, H, W, 3) uint8 area-pooled to the noise grid (what training
          without a VAE reads), camera tokens, event maps, the same text embeddings.
Each pass times both over --epochs epochs, their order alternating between passes so machine load hits both alike;
the median pass counts. Goal: latent/pixel >= 1. No assertions.

    python bench/latent_loader.py RUN_DIR [--passes 5] [--epochs 3] [--batch-size 2] [--workers 2] [--steps 60]
        [--json OUT]
    python bench/latent_loader.py RUN_DIR --make [--set frames.width=256 ...]   # build RUN_DIR first

`--make` runs the pipeline on the generated sample corpus into RUN_DIR (smoke preset, 17 frames) with the tiny random
Wan VAE (z_dim 4) and UMT5 of the tests (`tests/test_vae.py`, `tests/test_text_encoder.py`), saved next to it: the
byte sizes and code paths are those of a real VAE of the same factors; only the encoding is cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.shards import read_manifest  # noqa: E402
from training.data import DataConfig, make_loader  # noqa: E402


def make_run(run_dir: Path, sets: list[str]) -> None:
    """The sample corpus through the pipeline with the tests' tiny Wan VAE and UMT5 (weights beside RUN_DIR)."""
    import ray
    import torch

    from pipelines.run import main as run_pipeline
    from pipelines.samples import generate_corpus
    from tests.test_text_encoder import save_tokenizer, tiny_encoder
    from tests.test_vae import tiny_wan

    models = run_dir.parent / f"{run_dir.name}_models"
    torch.manual_seed(0)
    tiny_wan().save_pretrained(models / "wan")
    torch.manual_seed(0)
    tiny_encoder("umt5").save_pretrained(models / "t5")
    save_tokenizer(models / "t5")
    corpus = models / "corpus"
    if not corpus.exists():
        generate_corpus(corpus)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        base = ["frames.num_frames=17", "runtime.model_actors=1"]
        base += [f"latents.model_path={models / 'wan'}", f"text_encoder.model_path={models / 't5'}"]
        args = [a for s in [*base, *sets] for a in ("--set", s)]
        smoke = str(ROOT / "pipelines" / "configs" / "smoke.toml")
        code = run_pipeline(["--config", smoke, "--stage=all", "--input", str(corpus), "--output", str(run_dir), *args])
    finally:
        ray.shutdown()
    if code != 0:
        raise SystemExit(f"the pipeline failed ({code})")


def epoch_rate(run: Path, space: str, epochs: int, batch_size: int, workers: int) -> tuple[float, int]:
    """(samples/s over `epochs` epochs, bytes read per sample) of the loader in `space`."""
    cfg = DataConfig(source=str(run), space=space, batch_size=batch_size, num_workers=workers, shuffle_buffer=16)
    with make_loader(cfg) as loader:
        samples = 0
        t0 = time.perf_counter()
        for _ in range(epochs):
            for batch in loader:
                samples += len(batch["clip_id"])
        seconds = time.perf_counter() - t0
        return samples / seconds, loader.stats.bytes_read // max(1, loader.stats.rows_decoded)


def training_wait(run: Path, steps: int) -> dict[str, Any]:
    """The data-wait share of a debug training run in latent space (`training/configs/debug.toml`)."""
    from training.config import load_train_config
    from training.train import train

    cfg = load_train_config(
        ROOT / "training" / "configs" / "debug.toml", [f"steps={steps}", f"checkpoint_every={steps}"]
    )
    with tempfile.TemporaryDirectory() as out:
        summary = train(cfg, run, Path(out) / "train")
    steps_s = summary["seconds"] / max(1, summary["steps"])
    return {"steps": summary["steps"], "data_wait_share": summary["data_wait_share"], "s_per_step": round(steps_s, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run directory with latents (see --make)")
    p.add_argument("--make", action="store_true", help="build RUN_DIR first with the tiny test VAE and encoder")
    p.add_argument("--set", action="append", default=[], dest="sets", help="pipeline override for --make")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="debug training steps for the data-wait share (0 = skip)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.make and not (args.run / "shards" / "manifest.json").exists():
        make_run(args.run, args.sets)
    manifest = read_manifest(args.run)
    if not manifest.get("latents"):
        raise SystemExit(f"{args.run} stores no latents: make it with latents.model_path (or --make)")

    rates: dict[str, list[float]] = {"latent": [], "pixel": []}
    per_sample: dict[str, int] = {}
    for k in range(args.passes):
        for space in ("latent", "pixel") if k % 2 == 0 else ("pixel", "latent"):
            rate, nbytes = epoch_rate(args.run, space, args.epochs, args.batch_size, args.workers)
            rates[space].append(rate)
            per_sample[space] = nbytes
    result: dict[str, Any] = {
        "run": str(args.run),
        "clips": manifest.get("curation", {}).get("clips_after"),
        "frames": manifest["tensors"]["frames"]["shape"],
        "latents": manifest["tensors"]["latents"]["shape"],
        "samples_per_s": {s: round(statistics.median(r), 1) for s, r in rates.items()},
        "bytes_read_per_sample": per_sample,
    }
    result["latent_over_pixel"] = round(result["samples_per_s"]["latent"] / result["samples_per_s"]["pixel"], 2)
    if args.steps:
        result["training"] = training_wait(args.run, args.steps)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
