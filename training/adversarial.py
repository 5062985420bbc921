"""Adversarial loss math for AAPT's student-forcing stage (pure functions of discriminator logits and callables).

* Relativistic pairing (RpGAN, AAPT Eq. 1): real and fake are paired through the same condition (first frame,
  text, camera); both players push the logit *difference*. As losses to minimise:
  loss_D = softplus(D(fake) - D(real)),  loss_G = softplus(D(real) - D(fake)),
  per logit (AAPT's discriminator gives one per frame: real frame i is paired with fake frame i), then averaged.
* Approximate R1 / R2 (AAPT Eqs. 2-3, APT's convention): lambda * ||D(x) - D(x + sigma*eps)||^2, eps ~ N(0, I),
  sigma = 0.1, lambda = 1000, *no* division by sigma. R1 perturbs real inputs, R2 fake ones. For a linear D the
  expectation is lambda * sigma^2 * ||grad D||^2, i.e. the exact R1 with gamma/2 = lambda * sigma^2 = 10, without a
  double backward (which fused attention kernels lack).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

R_SIGMA = 0.1
R_LAMBDA = 1000.0
REDUCTIONS = ("mean", "sum")


def rpgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator side: softplus(D(fake) - D(real)), averaged; falls as real logits rise above fake ones."""
    return F.softplus(d_fake - d_real).mean()


def rpgan_g_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Generator side: softplus(D(real) - D(fake)), averaged; falls as fake logits rise above real ones.

    Pass `d_real` detached: the generator step must not update D through it."""
    return F.softplus(d_real - d_fake).mean()


def approx_r_penalty(
    discriminator: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    d_x: torch.Tensor | None = None,
    sigma: float = R_SIGMA,
    lam: float = R_LAMBDA,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """lambda * ||D(x) - D(x + sigma*eps)||^2 (approximate R1 on real x, R2 on fake x).

    `discriminator` maps a batch (B, ...) to logits (B,) or (B, F) (one per frame). `d_x` = D(x) when the caller
    already has it (the loss step does), saving a forward. The squared norm is taken over each sample's logits and
    averaged over the batch; reduction="mean" also divides by the number of logits per sample (F) so the weight
    does not depend on the clip length, "sum" keeps the plain norm. Gradients flow through both D evaluations.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if d_x is None:
        d_x = discriminator(x)
    diff = (d_x - discriminator(x + sigma * eps)).reshape(x.shape[0], -1)
    sq = diff.pow(2)
    per_sample = sq.mean(dim=1) if reduction == "mean" else sq.sum(dim=1)
    return lam * per_sample.mean()


def discriminator_loss(
    d_real: torch.Tensor,
    d_fake: torch.Tensor,
    r1: torch.Tensor | float = 0.0,
    r2: torch.Tensor | float = 0.0,
) -> dict[str, torch.Tensor]:
    """The D step's terms {"loss", "rpgan", "r1", "r2"}, loss = rpgan + r1 + r2 (the caller detaches fake inputs)."""
    rp = rpgan_d_loss(d_real, d_fake)
    r1_t, r2_t = torch.as_tensor(r1, device=rp.device), torch.as_tensor(r2, device=rp.device)
    return {"loss": rp + r1_t + r2_t, "rpgan": rp, "r1": r1_t, "r2": r2_t}
