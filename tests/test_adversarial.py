"""Relativistic pairing loss and approximate R1/R2 (training/adversarial.py)."""

from __future__ import annotations

import math

import pytest
import torch

from training.adversarial import (
    R_LAMBDA,
    R_SIGMA,
    approx_r_penalty,
    discriminator_loss,
    rpgan_d_loss,
    rpgan_g_loss,
)


def test_relativistic_signs() -> None:
    hi, lo = torch.tensor([3.0, 2.0]), torch.tensor([-1.0, 0.0])
    # D wins when real logits exceed fake ones: its loss is small and the generator's large.
    assert rpgan_d_loss(hi, lo) < math.log(2) < rpgan_d_loss(lo, hi)
    assert rpgan_g_loss(hi, lo) > math.log(2) > rpgan_g_loss(lo, hi)
    equal = torch.zeros(3)
    assert rpgan_d_loss(equal, equal).item() == pytest.approx(math.log(2))
    # Only the difference matters (relativistic): a common offset changes nothing.
    assert rpgan_d_loss(hi + 5, lo + 5).item() == pytest.approx(rpgan_d_loss(hi, lo).item())
    # Gradient directions: D pushes real up and fake down; G pushes fake up.
    real, fake = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    rpgan_d_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()  # descent raises real, lowers fake
    fake.grad = None
    rpgan_g_loss(real.detach(), fake).backward()
    assert (fake.grad < 0).all()


def test_approx_r1_linear_d_matches_sigma2_grad_norm() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)

    def d(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1) + 0.5

    x = torch.randn(4096, 3, 4, 4)  # many samples: the batch mean estimates the expectation
    pen = approx_r_penalty(d, x, generator=torch.Generator().manual_seed(1))
    expected = R_LAMBDA * R_SIGMA**2 * w.pow(2).sum()
    assert pen.item() == pytest.approx(expected.item(), rel=0.05)
    # APT's convention: no division by sigma, so halving sigma quarters the penalty.
    half = approx_r_penalty(d, x, sigma=R_SIGMA / 2, generator=torch.Generator().manual_seed(1))
    assert half.item() == pytest.approx(pen.item() / 4, rel=1e-4)


def test_approx_r1_constant_d_is_zero_and_per_frame_reduction() -> None:
    x = torch.randn(8, 3, 2, 2, 2)
    assert approx_r_penalty(lambda y: torch.full((y.shape[0], 5), 2.0), x).item() == 0.0
    # Per-frame logits (B, F): "mean" divides the squared norm by F, "sum" keeps it.
    w = torch.randn(2, 3, 2, 2, 2)

    def frames(y: torch.Tensor) -> torch.Tensor:
        return torch.stack([(y * w[0]).flatten(1).sum(1), (y * w[1]).flatten(1).sum(1)], dim=1)

    g = torch.Generator
    s = approx_r_penalty(frames, x, reduction="sum", generator=g().manual_seed(0))
    m = approx_r_penalty(frames, x, reduction="mean", generator=g().manual_seed(0))
    assert s.item() == pytest.approx(2 * m.item(), rel=1e-5)
    with pytest.raises(ValueError):
        approx_r_penalty(frames, x, reduction="max")


def test_approx_r_penalty_reuses_d_x_and_backpropagates() -> None:
    w = torch.randn(6, requires_grad=True)
    x = torch.randn(16, 6)
    calls = []

    def d(y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return y @ w

    pen = approx_r_penalty(d, x, d_x=x @ w)
    assert len(calls) == 1
    pen.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    out = discriminator_loss(torch.ones(3), torch.zeros(3), r1=pen.detach(), r2=0.5)
    assert out["loss"].item() == pytest.approx(out["rpgan"].item() + pen.item() + 0.5, rel=1e-6)
