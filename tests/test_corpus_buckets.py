"""Golden: the default preset's aspect-ratio buckets on the corpus's wide, square, portrait and 16:9 sources.

One pipeline run with the default preset's `[buckets]` and `frames.windows` (the annotators that do not set the
bucket columns off, dedup keeping every window) over four corpus videos of four display aspect ratios, one of them
portrait through a display matrix and one a single 10 s shot. The clips table must put each in the bucket of its
aspect ratio with crop_fraction <= 0.1, and the long shot's windows must be the ones the window rule plans.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from curation.buckets import available_frames, generated_shape, parse_aspect, plan_windows
from curation.sampling import sampling_stride
from pipelines.config import load_config, preset_path
from pipelines.samples import get_spec, load_truth

# corpus video -> the aspect ratio of the default preset's bucket it must land in
EXPECTED = {"wide_long": "2.39:1", "square": "1:1", "portrait_rotated": "9:16", "pan_right": "16:9"}
LIGHT = [
    "flow.backend=none",
    "noise.enabled=false",
    "camera.enabled=false",
    "events.enabled=false",
    "dedup.enabled=false",
    "runtime.num_cpus=2",
]


@pytest.fixture(scope="module")
def default_run(corpus_dir: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.run import main

    run_dir = tmp_path_factory.mktemp("corpus_buckets") / "run"
    videos = [str(get_spec(name).video_path(corpus_dir)) for name in EXPECTED]
    args = ["--config", str(preset_path("default")), "--stage=all", "--output", str(run_dir), "--input", *videos]
    assert main([*args, *(a for item in LIGHT for a in ("--set", item))]) == 0
    return run_dir


def table(run_dir: Path, name: str) -> list[dict]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{run_dir}/{name}/*.parquet')").to_arrow_table().to_pylist()


def clips_of(run_dir: Path, name: str) -> list[dict]:
    own = [c for c in table(run_dir, "clips") if c["source_uri"].endswith(get_spec(name).file_name)]
    return sorted(own, key=lambda c: c["start_frame"])


def test_the_default_preset_buckets_by_aspect_ratio():
    cfg = load_config()
    assert cfg.buckets.enabled and len(cfg.buckets.shapes()) >= 6 and cfg.frames.windows > 1
    assert {h > w for h, w in cfg.buckets.shapes()} == {True, False}  # portrait and landscape shapes


@pytest.mark.parametrize("name", EXPECTED)
def test_each_aspect_ratio_lands_in_its_bucket_with_little_crop(default_run, corpus_dir, name):
    cfg = load_config(None, LIGHT)
    truth = load_truth(get_spec(name).video_path(corpus_dir))
    height, width = generated_shape(parse_aspect(EXPECTED[name]), cfg.buckets.area, cfg.buckets.multiple)
    clips = clips_of(default_run, name)
    assert clips, f"{name}: no clip"
    names = {b.name for b in cfg.buckets.buckets()}
    for c in clips:
        assert (c["width"], c["height"]) == (truth["width"], truth["height"])  # on screen, after the display matrix
        assert (c["frame_height"], c["frame_width"]) == (height, width) and c["crop_fraction"] <= 0.1
        assert c["bucket"] == f"{c['num_frames']}x{height}x{width}" and c["bucket"] in names
        # a window never crosses a cut of the truth
        assert any(s["start"] <= c["start_frame"] and c["end_frame"] <= s["end"] for s in truth["shots"]), c
    # every shot of the truth long enough for the smallest window gives at least one
    stride = sampling_stride(truth["fps"], cfg.frames)
    smallest = min(cfg.buckets.frames)
    trims = 2 * cfg.scenes.trim_frames  # the frames next to a cut are trimmed off
    for s in truth["shots"]:
        if available_frames(s["end"] - s["start"] - trims, stride) >= smallest:
            assert any(s["start"] <= c["start_frame"] < s["end"] for c in clips), (name, s)


def test_the_rotated_portrait_is_stored_upright(default_run):
    video = next(v for v in table(default_run, "videos") if v["source_uri"].endswith("portrait_rotated.mp4"))
    assert video["rotation"] == 90 and (video["width"], video["height"]) == (270, 480)
    assert all(c["frame_height"] > c["frame_width"] for c in clips_of(default_run, "portrait_rotated"))


def test_the_long_shot_is_covered_by_consecutive_windows(default_run, corpus_dir):
    cfg = load_config(None, LIGHT)
    truth = load_truth(get_spec("wide_long").video_path(corpus_dir))
    (shot,) = truth["shots"]
    windows = clips_of(default_run, "wide_long")
    stride = sampling_stride(truth["fps"], cfg.frames)
    assert {c["frame_stride"] for c in windows} == {stride}
    # exactly the windows the rule plans for the 10 s shot: largest counts first, at most frames.windows, centred
    planned = plan_windows(shot["start"], shot["end"], stride, list(cfg.buckets.frames), cfg.frames.windows)
    assert [(c["start_frame"], c["num_frames"]) for c in windows] == [(w[0], len(w)) for w in planned]
    assert 1 < len(windows) <= cfg.frames.windows
    for a, b in zip(windows, windows[1:], strict=False):
        assert a["end_frame"] == b["start_frame"]  # consecutive: one stride from the last frame to the next window
    # what stays uncovered is less than the smallest window could take
    left = available_frames(shot["end"] - shot["start"], stride) - sum(c["num_frames"] for c in windows)
    assert 0 <= left < min(cfg.buckets.frames)
    covered = sum(c["end_s"] - c["start_s"] for c in windows)
    assert covered == pytest.approx(sum(c["num_frames"] for c in windows) * stride / truth["fps"], abs=1e-6)
    assert truth["duration_s"] - covered < min(cfg.buckets.frames) * stride / truth["fps"]
