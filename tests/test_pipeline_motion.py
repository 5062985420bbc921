"""Flow, motion scores and warped noise through the whole pipeline (smoke preset on the sample corpus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from annotators.noise_warp import WARPER_VERSION, ks_normal
from curation.duck import connect
from curation.shards import iter_clips, read_manifest
from tests.conftest import run_pipeline


def clips_by_video(run_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in iter_clips(run_dir):
        out.setdefault(Path(row["source_uri"]).stem, []).append(row)
    return out


def test_shards_carry_flow_and_warped_noise_as_the_manifest_says(smoke_run):
    manifest = read_manifest(smoke_run)
    tensors = manifest["tensors"]
    assert tensors["flow"]["shape"] == [7, 2, 64, 64] and tensors["warped_noise"]["shape"] == [8, 4, 8, 8]
    assert manifest["noise"] == {
        "channels": 4,
        "factor": 8,
        "grid": [8, 8],
        "temporal_factor": 1,
        "temporal": "every frame",
        "warp_scale": 16,
        "seed": 0,
        "warper_version": WARPER_VERSION,
        "beta_applied": False,
    }
    rows = list(iter_clips(smoke_run))
    assert len(rows) == manifest["curation"]["clips_after"] > 0
    for row in rows:
        for name in ("flow", "warped_noise", "global_homography"):
            assert list(row[name].shape) == tensors[name]["shape"] and row[name].dtype == tensors[name]["dtype"]
            assert np.isfinite(row[name]).all()
        assert row["noise_warper_version"] == WARPER_VERSION and row["noise_seed"] >= 0
        assert row["flow_backend"] == "dis/medium"
    noise = np.concatenate([r["warped_noise"].astype(np.float32).ravel() for r in rows])
    assert abs(noise.mean()) < 5 / np.sqrt(noise.size) and abs(noise.std() - 1) < 5 / np.sqrt(2 * noise.size)
    # KS needs independent draws: the frames of a clip carry the same noise moved along the flow (a static clip
    # repeats it exactly), so only each clip's first frame goes in; pooling every frame overstated the sample size.
    first = np.concatenate([r["warped_noise"][0].astype(np.float32).ravel() for r in rows])
    assert ks_normal(torch.from_numpy(first))[1] > 1e-3


def test_motion_scores_rank_the_corpus_by_truth(smoke_run):
    con = connect(smoke_run)
    scores = {
        Path(uri).stem: (mean, p90, residual, backend)
        for uri, mean, p90, residual, backend in con.sql(
            "SELECT source_uri, motion_mean, motion_p90, motion_residual, flow_backend FROM clips"
        ).fetchall()
    }
    assert all(v[3] == "dis/medium" and v[0] is not None for v in scores.values())
    static, pan, objects = scores["static"], scores["pan_right"], scores["objects"]
    assert static[0] < 0.01 * pan[0]  # a still camera over a still scene barely moves
    assert pan[2] < 0.05 * pan[0]  # a camera turn is a homography: almost nothing is left over
    assert objects[2] > 0.5 * objects[0]  # a still camera watching moving objects: most motion is residual
    for name in ("forward", "strafe_right"):  # parallax between planes is not one homography
        assert scores[name][2] > 3 * pan[2]
    assert all(v[1] >= v[0] * 0.9 for v in scores.values())  # p90 is not below the mean (up to flat fields)


def test_warped_noise_follows_the_camera(smoke_run):
    clips = clips_by_video(smoke_run)
    still = clips["static"][0]["warped_noise"].astype(np.float32)
    assert all(np.array_equal(still[0], frame) for frame in still[1:])  # no motion: the same noise
    pan = clips["pan_right"][0]["warped_noise"].astype(np.float32)
    same_place = np.mean([np.corrcoef(pan[t].ravel(), pan[t + 1].ravel())[0, 1] for t in range(len(pan) - 1)])
    assert same_place < 0.9  # content moved, so the noise moved with it (and some entered fresh)


def test_raft_runs_through_the_real_loading_path(corpus_dir, tmp_path, ray_local):
    torchvision = pytest.importorskip("torchvision")

    weights = tmp_path / "raft_small.pth"
    torch.save(torchvision.models.optical_flow.raft_small(weights=None).state_dict(), weights)
    single = tmp_path / "in"
    single.mkdir()
    (single / "pan_right.mp4").symlink_to(corpus_dir / "pan_right.mp4")
    run_dir = tmp_path / "run"
    args = ["--input", str(single), "--output", str(run_dir), "--set", "flow.backend=raft_small"]
    assert run_pipeline(*args, "--set", f"flow.weights={weights}", "--set", "flow.raft_iters=2") == 0
    rows = list(iter_clips(run_dir))
    assert rows and all(r["flow_backend"] == "raft_small" for r in rows)
    assert all(np.isfinite(r["flow"]).all() and r["flow"].shape == (7, 2, 64, 64) for r in rows)


def test_camera_columns_and_tensors_reach_the_tables(smoke_run):
    manifest = read_manifest(smoke_run)
    assert manifest["camera"]["fov_x_deg"] == 60.0 and len(manifest["camera"]["keys"]) == 9
    assert manifest["tensors"]["camera_c2w"]["shape"] == [8, 4, 4]
    for row in iter_clips(smoke_run, columns=["camera_c2w", "camera_tokens", "qcm_token", "camera_text"]):
        assert row["camera_c2w"].shape == (8, 4, 4) and np.allclose(row["camera_c2w"][0], np.eye(4))
        assert row["camera_tokens"].shape == (7,) and row["camera_tokens"].dtype == np.int16
        assert 0 <= row["qcm_token"] <= 80 and row["camera_text"]
    con = connect(smoke_run)
    static = con.sql("SELECT qcm_token, camera_static, camera_confidence FROM clips WHERE source_uri LIKE '%static%'")
    assert static.fetchall()[0][:2] == (0, True)
    segments = con.sql("SELECT sum(s.end_step - s.start_step) FROM (SELECT unnest(qcm_segments) AS s FROM clips)")
    assert segments.fetchall()[0][0] == 7 * manifest["curation"]["clips_after"]  # every step of every clip
