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


def _torchrun_ranks(source: Path, out: Path) -> list[dict]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(source), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.skipif(not HAVE_TORCHRUN or not dist.is_gloo_available(), reason="torchrun / gloo not available")
def test_torchrun_two_ranks_partition_the_epoch(smoke_run: Path, tmp_path: Path) -> None:
    ranks = _torchrun_ranks(smoke_run, tmp_path / "ranks.json")
    assert [r["rank"] for r in ranks] == [0, 1]
    curated = curated_clip_ids(smoke_run)
    per = -(-len(curated) // 2)
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == -(-per // 3)  # batches of 3, no drop
    ids = [[c for batch in r["batches"] for c in batch] for r in ranks]
    assert [r["padded"] for r in ranks] == [0, 2 * per - len(curated)]  # an odd count: rank 1 repeats one clip
    assert not set(ids[0]) & set(ids[1]) and len(ids[0]) == len(set(ids[0])) == per  # padding: its own clips
    assert set(ids[0]) | set(ids[1]) == curated


@pytest.mark.skipif(not HAVE_TORCHRUN or not dist.is_gloo_available(), reason="torchrun / gloo not available")
def test_torchrun_two_ranks_on_a_bucketed_run(bucketed_run: Path, tmp_path: Path) -> None:
    """Buckets of unequal sizes: both ranks still run the same number of steps (the collective per batch would hang
    otherwise), step by step on the same batch shape, disjoint but for the per-bucket padding."""
    import duckdb

    ranks = _torchrun_ranks(bucketed_run, tmp_path / "ranks.json")
    bucket_of = dict(
        duckdb.sql(f"SELECT clip_id, bucket FROM read_parquet('{bucketed_run}/clips/*.parquet')").fetchall()
    )
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) > 0
    assert ranks[0]["shapes"] == ranks[1]["shapes"] and len({tuple(s) for s in ranks[0]["shapes"]}) >= 2
    for r in ranks:
        for batch in r["batches"]:
            assert len({bucket_of[c] for c in batch}) == 1
    ids = [[c for batch in r["batches"] for c in batch] for r in ranks]
    assert set(ids[0]) | set(ids[1]) == set(bucket_of)
    assert len(ids[0]) + len(ids[1]) == len(bucket_of) + sum(r["padded"] for r in ranks)
    assert len(set(ids[0]) & set(ids[1])) <= sum(r["padded"] for r in ranks)
