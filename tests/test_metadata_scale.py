"""bench/metadata_scale.py at a tiny N: every step runs in its own process, and their outputs agree with the
synthesised structure and with each other."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("metadata_scale", ROOT / "bench" / "metadata_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("metadata_scale")
    out, run_dir = tmp / "result.json", tmp / "run"
    # --small-records: the last 100 of the ~250 videos' records are small files, the rest in batch files (a run
    # compacting as it goes leaves both when finalize starts)
    args = ["--clips", "2000", "--keep", str(run_dir), "--json", str(out), "--in-process", "--small-records", "100"]
    assert _bench().main(args) == 0  # one process: the steps' imports once (the bench runs each in its own)
    return json.loads(out.read_text())["2000"], run_dir


def test_every_step_runs_with_time_and_peak_rss(bench_run):
    result, _ = bench_run
    assert result["synthesize"]["clips"] == 2000
    for name in ("finalize", "dedup", "queries", "snapshot", "loader", "report"):
        step = result["steps"][name]
        assert "error" not in step, (name, step)
        assert step["seconds"] > 0 and step["peak_rss_mb"] > 0


def test_finalize_reads_both_record_forms_and_leaves_only_batch_files(bench_run):
    from pipelines.records import RecordIndex

    result, run_dir = bench_run
    videos = result["synthesize"]["videos"]
    assert result["small_records"] == 100 < videos
    assert pq.read_metadata(run_dir / "videos" / "videos.parquet").num_rows == videos  # every ingest record read
    for step in ("ingest", "scenes", "clips"):
        folder = run_dir / "_work" / step
        assert list(folder.glob("*.json")) == [] and len(RecordIndex(folder)) == videos, step
    finalize = result["steps"]["finalize"]
    assert finalize["compact_s"] >= 0 and 0 < finalize["files_per_1000_videos"] < 100


def test_dedup_drops_the_synthesised_duplicates(bench_run):
    result, run_dir = bench_run
    truth = pq.read_table(run_dir / "_bench" / "clips.parquet", columns=["clip_id", "group"]).to_pylist()
    rejected = pq.read_table(run_dir / "rejected").to_pylist()
    filtered = {r["clip_id"] for r in rejected if r["stage"] == "filters"}
    dropped = [r["clip_id"] for r in rejected if r["stage"] == "dedup"]
    group_of = {r["clip_id"]: r["group"] for r in truth}
    # Each group loses all but one of the members that passed the score filter, and nothing else is dropped.
    passed = Counter(g for c, g in group_of.items() if g >= 0 and c not in filtered)
    expected = {g: n - 1 for g, n in passed.items() if n > 1}
    assert len(dropped) == len(set(dropped)) == sum(expected.values()) > 0
    assert Counter(group_of[c] for c in dropped) == expected
    assert result["steps"]["finalize"]["curation"]["dedup"]["excluded"] == len(dropped)
    # The stand-alone dedup (memmapped float16 embeddings) decides exactly as finalize's did.
    assert result["steps"]["dedup"]["excluded"] == len(dropped) and result["steps"]["dedup"]["matches_finalize"]


def test_snapshot_loader_and_queries_agree(bench_run):
    result, run_dir = bench_run
    steps = result["steps"]
    curated = pq.read_metadata(run_dir / "clips" / "clips.parquet").num_rows
    assert curated == steps["finalize"]["clips"] == steps["queries"]["clips_count"]
    assert steps["snapshot"]["clips"] == curated  # the SQL selection is the pipeline's curation
    snapshot = run_dir / "_bench" / "snapshot"
    assert pq.read_metadata(snapshot / "clips.parquet").num_rows == curated
    assert steps["loader"]["samples"] == curated  # one rank: every clip once, no padding
    assert steps["queries"]["clips_per_source"]["rows"] == result["synthesize"]["videos"]


def test_duckdb_memory_limit_is_bounded_and_overridable(monkeypatch):
    from curation import duck

    monkeypatch.delenv(duck.MEMORY_ENV, raising=False)
    assert 256 <= duck.memory_limit_mb() <= duck.MEMORY_LIMIT_MB
    monkeypatch.setenv(duck.MEMORY_ENV, "16384")
    assert duck.memory_limit_mb() == 16384
    monkeypatch.setenv(duck.MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match=duck.MEMORY_ENV):
        duck.memory_limit_mb()
