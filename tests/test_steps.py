"""Steps called directly (no Ray): an unexpected error in one input becomes a recorded rejection, and a step's record
is committed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation import tables
from curation.ids import uri_key
from curation.tables import read_json
from pipelines import steps
from pipelines.collect import collect
from pipelines.config import RunConfig, load_config


def test_unexpected_step_error_is_recorded_and_reported(tmp_path, monkeypatch: pytest.MonkeyPatch):
    def explode(*_args, **_kwargs):
        raise RuntimeError("decoder library bug")

    monkeypatch.setattr(steps, "probe_input", explode)
    row = {"source_uri": str(tmp_path / "a.mp4"), "key": uri_key(str(tmp_path / "a.mp4"))}
    out = steps.make_ingest_fn(RunConfig(), tmp_path)(row)
    assert out["ingest_done"]
    data = collect(tmp_path, [row], attempted=("ingest",))
    assert [r["reason"] for r in data.rejected] == ["ingest_error"]
    assert "decoder library bug" in data.rejected[0]["detail"]
    video = next(iter(data.videos))
    assert video["error"] and video["source_uri"] == row["source_uri"]
    assert not data.ready["scenes"]  # a failed input is not scheduled for later steps


def test_the_first_finished_attempt_owns_the_record(tmp_path):
    work = steps.WorkDir(tmp_path)
    assert work.save("clips", "k", {"clips": ["a"]})
    # a second attempt that finished later (here with the error a duplicate attempt might hit) changes nothing
    assert not work.save("clips", "k", {"reason": "clips_error"})
    assert work.load("clips", "k") == {"clips": ["a"]}
    assert [p.name for p in (tmp_path / "_work" / "clips").iterdir()] == ["k.json"]  # no temporary file left


def test_record_commit_without_hard_links_falls_back_to_a_rename(tmp_path, monkeypatch: pytest.MonkeyPatch):
    def no_links(*_args):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(tables.os, "link", no_links)
    path = tmp_path / "r.json"
    assert tables.create_json_once({"a": 1}, path) and read_json(path) == {"a": 1}
    assert not tables.create_json_once({"a": 2}, path) and read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


ATTEMPT = """
import sys
from pipelines import steps
from pipelines.config import load_config
steps.make_clips_fn(load_config(sys.argv[1]), sys.argv[2])({"source_uri": sys.argv[3], "key": sys.argv[4]})
"""


def test_two_concurrent_attempts_at_a_video_give_one_good_record(corpus_dir, tmp_path):
    """The clips step run twice at once on the same video, each in a process of its own with its own session, as a
    worker left over from a killed run beside the rerun's (or a task Ray retried beside its first attempt): both
    finish without error, one record stands, and its shards hold exactly its clips. Processes, not threads: two
    attempts never share a process's decoders, annotators or session."""
    from tests.conftest import SMOKE

    cfg = load_config(SMOKE)
    uri = str(corpus_dir / "objects.mp4")
    row = {"source_uri": uri, "key": uri_key(uri)}
    steps.make_ingest_fn(cfg, tmp_path)(row)
    steps.make_scenes_fn(cfg, tmp_path)(row)
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-c", ATTEMPT, SMOKE, str(tmp_path), uri, row["key"]]
    env = {**os.environ, "PYTHONPATH": str(root)}
    attempts = [subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for attempt in attempts:
        _, err = attempt.communicate(timeout=300)
        assert attempt.returncode == 0, err[-2000:]
    record = steps.WorkDir(tmp_path).load("clips", row["key"])
    assert record["clips"] and not [r for r in record["rejected"] if r["reason"].endswith("_error")], record["rejected"]
    data = collect(tmp_path, [row], attempted=("ingest", "scenes", "clips"))
    assert {c["clip_id"] for c in data.clips} == {c["clip_id"] for c in record["clips"]}
    shard_files = sorted(p.name for p in (tmp_path / "shards").glob("*.parquet"))
    assert shard_files == sorted({c["shard"] for c in record["clips"]})
    assert not list((tmp_path / "shards").glob(".*")) and not list((tmp_path / "_work").rglob("*.tmp"))
