"""The numba-fused noise warp (annotators/noise_warp_fused.py) equals the torch reference bit for bit.

Same seed and flow, same generator state after every step: every output and density must be torch.equal, across
motions that exercise every branch (one-to-one moves, contractions, expansion splits, fresh disocclusions, edges
leaving the frame) and non-uniform densities. The statistical property tests run on both backends in
tests/test_noise_warp.py.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("numba")

from annotators import noise_warp, noise_warp_fused, warped_noise  # noqa: E402
from annotators.warped_noise import NoiseConfig, WarpedNoiser, select_warper  # noqa: E402
from tests.test_noise_warp import motion_flow  # noqa: E402


def flow_field(kind: str, h: int, w: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(17)
    if kind == "random":  # every pixel its own rounded move: many collisions, splits and holes
        return torch.randn((2, h, w), generator=gen) * 3
    if kind == "disocclusion":  # a block moves right over a static background, leaving a hole behind it
        flow = torch.zeros(2, h, w)
        flow[0, h // 4 : h // 2, w // 4 : w // 2] = 5.0
        return flow
    if kind == "half_pixel":  # exact .5 values: torch.round rounds half to even, so must the kernel
        return torch.stack((torch.full((h, w), 2.5), torch.full((h, w), -1.5)))
    if kind == "leave":  # huge flows: everything leaves the frame, everything is fresh
        return torch.full((2, h, w), 1e6)
    return motion_flow(kind, h, w)


KINDS = ("translate", "zoom_in", "zoom_out", "rotate", "random", "disocclusion", "half_pixel", "leave")


def assert_steps_match(kind: str, steps: int, uniform_density: bool = False) -> None:
    """`steps` warp steps of a 3x48x40 noise along `kind`'s flow: the fused warp gives the reference's noise, density
    and random draws bit for bit after every step."""
    c, h, w = 3, 48, 40
    flow = flow_field(kind, h, w)
    start = torch.Generator().manual_seed(5)
    noise = torch.randn((c, h, w), generator=start)
    density = torch.ones(h, w) if uniform_density else torch.rand((h, w), generator=start) * 4 + 0.05
    gen_ref, gen_fused = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    ref, fused = (noise, density), (noise, density)
    for step in range(steps):
        ref = noise_warp.warp_step(*ref, flow, gen_ref)
        fused = noise_warp_fused.warp_step(*fused, flow, gen_fused)
        assert torch.equal(ref[0], fused[0]), f"{kind} step {step}: noise differs"
        assert torch.equal(ref[1], fused[1]), f"{kind} step {step}: density differs"
        assert torch.equal(gen_ref.get_state(), gen_fused.get_state()), f"{kind} step {step}: draws differ"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("uniform_density", [True, False])
def test_fused_step_is_bit_identical(kind: str, uniform_density: bool) -> None:
    assert_steps_match(kind, 6, uniform_density)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_video_is_bit_identical_at_any_thread_count(threads: int) -> None:
    """Channels run in parallel; every accumulator stays in one channel, so the thread count cannot matter."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flows = torch.stack([flow_field(k, 24, 32) for k in ("rotate", "zoom_in", "random", "zoom_out")])
        args = {"channels": 5, "noise_size": (12, 16), "warp_scale": 4, "seed": 77}
        ref = noise_warp.warped_noise_video(flows, **args)
        fused = noise_warp_fused.warped_noise_video(flows.numpy(), **args)
        assert torch.equal(ref, fused)
    finally:
        torch.set_num_threads(before)


def test_fused_rejects_what_the_reference_rejects() -> None:
    with pytest.raises(ValueError):
        noise_warp_fused.warped_noise_video(
            torch.zeros(2, 3, 8, 8), channels=2, noise_size=(8, 8), warp_scale=2, seed=0
        )
    with pytest.raises(ValueError):
        noise_warp_fused.warp_step(torch.zeros(2, 8, 8), torch.ones(8, 8), torch.zeros(2, 8, 9), torch.Generator())


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_warper("auto", "cpu") is noise_warp_fused
    assert select_warper("fused", "cpu") is noise_warp_fused
    assert select_warper("reference", "cpu") is noise_warp
    assert select_warper("auto", "cuda") is noise_warp  # the fused kernels are CPU-only
    with pytest.raises(ValueError):
        select_warper("fused", "cuda")
    with pytest.raises(ValueError):
        NoiseConfig(backend="triton")
    assert WarpedNoiser(NoiseConfig(device="cpu", backend="reference")).backend is noise_warp
    assert noise_warp_fused.WARPER_VERSION == noise_warp.WARPER_VERSION  # identical outputs, same version


def test_missing_numba_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "annotators.noise_warp_fused", None)  # import now raises ImportError
    monkeypatch.setattr(warped_noise, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="numba unavailable"):
        assert select_warper("auto", "cpu") is noise_warp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_warper("auto", "cpu") is noise_warp  # once per process
    with pytest.raises(ValueError, match="needs numba"):
        select_warper("fused", "cpu")


@pytest.mark.parametrize("bands", [2, 7])
def test_parallel_kernels_are_bit_identical(bands: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The threaded kernels (normally only on large grids) split the target rows into bands; any band count must
    give the reference's bits, including edges that cross band borders and leave the frame."""
    monkeypatch.setattr(noise_warp_fused, "_PAR_MIN_PLAN", 0)
    monkeypatch.setattr(noise_warp_fused, "_PAR_MIN_MERGE", 0)
    monkeypatch.setattr(noise_warp_fused.numba, "get_num_threads", lambda: bands)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for kind in ("random", "rotate", "zoom_in", "zoom_out", "disocclusion", "leave"):
            assert_steps_match(kind, 4)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("flow_size", "dtype"),
    [((30, 20), torch.float32), ((48, 64), torch.float32), ((24, 32), torch.float64), ((7, 9), torch.float32)],
)
def test_fused_video_resize_paths(flow_size: tuple[int, int], dtype: torch.dtype) -> None:
    """The video loop folds resize_flow's dx/dy scaling into the rounding and resizes into a reused buffer: same bits
    for non-integer ratios, for flows already on the warp grid (no resize) and for float64 flows."""
    gen = torch.Generator().manual_seed(3)
    flows = (torch.randn((3, 2, *flow_size), generator=gen) * 2).to(dtype)
    args = {"channels": 2, "noise_size": (12, 16), "warp_scale": 4, "seed": 11}
    assert torch.equal(noise_warp.warped_noise_video(flows, **args), noise_warp_fused.warped_noise_video(flows, **args))


def test_fused_step_takes_float64_flow() -> None:
    flow = (torch.randn((2, 20, 24), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3).clone()
    flow[0, :4] = 2.5  # exact halves: rounding in float64 must match
    noise, density = torch.randn(2, 20, 24), torch.ones(20, 24)
    ref = noise_warp.warp_step(noise, density, flow, torch.Generator().manual_seed(4))
    fused = noise_warp_fused.warp_step(noise, density, flow, torch.Generator().manual_seed(4))
    assert torch.equal(ref[0], fused[0]) and torch.equal(ref[1], fused[1])


def test_numba_pool_leaves_torch_threads_alone() -> None:
    """Numba's OpenMP pool, launched on first use, sets the OpenMP thread count torch shares to every core; the
    fused backend puts torch's back (in a fresh process: the pool launches once per process)."""
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from annotators import noise_warp_fused\n"
        "noise_warp_fused.warm_up()\n"
        "assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=300)
