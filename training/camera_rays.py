"""Camera-motion embeddings for world exploration (AAPT Appendix I): per-pixel ray origin and direction.

Pure tensor functions (no model, no I/O). Conventions follow the camera annotator: `camera_c2w` (T, 4, 4) is
camera-to-world in OpenCV axes (x right, y down, z forward) and `camera_intrinsics` (3, 3) is the pinhole K on the
flow grid. AAPT's changes to CameraCtrl II, all made here:

* poses relative to the *previous* frame (T_{k-1}^-1 T_k), not the first, so the embedding encodes only the camera
  change between consecutive frames and stays bounded on long rollouts (frame 0 gets the identity);
* the ray origin o and unit direction d per pixel (6 channels), not Plücker (d, o x d);
* scaled to about unit standard deviation (`ORIGIN_STD`, `DIRECTION_STD`, or statistics of a corpus).

`ray_embedding` chains the steps; `embedding_magnitude` gives the per-clip value the curation outlier filter uses.
"""

from __future__ import annotations

import torch

RAY_CHANNELS = 6  # origin (3) + direction (3)
# Default scales. Directions of a ~60 degree field of view: the x/y components have std ~0.3 and z ~0.05 around ~0.95,
# so one common scale of 0.5 puts the channels near unit std without centring z (centring would hide forward motion
# from nothing: the origin carries it). Per-step origins are camera translations between consecutive latent frames,
# in the annotator's unit-free scale (unit baseline per step at most), so 0.1 is a placeholder until a corpus
# statistic replaces it (`ray_stats`).
ORIGIN_STD = 0.1
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
