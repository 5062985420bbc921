"""AAPT's training stages as loss functions (the loop and optimizers are in `training.trainers`).

Positions follow `training.causal`: a clip of T latent frames is T - pt positions; position j sees the clean frame j
in its recycled channels and the noisy frame j + pt in its input channels (shift by one token frame).

* (a) adapt: teacher-forced flow matching. One t per clip, shifted with s = 24 (`objective.time_shift`); the
  noise of the target frames is the batch's warped noise where present (EquiVDM), else i.i.d.
* (b) distill: consistency distillation on the fixed grid of 32 steps shifted with s = 24, teacher forcing kept,
  no CFG, and the consistency target is the student itself under stop-gradient (no EMA target, as AAPT and iCT).
  The teacher (the frozen stage-(a) model) takes one Euler step from t_n to t_(n+1); the student's data estimate
  f(x, t) = x + (1 - t) v(x, t) must agree between the two points. f(x, 1) = x, so the boundary condition holds by
  construction. Loss: iCT's pseudo-Huber with weights 1 / (t_(n+1) - t_n), normalised to mean 1 over the grid (the
  s = 24 grid's first step is ~1e-3 wide, so the raw weights would span three decades).
* (c) adversarial: student forcing (the generator sees only the first frame, one evaluation per latent frame at
  t = 0, recycling its own output through the KV cache), scored by a causal discriminator with one logit per
  position. The discriminator sees real and fake clips noised at the same unshifted t ~ U(0, 1) with the same noise
  (AAPT follows APT in giving the discriminator timesteps; noising its inputs is our reading, paired so that the
  relativistic difference compares content, not noise draws).
* (d) long: the rollout is `extensions` times (T - overlap) frames longer than the real clips; the discriminator
  judges every window of T frames (stride T - overlap), each paired with the real clip.

Gradients of the rollout (decided here, tested in tests/test_aapt.py): with `detach_recycled` and `detach_cache`
(the defaults) a generated frame's gradient comes only from the evaluation that produced it; its history enters as
constants (Self-Forcing's truncation), so memory is one network evaluation deep per frame and does not grow with the
history's backward graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from training.adversarial import R_LAMBDA, R_SIGMA
from training.camera_rays import RAY_CHANNELS, normalize_rays, origin_std_for, pinhole_intrinsics, ray_map
from training.causal import KVCache, one_step, positions, rollout, teacher_forcing
from training.flow_matching import euler_step, interpolate, make_noise, rand, sample_t, sampling_grid, velocity_target
from training.model import CAMERA_NULL, VideoDiT
from training.objective import ObjectiveConfig

STAGES = ("adapt", "distill", "adversarial", "long")


@dataclass(frozen=True, kw_only=True)
class AAPTConfig:
    """Settings of AAPT's stages (`[aapt]`); the stage itself is `--stage` (recorded as `stage` in the config)."""

    cd_steps: int = 32  # consistency distillation: fixed steps of the grid (AAPT: 32)
    cd_shift: float = 24.0  # time shift of that grid (AAPT: s = 24)
    cd_huber_c: float = 0.0  # pseudo-Huber c; 0 = iCT's 0.00054 * sqrt(values per sample)
    d_lr: float = 0.0  # discriminator learning rate; 0 = optim.lr
    r_sigma: float = R_SIGMA  # approximate R1/R2 perturbation (APT convention, no division by sigma)
    r_lambda: float = R_LAMBDA
    d_taps: tuple[int, ...] = ()  # discriminator blocks pooled into the logit head; () = the last block
    detach_recycled: bool = True  # rollout: own outputs re-enter as constants (see the module docstring)
    detach_cache: bool = True  # rollout: cached keys/values are constants
    extensions: int = 0  # long stage: rollout = T + extensions * (T - overlap) latent frames
    overlap: int = 1  # long stage: latent frames shared by consecutive discriminator windows
    zero_recycle: bool = False  # AAPT App. G ablation: recycled channels zero except the first frame
    camera_bank: bool = True  # long stage: camera of the extended parts from corpus trajectories (else null)

    def __post_init__(self) -> None:
        object.__setattr__(self, "d_taps", tuple(int(i) for i in self.d_taps))
        if self.cd_steps < 1 or self.cd_shift <= 0:
            raise ValueError("aapt.cd_steps must be >= 1 and aapt.cd_shift > 0")
        if self.cd_huber_c < 0 or self.d_lr < 0 or self.r_sigma < 0 or self.r_lambda < 0:
            raise ValueError("aapt.cd_huber_c, d_lr, r_sigma and r_lambda must be >= 0")
        if self.extensions < 0 or self.overlap < 1:
            raise ValueError("aapt.extensions must be >= 0 and aapt.overlap >= 1")


@dataclass(frozen=True)
class Conditions:
    """A batch's conditions at the positions of a clip: text, QCM tokens (B, P) and rays (B, 6, P, h, w)."""

    text_emb: torch.Tensor
    text_mask: torch.Tensor
    camera: torch.Tensor | None
    rays: torch.Tensor | None

    def repeat(self, n: int) -> Conditions:
        """The same conditions for n stacked copies of the batch (windows of a long rollout)."""

        def rep(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.repeat(n, *([1] * (x.ndim - 1)))

        return Conditions(rep(self.text_emb), rep(self.text_mask), rep(self.camera), rep(self.rays))

    def window(self, start: int, count: int) -> Conditions:
        """Positions start .. start + count - 1 (camera and rays; text is per clip)."""
        cam = None if self.camera is None else self.camera[:, start : start + count]
        rays = None if self.rays is None else self.rays[:, :, start : start + count]
        return Conditions(self.text_emb, self.text_mask, cam, rays)


def conditions(
    model: VideoDiT,
    text_encoder: torch.nn.Module,
    batch: Mapping[str, Any],
    drop_text: list[bool] | None = None,
    drop_camera: torch.Tensor | None = None,
) -> Conditions:
    """Text, per-position QCM tokens and rays of a batch (condition dropout where given)."""
    x1 = batch["latents"]
    b, device, pt = x1.shape[0], x1.device, model.patch[0]
    text_emb, text_mask = text_encoder.encode_batch(batch, drop_text or [False] * b)
    camera = None
    tokens = batch.get("camera_tokens")
    if tokens is not None and model.camera_embed is not None:
        has = batch.get("has_camera")
        keep = torch.ones(b, dtype=torch.bool, device=device) if has is None else has.to(device).bool().reshape(b)
        if drop_camera is not None:
            keep = keep & ~drop_camera
        camera = torch.where(keep[:, None], tokens.to(device).long(), CAMERA_NULL)[:, pt - 1 :]
    rays = batch.get("rays")
    rays = positions(rays.to(device).float(), pt) if rays is not None and model.ray_embed is not None else None
    return Conditions(text_emb.to(device), text_mask.to(device), camera, rays)


def forward(model: VideoDiT, x: torch.Tensor, t: torch.Tensor, cond: Conditions, recycled: torch.Tensor):
    """Velocity of a teacher-forced call (positions of one clip)."""
    return model(
        x, t, cond.text_emb, cond.text_mask, camera_tokens=cond.camera, recycled=recycled, rays=cond.rays
    ).velocity


# -- (a) diffusion adaptation -------------------------------------------------------------------------------------


def adapt_losses(
    model: VideoDiT,
    text_encoder: torch.nn.Module,
    batch: Mapping[str, Any],
    cfg: ObjectiveConfig,
    aapt: AAPTConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher-forced flow matching: (loss, {loss, fm}). Draws, in order: t (B,), noise, a (2, B) uniform block."""
    x1 = batch["latents"].float()
    b, device, pt = x1.shape[0], x1.device, model.patch[0]
    t = sample_t(b, generator, cfg.time_shift, logit_normal=cfg.logit_normal, device=device)
    x0 = make_noise(batch, cfg, generator)
    u = rand((2, b), generator)
    drop_text, drop_camera = (u[0] < cfg.p_text_drop).tolist(), (u[1] < cfg.p_camera_drop).to(device)
    tf = teacher_forcing(x1, pt, zero_recycle=aapt.zero_recycle)
    noise = x0[:, :, pt:]
    cond = conditions(model, text_encoder, batch, drop_text, drop_camera)
    v = forward(model, interpolate(noise, tf.target, t), t, cond, tf.recycled)
    fm = (v.float() - velocity_target(noise, tf.target)).square().mean()
    return fm, {"loss": fm.item(), "fm": fm.item()}


# -- (b) consistency distillation ---------------------------------------------------------------------------------


def grid_weights(grid: torch.Tensor) -> torch.Tensor:
    """Per-interval weights 1 / dt of a time grid, normalised to mean 1."""
    w = 1.0 / (grid[1:] - grid[:-1]).double()
    return (w / w.mean()).float()


def pseudo_huber(diff: torch.Tensor, c: float = 0.0) -> torch.Tensor:
    """iCT's sqrt(||d||^2 + c^2) - c per sample (B,); c = 0 takes 0.00054 * sqrt(values per sample)."""
    flat = diff.flatten(1).float()
    c = c or 0.00054 * math.sqrt(flat.shape[1])
    return torch.sqrt(flat.square().sum(dim=1) + c * c) - c


def distill_losses(
    model: VideoDiT,
    teacher: VideoDiT,
    text_encoder: torch.nn.Module,
    batch: Mapping[str, Any],
    cfg: ObjectiveConfig,
    aapt: AAPTConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Consistency distillation with teacher forcing: (loss, {loss, cd, t}). Draws: the interval (B,), noise."""
    x1 = batch["latents"].float()
    b, device, pt = x1.shape[0], x1.device, model.patch[0]
    grid = sampling_grid(aapt.cd_steps, aapt.cd_shift, device)
    n = (rand((b,), generator, device) * aapt.cd_steps).long().clamp_max(aapt.cd_steps - 1)
    x0 = make_noise(batch, cfg, generator)
    tf = teacher_forcing(x1, pt)
    noise = x0[:, :, pt:]
    t_a, t_b = grid[n], grid[n + 1]
    cond = conditions(model, text_encoder, batch)  # no CFG: no condition dropout
    x_a = interpolate(noise, tf.target, t_a)
    with torch.no_grad():
        x_b = euler_step(x_a, forward(teacher, x_a, t_a, cond, tf.recycled).float(), t_b - t_a)
        target = one_step(x_b, forward(model, x_b, t_b, cond, tf.recycled).float(), t_b)
    pred = one_step(x_a, forward(model, x_a, t_a, cond, tf.recycled).float(), t_a)
    weight = grid_weights(grid)[n]
    cd = (weight * pseudo_huber(pred - target, aapt.cd_huber_c)).mean()
    return cd, {"loss": cd.item(), "cd": cd.item(), "t": t_a.mean().item()}


# -- (c, d) adversarial post-training in student forcing ---------------------------------------------------------


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """First frames of the discriminator windows of a rollout of `length` frames: stride size - overlap."""
    stride = size - overlap
    if stride < 1 or length < size or (length - size) % stride:
        raise ValueError(f"a rollout of {length} frames does not split into windows of {size} overlapping {overlap}")
    return list(range(0, length - size + 1, stride))


def rollout_length(frames: int, aapt: AAPTConfig, pt: int) -> int:
    """Latent frames of a student-forcing rollout for real clips of `frames` (long stage: with the extensions)."""
    if aapt.extensions and (aapt.overlap % pt or frames - aapt.overlap < pt):
        raise ValueError(f"aapt.overlap {aapt.overlap} must be a multiple of pt={pt} and leave >= pt new frames")
    return frames + aapt.extensions * (frames - aapt.overlap)


def student_rollout(
    model: VideoDiT, first: torch.Tensor, noise: torch.Tensor, cond: Conditions, aapt: AAPTConfig
) -> torch.Tensor:
    """The generator's clip (B, C, pt + P*pt, h, w): `first`, then one 1-NFE step per position from `noise`."""
    cache = KVCache.for_model(model, detach=aapt.detach_cache)
    frames = rollout(
        model,
        first,
        cond.text_emb,
        cond.text_mask,
        noise,
        t=0.0,
        cache=cache,
        detach_recycled=aapt.detach_recycled,
        camera_tokens=cond.camera,
        rays=cond.rays,
    )
    return torch.cat([first.to(frames.dtype), frames], dim=2)


def score(
    discriminator: torch.nn.Module, clip: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: Conditions, pt: int
) -> torch.Tensor:
    """Per-position logits (B, P) of clips (B, C, T, h, w): teacher-forced, target frames noised to x_t with eps."""
    tf = teacher_forcing(clip, pt)
    xt = interpolate(eps, tf.target, t)
    return discriminator(
        xt, t, cond.text_emb, cond.text_mask, camera_tokens=cond.camera, recycled=tf.recycled, rays=cond.rays
    )


def fake_windows(fake: torch.Tensor, size: int, overlap: int) -> tuple[torch.Tensor, list[int]]:
    """Windows of a rollout stacked on the batch axis (window-major: rows w*B .. (w+1)*B - 1), and their starts."""
    starts = window_starts(fake.shape[2], size, overlap) if fake.shape[2] > size else [0]
    return torch.cat([fake[:, :, s : s + size] for s in starts], dim=0), starts


def window_conditions(cond: Conditions, starts: list[int], positions_per_window: int) -> Conditions:
    """Conditions of stacked windows (window-major), sliced from the rollout's per-position conditions."""
    parts = [cond.window(s, positions_per_window) for s in starts]
    cat = lambda xs: None if xs[0] is None else torch.cat(xs, dim=0)  # noqa: E731
    return Conditions(
        cat([p.text_emb for p in parts]),
        cat([p.text_mask for p in parts]),
        cat([p.camera for p in parts]),
        cat([p.rays for p in parts]),
    )


def extend_camera(camera: torch.Tensor | None, total: int, bank_tokens: torch.Tensor | None) -> torch.Tensor | None:
    """Per-position tokens of a rollout of `total` positions: the real clip's, then the bank's (or null)."""
    if camera is None:
        return None
    extra = total - camera.shape[1]
    if extra <= 0:
        return camera[:, :total]
    if bank_tokens is None:
        tail = torch.full((camera.shape[0], extra), CAMERA_NULL, dtype=camera.dtype, device=camera.device)
    else:
        tail = bank_tokens[:, :extra].to(device=camera.device, dtype=camera.dtype)
    return torch.cat([camera, tail], dim=1)


def extend_rays(
    rays: torch.Tensor | None, total: int, bank_poses: torch.Tensor | None, temporal_factor: int = 1
) -> torch.Tensor | None:
    """Rays (B, 6, total, h, w) of a rollout: the real clip's, then the bank's relative poses (B, extra, 4, 4) as
    rays on the same grid (a 60-degree pinhole, the camera annotator's default field of view), else zeros."""
    if rays is None or rays.shape[2] >= total:
        return None if rays is None else rays[:, :, :total]
    b, _, _, h, w = rays.shape
    extra = total - rays.shape[2]
    if bank_poses is None:
        tail = rays.new_zeros((b, RAY_CHANNELS, extra, h, w))
    else:
        k = pinhole_intrinsics(h, w, device=rays.device)
        tail = ray_map(bank_poses[:, :extra].to(rays.device), k, h, w)  # relative steps: already "previous"
        tail = normalize_rays(tail, origin_std_for(temporal_factor)).permute(0, 2, 1, 3, 4).to(rays.dtype)
    return torch.cat([rays, tail], dim=2)
