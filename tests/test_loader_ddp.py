"""The loader under torchrun with 2 processes (gloo, CPU): equal batch counts, disjoint ranks, the whole epoch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from curation.shards import curated_clip_ids

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_loader_worker.py")


HAVE_TORCHRUN = importlib.util.find_spec("torch.distributed.run") is not None and dist.is_available()


@pytest.mark.skipif(not HAVE_TORCHRUN or not dist.is_gloo_available(), reason="torchrun / gloo not available")
def test_torchrun_two_ranks_partition_the_epoch(smoke_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ranks.json"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(smoke_run), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 4  # 20 clips: 10 per rank in batches of 3
    ids = [[c for batch in r["batches"] for c in batch] for r in ranks]
    assert [r["padded"] for r in ranks] == [0, 0]  # 20 splits evenly: no padding, so strictly disjoint
    assert not set(ids[0]) & set(ids[1]) and len(ids[0]) == len(set(ids[0])) == 10
    assert set(ids[0]) | set(ids[1]) == curated_clip_ids(smoke_run)
