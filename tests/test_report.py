"""The run's HTML report (curation.report): written by the pipeline, self-contained, robust to missing data, and
rendered without errors or broken images by a real browser when one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.duck import connect, load_named, run_query
from curation.report import main, write_report
from curation.report.overview import _shapes_note, _store_note
from curation.shards import encode_tensor, read_rows
from tests.conftest import run_pipeline

SECTIONS = ("counts", "buckets", "histograms", "galleries", "qcm", "clips", "timing")
MAX_BYTES = 3_000_000


def section(html: str, sid: str) -> str:
    match = re.search(rf"<section id='{sid}'>(.*?)</section>", html, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


def assert_well_formed(html: str) -> None:
    for sid in SECTIONS:
        assert html.count(f"<section id='{sid}'>") == 1
        assert "<h2>" in section(html, sid)
    # Self-contained: nothing is fetched (no URL at all; images are data URIs).
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(?:src|href)=['"](?!data:|#)""", html)
    assert len(html.encode()) < MAX_BYTES


def test_pipeline_writes_the_report(smoke_run):
    path = smoke_run / "report.html"
    assert path.exists()
    html = path.read_text()
    assert_well_formed(html)
    assert str(smoke_run.resolve()) in html
    assert html.count("<img") > 10
    assert "id='hist-motion_mean'" in html and "id='hist-event_score'" in html
    assert "flow (middle pair)" in html and "camera path" in html and "event activity" in html


def test_cli_writes_elsewhere_and_refuses_a_non_run(smoke_run, tmp_path, capsys):
    out = tmp_path / "sub" / "copy.html"
    assert main([str(smoke_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "MB" in printed
    assert_well_formed(out.read_text())
    assert not list(out.parent.glob(".*.tmp"))

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not a run directory" in err[0]


def test_buckets_section_lists_each_bucket_with_its_clips(smoke_run):
    rows = run_query(connect(smoke_run), load_named("bucket_distribution")).to_pylist()
    assert rows and sum(r["clips"] for r in rows) > 0
    buckets = section((smoke_run / "report.html").read_text(), "buckets")
    for r in rows:
        assert f"<tr><td>{r['bucket']}</td><td class='num'>{r['clips']:,}</td>" in buckets
    assert f"the single fixed shape {rows[0]['bucket']}" in buckets and "Frames stored: raw" in buckets
    # A manifest from before buckets and frames_store says so instead of failing.
    assert _shapes_note(None) == _store_note(None) == _shapes_note({}) == _store_note({}) == "not recorded"
    assert _shapes_note({"enabled": True, "buckets": ["33x256x448", "33x448x256"], "windows": 2}) == (
        "buckets on: 2 buckets (33x256x448, 33x448x256), 2 windows per clip"
    )
    assert _store_note({"store": "video", "codec": "h264", "crf": 11}) == "video (h264, CRF 11)"


def test_report_with_no_curated_clips_shows_no_data(smoke_run, corpus_dir, tmp_path, ray_local):
    """Re-selecting the run with a threshold nothing passes: every shard row is dropped by the filters."""
    run_dir = tmp_path / "none_kept"
    shutil.copytree(smoke_run, run_dir)
    (run_dir / "report.html").unlink()
    args = ["--input", str(corpus_dir), "--output", str(run_dir), "--set", "filters.min.sharpness=1e9"]
    assert run_pipeline("--stage=all", *args) == 0
    html = (run_dir / "report.html").read_text()
    assert_well_formed(html)
    assert "no-data" in section(html, "qcm") and "no-data" in section(html, "clips")
    assert "no-data" in section(html, "buckets")
    hist = section(html, "histograms")
    assert "min 1e+09 →" in hist and "kept 0" in hist  # the threshold, pinned to the edge, and no kept clip
    assert "low_sharpness" in section(html, "galleries") and "low_sharpness" in section(html, "counts")


def test_report_without_flow_leaves_those_parts_out(corpus_dir, tmp_path, ray_local):
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(corpus_dir / "forward.mp4", videos)
    run_dir = tmp_path / "noflow"
    assert (
        run_pipeline("--stage=all", "--input", str(videos), "--output", str(run_dir), "--set", "flow.backend=none") == 0
    )
    html = (run_dir / "report.html").read_text()
    assert_well_formed(html)
    assert "id='hist-motion_mean'" not in html and "id='hist-sharpness'" in html
    clips = section(html, "clips")
    assert "frames" in clips and "flow (middle pair)" not in clips and "warped noise" not in clips
    # Rendering again gives the same bytes: nothing random or time-dependent in the report.
    assert write_report(run_dir, tmp_path / "again.html").read_text() == html


def test_null_tensors_are_left_out(tmp_path):
    """A null tensor (no bytes, dtype or shape) reads as None: the report shows the rest of the row."""
    row = {"clip_id": "a", **encode_tensor("frames", np.zeros((2, 4, 4, 3), np.uint8))}
    row.update(flow=None, flow_dtype=None, flow_shape=None)
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "shards" / "s.parquet")
    (got,) = read_rows(tmp_path, [("s.parquet", 0)], ["clip_id", "frames", "flow"])
    assert got["clip_id"] == "a" and got["frames"].shape == (2, 4, 4, 3) and got["flow"] is None


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_a_headless_browser(smoke_run, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium / google-chrome on PATH")
    url = (smoke_run / "report.html").resolve().as_uri()
    # The report must need no network: Chromium's own background connections (updates, sync) are off as well.
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert 'data-report-ready="1"' in dom
    assert 'data-errors="0"' in dom
    assert 'data-broken-images="0"' in dom
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom

    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,4000", url],
        capture_output=True,
        timeout=60,
        check=True,
    )
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (4000, 1280)
    assert image.std() > 10  # not a blank page
    shutil.copy(shot, Path("/tmp/report_screenshot.png"))  # for a human to look at


def test_gallery_buckets_pick_spread_positions_half_of_them_dropped():
    from curation.report.scores import _pick_bucket

    kept = np.array([True] * 10 + [False] * 10 + [True] * 10)
    picked = _pick_bucket(kept, 6)
    assert picked == sorted(picked) and len(picked) == 6
    assert sum(not kept[i] for i in picked) == 3  # half dropped when there are enough
    assert picked[0] == 0 and picked[-1] == 29  # the kept ones spread to the bucket's ends
    only_kept = _pick_bucket(np.ones(4, bool), 6)
    assert only_kept == [0, 1, 2, 3]  # fewer rows than cards: every one
    assert _pick_bucket(np.array([False, True]), 6) == [0, 1]
