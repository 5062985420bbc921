"""The loader's camera rays (`data.camera_rays`): `rays` (B, 6, T, h, w) on the batch's latent grid from the stored
camera_c2w + camera_intrinsics, zeros for rows without camera poses, the 1 + 4k rule in latent space."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curation.shards import curated_clip_ids, iter_clips
from training.camera_rays import LATENT_ORIGIN_STD, ORIGIN_STD, ray_embedding, relative_poses, scale_intrinsics
from training.data import DataConfig, clip_rays, make_loader


def all_batches(source: Path, **kw: object) -> list[dict]:
    with make_loader(DataConfig(source=str(source), batch_size=4, drop_last=False, **kw)) as loader:
        return list(loader)


def test_rays_match_an_independent_embedding(smoke_run: Path) -> None:
    clips = {c["clip_id"]: c for c in iter_clips(smoke_run, columns=["clip_id", "camera_c2w", "camera_intrinsics"])}
    seen = 0
    for batch in all_batches(smoke_run, camera_rays=True):
        rays = batch["rays"]
        assert rays.shape == (len(batch["clip_id"]), 6, 8, 8, 8) and rays.dtype == torch.float32
        assert batch["has_camera"].all()
        for i, clip_id in enumerate(batch["clip_id"]):
            clip = clips[clip_id]
            k = torch.from_numpy(clip["camera_intrinsics"]).double()  # on the 64x64 flow grid (= the frames)
            expected = ray_embedding(torch.from_numpy(clip["camera_c2w"]), scale_intrinsics(k, (64, 64), (8, 8)), 8, 8)
            torch.testing.assert_close(rays[i], expected.permute(1, 0, 2, 3))
            assert rays[i, :3, 0].abs().max() == 0  # frame 0: the identity step, no translation
            assert (rays[i, 5] > 0).all()  # every ray looks forward (+z), for a camera that never turns around
            seen += 1
    assert seen == len(clips)
    assert all("rays" not in b for b in all_batches(smoke_run))  # off by default: the batches are unchanged


def _drop_camera(run: Path) -> str:
    """Null the camera tensors and tokens of the first curated row of the copy's shards; its clip id."""
    curated = curated_clip_ids(run)
    # Shards are written as videos finish, so which shard holds the first curated row varies run to run.
    for path in sorted((run / "shards").glob("*.parquet")):
        stored = pq.read_table(path)
        rows = stored.to_pylist()
        victim = next((r for r in rows if r["clip_id"] in curated), None)
        if victim is not None:
            break
    else:
        raise AssertionError("no curated row in any shard")
    meta = pq.read_metadata(path)
    for name in ("camera_c2w", "camera_intrinsics", "camera_tokens"):
        victim[name] = victim[f"{name}_dtype"] = victim[f"{name}_shape"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=stored.schema), path, row_group_size=meta.row_group(0).num_rows)
    return victim["clip_id"]


def test_rows_without_camera_get_zeros_and_no_camera(smoke_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("_samples", "_work"))
    victim = _drop_camera(run)
    found = 0
    for batch in all_batches(run, camera_rays=True):
        for i, clip_id in enumerate(batch["clip_id"]):
            if clip_id == victim:
                assert not batch["has_camera"][i] and batch["rays"][i].abs().max() == 0
                found += 1
            else:
                assert batch["has_camera"][i] and batch["rays"][i, 3:].abs().max() > 0
    assert found == 1


def test_rays_need_camera_poses_in_some_run(smoke_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("_samples", "_work"))
    manifest_path = run / "shards" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in ("camera_c2w", "camera_intrinsics"):
        del manifest["tensors"][name]  # as a run with camera.enabled = false records it
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="data.camera_rays needs camera_c2w"):
        make_loader(DataConfig(source=str(run), camera_rays=True))
    with pytest.raises(ValueError, match="data.camera_rays"):
        DataConfig(source=str(run), camera_rays="yes")  # type: ignore[arg-type]


def dolly(frames: int, step: float) -> np.ndarray:
    """Constant-velocity forward dolly with a slow constant pan (3 degrees a frame)."""
    a = math.radians(3)
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    m[:3, 3] = [0.0, 0.0, step]
    poses = [np.eye(4)]
    for _ in range(frames - 1):
        poses.append(poses[-1] @ m)
    return np.stack(poses).astype(np.float32)


def test_latent_frames_follow_the_one_plus_4k_rule() -> None:
    c2w = dolly(17, 2 * ORIGIN_STD)
    k = np.array([[40.0, 0, 31.5], [0, 40.0, 17.5], [0, 0, 1]], dtype=np.float32)  # a 64x36 flow grid
    rays = clip_rays(c2w, k, 5, (9, 16), factor=4)  # 17 frames -> 5 latent frames on a 9x16 latent grid
    assert rays.shape == (6, 5, 9, 16) and rays.dtype == torch.float32
    on_grid = scale_intrinsics(torch.from_numpy(k).double(), (64, 36), (16, 9))
    every_4th = torch.from_numpy(c2w[::4]).double()  # latent frame j <-> stored frame 4j
    expected = ray_embedding(every_4th, on_grid, 9, 16, origin_std=LATENT_ORIGIN_STD[4])
    torch.testing.assert_close(rays, expected.permute(1, 0, 2, 3))
    # Each latent step is 4 stored steps of the dolly: the same relative move every latent frame.
    for j in range(2, 5):
        torch.testing.assert_close(rays[:, j], rays[:, 1], atol=1e-5, rtol=0)
    step4 = relative_poses(every_4th)[1, :3, 3]
    torch.testing.assert_close(rays[:3, 1, 0, 0].double(), step4 / LATENT_ORIGIN_STD[4], atol=1e-4, rtol=1e-4)
    # Pixel space (factor 1): one latent frame per stored frame, scaled by ORIGIN_STD.
    pixel = clip_rays(c2w, k, 17, (9, 16))
    assert pixel.shape == (6, 17, 9, 16)
    torch.testing.assert_close(pixel[2, 1, 0, 0].double(), torch.tensor(2.0, dtype=torch.float64), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="frames"):
        clip_rays(c2w, k, 4, (9, 16), factor=4)  # 17 stored frames are 5 latent frames, not 4
