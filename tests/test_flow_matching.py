"""Flow-matching conventions (training/flow_matching.py): t = 0 noise, t = 1 data, v = x1 - x0, shifted times.

Statistical thresholds are ~5 sigma for the sample sizes used (N values: se of a mean or a correlation ~1/sqrt(N)),
and every seed is fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from training.flow_matching import (
    NoiseConfig,
    euler_step,
    interpolate,
    make_noise,
    sample_t,
    sampling_grid,
    shift_noise_level,
    time_shift,
    velocity_target,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_interpolate_endpoints_and_direction() -> None:
    x0, x1 = torch.randn(3, 2, 4, 5, generator=gen(1)), torch.randn(3, 2, 4, 5, generator=gen(2))
    assert torch.equal(interpolate(x0, x1, 0.0), x0)  # t = 0 is noise
    assert torch.equal(interpolate(x0, x1, 1.0), x1)  # t = 1 is data
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close(xt[1], 0.25 * x1[1] + 0.75 * x0[1])
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], x1[2])
    # the target is the time derivative of the path (a flipped sign or direction fails here)
    h = 1e-3
    deriv = (interpolate(x0, x1, 0.5 + h) - interpolate(x0, x1, 0.5 - h)) / (2 * h)
    torch.testing.assert_close(deriv, velocity_target(x0, x1), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="shape"):
        interpolate(x0, x1, torch.zeros(2))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_with_oracle_velocity_reaches_the_data(shift: float) -> None:
    """For a point-mass data distribution the exact velocity field is (x1 - x)/(1 - t); integrating it from noise at
    t = 0 along the grid must land on x1. A reversed time convention integrates away from it."""
    x1 = torch.randn(2, 3, 2, 4, 4, generator=gen(3))
    x = torch.randn(x1.shape, generator=gen(4))
    grid = sampling_grid(8, shift)
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        x = euler_step(x, (x1 - x) / (1.0 - t0), t1 - t0)
    torch.testing.assert_close(x, x1, atol=1e-5, rtol=1e-5)


def test_time_shift_properties() -> None:
    u = torch.linspace(0, 1, 101)
    for s in (0.5, 1.0, 3.0, 24.0):
        out = time_shift(u, s)
        assert float(out[0]) == 0.0 and float(out[-1]) == 1.0
        assert bool((out[1:] > out[:-1]).all())  # strictly monotone
        # our direction is AAPT's mirrored: 1 - shift(1 - t)
        torch.testing.assert_close(out, 1.0 - shift_noise_level(1.0 - u, s), atol=1e-6, rtol=0)
    assert torch.equal(time_shift(u, 1.0), u)
    assert float(shift_noise_level(0.5, 24.0)) == pytest.approx(0.96)  # AAPT's own direction (t = 1 noise)
    assert float(time_shift(0.5, 24.0)) == pytest.approx(0.04)  # ours: noise level 0.96 is t = 0.04
    assert bool((time_shift(u[1:-1], 3.0) < u[1:-1]).all())  # s > 1 spends more time near noise (small t)
    with pytest.raises(ValueError):
        time_shift(u, 0.0)


def test_sample_t_distribution_and_determinism() -> None:
    t = sample_t(20000, gen(5))
    assert t.shape == (20000,) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t.mean()) == pytest.approx(0.5, abs=0.02)
    assert torch.equal(sample_t(16, gen(6), 3.0), sample_t(16, gen(6), 3.0))
    # AAPT: with s = 24, P(noise level < 0.5) = 0.04, i.e. P(t > 0.5) = 0.04 here
    shifted = sample_t(20000, gen(7), 24.0)
    assert float((shifted > 0.5).float().mean()) == pytest.approx(0.04, abs=0.007)
    ln = sample_t(20000, gen(8), logit_normal=True)
    assert float(ln.mean()) == pytest.approx(0.5, abs=0.02) and float(ln.std()) < float(t.std())


def test_sampling_grid() -> None:
    g = sampling_grid(10)
    torch.testing.assert_close(g, torch.linspace(0, 1, 11))
    s = sampling_grid(10, 3.0)
    assert s.shape == (11,) and float(s[0]) == 0.0 and float(s[-1]) == 1.0
    assert bool((s[1:] > s[:-1]).all())
    assert float(s[1] - s[0]) < float(s[-1] - s[-2])  # small steps near noise
    with pytest.raises(ValueError):
        sampling_grid(0)


def test_independent_noise_without_warped_noise() -> None:
    latents = torch.zeros(2, 3, 4, 32, 32)
    n = make_noise({"latents": latents}, NoiseConfig(), gen(9))
    assert n.shape == latents.shape and n.dtype == torch.float32
    assert abs(float(n.mean())) < 5 / math.sqrt(n.numel())
    assert float(n.std()) == pytest.approx(1.0, abs=0.03)
    torch.testing.assert_close(n, make_noise({"latents": latents}, NoiseConfig(), gen(9)), atol=0, rtol=0)


@pytest.mark.parametrize(("beta", "gamma"), [(0.9, 0.0), (0.9, 0.3), (0.5, 0.0), (1.0, 0.0)])
def test_warped_noise_statistics_survive_mixing(beta: float, gamma: float) -> None:
    latents = torch.zeros(2, 3, 4, 32, 32)
    # A "warped" noise video of a static scene: every frame is frame 0 (what warping with zero flow gives).
    frame0 = torch.randn(2, 3, 1, 32, 32, generator=gen(10))
    warped = frame0.expand(-1, -1, 4, -1, -1).contiguous()
    n = make_noise({"latents": latents, "noise": warped}, NoiseConfig(beta, gamma), gen(11))
    assert abs(float(n.mean())) < 5 / math.sqrt(n.numel())
    assert float(n.std()) == pytest.approx(1.0, abs=0.03)
    keep = (1 - gamma) / math.sqrt((1 - gamma) ** 2 + gamma**2)  # degradation's correlation with its input
    assert corr(n, warped) == pytest.approx(beta * keep, abs=0.03)
    # the temporal structure the warping built survives at beta^2 (keep^2): frames stay correlated
    assert corr(n[:, :, 1], n[:, :, 0]) == pytest.approx((beta * keep) ** 2, abs=0.03)


def test_rows_without_warped_noise_get_fresh_noise() -> None:
    latents = torch.zeros(2, 3, 2, 32, 32)
    warped = torch.randn(latents.shape, generator=gen(12))
    batch = {"latents": latents, "noise": warped, "has_noise": torch.tensor([True, False])}
    n = make_noise(batch, NoiseConfig(0.9), gen(13))
    assert corr(n[0], warped[0]) == pytest.approx(0.9, abs=0.03)
    assert abs(corr(n[1], warped[1])) < 0.05
    assert float(n[1].std()) == pytest.approx(1.0, abs=0.04)
    with pytest.raises(ValueError, match="shape"):
        make_noise({"latents": latents, "noise": warped[:, :, :1]}, NoiseConfig(), gen(0))
