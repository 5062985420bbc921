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

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from annotators import noise_warp, noise_warp_fused, warped_noise  # noqa: E402
from annotators import noise_warp_grid as grid  # noqa: E402
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


def assert_steps_match(kind: str, steps: int, uniform_density: bool = False, channels: int = 3) -> None:
    """`steps` warp steps of a channels x 48 x 40 noise along `kind`'s flow: the fused warp gives the reference's
    noise, density and random draws bit for bit after every step."""
    c, h, w = channels, 48, 40
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 4, 16])
def test_fused_step_is_bit_identical_at_latent_channel_counts(kind: str, channels: int) -> None:
    """4 channels (SD-style latents) take the merge's unrolled scatter, 16 (Wan-style) and 1 the general one."""
    assert_steps_match(kind, 4, channels=channels)


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


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_flow_is_the_clips_recorded_reason(backend: str, bad: float) -> None:
    """The warp's own finiteness check (the annotator's only one) becomes the clip's reason, not a crash; the other
    clips of the batch still get their noise."""
    noiser = WarpedNoiser(NoiseConfig(device="cpu", backend=backend, channels=2, factor=4, warp_scale=2))
    good = np.zeros((3, 2, 8, 8), np.float16)
    broken = good.copy()
    broken[2, 1, 7, 5] = bad
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    flows, all_frames = np.empty(2, object), np.empty(2, object)
    flows[:], all_frames[:] = [broken, good], [frames, frames]
    out = noiser({"clip_id": np.array(["a", "b"], object), "flow": flows, "frames": all_frames})
    assert out["warped_noise"][0] is None and out["warped_noise_error"][0].startswith("flow_not_finite")
    assert out["warped_noise"][1].shape == (4, 2, 2, 2) and out["warped_noise_error"][1] is None


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
            assert_steps_match(kind, 3, channels=4)
    finally:
        torch.set_num_threads(before)


def test_grid_sizes_share_the_threads_memory_and_stay_bit_identical() -> None:
    """Workspaces of every grid size are views on one per-thread memory: videos whose sizes alternate (a smaller
    grid whose occupancy marks end on a word boundary, then larger ones that grow the buffers, then back) and two
    warp states of different sizes stepped in turn all give the reference's bits."""
    args = {"channels": 3, "warp_scale": 4, "seed": 5}
    for noise_size in [(6, 8), (12, 16), (6, 8), (10, 14), (12, 16)]:  # 24 x 32: n % 8 == 0
        flows = torch.stack([flow_field(k, *noise_size) for k in ("zoom_in", "random", "rotate")])
        ref = noise_warp.warped_noise_video(flows, noise_size=noise_size, **args)
        assert torch.equal(ref, noise_warp_fused.warped_noise_video(flows.numpy(), noise_size=noise_size, **args))
    small, large = noise_warp_fused._workspace(24, 32), noise_warp_fused._workspace(48, 64)
    assert np.shares_memory(small.dst, large.dst) and np.shares_memory(small.occ, large.occ)
    states, refs = {}, {}
    for h, w in ((24, 32), (40, 56)):
        noise = torch.randn((3, h, w), generator=torch.Generator().manual_seed(h))
        density = torch.ones(h, w)
        states[h] = noise_warp_fused.WarpState.of(noise, density, torch.Generator().manual_seed(w))
        refs[h] = (noise, density, torch.Generator().manual_seed(w))
    for step in range(3):
        for h, w in ((24, 32), (40, 56)):
            flow = flow_field(("zoom_in", "random", "disocclusion")[step], h, w)
            states[h].step(flow.numpy())
            noise, density, gen = refs[h]
            refs[h] = (*noise_warp.warp_step(noise, density, flow, gen), gen)
            got = states[h].tensors()
            assert torch.equal(got[0], refs[h][0]) and torch.equal(got[1], refs[h][1]), (h, step)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_video_doubling_the_flow(dtype: torch.dtype) -> None:
    """The default grids: the flow at the frame size, the warp grid twice that (the resize's doubling loop), 4
    latent channels (the merge's unrolled scatter); the flows come as float16 from the shards."""
    flows = (torch.randn((4, 2, 64, 112), generator=torch.Generator().manual_seed(6)) * 4).to(dtype)
    flows[1] = motion_flow("zoom_in", 64, 112) * 3
    args = {"channels": 4, "noise_size": (16, 28), "warp_scale": 8, "seed": 21}
    assert torch.equal(noise_warp.warped_noise_video(flows, **args), noise_warp_fused.warped_noise_video(flows, **args))


@pytest.mark.parametrize("bands", [2, 5])
def test_fused_resize_in_parallel_kernels(bands: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's column pass of the flow resize runs over the flow's rows in parallel: same bits at any band count."""
    monkeypatch.setattr(noise_warp_fused, "_PAR_MIN_PLAN", 0)
    monkeypatch.setattr(noise_warp_fused, "_PAR_MIN_MERGE", 0)
    monkeypatch.setattr(noise_warp_fused.numba, "get_num_threads", lambda: bands)
    flows = torch.randn((3, 2, 64, 112), generator=torch.Generator().manual_seed(8)) * 3
    args = {"channels": 4, "noise_size": (16, 28), "warp_scale": 8, "seed": 2}
    assert torch.equal(noise_warp.warped_noise_video(flows, **args), noise_warp_fused.warped_noise_video(flows, **args))


@pytest.mark.parametrize(("size", "big"), [((24, 32), (48, 64)), ((30, 20), (48, 96)), ((48, 64), (24, 32)),
                                           ((7, 9), (160, 96)), ((33, 17), (33, 40)), ((256, 448), (512, 896)),
                                           ((100, 70), (512, 896)), ((256, 448), (128, 224))])  # fmt: skip
def test_kernel_resize_is_torch_bilinear(size: tuple[int, int], big: tuple[int, int]) -> None:
    """The plan resizes the flow itself, by the formula of torch's CPU bilinear kernel (the compiler's fused
    multiply-adds included), once `_resize_tables` has seen it give torch's bits for that size pair. Where torch
    rounds otherwise (another instruction set; here, small outputs take another kernel), it says None and torch
    resizes: then the kernel's resize must indeed differ."""
    src = torch.randn((2, *size), generator=torch.Generator().manual_seed(size[0])) * 20
    src[0, 0, :3] = torch.tensor([2.5, -0.5, 1e-30])
    want = torch.nn.functional.interpolate(src[None], big, mode="bilinear", align_corners=False)[0]
    checked = noise_warp_fused._resize_tables(*size, *big)
    iy, ly = grid.resize_table(big[0], size[0], np.float32(size[0]) / np.float32(big[0]))
    ix, lx = grid.resize_table(big[1], size[1], np.float32(size[1]) / np.float32(big[1]))
    got = torch.empty_like(want)
    grid.resize(src.numpy(), iy, ly, ix, lx, got.numpy())
    assert torch.equal(got, want) == (checked is not None)


def test_kernel_resize_is_used_on_avx_machines() -> None:
    """On AVX2/AVX512 builds (the machines we run on), the fused resize is taken for the default 2x upsampling."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch runs its default (non-AVX) kernels here")
    assert noise_warp_fused._resize_tables(256, 448, 512, 896) is not None


def test_video_falls_back_to_torch_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel's resize is not torch's, torch resizes each flow into a reused buffer: same bits."""
    monkeypatch.setattr(noise_warp_fused, "_resize_tables", lambda *size: None)
    flows = torch.randn((3, 2, 30, 20), generator=torch.Generator().manual_seed(4)) * 2
    args = {"channels": 2, "noise_size": (12, 16), "warp_scale": 4, "seed": 5}
    assert torch.equal(noise_warp.warped_noise_video(flows, **args), noise_warp_fused.warped_noise_video(flows, **args))


@pytest.mark.parametrize(("shape", "factor"), [((4, 64, 112), 16), ((3, 12, 18), 3), ((1, 8, 8), 2), ((2, 40, 24), 8)])
def test_kernel_area_pool_is_the_reference(shape: tuple[int, int, int], factor: int) -> None:
    """The fused backend pools its pixel-major state with its own kernel: the reference's block sums (rows, then
    columns, in order) bit for bit, on values over a wide range (where any other summation order rounds
    differently)."""
    gen = torch.Generator().manual_seed(shape[1])
    x = torch.randn(shape, generator=gen) * torch.exp(torch.randn(shape, generator=gen) * 3)
    got = torch.empty((shape[0], shape[1] // factor, shape[2] // factor))
    pixel_major = x.reshape(shape[0], -1).T.contiguous()  # the fused warp's state layout (h * w, C)
    grid.area_pool(pixel_major.numpy(), shape[1], factor, got.numpy())
    assert torch.equal(got, noise_warp.area_pool(x, factor))


@pytest.mark.parametrize("channels", [1, 4])
def test_fused_step_leaves_its_inputs_alone(channels: int) -> None:
    """The sequential merge zeroes the state it has read (the next step's output buffer then needs no clearing);
    warp_step must do that to its own copy, never to the caller's tensors."""
    noise, density = torch.randn(channels, 20, 24), torch.rand(20, 24) + 0.5
    flow = flow_field("random", 20, 24)
    before = (noise.clone(), density.clone(), flow.clone())
    noise_warp_fused.warp_step(noise, density, flow, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(before, (noise, density, flow), strict=True))


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
