"""Train the video DiT on curated shards.

    python -m training.train --shards RUN_DIR|SNAPSHOT_DIR --out OUT_DIR [--config FILE] [--set k=v ...] [--resume]
        [--stage adapt|distill|adversarial|long] [--init PREVIOUS_OUT]
    torchrun --nproc_per_node=N -m training.train ...      # data parallel: gloo on CPU, NCCL on GPU

OUT_DIR gets `config.json` (the resolved config), `lineage.json` (which data: the snapshot id, or the run id and
manifest digest, and the clip count), `metrics.jsonl` (one JSON object per optimizer step: `step`, `loss` and every
loss term, learning rate, gradient norm, seconds waiting for data and per step) and `checkpoints/step_NNNNNNN.pt`
(model, EMA, optimizer, schedule, step, loader state and config, written atomically; `--resume` continues from the
newest: same batches, same random draws, so the losses match an uninterrupted run).

AAPT (`--stage`, see `training.aapt`): `adapt` starts from scratch or from a bidirectional checkpoint (`--init`; the
recycled channels start at zero), `distill` from adapt, `adversarial` from distill (the discriminator from the
adapt weights the distill checkpoint carries as its teacher), `long` from adversarial. Each stage is resumable with
`--resume` like any run; `lineage.json` and every checkpoint record the stage and the checkpoint it started from.

Randomness is stateless per step: every draw of the objective comes from a generator seeded by (seed, step, rank),
so nothing but the loader's cursor has to be saved to resume exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training.aapt import STAGES
from training.buckets import fit_loader, latent_shapes
from training.config import ConfigError, TrainConfig, load_train_config
from training.latent import fit_to_data, space_record
from training.model import build_model
from training.optim import EMA, broadcast_parameters, lr_factor
from training.trainers import StepContext, build_trainer, ema_weights_into

__all__ = ["EMA", "ema_weights_into", "lr_factor", "main", "train"]  # re-exported for callers of this module

logger = logging.getLogger("training")

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


class UsageError(ValueError):
    """A bad command line or output directory: exit status 2 before any work."""


# -- data source and lineage --------------------------------------------------------------------------------------


def resolve_source(path: str | Path) -> Path:
    """A run directory, its `shards/` folder, or a snapshot directory, as the directory the loader reads."""
    p = Path(path)
    if p.name == "shards" and (p / "manifest.json").exists():
        p = p.parent
    if (p / "snapshot.json").exists() or (p / "shards" / "manifest.json").exists():
        return p
    raise UsageError(f"--shards {path}: neither a run directory (shards/manifest.json) nor a snapshot (snapshot.json)")


def lineage(source: Path) -> dict[str, Any]:
    """What data a training run used, precisely enough to find it again."""
    from curation.snapshot import file_sha256, load_snapshot

    if (source / "snapshot.json").exists():
        snap = load_snapshot(source)
        return {
            "kind": "snapshot",
            "path": str(source.resolve()),
            "snapshot_id": snap.snapshot_id,
            "clips": snap.num_clips,
            "runs": [r["run_id"] for r in snap.record["runs"]],
            "params": snap.record["params"],
        }
    run = json.loads((source / "_run.json").read_text()) if (source / "_run.json").exists() else {}
    manifest = source / "shards" / "manifest.json"
    curation = json.loads(manifest.read_text()).get("curation", {})
    return {
        "kind": "run",
        "path": str(source.resolve()),
        "run_id": f"{run.get('config_hash')}-{run.get('inputs_hash')}",
        "manifest_sha256": file_sha256(manifest),
        "clips": curation.get("clips_after"),
    }


# -- distributed --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) → a process group; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name} but CUDA is not available")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The objective's random draws for one step: a function of (seed, step, rank) only."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 4099 + rank)
    return gen


# -- checkpoints --------------------------------------------------------------------------------------------------


def checkpoint_path(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step_{step:07d}.pt"


def list_checkpoints(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step_*.pt"))


def save_checkpoint(out: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Written to a temporary name, then renamed: a kill never leaves a half checkpoint as the newest."""
    path = checkpoint_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, do not start from scratch silently
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(f"{line}\n" for line in keep))


# -- the loop -----------------------------------------------------------------------------------------------------


def prepare_out_dir(out: Path, resume: bool, cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (None = fresh start). A fresh start refuses a directory that already holds
    checkpoints; a resume refuses another config (steps may grow)."""
    found = list_checkpoints(out)
    if not resume:
        if found:
            raise UsageError(f"{out} already has checkpoints: pass --resume to continue, or use a new --out")
        return None
    if not found:
        logger.warning("--resume: no checkpoint in %s yet; starting from step 0", out)
        return None
    saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else None
    if saved is not None:
        as_json = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=str))  # tuples -> lists, as saved
        now = {k: v for k, v in as_json.items() if k != "steps"}
        before = {k: v for k, v in saved.items() if k != "steps"}
        if now != before:
            changed = sorted(k for k in now if now[k] != before.get(k))
            raise UsageError(f"--resume with a different config ({', '.join(changed)} changed); use a new --out")
    return found[-1]


def resolve_init(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """`--init`: a training output directory (its newest checkpoint) or a checkpoint file, loaded."""
    p = Path(path)
    found = list_checkpoints(p) if p.is_dir() else [p] if p.is_file() else []
    if not found:
        raise UsageError(f"--init {path}: no checkpoint there (expected an output directory of a previous stage)")
    return found[-1], load_checkpoint(found[-1])


def train(
    cfg: TrainConfig, shards: str | Path, out: str | Path, resume: bool = False, init: str | Path | None = None
) -> dict[str, Any]:
    """Run the training loop of `cfg.stage`; returns a summary (steps, final terms, seconds, data-wait share).

    `init`: the previous stage's output (or a checkpoint); ignored when resuming from a checkpoint in `out`."""
    out = Path(out)
    source = resolve_source(shards)
    # Pixel or latent space, the VAE's channels and the text encoder come from the data; a resume must find the
    # VAE and text encoder it was started with.
    started = json.loads((out / "config.json").read_text()) if resume and (out / "config.json").exists() else None
    cfg, space = fit_to_data(cfg, source, started)
    on_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    world = init_distributed("cuda" if on_gpu else "cpu")
    device = resolve_device(cfg.device, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    start_from = prepare_out_dir(out, resume, cfg)
    init_path, init_state = resolve_init(init) if init is not None and start_from is None else (None, None)
    out.mkdir(parents=True, exist_ok=True)

    data_cfg = dataclasses.replace(cfg.data, source=str(source), seed=cfg.data.seed or cfg.seed)
    torch.manual_seed(cfg.seed)
    model, text_encoder = build_model(cfg.model)
    model, text_encoder = model.to(device), text_encoder.to(device)
    # Every bucket's shape is checked against the patch here, before any step.
    loader, _ = fit_loader(data_cfg, model, world.rank, world.world, device)
    shapes = latent_shapes(loader)
    if world.main:
        logger.info(
            "stage %s; data: %s (%s space%s), %d samples per rank per epoch in %d batches, latents (C, T, h, w) by "
            "bucket %s, noise: %s",
            cfg.stage,
            source,
            space.kind,
            f", VAE {space.vae['cls']} {space.vae_hash}" if space.vae else "",
            loader.num_samples,
            loader.num_batches,
            shapes,
            loader.noise_source,
        )

    ctx = StepContext(cfg, device, world.world)
    bank = camera_bank(cfg, source) if cfg.stage == "long" else None
    trainer = build_trainer(model, text_encoder, ctx, init_state, bank, resuming=start_from is not None)
    if world.world > 1:
        broadcast_parameters(trainer.modules_to_sync())
    step = 0
    if start_from is not None:
        state = load_checkpoint(start_from)
        trainer.load_state_dict(state)
        loader.load_state_dict(state["loader"])
        step = state["step"]
        init_record = state.get("init")
        if world.main:
            logger.info("resumed from %s at step %d", start_from, step)
    else:
        init_record = (
            {"path": str(init_path.resolve()), "step": init_state.get("step"), "stage": init_state.get("stage")}
            if init_state is not None
            else None
        )
    first_step = step

    metrics_path = out / METRICS
    data_lineage = lineage(source) if world.main else None  # hashes the manifest: once, not per checkpoint
    if world.main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str))
        (out / "lineage.json").write_text(json.dumps({**data_lineage, "init": init_record}, indent=2, sort_keys=True))
        _truncate_metrics(metrics_path, step)
    batches = loader.batches()
    started, wait_total, step_total, last = time.perf_counter(), 0.0, 0.0, {}
    try:
        with metrics_path.open("a") if world.main else contextlib.nullcontext() as metrics:
            while step < cfg.steps:
                t0 = time.perf_counter()
                batch = next(batches)
                t1 = time.perf_counter()
                terms = trainer.train_step(batch, step_generator(cfg.seed, step, world.rank, device), step)
                step += 1
                t2 = time.perf_counter()
                terms = _mean_across_ranks(terms, world)
                wait_total, step_total = wait_total + (t1 - t0), step_total + (t2 - t0)
                last = {
                    "step": step,
                    **terms,
                    "data_wait_s": round(t1 - t0, 6),
                    "step_s": round(t2 - t0, 6),
                    "epoch": loader.epoch,
                    "bucket": batch["bucket"],
                }
                if metrics is not None:
                    metrics.write(json.dumps(last) + "\n")
                    metrics.flush()
                if world.main and (step % cfg.log_every == 0 or step == cfg.steps):
                    rate = step_total / max(1, step - first_step)
                    logger.info(
                        "step %d/%d  loss %.4f  lr %.2e  %.2f s/step  data wait %.0f%%  eta %.0f s",
                        step,
                        cfg.steps,
                        terms["loss"],
                        last["lr"],
                        rate,
                        100 * wait_total / max(step_total, 1e-9),
                        rate * (cfg.steps - step),
                    )
                if world.main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                    state = {
                        "step": step,
                        "stage": cfg.stage,
                        "init": init_record,
                        **trainer.state_dict(),
                        "loader": loader.state_dict(),
                        "latent_shape": next(iter(shapes.values())),  # the sampler's default: most clips
                        "latent_shapes": shapes,
                        "space": space_record(space),
                        "config": cfg.to_dict(),
                        "lineage": data_lineage,
                    }
                    save_checkpoint(out, step, state, cfg.keep_checkpoints)
    finally:
        loader.close()
    summary = {
        "stage": cfg.stage,
        "steps": step,
        "final": last,
        "seconds": round(time.perf_counter() - started, 3),
        "data_wait_share": round(wait_total / max(step_total, 1e-9), 4),
        "loader": loader.stats.as_dict(),
    }
    if world.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def camera_bank(cfg: TrainConfig, source: Path) -> Any | None:
    """The corpus trajectories that drive the camera of a long rollout's extended parts (None: no camera data)."""
    if not (cfg.aapt.camera_bank and cfg.aapt.extensions and (cfg.model.camera or cfg.model.camera_rays)):
        return None
    from training.camera_bank import CameraBank

    try:
        return CameraBank.from_source(source, space=cfg.data.space)
    except ValueError as e:  # no clip with camera data: say so, and train with the null camera beyond the clips
        logger.warning("%s: extended parts of long rollouts get the null camera", e)
        return None


def _mean_across_ranks(terms: dict[str, float], world: Dist) -> dict[str, float]:
    if world.world == 1:
        return terms
    keys = sorted(terms)
    values = torch.tensor([float(terms[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return {k: float(v) / world.world for k, v in zip(keys, values.tolist(), strict=True)}


def iter_metrics(out: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(out) / METRICS
    for line in path.read_text().splitlines():
        if line:
            yield json.loads(line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="a run directory (or its shards/ folder) or a snapshot directory")
    p.add_argument("--out", required=True, help="output directory: checkpoints, metrics.jsonl, lineage.json")
    p.add_argument("--config", help="TOML preset (default: training/configs/default.toml; debug.toml for CPU)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument(
        "--stage",
        choices=STAGES,
        help="AAPT stage: adapt (teacher forcing), distill (consistency), adversarial (student forcing), long; "
        "layers training/configs/stages/STAGE.toml over --config (default: bidirectional diffusion training)",
    )
    p.add_argument("--init", help="output directory (or checkpoint) of the previous stage to start from")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_train_config(args.config, args.overrides, stage=args.stage)
        summary = train(cfg, args.shards, args.out, resume=args.resume, init=args.init)
    except (ConfigError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    final = summary["final"]
    print(
        f"trained {summary['steps']} steps in {summary['seconds']:.1f} s; loss {final.get('loss', float('nan')):.4f}; "
        f"waiting for data {100 * summary['data_wait_share']:.1f}% of step time; out: {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
