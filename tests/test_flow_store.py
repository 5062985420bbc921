"""Flow kept at a lower resolution in the shards (`flow.store_scale`): the math, and a run that stores it."""

from __future__ import annotations

import numpy as np
import pytest

from annotators.flow import downscale_flow
from curation.shards import iter_clips, read_manifest
from pipelines.config import ConfigError, load_config
from tests.conftest import SMOKE, run_pipeline


def test_a_uniform_field_stays_uniform_in_pixels_of_the_smaller_grid():
    flow = np.zeros((3, 2, 16, 24), np.float32)
    flow[:, 0], flow[:, 1] = 4.0, -2.0
    small = downscale_flow(flow, 4)
    assert small.shape == (3, 2, 4, 6)
    np.testing.assert_allclose(small[:, 0], 1.0)
    np.testing.assert_allclose(small[:, 1], -0.5)
    assert downscale_flow(flow, 1) is flow


def test_each_cell_is_the_area_mean():
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(2, 2, 8, 8)).astype(np.float32)
    small = downscale_flow(flow, 2)
    np.testing.assert_allclose(small[1, 0, 2, 3], flow[1, 0, 4:6, 6:8].mean() / 2, rtol=1e-6)


def test_sides_must_divide_and_the_config_says_so():
    with pytest.raises(ValueError, match="divide by 4"):
        downscale_flow(np.zeros((1, 2, 10, 8), np.float32), 4)
    with pytest.raises(ConfigError, match="store_scale must be one of"):
        load_config(SMOKE, ["flow.store_scale=3"])
    with pytest.raises(ConfigError, match="store_scale=8 must divide the flow grid 36x36"):
        load_config(SMOKE, ["flow.store_scale=8", "flow.short_side=36"])


def test_a_run_stores_the_flow_at_a_quarter(corpus_dir, ray_local, tmp_path):
    videos = [str(corpus_dir / v) for v in ("pan_right.mp4", "objects.mp4")]
    args = ["--stage=all", "--input", *videos, "--output", str(tmp_path / "r"), "--set", "flow.store_scale=4"]
    assert run_pipeline(*args) == 0
    manifest = read_manifest(tmp_path / "r")
    assert manifest["flow"]["store_scale"] == 4 and manifest["flow"]["stored_grid"] == [16, 16]
    assert manifest["tensors"]["flow"]["shape"] == [7, 2, 16, 16]
    rows = list(iter_clips(tmp_path / "r", columns=["clip_id", "flow", "warped_noise", "motion_mean"]))
    assert rows
    for r in rows:
        assert r["flow"].shape == (7, 2, 16, 16) and r["warped_noise"].shape == (8, 4, 8, 8)
    # pan_right moves the whole picture right: the stored flow still says so, in pixels of the 16x16 grid
    pans = [r for r in rows if r["motion_mean"] and float(np.median(r["flow"][:, 0])) > 0]
    assert pans
