"""The pipeline with `[buckets]`: each video at the bucket nearest its aspect ratio, each clip cut into consecutive
windows of 1 + 4k frames, every tensor following its window's frames."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from curation.buckets import Bucket
from curation.shards import iter_clips, read_manifest
from pipelines.config import load_config
from tests.conftest import BUCKETED, SMOKE, run_pipeline


def overrides(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def clips_table(run_dir: Path) -> list[dict]:
    return (
        duckdb.sql(f"SELECT * FROM read_parquet('{run_dir}/clips/*.parquet') ORDER BY ALL").to_arrow_table().to_pylist()
    )


def test_clips_land_in_the_bucket_of_their_aspect_ratio(bucketed_run):
    cfg = load_config(SMOKE, BUCKETED)
    names = {b.name for b in cfg.buckets.buckets()}
    clips = clips_table(bucketed_run)
    assert clips
    for c in clips:
        bucket = Bucket.parse(c["bucket"])
        assert c["bucket"] in names
        assert (bucket.num_frames, bucket.height, bucket.width) == (
            c["num_frames"],
            c["frame_height"],
            c["frame_width"],
        )
        assert c["crop_fraction"] <= 0.1
        # the stored orientation is the source's: portrait stays portrait
        assert (c["frame_height"] > c["frame_width"]) == (c["height"] > c["width"])
    assert {c["frame_height"] > c["frame_width"] for c in clips} == {True, False}  # portrait.mp4 is in the corpus


def test_every_tensor_follows_its_windows_frames(bucketed_run):
    cfg = load_config(SMOKE, BUCKETED)
    f, cell = cfg.noise.factor, cfg.events.cell
    rows = list(iter_clips(bucketed_run))
    strides = {c["clip_id"]: c["frame_stride"] for c in clips_table(bucketed_run)}
    assert len(rows) == len(strides)
    for r in rows:
        t, h, w = len(r["frame_indices"]), r["frame_height"], r["frame_width"]
        assert r["bucket"] == f"{t}x{h}x{w}"
        assert r["frames"].shape == (t, h, w, 3) and r["frames"].dtype == np.uint8
        assert r["flow"].shape == (t - 1, 2, h, w)
        assert r["warped_noise"].shape == (t, cfg.noise.channels, h // f, w // f)
        assert r["camera_c2w"].shape == (t, 4, 4) and r["camera_tokens"].shape == (t - 1,)
        assert r["event_activity"].shape == (t, h // cell, w // cell) and r["event_phase"].shape == (t,)
        # frame-exact windows: the stored frames are consecutive samples, `frame_stride` apart, inside the clip
        indices = np.asarray(r["frame_indices"])
        stride = strides[r["clip_id"]]
        assert np.all(np.diff(indices) == stride)
        assert r["start_frame"] == indices[0] and indices[-1] < r["end_frame"] <= indices[-1] + stride
        assert r["start_s"] == pytest.approx(r["frame_pts"][0])


def test_windows_of_a_clip_are_consecutive_and_disjoint(bucketed_run):
    clips = clips_table(bucketed_run)
    by_scene: dict[tuple, list[dict]] = {}
    for c in clips:
        by_scene.setdefault((c["video_id"], c["scene_index"]), []).append(c)
    multi = [sorted(v, key=lambda c: c["start_frame"]) for v in by_scene.values() if len(v) > 1]
    assert multi, "some shot should give several windows"
    for windows in multi:
        for a, b in zip(windows, windows[1:], strict=False):
            assert a["end_frame"] <= b["start_frame"]
    manifest = read_manifest(bucketed_run)
    assert manifest["buckets"]["enabled"] and manifest["buckets"]["windows"] == 3
    assert manifest["tensors"]["frames"]["shape"] == ["T", "H", "W", 3]


def test_short_clips_and_small_sources_are_rejected_with_reasons(corpus_dir, ray_local, tmp_path):
    # explicit buckets of 17 or 33 frames at 8 fps: the corpus's short shots cannot fill a window; 192x336 needs
    # the 320x180 sources scaled up, which max_upscale=1 forbids
    shapes = "[[192,336,17],[192,336,33],[336,192,17],[336,192,33]]"
    strict = [f"buckets.explicit={shapes}", "buckets.max_upscale=1.0"]
    args = ["--stage=all", "--input", str(corpus_dir), "--output", str(tmp_path / "r"), *overrides(*strict)]
    assert run_pipeline(*args) == 0
    rejected = duckdb.sql(
        f"SELECT reason, detail, source_uri FROM read_parquet('{tmp_path}/r/rejected/*.parquet') WHERE stage = 'clips'"
    ).fetchall()
    reasons = {r[0] for r in rejected}
    assert {"too_short_for_bucket", "below_bucket_resolution"} <= reasons
    small = [r for r in rejected if r[0] == "below_bucket_resolution"]
    assert all("buckets.max_upscale=1" in r[1] for r in small)
    assert any(r[2].endswith("pan_left.mkv") for r in small)  # 320x180
    assert all("fewer than the smallest bucket" in r[1] for r in rejected if r[0] == "too_short_for_bucket")


def test_the_fixed_size_config_fills_the_bucket_columns(smoke_run):
    cfg = load_config(SMOKE)
    for c in clips_table(smoke_run):
        assert c["bucket"] == f"{cfg.frames.num_frames}x{cfg.frames.height}x{cfg.frames.width}"
        assert (c["frame_height"], c["frame_width"]) == (cfg.frames.height, cfg.frames.width)
        assert 0.0 <= c["crop_fraction"] < 1.0
    assert not read_manifest(smoke_run)["buckets"]["enabled"]


def test_bucket_distribution_counts_every_curated_clip(bucketed_run):
    from curation.duck import connect, load_named, run_query

    rows = run_query(connect(bucketed_run), load_named("bucket_distribution")).to_pylist()
    assert sum(r["clips"] for r in rows) == len(clips_table(bucketed_run))
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert all(r["bucket"] == f"{r['num_frames']}x{r['frame_height']}x{r['frame_width']}" for r in rows)
