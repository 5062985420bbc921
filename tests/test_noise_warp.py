"""Distribution-preserving noise warping: i.i.d. N(0,1) frames that follow the flow (annotators/noise_warp.py).

Thresholds (research/flow_noise.md §1.6) for N values: |mean| < 5/sqrt(N), |std-1| < 5/sqrt(2N),
|Moran's I| < 5/sqrt(2N) (rook; its sd under the null is ~1/sqrt(2N)), KS p > 1e-3 on >= 10k values. All seeds are
fixed, so every test is deterministic; each threshold is ~5 sigma, so a correct warper passes with a wide margin and
a wrong one (bilinear warp, copied children, dropped density) fails by orders of magnitude.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import numpy as np
import pytest
import torch

from annotators.noise_warp import (
    WARPER_VERSION,
    area_pool,
    bilinear_warp,
    degrade_noise,
    ks_normal,
    mix_noise,
    morans_i,
    resize_flow,
    warped_noise_video,
)

MOTIONS = ("translate", "zoom_in", "zoom_out", "rotate")
BACKENDS = {"reference": "annotators.noise_warp", "fused": "annotators.noise_warp_fused"}


@pytest.fixture(params=list(BACKENDS))
def warper(request: pytest.FixtureRequest) -> ModuleType:
    """Each property test that warps runs on both implementations (the torch reference and the numba-fused one)."""
    if request.param == "fused":
        pytest.importorskip("numba")
    return importlib.import_module(BACKENDS[request.param])


def motion_flow(kind: str, h: int, w: int, scale: float = 1.0) -> torch.Tensor:
    """Forward flow (2, h, w) in pixels of this grid: pan (3.4, -1.7) px, zoom 1.04 / 0.96, rotation 2 degrees per
    frame about the centre. `scale` converts the pan from frame pixels to this grid's pixels."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
    if kind == "translate":
        return torch.stack((torch.full_like(xs, 3.4 * scale), torch.full_like(xs, -1.7 * scale)))
    if kind in ("zoom_in", "zoom_out"):
        k = 0.04 if kind == "zoom_in" else -0.04
        return torch.stack((k * dx, k * dy))
    cos, sin = math.cos(math.radians(2.0)), math.sin(math.radians(2.0))
    return torch.stack((cos * dx - sin * dy - dx, sin * dx + cos * dy - dy))


def white_noise_failures(x: torch.Tensor) -> list[str]:
    """Which of the i.i.d. N(0,1) checks x fails (empty list = passes)."""
    n = x.numel()
    mean, std, moran = float(x.mean()), float(x.std()), morans_i(x)
    failures = []
    if abs(mean) >= 5 / math.sqrt(n):
        failures.append(f"mean {mean:.4f}")
    if abs(std - 1) >= 5 / math.sqrt(2 * n):
        failures.append(f"std {std:.4f}")
    if abs(moran) >= 5 / math.sqrt(2 * n):
        failures.append(f"Moran I {moran:.4f}")
    if n >= 10_000:
        d, p = ks_normal(x)
        if p <= 1e-3:
            failures.append(f"KS D {d:.4f} p {p:.2e}")
    return failures


def assert_white(x: torch.Tensor, label: str) -> None:
    failures = white_noise_failures(x)
    assert not failures, f"{label}: {', '.join(failures)}"


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def best_shift(a: torch.Tensor, b: torch.Tensor, radius: int) -> tuple[int, int, float]:
    """Integer (dx, dy) maximising the correlation of b[y+dy, x+dx] with a[y, x] over the overlap (brute force)."""
    _, h, w = a.shape
    best = (0, 0, -2.0)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ay, by = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            ax, bx = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            r = corr(a[:, ay, ax], b[:, by, bx])
            if r > best[2]:
                best = (dx, dy, r)
    return best


def test_version_string() -> None:
    assert WARPER_VERSION == "gwtf-index-v2"


@pytest.mark.parametrize("motion", MOTIONS)
def test_warp_step_keeps_every_frame_white(motion: str, warper: ModuleType) -> None:
    """At the warp grid, every state over 25 frames is i.i.d. N(0,1); so is its 2x pooled version."""
    c, h, w = 4, 128, 128
    flow = motion_flow(motion, h, w)
    gen = torch.Generator().manual_seed(7)
    noise, density = torch.randn((c, h, w), generator=gen), torch.ones(h, w)
    for t in range(1, 26):
        noise, density = warper.warp_step(noise, density, flow, gen)
        assert noise.dtype == torch.float32 and noise.shape == (c, h, w)
        assert_white(noise, f"{motion} state frame {t}")
        assert_white(area_pool(noise, 2), f"{motion} pooled state frame {t}")
        assert bool(torch.isfinite(density).all()) and float(density.min()) > 0
        assert abs(float(density.mean()) - 1) < 1e-4  # renormalised every step


@pytest.mark.parametrize("motion", MOTIONS)
def test_warp_step_transports_noise(motion: str, warper: ModuleType) -> None:
    """The noise moves with the flow rather than being redrawn: each target stays strongly correlated with the
    previous frame at its (rounded) backward position. Fresh noise every frame would pass the whiteness checks
    but give ~0 here."""
    c, h, w = 4, 128, 128
    flow = motion_flow(motion, h, w)
    gen = torch.Generator().manual_seed(3)
    noise, density = torch.randn((c, h, w), generator=gen), torch.ones(h, w)
    for _ in range(10):  # let the density become non-uniform first
        noise, density = warper.warp_step(noise, density, flow, gen)
    nxt, _ = warper.warp_step(noise, density, flow, gen)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    sy, sx = (ys - flow[1]).round().long(), (xs - flow[0]).round().long()
    ok = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    back = noise[:, sy.clamp(0, h - 1), sx.clamp(0, w - 1)]
    r = corr(nxt[:, ok], back[:, ok])
    assert r > 0.7, f"{motion}: correlation with the backward-warped previous frame {r:.3f}"


@pytest.mark.parametrize("motion", MOTIONS)
def test_video_frames_are_white(motion: str, warper: ModuleType) -> None:
    """warped_noise_video output (pooled from a 4x warp grid, flow given on a different frame grid) stays white."""
    frame_hw, noise_hw, scale, frames = (96, 120), (64, 80), 4, 24
    flow = motion_flow(motion, *frame_hw)
    video = warper.warped_noise_video(
        flow.expand(frames - 1, 2, *frame_hw).numpy(), channels=4, noise_size=noise_hw, warp_scale=scale, seed=11
    )
    assert video.shape == (frames, 4, *noise_hw) and video.dtype == torch.float32
    for t in range(frames):
        assert_white(video[t], f"{motion} output frame {t}")
    # consecutive frames are related through the motion (not independent draws): compare each frame with the
    # previous one sampled at the rounded backward position, in noise pixels
    noise_flow = resize_flow(flow, noise_hw)
    ys, xs = torch.meshgrid(torch.arange(noise_hw[0]), torch.arange(noise_hw[1]), indexing="ij")
    sy = (ys - noise_flow[1]).round().long().clamp(0, noise_hw[0] - 1)
    sx = (xs - noise_flow[0]).round().long().clamp(0, noise_hw[1] - 1)
    r = min(corr(video[t, :, 4:-4, 4:-4], video[t - 1][:, sy, sx][:, 4:-4, 4:-4]) for t in range(1, frames))
    assert r > 0.3, f"{motion}: temporal correlation along the flow {r:.3f}"


def test_zero_flow_keeps_noise_identical(warper: ModuleType) -> None:
    video = warper.warped_noise_video(torch.zeros(9, 2, 40, 48), channels=3, noise_size=(20, 24), warp_scale=2, seed=5)
    for t in range(1, 10):
        assert torch.equal(video[t], video[0])
    # also bit-exact with a non-uniform density (a/sqrt(a*a) must be exactly 1)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn((4, 64, 64), generator=gen)
    density = torch.rand((64, 64), generator=gen) * 20 + 1e-3
    nxt, _ = warper.warp_step(noise, density, torch.zeros(2, 64, 64), gen)
    assert torch.equal(nxt, noise)


@pytest.mark.parametrize("uniform_density", [True, False])
def test_integer_shift_is_exact_copy_with_fresh_entering_strip(uniform_density: bool, warper: ModuleType) -> None:
    c, h, w, dx, dy = 4, 128, 128, 24, -16
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn((c, h, w), generator=gen)
    density = torch.ones(h, w) if uniform_density else torch.rand((h, w), generator=gen) * 5 + 0.1
    flow = torch.stack((torch.full((h, w), float(dx)), torch.full((h, w), float(dy))))
    nxt, new_density = warper.warp_step(noise, density, flow, gen)
    # target (y + dy, x + dx) holds source (y, x) exactly
    assert torch.equal(nxt[:, : h + dy, dx:], noise[:, -dy:, : w - dx])
    entering = torch.ones(h, w, dtype=torch.bool)
    entering[: h + dy, dx:] = False
    strip = nxt[:, entering]
    assert strip.numel() == c * (h * w - (h + dy) * (w - dx))
    # brand-new values, not moved ones (a few exact float32 coincidences among ~19k x 65k pairs are expected)
    assert float(torch.isin(strip, noise).float().mean()) < 0.01
    assert torch.equal(new_density[entering], torch.full((int(entering.sum()),), float(new_density[entering][0])))
    n = strip.numel()
    assert abs(float(strip.mean())) < 5 / math.sqrt(n) and abs(float(strip.std()) - 1) < 5 / math.sqrt(2 * n)
    assert ks_normal(strip)[1] > 1e-3
    assert abs(corr(strip, noise[:, entering])) < 5 / math.sqrt(n)  # unrelated to what was there before


def test_integer_shift_through_video_and_pooling(warper: ModuleType) -> None:
    """A whole-pixel pan is an exact shifted copy of the pooled output too, once the warp-grid shift is a whole
    number of pooling blocks. Frames are 2x the noise grid, so (2, 1) frame px = (1, 0.5) noise px = (4, 2) warp
    px per frame: every 2 frames the noise moves by exactly (dx, dy) = (2, 1) noise px."""
    flows = torch.zeros(4, 2, 48, 64)
    flows[:, 0], flows[:, 1] = 2.0, 1.0
    video = warper.warped_noise_video(flows, channels=2, noise_size=(24, 32), warp_scale=4, seed=9)
    assert torch.equal(video[2, :, 1:, 2:], video[0, :, :-1, :-2])
    assert torch.equal(video[4, :, 2:, 4:], video[0, :, :-2, :-4])
    assert not torch.equal(video[2, :, 2:, 1:], video[0, :, :-2, :-1])  # x and y not swapped
    assert not torch.equal(video[1, :, 1:, 1:], video[0, :, :-1, :-1])  # half-pixel rows: not a plain copy


@pytest.mark.parametrize(("warp_scale", "expected"), [(10, (6, -4)), (8, (6, -4)), (1, (0, 0))])
def test_subpixel_pan_accumulates_only_on_a_fine_grid(
    warp_scale: int, expected: tuple[int, int], warper: ModuleType
) -> None:
    """(0.3, -0.2) px/frame for 20 frames moves the noise by (6, -4) px when the warp grid is fine enough (within
    1.5 px: rounding at the warp grid quantises the speed to 1/warp_scale px); at warp_scale=1 each step rounds
    to 0 and the noise sticks -- the reason to warp on an upsampled grid."""
    frames = 21
    flows = torch.zeros(frames - 1, 2, 48, 48)
    flows[:, 0], flows[:, 1] = 0.3, -0.2
    video = warper.warped_noise_video(flows, channels=2, noise_size=(48, 48), warp_scale=warp_scale, seed=4)
    dx, dy, r = best_shift(video[0], video[-1], radius=9)
    assert abs(dx - expected[0]) <= 1.5 and abs(dy - expected[1]) <= 1.5, (dx, dy, r)
    assert r > 0.9  # the moved region is the same noise, not a faint echo
    if warp_scale == 1:
        assert torch.equal(video[-1], video[0])


def test_same_seed_same_output_different_seed_differs(warper: ModuleType) -> None:
    flows = motion_flow("zoom_in", 40, 40).expand(6, 2, 40, 40).contiguous()
    a = warper.warped_noise_video(flows, channels=3, noise_size=(20, 20), warp_scale=2, seed=123)
    b = warper.warped_noise_video(flows.numpy(), channels=3, noise_size=(20, 20), warp_scale=2, seed=123)
    c = warper.warped_noise_video(flows, channels=3, noise_size=(20, 20), warp_scale=2, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert abs(corr(a, c)) < 0.05


def test_single_frame_video(warper: ModuleType) -> None:
    video = warper.warped_noise_video(
        np.zeros((0, 2, 8, 8), np.float32), channels=2, noise_size=(8, 8), warp_scale=3, seed=0
    )
    assert video.shape == (1, 2, 8, 8)


@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_mix_noise_gives_beta_squared_temporal_correlation(beta: float, warper: ModuleType) -> None:
    c, h, w, dx, dy = 4, 128, 128, 3, 2
    flows = torch.zeros(1, 2, h, w)
    flows[:, 0], flows[:, 1] = dx, dy
    warped = warper.warped_noise_video(flows, channels=c, noise_size=(h, w), warp_scale=1, seed=21)
    gen = torch.Generator().manual_seed(22)
    m0, m1 = mix_noise(warped[0], beta, gen), mix_noise(warped[1], beta, gen)
    overlap_now, overlap_before = m1[:, dy:, dx:], m0[:, : h - dy, : w - dx]
    n = overlap_now.numel()
    r = corr(overlap_now, overlap_before)
    assert abs(r - beta**2) < 5 * (1 - beta**4) / math.sqrt(n) + 1e-3, r
    assert abs(float(m1.std()) - 1) < 5 / math.sqrt(2 * m1.numel())
    assert torch.equal(mix_noise(warped[0], 1.0, gen), warped[0])
    with pytest.raises(ValueError):
        mix_noise(warped[0], 1.5)


@pytest.mark.parametrize("gamma", [0.2, 0.5, 0.7])
def test_degrade_noise_correlation_and_variance(gamma: float) -> None:
    gen = torch.Generator().manual_seed(31)
    x = torch.randn((4, 96, 96), generator=gen)
    y = degrade_noise(x, gamma, gen)
    expected = (1 - gamma) / math.sqrt((1 - gamma) ** 2 + gamma**2)
    n = x.numel()
    assert abs(corr(x, y) - expected) < 5 * (1 - expected**2) / math.sqrt(n) + 1e-3
    assert abs(float(y.std()) - 1) < 5 / math.sqrt(2 * n)
    assert torch.equal(degrade_noise(x, 0.0, gen), x)
    with pytest.raises(ValueError):
        degrade_noise(x, -0.1)


def test_bilinear_warp_fails_the_same_checks(warper: ModuleType) -> None:
    """Negative control: a few frames of bilinear warping along the same sub-pixel pan collapse the variance and
    correlate neighbours; the same checks our warper passes reject it by a wide margin."""
    c, h, w = 4, 128, 128
    flow = motion_flow("translate", h, w)
    gen = torch.Generator().manual_seed(8)
    ours = bil = torch.randn((c, h, w), generator=gen)
    density = torch.ones(h, w)
    for _ in range(4):
        ours, density = warper.warp_step(ours, density, flow, gen)
        bil = bilinear_warp(bil, flow, padding="border")
    assert not white_noise_failures(ours)
    failures = white_noise_failures(bil)
    assert any(f.startswith("std") for f in failures) and any(f.startswith("Moran") for f in failures)
    assert float(bil.std()) < 0.8 and morans_i(bil) > 0.3


def test_children_of_a_split_source_are_uncorrelated(warper: ModuleType) -> None:
    """Zoom-in at warp_scale=1 splits ~8% of the pixels into two neighbouring children each frame. Copying the
    parent into both (no conditional split) would correlate those neighbours: the same Moran check catches it."""
    c, h, w = 4, 128, 128
    flow = motion_flow("zoom_in", h, w)
    gen = torch.Generator().manual_seed(12)
    noise, density = torch.randn((c, h, w), generator=gen), torch.ones(h, w)
    for _ in range(5):
        noise, density = warper.warp_step(noise, density, flow, gen)
    assert not white_noise_failures(noise)
    # the naive variant: nearest-neighbour backward copy, which duplicates the sources of expanded regions
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    sy = (ys - flow[1]).round().long().clamp(0, h - 1)
    sx = (xs - flow[0]).round().long().clamp(0, w - 1)
    naive = torch.randn((c, h, w), generator=gen)
    for _ in range(5):
        naive = naive[:, sy, sx]
    assert any(f.startswith("Moran") for f in white_noise_failures(naive))


def test_resize_flow_scales_each_axis_by_its_own_ratio() -> None:
    flow = torch.stack((torch.full((16, 32), 1.0), torch.full((16, 32), 2.0)))
    big = resize_flow(flow, (48, 64))
    assert big.shape == (2, 48, 64)
    assert torch.allclose(big[0], torch.full((48, 64), 2.0)) and torch.allclose(big[1], torch.full((48, 64), 6.0))
    batched = resize_flow(flow.expand(3, 2, 16, 32), (48, 64))
    assert batched.shape == (3, 2, 48, 64) and torch.equal(batched[1], big)
    assert resize_flow(flow, (16, 32)) is flow


def test_area_pool_adds_in_a_fixed_order() -> None:
    """Each block's rows are added one after the other, then its columns: element-wise adds, so the result does not
    depend on a reduction kernel's order. In float32 ((1e8 + 1) - 1e8) + 1 = 1 (the first 1 is lost to rounding);
    pairwise, (1e8 + 1) + (-1e8 + 1) = 0."""
    values = torch.tensor([1e8, 1.0, -1e8, 1.0])
    down = values.view(1, 4, 1).repeat(1, 1, 4)  # the values run down each column: the rows' adds
    across = values.view(1, 1, 4).repeat(1, 4, 1)  # along each row: the columns' adds
    assert area_pool(down, 4).item() == 1.0
    assert area_pool(across, 4).item() == 1.0


def test_area_pool_keeps_unit_variance_and_is_block_sum_over_f() -> None:
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    assert torch.equal(area_pool(x, 2), torch.tensor([[[10.0, 18.0], [42.0, 50.0]]]) / 2)
    gen = torch.Generator().manual_seed(3)
    assert_white(area_pool(torch.randn((4, 256, 256), generator=gen), 4), "pooled iid")
    with pytest.raises(ValueError):
        area_pool(torch.zeros(2, 10, 12), 4)


def test_statistics_helpers_detect_structure() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((4, 96, 96), generator=gen)
    assert not white_noise_failures(x)
    smooth = x.cumsum(-1).cumsum(-2)
    assert morans_i(smooth) > 0.9
    assert morans_i(torch.tensor([[1.0, -1.0] * 8, [-1.0, 1.0] * 8] * 8)) < -0.9  # checkerboard
    d, p = ks_normal(torch.rand(20_000, generator=gen) * 2 - 1)  # uniform: wrong shape
    assert d > 0.05 and p < 1e-6
    d, p = ks_normal(x + 0.05)  # a 0.05 shift is visible with 37k values
    assert p < 1e-3
    # p-value calibration: exact normal quantiles shifted by delta have D ~ delta*phi(0); D*sqrt(n) = 1.36 and 1.63
    # are the 5% and 1% critical values of the Kolmogorov distribution
    n = 40_000
    quantiles = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    assert ks_normal(quantiles)[1] > 0.999
    for lam, p_expected in ((1.36, 0.05), (1.63, 0.01)):
        d, p = ks_normal(quantiles + lam / math.sqrt(n) * math.sqrt(2 * math.pi))
        assert abs(d * math.sqrt(n) - lam) < 0.01 and abs(p - p_expected) < 0.2 * p_expected, (d, p)


@pytest.mark.parametrize(
    ("flows", "kwargs"),
    [
        (torch.full((2, 2, 8, 8), float("nan")), {}),
        (torch.tensor([[[[0.0, float("inf")]] * 2] * 2]).expand(1, 2, 2, 2), {}),
        (torch.zeros(2, 3, 8, 8), {}),
        (torch.zeros(2, 8, 8), {}),
        (torch.zeros(2, 2, 8, 8, dtype=torch.int64), {}),
        (torch.zeros(2, 2, 8, 8), {"warp_scale": 0}),
        (torch.zeros(2, 2, 8, 8), {"channels": 0}),
        (torch.zeros(2, 2, 8, 8), {"noise_size": (0, 8)}),
    ],
)
def test_invalid_input_raises(flows: torch.Tensor, kwargs: dict, warper: ModuleType) -> None:
    args = {"channels": 2, "noise_size": (8, 8), "warp_scale": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError):
        warper.warped_noise_video(flows, **args)


def test_warp_step_rejects_mismatched_shapes(warper: ModuleType) -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        warper.warp_step(torch.zeros(2, 8, 8), torch.ones(8, 8), torch.zeros(2, 8, 9), gen)
    with pytest.raises(ValueError):
        warper.warp_step(torch.zeros(8, 8), torch.ones(8, 8), torch.zeros(2, 8, 8), gen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_deterministic_and_white() -> None:
    flows = motion_flow("zoom_out", 64, 64).expand(12, 2, 64, 64).contiguous()
    args = {"channels": 4, "noise_size": (64, 64), "warp_scale": 4, "seed": 3, "device": "cuda"}
    a, b = warped_noise_video(flows, **args), warped_noise_video(flows, **args)
    assert torch.equal(a, b)
    for t in range(a.shape[0]):
        assert_white(a[t].cpu(), f"cuda frame {t}")
