"""torchrun worker for tests/test_loader_ddp.py: one epoch of the loader on every rank, a collective per batch (as a
DDP step would do: unequal batch counts would hang here), then the clip ids of all ranks to a JSON file.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_loader_worker.py RUN_DIR OUT.json
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import DataConfig, make_loader  # noqa: E402


def main(source: str, out: str) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # A short timeout turns a hang (ranks with different batch counts) into a failure.
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    cfg = DataConfig(source=source, batch_size=3, shuffle_buffer=8, drop_last=False, num_workers=1)
    batches: list[list[str]] = []
    shapes: list[list[int]] = []
    with make_loader(cfg, rank=rank, world_size=world) as loader:
        for batch in loader:
            step = torch.tensor([float(batch["latents"].shape[0])])
            dist.all_reduce(step)  # stands in for DDP's gradient all-reduce
            batches.append(batch["clip_id"])
            shapes.append(list(batch["latents"].shape[2:]))  # (T, h, w): a bucketed run changes it per step
        padded = loader.stats.padded_samples
    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "batches": batches, "shapes": shapes, "padded": padded})
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
