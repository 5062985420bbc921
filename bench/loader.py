"""Benchmark: the training loader (training/data/) against a raw pyarrow read and against Ray Data, in samples/s.

All three read the same columns of the same curated shard rows and produce the same tensors per clip (latents
area-pooled to the noise grid in [-1, 1], the first 3 warped-noise channels, camera tokens, event maps, confidence,
text):
- raw:  one thread, `ParquetFile.read_row_group(columns=...)` over the manifest's shards in order, numpy decode;
        no shuffle, no batching, no background work: the straightforward way to read these tensors;
- ours: `make_loader(DataConfig(source=RUN_DIR, batch_size=B))` on CPU (shuffle buffer, decode threads, prefetch);
        `ours0` is the same with num_workers=0 (no threads: decode in the consumer, like raw);
- ray:  `ray.data.read_parquet(files).select_columns(...)` (pushed into the scan; Ray 2.60 deprecates `columns=`),
        the same numpy decode in `map_batches`, `iter_torch_batches`; every epoch re-executes the dataset (file
        listing, task start-up: on a small corpus that fixed cost dominates, so `rayNx` also times an epoch made of
        the files N times).
Each pass times every method once over --epochs epochs, the methods' order rotating between passes so machine
load hits all alike; the median pass counts. Goals: ours/raw >= 0.8, ours/ray >= 1.0. No assertions.

    python bench/loader.py [RUN_DIR=runs/sample] [--passes 5] [--epochs 3] [--batch-size 4] [--workers 2] [--json OUT]
                           [--video-run DIR [--video-run DIR2 ...]]

`--video-run DIR` also times the loader on a run of the same inputs and config with `frames.store=video` (frames
decoded from H.264 in the decode threads): `ours_video`, and the ratio ours_video/ours (goal >= 0.5), plus the
data-wait share of a training run on it. Make it with
`python -m pipelines.run --stage=all --output runs/sample-video --set frames.store=video`. Given more than once
(e.g. rows of another codec setting or an older stored format, of the same inputs), each run is timed in the same
passes as `ours_video:<dir name>`, with its own ratio.

Generate the run first if missing: `python -m pipelines.run --stage=all --output runs/sample`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.shards import curated_clip_ids, read_manifest  # noqa: E402
from training.data import DataConfig, make_loader  # noqa: E402

TENSORS = ("frames", "warped_noise", "camera_tokens", "event_activity")
SCALARS = ("clip_id", "event_confidence", "caption", "camera_text")
COLUMNS = [*SCALARS, *TENSORS, *(f"{t}_{p}" for t in TENSORS for p in ("dtype", "shape"))]


def decode(row: dict[str, Any], latent: tuple[int, int] | int, channels: int = 3) -> dict[str, Any]:
    """One clip's tensors from its raw columns, in numpy. `latent` is the pooled grid (the frames' size must be a
    multiple of it), or the pooling factor itself where the grid follows each bucket's frame size."""

    def tensor(name: str) -> np.ndarray:
        return np.frombuffer(row[name], dtype=np.dtype(row[f"{name}_dtype"])).reshape(tuple(row[f"{name}_shape"]))

    frames = tensor("frames")
    t, h, w, _ = frames.shape
    lh, lw = latent if isinstance(latent, tuple) else (h // latent, w // latent)
    fh, fw = h // lh, w // lw
    # Box sums over rows, then columns (contiguous reductions; a strided mean over both axes is ~8x slower).
    rows = frames.reshape(t, lh, fh, w * 3).sum(axis=2, dtype=np.uint32)
    pooled = rows.reshape(t, lh, lw, fw, 3).sum(axis=3, dtype=np.uint32).astype(np.float32) / np.float32(fh * fw)
    return {
        "latents": (pooled * np.float32(2 / 255) - 1).transpose(3, 0, 1, 2),
        "noise": tensor("warped_noise")[:, :channels].astype(np.float32).transpose(1, 0, 2, 3),
        "camera_tokens": tensor("camera_tokens").astype(np.int64),
        "event_activity": tensor("event_activity").astype(np.float32),
        "event_confidence": np.float32(row["event_confidence"] or 0.0),
        "text": row["caption"] or row["camera_text"] or "",
        "clip_id": row["clip_id"],
    }


def raw_epoch(files: list[Path], curated: set[str], latent: tuple[int, int] | int) -> Iterator[int]:
    for path in files:
        pf = pq.ParquetFile(path, memory_map=True)
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group, columns=COLUMNS, use_threads=False)
            for row in table.to_pylist():
                if row["clip_id"] in curated:
                    decode(row, latent)
                    yield 1


def ours_epoch(loader: Any) -> Iterator[int]:
    return (len(batch["clip_id"]) for batch in loader)


def hide_broken_fsspec_http() -> None:
    """Ray Data's file listing probes fsspec's HTTP filesystem from several threads at once; without aiohttp that
    module fails half-imported and a concurrent import raises ImportError, which Ray does not catch (it expects
    ModuleNotFoundError). Marking the module absent gives the error Ray handles. Runs in the driver and every worker."""
    if importlib.util.find_spec("aiohttp") is None:
        sys.modules.setdefault("fsspec.implementations.http", None)  # type: ignore[arg-type]


def make_ray(
    files: list[Path], curated: set[str], latent: tuple[int, int] | int, batch_size: int
) -> Callable[[], Iterator[int]]:
    hide_broken_fsspec_http()  # the driver lists files too
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.2",
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"worker_process_setup_hook": hide_broken_fsspec_http},
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out = [decode(r, latent) for r in rows if r["clip_id"] in curated]
        if not out:
            return {}
        return {
            k: np.stack([o[k] for o in out]) if k not in ("text", "clip_id") else [o[k] for o in out] for k in out[0]
        }

    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            # Ray's batch arrays are read-only views; nothing writes to them, so no copy (torch warns; muted).
            return {k: torch.as_tensor(v) if v.dtype != object else v.tolist() for k, v in batch.items()}

    collate = Collate()

    ds = ray.data.read_parquet([str(f) for f in files]).select_columns(COLUMNS)
    ds = ds.map_batches(decode_batch, batch_format="numpy")

    def epoch() -> Iterator[int]:
        return (len(b["clip_id"]) for b in ds.iter_torch_batches(batch_size=batch_size, collate_fn=collate))

    return epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default=str(ROOT / "runs" / "sample"))
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="epochs per method per pass")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="the loader's decode threads")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--ray-repeat", type=int, default=4, help="also time Ray on an epoch of the files N times")
    p.add_argument("--train-steps", type=int, default=30, help="CPU training steps for the data-wait share (0 = skip)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument(
        "--video-run",
        action="append",
        default=[],
        help="a frames.store=video run of the same inputs: also time the loader on it (repeatable)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # Ray's read-only batches
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    run = Path(args.run_dir)
    if not (run / "shards" / "manifest.json").exists():
        sys.exit(f"{run} is not a finished run: python -m pipelines.run --stage=all --output {run}")
    manifest = read_manifest(run)
    files = [run / "shards" / s["name"] for s in manifest["shards"]]
    curated = curated_clip_ids(run)
    grid = manifest["noise"]["grid"]  # ints, or ["H/8", "W/8"] where the buckets set the frame size
    latent = tuple(grid) if all(isinstance(g, int) for g in grid) else int(manifest["noise"]["factor"])

    t0 = time.perf_counter()
    loader = make_loader(DataConfig(source=str(run), batch_size=args.batch_size, num_workers=args.workers))
    build_s = time.perf_counter() - t0
    # Same tensors: our first batch against the numpy decode of the same clips.
    batch = next(iter(loader))
    rows = {
        r["clip_id"]: r
        for f in files
        for r in pq.read_table(f, columns=COLUMNS).to_pylist()
        if r["clip_id"] in batch["clip_id"]
    }
    diff = max(
        float(np.abs(batch[k][i].numpy() - decode(rows[c], latent)[k]).max())
        for i, c in enumerate(batch["clip_id"])
        for k in ("latents", "noise", "event_activity")
    )
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "cursor": 0})

    sync = make_loader(DataConfig(source=str(run), batch_size=args.batch_size, num_workers=0))
    methods: dict[str, Callable[[], Iterator[int]]] = {
        "raw": lambda: raw_epoch(files, curated, latent),
        "ours": lambda: ours_epoch(loader),
        "ours0": lambda: ours_epoch(sync),  # num_workers=0: no threads, decode in the consumer
    }
    videos: dict[str, Any] = {}  # method name -> its loader
    for source in args.video_run:
        name = "ours_video" if len(args.video_run) == 1 else f"ours_video:{Path(source).name}"
        videos[name] = make_loader(DataConfig(source=source, batch_size=args.batch_size, num_workers=args.workers))
        methods[name] = lambda v=videos[name]: ours_epoch(v)
    tmp = tempfile.TemporaryDirectory()
    if not args.no_ray:
        methods["ray"] = make_ray(files, curated, latent, args.batch_size)
        if args.ray_repeat > 1:  # the same files N times in one epoch: Ray's per-epoch start-up amortised
            # Distinct names (symlinks): Ray drops some rows when one path is listed twice.
            links = Path(tmp.name)
            copies = []
            for k in range(args.ray_repeat):
                for f in files:
                    (links / f"{k}-{f.name}").symlink_to(f.resolve())
                    copies.append(links / f"{k}-{f.name}")
            methods[f"ray{args.ray_repeat}x"] = make_ray(copies, curated, latent, args.batch_size)
    for fn in methods.values():  # warm-up: file cache, Ray workers, thread pools
        sum(fn())
    rates: dict[str, list[float]] = {m: [] for m in methods}
    firsts: dict[str, list[float]] = {m: [] for m in methods}  # seconds from an epoch's start to its first data
    names = list(methods)
    per_epoch: dict[str, int] = {}
    for i in range(args.passes):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            n, t0 = 0, time.perf_counter()
            for _ in range(args.epochs):
                start = time.perf_counter()
                for k, count in enumerate(methods[name]()):
                    if k == 0:
                        firsts[name].append(time.perf_counter() - start)
                    n += count
            rates[name].append(n / (time.perf_counter() - t0))
            per_epoch[name] = n // args.epochs
    median = {m: statistics.median(r) for m, r in rates.items()}
    first = {m: statistics.median(r) for m, r in firsts.items()}

    ratio0 = median["ours0"] / median["raw"]
    result: dict[str, Any] = {
        "run": str(run),
        "clips": len(curated),
        "frames": manifest["tensors"]["frames"]["shape"],
        "latent": list(latent) if isinstance(latent, tuple) else f"frames / {latent}",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "passes": args.passes,
        "epochs_per_pass": args.epochs,
        "cpus": len(os.sched_getaffinity(0)),
        "loader_build_s": round(build_s, 3),
        "max_abs_diff_ours_vs_numpy": diff,
        "samples_per_s": {m: round(v, 1) for m, v in median.items()},
        "samples_per_s_all": {m: [round(x, 1) for x in r] for m, r in rates.items()},
        "first_data_s": {m: round(v, 4) for m, v in first.items()},
        "samples_per_epoch": per_epoch,
        "ratio_ours_over_raw": round(median["ours"] / median["raw"], 3),
        "ratio_ours0_over_raw": round(ratio0, 3),
        "loader_stats": loader.stats.as_dict(),
    }
    for name in (m for m in median if m.startswith("ray")):
        result[f"ratio_ours_over_{name}"] = round(median["ours"] / median[name], 3)
    # Read + decode time per row in the decode threads (wall time summed over threads, so machine load inflates it
    # alike): where a video run's extra time goes.
    per_row = {
        name: 1e3 * ld.stats.decode_s / max(1, ld.stats.rows_decoded) for name, ld in {"ours": loader, **videos}.items()
    }
    result["decode_ms_per_row"] = {m: round(v, 2) for m, v in per_row.items()}
    for name, video in videos.items():
        result[f"ratio_{name}_over_ours"] = round(median[name] / median["ours"], 3)
        result[f"loader_stats_{name}"] = video.stats.as_dict()
        video.close()
    loader.close()
    sync.close()
    tmp.cleanup()

    print(f"{run}: {len(curated)} clips, frames {result['frames']}, latent {result['latent']}, batch {args.batch_size}")
    print(f"loader build {build_s:.3f} s; max |ours - numpy decode| {diff:.2e}")
    for m, r in rates.items():
        passes = ", ".join(f"{x:.1f}" for x in r)
        print(
            f"{m:<6} {per_epoch[m]:4d}/epoch  median {median[m]:7.1f} samples/s, first data {first[m]:6.3f} s/epoch"
            f"   passes: {passes}"
        )
    print(f"ratio ours/raw {result['ratio_ours_over_raw']:.3f} (goal >= 0.8); single-thread ours0/raw {ratio0:.3f}")
    for name in (m for m in median if m.startswith("ray")):
        print(f"ratio ours/{name} {result[f'ratio_ours_over_{name}']:.3f} (goal >= 1.0)")
    for name in videos:
        print(f"ratio {name}/ours {result[f'ratio_{name}_over_ours']:.3f} (goal >= 0.5)")
    if videos:
        print(
            "read + decode per row in the decode threads: " + ", ".join(f"{m} {v:.1f} ms" for m, v in per_row.items())
        )
    trained = {"train": run} | ({"train_video": Path(args.video_run[0])} if args.video_run else {})
    for key, source in trained.items() if args.train_steps else ():
        result[key] = t = training_wait(source, args.train_steps, args.batch_size)
        print(
            f"CPU training on {source.name} ({t['model']} model, {t['steps']} steps, {t['step_s']:.3f} s/step): "
            f"waiting for data {100 * t['data_wait_share']:.1f}% of step time"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def training_wait(run: Path, steps: int, batch_size: int) -> dict[str, Any]:
    """The share of step time a CPU training run spends waiting for the loader (the debug model on this run)."""
    from training.config import load_train_config
    from training.train import train

    overrides = [f"steps={steps}", f"checkpoint_every={steps}", f"data.batch_size={batch_size}"]
    cfg = load_train_config(ROOT / "training" / "configs" / "debug.toml", overrides)
    with tempfile.TemporaryDirectory() as out:
        summary = train(cfg, run, Path(out) / "train")
    return {
        "model": cfg.model.size,
        "steps": summary["steps"],
        "step_s": summary["seconds"] / max(1, summary["steps"]),
        "data_wait_share": summary["data_wait_share"],
    }


if __name__ == "__main__":
    main()
