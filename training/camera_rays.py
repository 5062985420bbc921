"""Camera-motion embeddings for world exploration (AAPT Appendix I): per-pixel ray origin and direction.

Pure tensor functions (no model, no I/O). Conventions follow the camera annotator: `camera_c2w` (T, 4, 4) is
camera-to-world in OpenCV axes (x right, y down, z forward) and `camera_intrinsics` (3, 3) is the pinhole K on the
flow grid. AAPT's changes to CameraCtrl II, all made here:

* poses relative to the *previous* frame (T_{k-1}^-1 T_k), not the first, so the embedding encodes only the camera
  change between consecutive frames and stays bounded on long rollouts (frame 0 gets the identity);
* the ray origin o and unit direction d per pixel (6 channels), not Plücker (d, o x d);
* scaled to about unit standard deviation (`ORIGIN_STD`, `DIRECTION_STD`: statistics of the sample corpus).

`ray_embedding` chains the steps; `chain_poses` undoes `relative_poses` (steps back to camera-to-world, for rollouts
driven by sampled steps); `embedding_magnitude` / `clip_magnitude` give the per-clip value the curation outlier
filter thresholds (`curation.camera_filter`).
"""

from __future__ import annotations

import math

import torch

RAY_CHANNELS = 6  # origin (3) + direction (3)
# Scales measured on the sample corpus: `make run` (default preset, 8 fps, buckets of 9-49 frames) re-finalized with
# `--set filters.camera.enabled=true`, which drops one of 42 candidates, whip_pan (a pure pan whose one bad step moves
# 0.054, against <= 0.005 for every real move), then `CameraBank.from_source(run, temporal_factor=f).ray_origin_std()`
# over the 32 curated clips.
# * Origins (per-step camera translation, each clip's frame-0 identity included, as the loader serves it): std
#   5.97e-4 per stored frame (480 frames) and 2.18e-3 per latent frame of a 4x video VAE (144 latent frames, each
#   step 4 stored frames). Only 3 of the 32 clips translate, so the std is small and a real move is several std
#   (forward ~6, strafe ~8.5 at most): re-measure on a production corpus.
# * Directions (`ray_stats` on the frames / 8 grid of the same clips): std 0.487 over all channels and pixels
#   (x 0.30, y 0.22, z 0.055 around a mean of 0.93), so one common scale of 0.5 puts them near unit std; z is not
#   centred (the origins carry the motion, centring would add nothing).
ORIGIN_STD = 6.0e-4  # per stored-frame step (pixel space: one latent frame per stored frame)
LATENT_ORIGIN_STD = {1: ORIGIN_STD, 4: 2.2e-3}  # per latent step, by the VAE's temporal factor (the measured ones)
DIRECTION_STD = 0.5
RELATIVE = ("previous", "first")


def relative_poses(c2w: torch.Tensor, relative_to: str = "previous") -> torch.Tensor:
    """(..., T, 4, 4) poses of frame k in the camera frame of k-1 ("previous"; frame 0 = identity) or of frame 0."""
    if relative_to not in RELATIVE:
        raise ValueError(f"relative_to must be one of {RELATIVE}, got {relative_to!r}")
    c2w = c2w.double()
    if relative_to == "first":
        ref = c2w[..., :1, :, :].expand_as(c2w)
    else:
        ref = torch.cat([c2w[..., :1, :, :], c2w[..., :-1, :, :]], dim=-3)
    return torch.linalg.solve(ref, c2w)  # ref^-1 @ c2w without forming the inverse


def chain_poses(steps: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """(..., S + 1, 4, 4) camera-to-world of (..., S, 4, 4) steps (each the next frame in the previous camera's frame,
    as `relative_poses` gives for frames 1..), starting at `start` (identity when None); float64. The inverse of
    `relative_poses`: `relative_poses(chain_poses(steps))[..., 1:, :, :] == steps`."""
    steps = steps.double()
    pose = torch.eye(4, dtype=torch.float64, device=steps.device).expand(*steps.shape[:-3], 4, 4)
    if start is not None:
        pose = start.double().expand_as(pose)
    out = [pose]
    for k in range(steps.shape[-3]):
        out.append(out[-1] @ steps[..., k, :, :])
    return torch.stack(out, dim=-3)


def origin_std_for(temporal_factor: int) -> float:
    """The origin scale of steps between latent frames `temporal_factor` stored frames apart: the measured one, else
    ORIGIN_STD x factor (what constant velocity gives, an upper bound for a corpus)."""
    if temporal_factor < 1:
        raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
    return LATENT_ORIGIN_STD.get(temporal_factor, ORIGIN_STD * temporal_factor)


def intrinsics_size(k: torch.Tensor) -> tuple[int, int]:
    """(width, height) of the grid a K belongs to, from its principal point: the camera annotator puts it at the
    grid centre ((w - 1) / 2, (h - 1) / 2) of the flow grid, whose size the shards do not store."""
    return max(1, round(2 * float(k[0, 2]) + 1)), max(1, round(2 * float(k[1, 2]) + 1))


def pinhole_intrinsics(
    height: int, width: int, fov_x_deg: float = 60.0, device: torch.device | None = None
) -> torch.Tensor:
    """K (3, 3) float64 of a pinhole with a horizontal field of view, square pixels, the principal point at the
    grid centre (60 degrees: what the camera annotator assumes for source videos)."""
    f = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    rows = [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]]
    return torch.tensor(rows, dtype=torch.float64, device=device)


def scale_intrinsics(k: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """K of a (width, height) grid moved to another grid of the same view (e.g. flow grid -> latent grid).

    Pixel centres at integer coordinates on both grids: u' = (u + 0.5) * s - 0.5."""
    (fw, fh), (tw, th) = from_size, to_size
    sx, sy = tw / fw, th / fh
    out = k.double().clone()
    out[..., 0, 0] *= sx
    out[..., 1, 1] *= sy
    out[..., 0, 2] = (k[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (k[..., 1, 2] + 0.5) * sy - 0.5
    return out


def ray_map(poses: torch.Tensor, k: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., T, 6, h, w) per-pixel ray origin (camera centre) and unit direction of (..., T, 4, 4) poses with K (3, 3)
    (or (..., T, 3, 3)) on an (h, w) grid; float64."""
    poses, k = poses.double(), k.double()
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=poses.device),
        torch.arange(width, dtype=torch.float64, device=poses.device),
        indexing="ij",
    )
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (h, w, 3) homogeneous pixel centres
    cam = torch.linalg.solve(k, pix.reshape(-1, 3).T.expand(*k.shape[:-2], 3, height * width))  # (..., 3, hw)
    rot, origin = poses[..., :3, :3], poses[..., :3, 3]
    dirs = rot @ cam  # broadcast K over frames
    dirs = dirs / dirs.norm(dim=-2, keepdim=True)
    dirs = dirs.reshape(*dirs.shape[:-1], height, width)
    origins = origin[..., :, None, None].expand_as(dirs)
    return torch.cat([origins, dirs], dim=-3)


def normalize_rays(
    rays: torch.Tensor, origin_std: float = ORIGIN_STD, direction_std: float = DIRECTION_STD
) -> torch.Tensor:
    """Channels divided by their scale so the network input has about unit std (AAPT: "roughly 1 std")."""
    if origin_std <= 0 or direction_std <= 0:
        raise ValueError("origin_std and direction_std must be > 0")
    return torch.cat([rays[..., :3, :, :] / origin_std, rays[..., 3:, :, :] / direction_std], dim=-3)


def ray_embedding(
    c2w: torch.Tensor,
    k: torch.Tensor,
    height: int,
    width: int,
    relative_to: str = "previous",
    origin_std: float = ORIGIN_STD,
    direction_std: float = DIRECTION_STD,
) -> torch.Tensor:
    """(..., T, 6, h, w) float32 embedding of a clip's camera: relative poses -> rays -> unit-std scaling.

    `k` must already be on the (h, w) grid (`scale_intrinsics`). Entry k describes the step from frame k-1 to k
    (relative_to="previous"); entry 0 is the identity step."""
    rays = ray_map(relative_poses(c2w, relative_to), k, height, width)
    return normalize_rays(rays, origin_std, direction_std).float()


def ray_stats(rays: torch.Tensor) -> tuple[float, float]:
    """(origin std, direction std) of unscaled `ray_map` output, for corpus-level scales."""
    return float(rays[..., :3, :, :].std()), float(rays[..., 3:, :, :].std())


def embedding_magnitude(embedding: torch.Tensor) -> torch.Tensor:
    """Per-clip max |value| of a (..., T, 6, h, w) embedding: the statistic an outlier filter thresholds."""
    return embedding.abs().flatten(-4).amax(dim=-1)


def clip_magnitude(c2w: torch.Tensor, k: torch.Tensor, grid: int = 8) -> float:
    """`embedding_magnitude` of one clip's (T, 4, 4) poses with K (3, 3) of the annotator, on a `grid` x `grid` view
    of K's own grid: the statistic of the curation outlier filter. The grid hardly matters: origins are the same at
    every pixel and directions are unit vectors (|value| <= 1 / DIRECTION_STD), so large values come only from the
    translation of a step; a coarse grid keeps it cheap for a whole run."""
    k_grid = scale_intrinsics(k, intrinsics_size(k), (grid, grid))
    return float(embedding_magnitude(ray_embedding(c2w, k_grid, grid, grid)))
