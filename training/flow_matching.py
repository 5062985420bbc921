"""Flow-matching conventions for the whole `training` package (the one place they are written down).

Time: t in [0, 1], **t = 0 is noise, t = 1 is data** (EVD / Movie Gen / STIV direction; AAPT and Yume use the
opposite one, so their formulas are mirrored here, never copied verbatim):

* interpolation  x_t = t * x1 + (1 - t) * x0,   x0 = noise, x1 = data (latents);
* target         v = dx_t/dt = x1 - x0 (constant along the straight path);
* sampling       Euler from t = 0 to t = 1: x_{t+dt} = x_t + dt * v(x_t, t).

"Early" sampling steps are therefore small t (high noise); EVD's gate schedule and time weight are written in this
direction. The AAPT/SD3 time shift shift(u, s) = s*u / (1 + (s-1)*u) acts on the *noise level* u = 1 - t, so here
t_shifted = 1 - shift(1 - t, s) = t / (s - (s-1)*t): with s > 1 training and sampling spend more time near noise.

Noise: a clip's warped noise (i.i.d. N(0, 1) per element, correlated along the optical flow) is degraded by gamma
(GWTF) and then mixed with fresh noise by beta (EquiVDM Eq. 5); both operations keep unit variance. Rows without
warped noise get plain i.i.d. N(0, 1), which is what mixing would produce from an i.i.d. input anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from annotators.noise_warp import degrade_noise, mix_noise


class NoiseSettings(Protocol):
    """Anything with the two noise knobs (`ObjectiveConfig` and `NoiseConfig` both qualify)."""

    beta: float
    gamma: float


@dataclass(frozen=True)
class NoiseConfig:
    """Warped-noise mixing for sampling code that has no `ObjectiveConfig` at hand."""

    beta: float = 0.9  # EquiVDM: share of warped noise
    gamma: float = 0.0  # GWTF degradation of the warped noise before mixing


def _bcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """t as a tensor broadcastable against `like`: a scalar, or (B,) viewed as (B, 1, ..., 1)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = t*x1 + (1-t)*x0 (x0 noise, x1 data; t scalar or (B,))."""
    tb = _bcast(t, x1)
    return tb * x1 + (1.0 - tb) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The regression target v = x1 - x0 (noise -> data)."""
    return x1 - x0


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: torch.Tensor | float) -> torch.Tensor:
    """x_{t+dt} = x_t + dt*v (dt scalar or (B,))."""
    return x + _bcast(dt, x) * v


def shift_noise_level(u: torch.Tensor | float, shift: float) -> torch.Tensor:
    """AAPT/SD3 shift on a noise level u (u = 1 is noise): s*u / (1 + (s-1)*u); s > 1 pushes u towards noise."""
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    u = torch.as_tensor(u, dtype=torch.float32) if not isinstance(u, torch.Tensor) else u
    return shift * u / (1.0 + (shift - 1.0) * u)


def time_shift(t: torch.Tensor | float, shift: float) -> torch.Tensor:
    """The shift in this package's direction: 1 - shift_noise_level(1 - t) = t / (s - (s-1)*t).

    Endpoints stay fixed, it is monotone, s = 1 is the identity, and s > 1 moves t towards 0 (noise).
    """
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    t = torch.as_tensor(t, dtype=torch.float32) if not isinstance(t, torch.Tensor) else t
    if shift == 1.0:
        return t.clone()
    # The closed form avoids the cancellation of 1 - (1 - x) near t = 0.
    return t / (shift - (shift - 1.0) * t)


def rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None = None
) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (so results do not depend on where the batch lives), then moved."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev).to(device or gdev)


def sample_t(
    batch: int,
    generator: torch.Generator | None,
    shift: float = 1.0,
    *,
    logit_normal: bool = False,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(batch,) training times: U(0, 1) or logit-normal sigmoid(N(mean, std)) (mean > 0 favours data), then shifted.

    No clamping: the velocity target is finite at both ends of the straight path, so t = 0 or 1 is harmless.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    if logit_normal:
        z = torch.randn((batch,), generator=generator, device=gdev)
        u = torch.sigmoid(z * logit_std + logit_mean)
    else:
        u = torch.rand((batch,), generator=generator, device=gdev)
    return time_shift(u, shift).to(device or gdev)


def sampling_grid(steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """steps + 1 increasing times from exactly 0 (noise) to exactly 1 (data): time_shift(linspace(0, 1))."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = time_shift(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64), shift)
    grid[0], grid[-1] = 0.0, 1.0
    return grid.to(device=device, dtype=torch.float32)


def make_noise(batch: Mapping[str, Any], cfg: NoiseSettings, generator: torch.Generator | None) -> torch.Tensor:
    """x0 for a batch: mix_noise(degrade_noise(warped, gamma), beta) where `noise` is present, else N(0, 1).

    Uses `batch["latents"]` for the shape, optional `batch["noise"]` (same shape) and optional `batch["has_noise"]`
    (B,) bool for rows whose warped noise is missing (those rows get i.i.d. noise). Random numbers are drawn on the
    generator's device, so one seed gives the same noise on CPU and GPU (pass a CUDA generator to avoid a copy).
    """
    latents = batch["latents"]
    shape, device = tuple(latents.shape), latents.device
    gdev = generator.device if generator is not None else torch.device("cpu")
    warped = batch.get("noise")
    if warped is None:
        return torch.randn(shape, generator=generator, device=gdev).to(device=device, dtype=latents.dtype)
    if tuple(warped.shape) != shape:
        raise ValueError(f"batch['noise'] has shape {tuple(warped.shape)}, latents {shape}")
    w = warped.to(device=gdev, dtype=torch.float32)
    if cfg.gamma > 0.0:  # gamma = 0 is the identity; skipping it keeps the random stream independent of gamma's path
        w = degrade_noise(w, cfg.gamma, generator)
    noise = mix_noise(w, cfg.beta, generator)
    has = batch.get("has_noise")
    if has is not None:
        fresh = torch.randn(shape, generator=generator, device=gdev)
        keep = has.to(device=gdev, dtype=torch.bool).view(-1, *([1] * (len(shape) - 1)))
        noise = torch.where(keep, noise, fresh)
    return noise.to(device=device, dtype=latents.dtype)
