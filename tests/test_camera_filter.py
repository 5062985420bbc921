"""Camera-embedding outlier filter (curation/camera_filter.py, `[filters.camera]`): the rule on arrays, injected
spikes dropped and normal trajectories kept, and the wiring in the pipeline's global curation (rejected rows, the
recorded threshold, the SQL selection)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.camera_filter import CameraFilterConfig, camera_magnitude, find_outliers, outlier_threshold
from curation.duck import connect
from curation.selection import select_training_set
from curation.shards import decode_tensor, read_manifest
from pipelines.config import ConfigError, RunConfig, load_config
from tests.conftest import run_pipeline
from training.camera_rays import ORIGIN_STD

ON = CameraFilterConfig(enabled=True)


def table(run_dir: Path, name: str) -> list[dict]:
    return pq.read_table(run_dir / name / f"{name}.parquet").to_pylist()


def intrinsics(w: int = 64, h: int = 36, fov_deg: float = 60.0) -> np.ndarray:
    """K as the camera annotator makes it: principal point at the grid centre."""
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=np.float32)


def trajectory(steps: np.ndarray) -> np.ndarray:
    """(T, 4, 4) camera-to-world of (T-1, 3) translations per step (no rotation), frame 0 = identity."""
    c2w = np.tile(np.eye(4, dtype=np.float32), (len(steps) + 1, 1, 1))
    c2w[1:, :3, 3] = np.cumsum(steps, axis=0)
    return c2w


def corpus(rng: np.random.Generator, n: int = 40) -> list[np.ndarray]:
    """Normal clips: half still, the rest moving a few ORIGIN_STD per step (a real move is up to ~9 std)."""
    clips = []
    for i in range(n):
        speed = 0.0 if i % 2 else rng.uniform(1.0, 8.0) * ORIGIN_STD
        direction = rng.normal(size=3)
        steps = np.tile(direction / np.linalg.norm(direction) * speed, (16, 1))
        clips.append(trajectory(steps + rng.normal(scale=0.1 * ORIGIN_STD, size=steps.shape)))
    return clips


def test_injected_spikes_are_dropped_and_normal_clips_kept() -> None:
    rng = np.random.default_rng(0)
    clips = corpus(rng)
    spikes = {5: 0.05, 17: 0.3, 30: 2.0}  # one bad step of that translation, mid-clip (whip_pan's was 0.054)
    for i, jump in spikes.items():
        steps = np.diff(clips[i][:, :3, 3], axis=0)
        steps[7] += jump * np.array([0.6, 0.0, 0.8])
        clips[i] = trajectory(steps)
    k = intrinsics()
    magnitudes = [camera_magnitude(c, k) for c in clips]
    rule, dropped = find_outliers(magnitudes, ON)
    assert sorted(i for i, _ in dropped) == sorted(spikes)
    assert rule.clips == len(clips) and rule.threshold == pytest.approx(ON.min_threshold)  # the floor decides here
    normal = [m for i, m in enumerate(magnitudes) if i not in spikes]
    assert max(normal) < rule.threshold < min(magnitudes[i] for i in spikes)
    for i, detail in dropped:  # the value and the rule are in the detail
        assert f"{magnitudes[i]:.4g}" in detail and f"threshold {rule.threshold:.4g}" in detail
        assert "filters.camera.min_threshold=20" in detail and f"over {len(clips)} clips" in detail
    # Without the floor, a corpus that is half still has a MAD near the stillness: the robust term alone would cut
    # into the real moves. That is why the floor exists.
    _, unfloored = find_outliers(magnitudes, CameraFilterConfig(enabled=True, min_threshold=0.0))
    assert len(unfloored) > len(spikes)


def test_robust_term_rules_a_spread_out_corpus() -> None:
    values = list(np.linspace(10.0, 30.0, 41)) + [200.0]  # median 20.5, MAD 5.25: a corpus moving a lot
    rule, dropped = find_outliers(values, ON)
    assert rule.median == pytest.approx(float(np.median(values)))
    assert rule.mad == pytest.approx(float(np.median(np.abs(np.array(values) - rule.median))))
    assert rule.threshold == pytest.approx(rule.median + 6.0 * 1.4826 * rule.mad) and rule.threshold > 20.0
    assert [i for i, _ in dropped] == [41]
    assert outlier_threshold(values, CameraFilterConfig(enabled=True, mad_k=1.0)).threshold < rule.threshold


def test_clips_without_camera_data_are_kept_and_broken_ones_dropped() -> None:
    k = intrinsics()
    still = trajectory(np.zeros((8, 3)))
    assert camera_magnitude(None, k) is None and camera_magnitude(still, None) is None
    assert camera_magnitude(still, k) == pytest.approx(2.0, abs=0.05)  # directions only: 1 / DIRECTION_STD at most
    broken = still.copy()
    broken[3, 0, 3] = np.nan
    assert camera_magnitude(broken, k) == math.inf and camera_magnitude(still[:, :3], k) == math.inf
    rule, dropped = find_outliers([None, 2.0, math.inf, 2.1, None], ON)
    assert rule.clips == 2 and [i for i, _ in dropped] == [2] and "not finite" in dropped[0][1]
    rule, dropped = find_outliers([None, None], ON)  # no camera data at all: no threshold, nothing dropped
    assert rule.threshold is None and rule.clips == 0 and dropped == []


def test_config_defaults_off_and_validates() -> None:
    cfg = load_config(None, ["filters.camera.enabled=true", "filters.camera.mad_k=4"])
    assert cfg.filters.camera == CameraFilterConfig(enabled=True, mad_k=4.0)
    assert not RunConfig().filters.camera.enabled
    # A selection-only setting: re-selecting an existing run recomputes nothing.
    assert cfg.work_hash() == RunConfig().work_hash()
    for bad in ("filters.camera.mad_k=-1", "filters.camera.min_threshold=nan", "filters.camera.nope=1"):
        with pytest.raises(ConfigError, match="filters.camera"):
            load_config(None, [bad])


def _spike_rows(run: Path, count: int) -> list[str]:
    """Give `count` curated clips of the run a jump of 0.5 (~800 ORIGIN_STD) in their camera at step 3, in place."""
    curated = {c["clip_id"] for c in table(run, "clips")}
    spiked: list[str] = []
    for path in sorted((run / "shards").glob("*.parquet")):
        meta = pq.read_metadata(path)
        stored = pq.read_table(path)
        rows = stored.to_pylist()
        changed = False
        for row in rows:
            if len(spiked) < count and row["clip_id"] in curated and row.get("camera_c2w") is not None:
                c2w = decode_tensor(row, "camera_c2w")
                c2w[3:, 0, 3] += 0.5
                row["camera_c2w"] = c2w.astype(np.float32).tobytes()
                spiked.append(row["clip_id"])
                changed = True
        if changed:
            out = pa.Table.from_pylist(rows, schema=stored.schema)
            pq.write_table(out, path, row_group_size=meta.row_group(0).num_rows)
        if len(spiked) == count:
            return spiked
    raise AssertionError(f"the run has fewer than {count} curated clips with camera poses")


def test_pipeline_sends_outliers_to_rejected_and_records_the_threshold(
    smoke_run: Path, corpus_dir: Path, tmp_path: Path, ray_local
) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    spiked = _spike_rows(run, 2)
    args = ["--stage=all", "--input", str(corpus_dir), "--output", str(run)]
    assert run_pipeline(*args, "--set", "filters.camera.enabled=true") == 0
    record = read_manifest(run)["curation"]["filters"]["camera"]
    threshold = record["threshold"]
    assert threshold >= 20.0 and record["clips"] == read_manifest(run)["curation"]["clips_before"]
    outliers = [r for r in table(run, "rejected") if r["reason"] == "camera_outlier"]
    assert {r["clip_id"] for r in outliers} >= set(spiked)
    assert all(r["stage"] == "filters" and f"threshold {threshold:.4g}" in r["detail"] for r in outliers)
    assert record["excluded"] == len(outliers)
    # The rule holds over every candidate (every shard row): above the threshold out, the rest not dropped by it.
    con = connect(run)
    clips = {r[0] for r in con.sql("SELECT clip_id FROM clips").fetchall()}
    for clip_id, c2w, k in _stored_cameras(run):
        m = camera_magnitude(c2w, k)
        assert (m > threshold) == (clip_id in {r["clip_id"] for r in outliers}), clip_id
    assert not {r["clip_id"] for r in outliers} & clips
    # The SQL selection reuses the run's decisions: still exactly the pipeline's clips.
    selected, _ = select_training_set(run)
    assert set(selected.column("clip_id").to_pylist()) == clips
    # Off again: the spiked clips come back (nothing was recomputed, only re-selected).
    assert run_pipeline(*args) == 0
    assert set(spiked) <= {c["clip_id"] for c in table(run, "clips")}
    assert "camera" not in read_manifest(run)["curation"].get("filters", {})


def _stored_cameras(run: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for path in sorted((run / "shards").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            out.append((row["clip_id"], decode_tensor(row, "camera_c2w"), decode_tensor(row, "camera_intrinsics")))
    return out
