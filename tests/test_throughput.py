"""Throughput figures per stage (pure functions), and how the DAG sizes its stages on a cluster."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.throughput import bottleneck, run_throughput, stage_figures
from tests.conftest import SMOKE


def timing(key: str, start: float, end: float, node: str = "n1") -> dict:
    return {"key": key, "start": start, "end": end, "node": node, "seconds": end - start}


def test_stage_figures_from_known_timings():
    rows = [timing("a", 10, 12), timing("b", 10, 11, "n2"), timing("c", 12, 14)]
    f = stage_figures(rows, slots=2, queued_from=9.0)
    assert f["rows"] == 3 and f["window_s"] == 4 and f["rows_per_s"] == 0.75
    assert f["busy_s"] == 5 and f["utilisation"] == pytest.approx(5 / (2 * 4))
    assert f["queued_s"] == 1 + 1 + 3 and f["queued_mean_s"] == pytest.approx(5 / 3, abs=1e-3)
    assert f["rows_per_node"] == {"n1": 2, "n2": 1}
    assert stage_figures([], 2, None) == {"rows": 0}


def test_clips_queue_from_the_end_of_their_scenes_and_earlier_runs_are_left_out():
    timings = {
        "scenes": [timing("a", 100, 101), timing("b", 100, 102), timing("old", 1, 2)],
        "clips": [timing("a", 101.5, 104), timing("b", 104, 106), timing("old", 2, 3)],
    }
    plan = {"scenes": {"kind": "tasks", "slots": 2}, "clips": {"kind": "actors", "actors": 1, "slots": 1}}
    figures = run_throughput(timings, plan, started={"video": 99.0})
    assert figures["scenes"]["rows"] == 2 and figures["clips"]["rows"] == 2  # "old" finished in an earlier run
    assert figures["scenes"]["queued_s"] == 1 + 1  # from the dataset's start
    assert figures["clips"]["queued_s"] == 0.5 + 2  # from the end of the same video's scenes step
    assert figures["clips"]["kind"] == "actors" and figures["clips"]["utilisation"] == pytest.approx(4.5 / 4.5)
    assert bottleneck(figures) == "clips"
    assert bottleneck({}) is None


def test_model_actor_pool_is_sized_from_config_and_capped_to_what_the_cluster_can_place(
    ray_local, caplog, tmp_path: Path
):
    from pipelines.dag import video_plan

    models = [f"aesthetics.model_path={tmp_path}", "aesthetics.device=cpu"]  # sizing reads the config only
    plan = video_plan(load_config(SMOKE, models), ("scenes", "clips"))
    assert plan["clips"] == {
        "kind": "actors",
        "actors": 1,  # 2 CPUs, no GPU: one actor per 2 CPUs
        "num_cpus": 1,
        "num_gpus": 0,
        "models": {"aesthetics": "cpu"},
        "slots": 1,
    }
    with caplog.at_level(logging.WARNING, logger="pipelines.dag"):
        plan = video_plan(load_config(SMOKE, [*models, "runtime.model_actors=4"]), ("scenes", "clips"))
    assert plan["clips"]["actors"] == 1  # 4 actors would hold both CPUs and starve the scenes tasks
    assert "runtime.model_actors=4 does not fit this cluster" in caplog.text
    assert video_plan(load_config(SMOKE), ("scenes", "clips"))["clips"] == {"kind": "tasks", "num_cpus": 1, "slots": 2}


def test_the_run_reports_throughput_faults_and_the_bottleneck(smoke_run: Path):
    run = json.loads((smoke_run / "_run.json").read_text())
    figures = run["throughput"]
    assert set(figures) == {"ingest", "scenes", "clips"}
    videos = run["counts"]["videos"] - run["counts"]["videos_failed"]
    for stage in ("scenes", "clips"):
        f = figures[stage]
        assert f["rows"] >= videos - 2 and f["rows_per_s"] > 0 and 0 < f["utilisation"] <= 1
        assert sum(f["rows_per_node"].values()) == f["rows"]
    assert run["bottleneck"] in figures
    assert run["faults"]["retries"] == 0 and run["spilled_bytes"] in (0, None)
    summary = (smoke_run / "_summary.txt").read_text()
    assert "rows/s: clips" in summary and "retries" in summary
