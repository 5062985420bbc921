"""Scale-out: the pipeline as a driver joining a real multi-node Ray cluster (`--ray-address`), and a dead address."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import LocalCluster
from tests.conftest import SMOKE
from tests.test_resume import clip_ids

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(num_workers=1, cpus_per_node=1) as c:
        yield c


def run_driver(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """The pipeline in its own process: a Ray driver separate from the test session's local Ray."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", "--config", SMOKE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_on_a_two_node_cluster_gives_the_local_clip_set(cluster, corpus_dir, smoke_run, tmp_path):
    run_dir = tmp_path / "on_cluster"
    args = ("--stage=all", "--ray-address", cluster.address, "--input", str(corpus_dir), "--output", str(run_dir))
    before = cluster.workers_started(1)
    proc = run_driver(*args, env=cluster.env)
    assert proc.returncode == 0, proc.stderr[-4000:] + "\n" + cluster.log_tail()
    assert clip_ids(run_dir) == clip_ids(smoke_run)
    assert cluster.workers_started(1) > before, "the worker node ran nothing: the run did not scale out"
    ray_info = json.loads((run_dir / "_run.json").read_text())["ray"]
    assert ray_info == {"address": cluster.address, "nodes": 2, "cpus": 2.0}


def test_unreachable_ray_address_fails_fast_with_a_usage_error(tmp_path, corpus_dir):
    run_dir = tmp_path / "never"
    t0 = time.monotonic()
    proc = run_driver("--ray-address", "127.0.0.2:1", "--input", str(corpus_dir), "--output", str(run_dir), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - t0 < 20
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ray-address 127.0.0.2:1"), proc.stderr
    assert not run_dir.exists()  # stopped before any work


@pytest.mark.parametrize(
    ("address", "node_ip"),
    [
        ("127.0.0.2:6379", "127.0.0.2"),
        ("localhost:6379", "127.0.0.1"),
        ("ray://127.0.0.3:10001", "127.0.0.3"),
        ("10.1.2.3:6379", None),
        ("head.example:6379", None),
        ("auto", None),
    ],
)
def test_driver_node_ip_follows_a_loopback_address(address, node_ip):
    from pipelines.runtime import node_ip_for

    assert node_ip_for(address) == node_ip


def test_address_probe_skips_what_ray_resolves_itself():
    from pipelines.runtime import ClusterUnreachable, check_ray_address

    check_ray_address("auto")  # no host:port to probe: left to ray.init
    with pytest.raises(ClusterUnreachable, match="127.0.0.2:1"):
        check_ray_address("ray://127.0.0.2:1", timeout_s=1)
