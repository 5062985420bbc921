"""Scale-out: the pipeline as a driver joining a real multi-node Ray cluster (`--ray-address`), and a dead address."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import LocalCluster, can_isolate_mounts
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
    assert {k: ray_info[k] for k in ("address", "nodes", "cpus", "gpus")} == {
        "address": cluster.address,
        "nodes": 2,
        "cpus": 2.0,
        "gpus": 0.0,
    }
    assert len(ray_info["node_list"]) == 2
    run = json.loads((run_dir / "_run.json").read_text())
    per_node = run["throughput"]["clips"]["rows_per_node"]
    assert len(per_node) == 2 and sum(per_node.values()) == run["throughput"]["clips"]["rows"]


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


# --- a cluster that cannot do the work: one clear line, exit 2, before any work ---------------------------------

needs_mounts = pytest.mark.skipif(not can_isolate_mounts(), reason="needs mount namespaces (root) to fake a 2nd host")


def assert_refused_before_work(proc: subprocess.CompletedProcess, run_dir: Path, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors == lines[-1:], proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not (run_dir / "_work" / "ingest").exists() and not (run_dir / "_run.json").exists()  # no work started
    assert not list((run_dir / "_work" / ".preflight").glob("*"))  # the probe files are cleaned up


@needs_mounts
def test_workers_without_the_project_are_refused_up_front(corpus_dir, tmp_path):
    # The worker node sees an empty directory where the project's packages are: a host without the install.
    with LocalCluster(num_workers=1, worker_hide=(ROOT / "pipelines",)) as c:
        run_dir = tmp_path / "run"
        proc = run_driver("--ray-address", c.address, "--input", str(corpus_dir), "--output", str(run_dir), env=c.env)
    assert_refused_before_work(proc, run_dir, "cannot run the project", "ModuleNotFoundError", "install the same")


@pytest.fixture(scope="module")
def private_dirs(tmp_path_factory):
    """Two directories that the worker node of `split_cluster` sees as empty (unshared) and as read-only."""
    return tmp_path_factory.mktemp("unshared"), tmp_path_factory.mktemp("readonly")


@pytest.fixture(scope="module")
def split_cluster(private_dirs):
    unshared, readonly = private_dirs
    with LocalCluster(num_workers=1, worker_hide=(unshared,), worker_readonly=(readonly,)) as c:
        yield c


@needs_mounts
@pytest.mark.parametrize(
    ("which", "message"),
    [(0, "does not see the run directory the driver writes"), (1, "cannot write the run directory")],
)
def test_a_run_directory_workers_cannot_use_is_refused_up_front(
    split_cluster, private_dirs, corpus_dir, which, message
):
    run_dir = private_dirs[which] / "run"
    c = split_cluster
    proc = run_driver("--ray-address", c.address, "--input", str(corpus_dir), "--output", str(run_dir), env=c.env)
    assert_refused_before_work(proc, run_dir, message)


def test_a_driver_without_the_cluster_token_is_refused_in_one_line(corpus_dir, tmp_path):
    run_dir = tmp_path / "no_token"
    with LocalCluster(num_workers=0, auth_token="a" * 32) as c:
        env = {**c.env, "RAY_AUTH_TOKEN": "", "HOME": str(tmp_path)}  # no token, and no ~/.ray/auth_token either
        t0 = time.monotonic()
        proc = run_driver("--ray-address", c.address, "--input", str(corpus_dir), "--output", str(run_dir), env=env)
    assert time.monotonic() - t0 < 60
    assert_refused_before_work(proc, run_dir, "refused this driver's authentication token")


# --- GPU scheduling on a cluster whose worker advertises a GPU (and has no CUDA) --------------------------------


def test_model_actors_go_to_the_gpu_node_and_fall_back_to_cpu_once(corpus_dir, tmp_path):
    pytest.importorskip("open_clip")
    from tests.test_aesthetics import random_clip, save_clip_folder, tiny_model_cfg

    clip_dir = save_clip_folder(tmp_path / "tiny-clip", random_clip(0), tiny_model_cfg())
    videos = [str(corpus_dir / "objects.mp4"), str(corpus_dir / "pan_right.mp4"), str(corpus_dir / "cuts.mp4")]
    run_dir = tmp_path / "gpu"
    sets = [f"aesthetics.model_path={clip_dir}", "aesthetics.device=auto", "dedup.embedding_similarity=1.0"]
    with LocalCluster(num_workers=1, worker_gpus=1) as c:
        args = ["--ray-address", c.address, "--input", *videos, "--output", str(run_dir)]
        proc = run_driver(*args, *[a for s in sets for a in ("--set", s)], env=c.env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads((run_dir / "_run.json").read_text())
    gpu_nodes = [n["node_id"] for n in run["ray"]["node_list"] if n["gpus"] == 1]
    assert run["ray"]["gpus"] == 1 and len(gpu_nodes) == 1
    clips_stage = run["throughput"]["clips"]
    assert (clips_stage["kind"], clips_stage["actors"], clips_stage["num_gpus"]) == ("actors", 1, 1)
    (actor,) = run["actors"]  # one actor: the model loaded once and served every video
    assert actor["node"] == gpu_nodes[0] and actor["gpu_ids"] == ["0"]
    assert actor["devices"] == {"aesthetics": "cpu"} and actor["rows"] == len(videos)
    warnings = [line for line in proc.stderr.splitlines() if "CUDA is not available there" in line]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert "1 of 1 clips actors were placed on a GPU" in warnings[0] and "aesthetics ran on CPU" in warnings[0]
    from curation.shards import iter_clips

    embeddings = [row["clip_embedding"] for row in iter_clips(run_dir, columns=["clip_id", "clip_embedding"])]
    assert embeddings and all(e is not None and e.shape == (16,) for e in embeddings)  # the model did run


# --- losing a node mid-run ----------------------------------------------------------------------------------------


def busy_worker_node(cluster: LocalCluster, run_dir: Path, steps: tuple[str, ...] = ("scenes", "clips")) -> int | None:
    """A worker node inside one of `steps` right now (a step's attempt log exists only while it runs)."""
    for path in [p for step in steps for p in (run_dir / "_work" / step).glob("*.attempts")]:
        try:
            pid = json.loads(path.read_text())["attempts"][-1]["pid"]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        node = cluster.node_of(pid)
        if node:  # 0 is the head
            return node
    return None


def run_losing_a_node(
    cluster: LocalCluster, args: list[str], run_dir: Path, log: Path, steps: tuple[str, ...] = ("scenes", "clips")
) -> tuple[int, dict]:
    """Run the pipeline on `cluster`, SIGKILL the first worker node found inside one of `steps` of this run, and
    wait for the driver: its exit status and _run.json ({} when it wrote none)."""
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "pipelines.run", "--config", SMOKE, *args]
        driver = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while (node := busy_worker_node(cluster, run_dir, steps)) is None:
                assert driver.poll() is None and time.monotonic() < deadline, f"no {'/'.join(steps)} ran on a worker"
                time.sleep(0.05)
            cluster.kill_node(node)  # with a step of this run in flight there
            status = driver.wait(timeout=400)
        finally:  # a driver left behind would keep trying to reach the stopped cluster
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    path = run_dir / "_run.json"
    return status, json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.slow
def test_losing_a_worker_node_mid_run_still_gives_the_local_clip_set(corpus_dir, smoke_run, tmp_path):
    run_dir = tmp_path / "node_lost"
    with LocalCluster(num_workers=2, cpus_per_node=1) as c:
        args = ["--ray-address", c.address, "--input", str(corpus_dir), "--output", str(run_dir)]
        status, first = run_losing_a_node(c, args, run_dir, tmp_path / "driver.log")
        if status != 0 or first.get("status") != "complete":  # Ray could not recover everything: the rerun does
            log = (tmp_path / "driver.log").read_text()
            print(f"first run: exit {status}, status {first.get('status')}; rerunning\n{log[-3000:]}")
            rerun = run_driver(*args, env=c.env)
            assert rerun.returncode == 0, rerun.stderr[-4000:] + "\n" + c.log_tail()
        else:
            print(f"Ray recovered within the run: {first['faults']}")
            assert first["faults"]["retries"] >= 1  # the step in flight on the lost node ran again elsewhere
    assert clip_ids(run_dir) == clip_ids(smoke_run)
    assert json.loads((run_dir / "_run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_losing_the_node_of_a_model_actor_mid_run_still_gives_the_local_clip_set(corpus_dir, smoke_run, tmp_path):
    """Ray restarts a lost actor, but gives up the videos that were in flight on it when the restart cannot be
    placed at once. The driver's retry round (runtime.retry_rounds) runs those again in the same run; without it
    the run ends `partial` and a rerun of the same command completes it. Both end with the local clip set."""
    pytest.importorskip("open_clip")
    from tests.test_aesthetics import random_clip, save_clip_folder, tiny_model_cfg

    clip_dir = save_clip_folder(tmp_path / "tiny-clip", random_clip(0), tiny_model_cfg())
    sets = [
        f"aesthetics.model_path={clip_dir}",
        "aesthetics.device=cpu",
        "runtime.model_actors=2",
        "dedup.embedding_similarity=1.0",  # a random model's embeddings say nothing: dedup by key-frame hashes only
    ]
    outcomes = {}
    for rounds in (1, 0):
        # A fresh cluster each time: 3 CPUs left after the loss, enough for the 2 actors plus a scenes task. (On a
        # cluster shrunk below that, Ray Data waits for the actor restart indefinitely: see the README.)
        with LocalCluster(num_workers=3, cpus_per_node=1) as c:
            run_dir = tmp_path / f"rounds{rounds}"
            args = ["--ray-address", c.address, "--input", str(corpus_dir), "--output", str(run_dir)]
            args += [a for s in [*sets, f"runtime.retry_rounds={rounds}"] for a in ("--set", s)]
            status, first = run_losing_a_node(c, args, run_dir, tmp_path / f"driver{rounds}.log", steps=("clips",))
            assert status == 0
            outcomes[rounds] = (first["status"], first["faults"])
            if first["status"] != "complete":
                assert rounds == 0 and first["faults"]["errors"].get("clips/worker_crashed", 0) >= 1
                rerun = run_driver(*args, env=c.env)
                assert rerun.returncode == 0, rerun.stderr[-4000:] + "\n" + c.log_tail()
            assert json.loads((run_dir / "_run.json").read_text())["status"] == "complete"
            assert clip_ids(run_dir) == clip_ids(smoke_run)
    print(f"first runs, by retry_rounds: {outcomes}")
    assert outcomes[1][0] == "complete"  # the retry round recovered within the run
