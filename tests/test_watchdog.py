"""The stall watchdog (runtime.stall_timeout_s): a Ray Data execution that yields no row for that long is stopped,
its thread and its tasks or actors ended, the stall recorded, and what it left goes to the retry round."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.orchestrate import Stalled, _consume, watch
from pipelines.report import summary_table
from tests.conftest import SMOKE

# --- the watchdog on a fake row iterator ----------------------------------------------------------------------------


class FakeExecution:
    """Rows that come out `first` at once, then nothing until `stop()` (as a stalled Ray Data execution: its rows
    end once it is shut down). `stop_works_after` stop calls are needed before it takes."""

    def __init__(self, first: int, stop_works_after: int = 1, late: int = 0) -> None:
        self.first, self.late, self.stop_works_after = first, late, stop_works_after
        self.stops = 0
        self.stopped = threading.Event()

    def rows(self) -> Iterator[dict]:
        for i in range(self.first):
            yield {"key": f"v{i}"}
        self.stopped.wait(60)
        for i in range(self.late):  # videos that finished while the execution was shutting down
            yield {"key": f"late{i}"}

    def stop(self) -> bool:
        self.stops += 1
        if self.stops >= self.stop_works_after:
            self.stopped.set()
        return self.stopped.is_set()


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pipeline-rows"]


def test_a_stalled_iterator_is_stopped_within_the_timeout_and_its_thread_ends():
    fake = FakeExecution(first=2, stop_works_after=2)  # the first stop does not take: it is called again
    got, t0 = [], time.monotonic()
    with pytest.raises(Stalled) as stalled:
        for row in watch(fake.rows(), timeout_s=0.5, stop=fake.stop):
            got.append(row["key"])
    elapsed = time.monotonic() - t0
    assert got == ["v0", "v1"] and fake.stops == 2
    assert 0.5 <= stalled.value.waited_s < 2.0 and stalled.value.stopped  # slack: a loaded CI machine
    assert elapsed < 5.0  # the timeout, then one retried stop (1 s apart at most)
    assert not watcher_threads()


def test_rows_that_finish_while_the_execution_stops_are_still_yielded():
    fake = FakeExecution(first=1, late=2)
    got = []
    with pytest.raises(Stalled):
        for row in watch(fake.rows(), timeout_s=0.3, stop=fake.stop):
            got.append(row["key"])
    assert got == ["v0", "late0", "late1"]


def test_a_stop_that_never_takes_is_given_up_after_the_grace_period():
    fake = FakeExecution(first=0, stop_works_after=10**6)
    t0 = time.monotonic()
    with pytest.raises(Stalled) as stalled:
        list(watch(fake.rows(), timeout_s=0.2, stop=fake.stop, grace_s=1.5))
    assert not stalled.value.stopped and 1.5 <= time.monotonic() - t0 < 5.0
    fake.stopped.set()  # let the abandoned thread finish, for the next tests
    for thread in watcher_threads():
        thread.join(5)


def test_rows_errors_and_an_early_exit_pass_through_without_leaving_a_thread():
    def failing() -> Iterator[dict]:
        yield {"key": "a"}
        raise ValueError("broken block")

    assert [r["key"] for r in watch(iter([{"key": "a"}, {"key": "b"}]), 5.0, lambda: None)] == ["a", "b"]
    with pytest.raises(ValueError, match="broken block"):
        list(watch(failing(), 5.0, lambda: None))
    fake = FakeExecution(first=3)
    rows = watch(fake.rows(), 0, fake.stop)  # 0: no timeout
    assert next(rows)["key"] == "v0"
    rows.close()  # the consumer leaves (an exception, Ctrl-C): the execution is stopped, the thread ends
    assert fake.stops >= 1 and not watcher_threads()


def test_consume_reports_the_stall_with_what_was_done_and_left(caplog):
    fake = FakeExecution(first=2)
    with caplog.at_level("WARNING", logger="pipelines.orchestrate"):
        stall = _consume(fake.rows(), "scenes+clips", 5, 60.0, stall_timeout_s=0.3, stop=fake.stop)
    assert {k: stall[k] for k in ("step", "done", "left", "stopped")} == {
        "step": "scenes+clips",
        "done": 2,
        "left": 3,
        "stopped": True,
    }
    assert stall["waited_s"] >= 0.3
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "scenes+clips: no video finished for 0 s (runtime.stall_timeout_s) with 3 of 5 left" in warning
    assert _consume(iter([{"key": "a"}]), "ingest", 1, 60.0, stall_timeout_s=5.0) is None


def test_the_summary_lists_what_the_watchdog_stopped():
    counts = {
        "videos": 3, "videos_failed": 0, "scenes": 3, "clips": 2, "clip_seconds": 4.0, "rejected": 1,
        "rejected_by_reason": {"clips/stalled": 1}, "shards": 1, "shard_bytes": 1000,
    }  # fmt: skip
    stalls = [{"step": "scenes,clips", "waited_s": 1800.4, "done": 2, "left": 1, "round": 0}]
    table = summary_table(counts, {}, {}, stalls=stalls)
    assert "stalls (watchdog)" in table and "round 0: scenes,clips" in table and "1 left after 1800 s" in table
    assert "stalls" not in summary_table(counts, {}, {}, stalls=[])  # a run without a stall says nothing of it


def test_stall_timeout_setting():
    assert load_config(SMOKE).runtime.stall_timeout_s == 1800
    assert load_config(SMOKE, ["runtime.stall_timeout_s=0"]).runtime.stall_timeout_s == 0
    with pytest.raises(ConfigError, match="runtime.stall_timeout_s must be >= 0"):
        load_config(SMOKE, ["runtime.stall_timeout_s=-1"])


# --- stopping a real Ray Data execution ---------------------------------------------------------------------------


def hang_on(key: str, pid_dir: str):
    """A map function that hangs (an hour) on `key`, after writing its process id where the test finds it."""

    def fn(row: dict) -> dict:
        if row["key"] == key:
            Path(pid_dir, "pid").write_text(str(os.getpid()))
            time.sleep(3600)
        return row

    return fn


def hanging_actor() -> type:
    """An actor class calling the function it is built with, defined in a function so that Ray ships it by value
    (the workers cannot import this test module)."""

    class HangingActor:
        def __init__(self, fn) -> None:
            self.fn = fn

        def __call__(self, row: dict) -> dict:
            return self.fn(row)

    return HangingActor


def gone(pid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    ("compute", "keys", "hang"),
    [
        ("tasks", ["a", "b", "c"], "c"),  # stalls after rows came out: the dataset holds its executor
        ("actors", ["a"], "a"),  # stalls before the first row: the executor is found by its thread's name
    ],
)
def test_a_stalled_ray_data_execution_is_shut_down(ray_local, tmp_path: Path, compute, keys, hang):
    import ray

    from pipelines.dag import Execution

    ray.data.range(2, override_num_blocks=2).map(lambda r: r, num_cpus=0.5).take_all()  # workers up: no slow start
    handle = Execution()

    def rows() -> Iterator[dict]:
        ds = ray.data.from_items([{"key": k} for k in keys], override_num_blocks=len(keys))
        if compute == "tasks":
            ds = ds.map(hang_on(hang, str(tmp_path)), num_cpus=0.5)
        else:
            pool = ray.data.ActorPoolStrategy(size=1)
            ds = ds.map(
                hanging_actor(), fn_constructor_args=(hang_on(hang, str(tmp_path)),), compute=pool, num_cpus=0.5
            )
        handle.ds = ds
        yield from ds.iter_rows()

    before_first_row = []

    def stop() -> bool:
        before_first_row.append(getattr(handle.ds, "_current_executor", None) is None)
        return handle.stop()

    got, t0 = [], time.monotonic()
    with pytest.raises(Stalled) as stalled:
        for row in watch(rows(), timeout_s=5.0, stop=stop):
            got.append(row["key"])
    assert sorted(got) == sorted(set(keys) - {hang}) and stalled.value.stopped
    assert before_first_row[0] == (not got)  # which way Execution.stop found the executor
    assert time.monotonic() - t0 < 30
    assert not watcher_threads()
    executor = f"StreamingExecutor-{handle.ds.get_dataset_id()}"
    assert not [t.name for t in threading.enumerate() if t.name == executor]
    pid = int((tmp_path / "pid").read_text())
    assert gone(pid), f"the hanging {compute[:-1]} (pid {pid}) is still running"
    assert not handle.stop()  # nothing left to stop


# --- through the pipeline, on a cluster that loses a node ---------------------------------------------------------

# Long enough that no video of the smoke corpus takes that long on a loaded 2-core machine (a false stall would be
# retried too, but would not be the one this test is about); short enough to keep the test to a few minutes.
STALL_S = 60


def model_sets(tmp_path: Path) -> list[str]:
    """The node-loss tests' clips step: a pool of model actors (a tiny random open_clip), dedup by key-frame hashes."""
    from tests.test_aesthetics import random_clip, save_clip_folder, tiny_model_cfg

    clip_dir = save_clip_folder(tmp_path / "tiny-clip", random_clip(0), tiny_model_cfg())
    return [
        f"aesthetics.model_path={clip_dir}",
        "aesthetics.device=cpu",
        "runtime.model_actors=2",
        "dedup.embedding_similarity=1.0",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("rounds", [1, 0])
def test_a_run_stalled_by_a_lost_node_is_stopped_and_retried(corpus_dir, smoke_run, tmp_path, rounds):
    """3 one-CPU worker nodes (the head runs nothing), a pool of 2 model actors and 1-CPU scenes tasks; the node
    running a scenes task is lost. The 2 CPUs left are the actors': the scenes tasks that feed them never run again,
    and Ray Data waits forever (seen: no video done 150 s after the loss, watchdog off). The watchdog stops that
    execution after STALL_S; the retry round, its pool sized to the 2 CPUs left (1 actor), finishes the run with the
    local clip set. Without a retry round, the videos left are `worker_crashed` (saying why), the run `partial`, and
    rerunning the same command completes it."""
    pytest.importorskip("open_clip")
    import duckdb

    from tests.cluster import LocalCluster
    from tests.test_cluster import run_driver, run_losing_a_node
    from tests.test_resume import clip_ids

    run_dir = tmp_path / "stalled"
    sets = [*model_sets(tmp_path), f"runtime.stall_timeout_s={STALL_S}", f"runtime.retry_rounds={rounds}"]
    with LocalCluster(num_workers=3, cpus_per_node=1, head_cpus=0) as c:
        args = ["--ray-address", c.address, "--input", str(corpus_dir), "--output", str(run_dir)]
        args += [a for s in sets for a in ("--set", s)]
        t0 = time.monotonic()
        status, run = run_losing_a_node(c, args, run_dir, tmp_path / "driver.log", steps=("scenes",))
        took = time.monotonic() - t0
        log = (tmp_path / "driver.log").read_text()
        assert status == 0, log[-4000:]
        print(f"run took {took:.0f} s; stalls: {run['stalls']}; faults: {run['faults']}")
        (stall,) = run["stalls"]
        assert {k: stall[k] for k in ("step", "round", "stopped")} == {
            "step": "scenes+clips",
            "round": 0,
            "stopped": True,
        }
        assert stall["waited_s"] >= STALL_S and stall["left"] >= 1
        assert stall["cluster"]["nodes"] == 3 and run["ray"]["nodes"] == 4  # the stall came after the loss
        assert "no video finished for" in log
        if rounds:
            assert "left unfinished by the stopped execution: retrying" in log
            assert "runtime.model_actors=2 does not fit this cluster" in log  # the retry round's pool: 1 actor
        else:  # the stalled round was the last: what it left is reported, not lost
            assert run["status"] == "partial"
            details = duckdb.sql(
                f"SELECT detail FROM '{run_dir}/rejected/*.parquet' WHERE reason = 'worker_crashed'"
            ).fetchall()
            crashed = sum(n for k, n in run["faults"]["errors"].items() if k.endswith("/worker_crashed"))
            assert 1 <= len(details) == crashed <= stall["left"]  # a row not out before the stop may have its record
            assert all(d.startswith("the execution stalled (no video finished for ") for (d,) in details), details
            rerun = run_driver(*args, env=c.env)
            assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert json.loads((run_dir / "_run.json").read_text())["status"] == "complete"
    assert clip_ids(run_dir) == clip_ids(smoke_run)
