"""Event pseudo-targets through the whole pipeline: columns, shard tensors, and the EVD clip filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.duck import connect
from curation.shards import iter_clips, read_manifest
from tests.conftest import run_pipeline


def test_event_columns_and_tensors_reach_the_tables(smoke_run):
    manifest = read_manifest(smoke_run)
    assert manifest["events"]["grid"] == [4, 4] and manifest["events"]["hysteresis"] == {"on": 0.62, "off": 0.38}
    assert "selection" not in manifest["events"]  # the default filter keeps everything
    assert manifest["tensors"]["event_activity"]["shape"] == [8, 4, 4]
    columns = ["event_activity", "event_active", "event_phase", "frame_indices", "event_start_frame", "event_end_frame"]
    rows = list(iter_clips(smoke_run, columns=columns))
    assert len(rows) == manifest["curation"]["clips_after"] > 0
    for row in rows:
        activity, active, phase = row["event_activity"], row["event_active"], row["event_phase"]
        assert activity.shape == active.shape == (len(row["frame_indices"]), 4, 4) and phase.shape == (8,)
        assert activity.dtype == np.float16 and active.dtype == np.uint8 and phase.dtype == np.float16
        assert np.isfinite(activity.astype(np.float32)).all() and 0 <= activity.min() <= activity.max() <= 1
        if row["event_start_frame"] is not None:  # the window lies within the sampled frames
            assert row["frame_indices"][0] <= row["event_start_frame"] < row["event_end_frame"]
            assert row["event_end_frame"] <= row["frame_indices"][-1]
        else:
            assert not active.any()
    con = connect(smoke_run)
    static = con.sql(
        "SELECT event_score, event_confidence, event_start_frame FROM clips WHERE source_uri LIKE '%static%'"
    )
    score, confidence, start = static.fetchall()[0]
    assert score < 0.005 and confidence == 0.0 and start is None
    nulls = con.sql("SELECT count(*) FROM clips WHERE event_score IS NULL OR event_diffuse IS NULL").fetchall()[0][0]
    assert nulls == 0


@pytest.fixture(scope="module")
def filtered_run(corpus_dir: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four videos (two with moving objects, two without) through the pipeline with EVD's top-fraction filter."""
    inputs = tmp_path_factory.mktemp("event_inputs")
    for name in ("objects.mp4", "pan_objects.mp4", "static.mkv", "pan_right.mp4"):
        (inputs / name).symlink_to(corpus_dir / name)
    run_dir = tmp_path_factory.mktemp("event_run") / "run"
    overrides = ["--set", "events.top_fraction=0.5", "--set", "events.drop_diffuse=true"]
    assert run_pipeline("--input", str(inputs), "--output", str(run_dir), *overrides) == 0
    return run_dir


def test_the_event_filter_keeps_the_top_fraction_and_records_the_rest(filtered_run):
    con = connect(filtered_run)
    kept = {Path(uri).stem for (uri,) in con.sql("SELECT source_uri FROM clips").fetchall()}
    dropped = con.sql("SELECT source_uri, reason, detail FROM rejected WHERE stage = 'events'").fetchall()
    assert kept == {"objects", "pan_objects"}  # the interaction clips outrank the still and camera-only ones
    assert {Path(uri).stem for uri, _, _ in dropped} == {"static", "pan_right"}
    assert all(reason == "low_event_score" and "top 50% of 4 clips" in detail for _, reason, detail in dropped)
    selection = read_manifest(filtered_run)["events"]["selection"]
    assert selection["kept"] == 2 and selection["excluded"] == 2 and selection["min_event_score"] > 0
    streamed = list(iter_clips(filtered_run, columns=["clip_id", "frames"]))
    assert sorted(r["clip_id"] for r in streamed) == sorted(
        c for (c,) in con.sql("SELECT clip_id FROM clips").fetchall()
    )
    assert all(set(r) == {"clip_id", "frames"} for r in streamed)  # the filter's own columns are not returned
    assert con.sql("SELECT count(*) FROM shards").fetchall()[0][0] == len(kept)
