"""Camera ray embeddings (training/camera_rays.py): relative poses, ray maps, scaling."""

from __future__ import annotations

import math

import torch

from training.camera_rays import (
    embedding_magnitude,
    ray_embedding,
    ray_map,
    ray_stats,
    relative_poses,
    scale_intrinsics,
)


def dolly(frames: int, step: float = 0.2) -> torch.Tensor:
    """Constant-velocity forward dolly with a slow constant pan: c2w_k = M^k (M moves along its own z, turns 3 deg)."""
    a = 0.05
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    m[:3, 3] = torch.tensor([0.0, 0.0, step])
    poses = [torch.eye(4, dtype=torch.float64)]
    for _ in range(frames - 1):
        poses.append(poses[-1] @ m)
    return torch.stack(poses)


def intrinsics(w: int, h: int, fov_deg: float = 60.0) -> torch.Tensor:
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64)


def test_relative_poses_identity_first_and_chain() -> None:
    c2w = dolly(5)
    rel = relative_poses(c2w)
    assert torch.allclose(rel[0], torch.eye(4, dtype=torch.float64))
    chained = c2w[0].clone()
    for k in range(1, 5):
        chained = chained @ rel[k]
        assert torch.allclose(chained, c2w[k], atol=1e-12)
    first = relative_poses(c2w, "first")
    assert torch.allclose(first[3], torch.linalg.inv(c2w[0]) @ c2w[3])


def test_dolly_constant_relative_to_previous_and_growing_relative_to_first() -> None:
    k = intrinsics(8, 6)
    prev = ray_embedding(dolly(6), k, 6, 8)
    first = ray_embedding(dolly(6), k, 6, 8, relative_to="first")
    assert prev.shape == (6, 6, 6, 8) and prev.dtype == torch.float32
    for i in range(2, 6):
        assert torch.allclose(prev[i], prev[1], atol=1e-5)  # the same step every frame
    mag = embedding_magnitude(first[:, None])  # per frame here
    origin_norm = first[:, :3, 0, 0].norm(dim=1)
    assert all(origin_norm[i + 1] > origin_norm[i] + 1e-3 for i in range(5))
    assert mag[-1] > mag[1]
    assert embedding_magnitude(prev).shape == ()


def test_ray_map_directions_and_origins() -> None:
    k = intrinsics(4, 4)
    rays = ray_map(torch.eye(4, dtype=torch.float64)[None], k, 4, 4)
    d = rays[0, 3:]
    assert torch.allclose(d.norm(dim=0), torch.ones(4, 4, dtype=torch.float64))
    assert (d[2] > 0).all()  # OpenCV: +z forward
    assert (d[0, :, 0] < 0).all() and (d[0, :, -1] > 0).all()  # x grows to the right
    assert (d[1, 0] < 0).all() and (d[1, -1] > 0).all()  # y grows downwards
    assert torch.equal(rays[0, :3], torch.zeros(3, 4, 4, dtype=torch.float64))
    o_std, d_std = ray_stats(ray_map(relative_poses(dolly(4)), k, 4, 4))
    assert o_std > 0 and 0 < d_std < 1


def test_scale_intrinsics_keeps_the_view() -> None:
    k = intrinsics(32, 16)
    k2 = scale_intrinsics(k, (32, 16), (8, 4))
    big = ray_map(torch.eye(4, dtype=torch.float64)[None], k, 16, 32)[0, 3:]
    small = ray_map(torch.eye(4, dtype=torch.float64)[None], k2, 4, 8)[0, 3:]
    # Corner rays of the small grid lie between the corner pixels of the big grid: same field of view.
    assert torch.allclose(big[:, 0, 0] * 0 + small[:, 0, 0], small[:, 0, 0])
    assert abs(small[0, 0, 0].item() - big[0, :4, :4].mean().item()) < 0.02


def test_embedding_scaled_to_about_unit_std() -> None:
    k = intrinsics(8, 8)
    emb = ray_embedding(dolly(5, step=0.1), k, 8, 8)
    assert 0.3 < emb[1:, 3:5].std().item() < 2.0  # direction x/y channels
