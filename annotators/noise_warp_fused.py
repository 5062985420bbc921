"""The noise warp of `annotators.noise_warp` fused into numba kernels (CPU): bit-identical to the torch reference.

Same algorithm, same float32 operations in the same order per output element, so for the same seed and flow the
output equals the torch reference bit for bit (the kernels are in `annotators.noise_warp_kernels`; this module
draws the random numbers, owns the buffers and drives the steps):

* `_plan` rounds the flow, routes every source to its contraction target, finds the empty targets (expansion edges
  and fresh noise, in row-major target order), the pulled sources (ascending) and their split weights, and sums
  `a^2` per target. Their counts fix the shapes of the random draws.
* The random normals are drawn with torch from the caller's generator in the reference's order and shapes (split
  noise of expansion edges, of pulled sources' contraction edges, fresh noise), so the generator state matches too.
* `_merge` does the split, the weighted merge, the expansion and fresh targets and the density.
* The flow's bilinear resize to the warp grid happens inside `_plan`, row by row (it never writes the full-size
  flow): torch's CPU formula, with the multiply-adds its compiler fuses. That is checked against torch's own resize
  once per size pair (`_resize_tables`); where it differs (another instruction set, or a size torch resizes with
  another kernel), torch resizes each frame as before.
* The output frames are pooled by `noise_warp_grid.area_pool`: the reference's `area_pool` adds in a fixed order, so the
  same bits in one pass.

Reproducibility rests on the reference's scatters being sequential on CPU (`bincount`, `index_add_`): each
accumulator receives its addends in increasing source index, then the pulled sources' pieces in increasing source
index. The parallel passes keep exactly that order per accumulator: the target rows are split into bands, one per
thread, and each band scans the sources in increasing index and adds only the edges that land in it (a per-row
range of target rows skips source rows that cannot reach the band). With one thread, or on small grids, the same
kernels run compiled without threads.

The square roots are torch's, on the reference's arrays: its CPU sqrt (MKL's vectorised one in this build) is not
correctly rounded (an ulp off for ~15% of float32 inputs, even sqrt(a*a) != a for a few a in a million), so numba's
exact sqrt would differ. The density's mean (torch's summation order) is torch's too. Everything else lives in
per-thread buffers reused across steps and frames: on CPU, a fresh multi-megabyte torch allocation costs page
faults that can exceed a whole step. CUDA tensors and non-float32 inputs go to the reference.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numba
import numpy as np
import torch

from annotators import noise_warp
from annotators import noise_warp_grid as grid
from annotators import noise_warp_kernels as kernels
from annotators.base import all_finite
from annotators.noise_warp import area_pool, check_video_args, resize_flow

WARPER_VERSION: str = noise_warp.WARPER_VERSION  # same outputs as the reference, so the same version

_PAR_MIN_PLAN = 1 << 18  # grid pixels from which the plan runs in parallel
_PAR_MIN_MERGE = 1 << 18  # pixels x channels from which the merge does


class _Memory:
    """One thread's raw buffers, shared by its workspaces of every grid size (a thread steps one grid at a time).
    A clip on a new size then reuses memory the process has already touched instead of paying ~15 ms of first-touch
    page faults per size and worker (a run's clips come in several bucket sizes), and a worker holds one grid's
    buffers rather than one set per size. Buffers grow, with headroom, and are never shrunk."""

    def __init__(self) -> None:
        self.raw: dict[str, np.ndarray] = {}
        self.current: _Workspace | None = None  # the workspace whose step last completed on these buffers

    def take(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A C-contiguous view of `shape` on the raw buffer `name` (zeros when first allocated)."""
        size = math.prod(shape)
        buf = self.raw.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.zeros(size + size // 4, dtype)
            self.raw[name] = buf
        return buf[:size].reshape(shape)


class _Workspace:
    """Every buffer of one step on an (h, w) grid, views on the thread's `_Memory`, reused across steps:
    allocating them per step costs page faults that add up to a good part of a step. Channel-sized buffers grow on
    demand."""

    def __init__(self, h: int, w: int, mem: _Memory) -> None:
        n, n_pad = h * w, (h + 2) * (w + 2)
        self.h, self.w, self.mem = h, w, mem
        i32, f32 = np.int32, np.float32
        self.dst, self.tgt = mem.take("dst", (n,), i32), mem.take("tgt", (n,), i32)
        self.e_dst, self.e_src = mem.take("e_dst", (n,), i32), mem.take("e_src", (n,), i32)
        self.fresh, self.pulls = mem.take("fresh", (n,), i32), mem.take("pulls", (n,), i32)
        self.p_of, self.pulled = mem.take("p_of", (n,), i32), mem.take("pulled", (n,), i32)
        self.e_p = mem.take("e_p", (n,), i32)
        # whole words and the dummy byte n; past n never read
        self.occ = mem.take("occ", (-(-n // 8) * 8 + 8,), np.uint8)
        self.occ64 = self.occ[: -(-n // 8) * 8].view(np.uint64)
        self.row_lo, self.row_hi = mem.take("row_lo", (h,), i32), mem.take("row_hi", (h,), i32)
        self.pull_blk = mem.take("pull_blk", (-(-n // 64) * 8,), np.uint8)  # a byte per 8 sources, whole words
        self.pull_blk64 = self.pull_blk.view(np.uint64)
        self.weight, self.acc_d = mem.take("weight", (n,), f32), mem.take("acc_d", (n,), f32)
        self.c_p, self.d_p = mem.take("c_p", (n,), f32), mem.take("d_p", (n,), f32)
        self.a_p, self.sd_p = mem.take("a_p", (n,), f32), mem.take("sd_p", (n,), f32)
        self.den, self.sden = mem.take("den", (n_pad,), f32), mem.take("sden", (n_pad,), f32)  # rewritten per step
        self.den_t, self.sden_t = torch.from_numpy(self.den), torch.from_numpy(self.sden)
        self.d_p_t, self.sd_p_t = torch.from_numpy(self.d_p), torch.from_numpy(self.sd_p)
        self.dens = mem.take("dens", (2, n), f32)  # a video's density and spare density

    def begin(self) -> None:
        """Before a step: the buffers the plan needs zeroed (occ, pulls, pull_blk: each step leaves them zero, but
        another grid size's layout, or a step cut short, can leave marks) are cleared unless this workspace's last
        step was the last one on the memory."""
        if self.mem.current is not self:
            self.occ[:] = 0
            self.pulls[:] = 0
            self.pull_blk[:] = 0
        self.mem.current = None  # until the step completes

    def end(self) -> None:
        self.mem.current = self

    def columns(self, rows: int) -> np.ndarray:
        """The resize's column pass of a flow with `rows` rows: (2, rows, w)."""
        return self.mem.take("cols", (2, rows, self.w), np.float32)

    def states(self, channels: int) -> np.ndarray:
        """Two pixel-major noise states (2, n, channels) for the frame loop (reused: no page faults per clip)."""
        return self.mem.take("noise", (2, self.h * self.w, channels), np.float32)

    def scratch(self, size: int) -> np.ndarray:
        """randn draws, z means and pieces of one step."""
        return self.mem.take("flat", (size,), np.float32)


_local = threading.local()  # memory per thread: concurrent callers never share buffers


def _workspace(h: int, w: int) -> _Workspace:
    """A workspace for an (h, w) grid on this thread's memory: views only, so one per warp state costs nothing (a
    workspace made before the memory grew keeps the old buffers alive until it is dropped)."""
    return _Workspace(h, w, _local.__dict__.setdefault("memory", _Memory()))


_ResizeTables = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # rows' indices, weights; columns' the same
_NO_TABLES: _ResizeTables = (np.zeros((2, 1), np.int64), np.zeros((2, 1), np.float32)) * 2
_NO_COLUMNS = np.zeros((2, 1, 1), np.float32)


@functools.lru_cache(maxsize=16)
def _resize_tables(fh: int, fw: int, big_h: int, big_w: int) -> _ResizeTables | None:
    """The kernels' bilinear resize tables from (fh, fw) to (big_h, big_w), or None where the kernels' resize is
    not torch's bit for bit on this machine. torch's CPU kernel is compiled per instruction set (the compiler
    fuses its multiply-adds in the AVX2 build), so the formula is checked once per size pair against torch's own
    resize of random values, where a different rounding shows in a good share of them; on a mismatch the frames
    are resized by torch, as before."""
    iy, ly = grid.resize_table(big_h, fh, np.float32(fh) / np.float32(big_h))
    ix, lx = grid.resize_table(big_w, fw, np.float32(fw) / np.float32(big_w))
    probe = torch.randn((1, 2, fh, fw), generator=torch.Generator().manual_seed(fh * 7919 + fw)) * 8
    want = torch.nn.functional.interpolate(probe, (big_h, big_w), mode="bilinear", align_corners=False)[0].numpy()
    got = np.empty_like(want)
    grid.resize(probe[0].numpy(), iy, ly, ix, lx, got)
    return (iy, ly, ix, lx) if np.array_equal(got.view(np.int32), want.view(np.int32)) else None


def _normal(buf: np.ndarray, generator: torch.Generator) -> None:
    """Fill buf with torch's normals: the same values and generator advance as torch.randn of its shape."""
    torch.from_numpy(buf).normal_(generator=generator)


def _step(
    ws: _Workspace,
    q: np.ndarray,
    dens: np.ndarray,
    mean: np.float32 | None,
    flow: np.ndarray,
    sx: np.float32,
    sy: np.float32,
    generator: torch.Generator,
    out: np.ndarray,
    new_dens: np.ndarray,
    threaded: bool | None = None,
    tables: _ResizeTables | None = None,
    out_zeroed: bool = False,
) -> tuple[bool, np.float32]:
    """One warp step from q (n, C), dens (n) and flow (2, h, w) (scaled by sx, sy) into out (n, C), new_dens (n).
    mean: dens is a previous step's density before its renormalisation, which is done as it is read (None: dens is
    the density itself); new_dens is this step's density before its renormalisation, by the returned mean. With
    tables, flow is (2, fh, fw) float32 and the step's flow is its bilinear resize by them. threaded forces the
    threaded or the sequential kernels; None picks them by thread count and grid size. out_zeroed: out is all
    zeros (the step does not clear it). Returns (whether q was left all zeros (the sequential merge consumes it:
    the next step's out then needs no clearing), the mean)."""
    c = q.shape[1]
    h, w = ws.h, ws.w
    ws.begin()
    # Threads pay off only on large grids: each parallel loop costs a launch and a barrier, which stalls whenever
    # the machine is busy (measured on a 256x256 grid: the parallel plan is slower than the sequential one).
    nb = numba.get_num_threads()
    if threaded is None:
        plan = kernels.plan_par if nb > 1 and h * w >= _PAR_MIN_PLAN else kernels.plan_seq
        merge = kernels.merge_par if nb > 1 and h * w * c >= _PAR_MIN_MERGE else kernels.merge_seq
    else:
        plan, merge = (kernels.plan_par, kernels.merge_par) if threaded else (kernels.plan_seq, kernels.merge_seq)
    nb = nb if merge is kernels.merge_par else 1  # bands: the plan's den pass and the merge share them
    resized, (iy, ly, ix, lx) = (True, tables) if tables is not None else (False, _NO_TABLES)
    cols = ws.columns(flow.shape[1]) if resized else _NO_COLUMNS
    renorm, by = (False, _ONE) if mean is None else (True, mean)
    n_e, n_f, n_p = plan(
        flow, resized, iy, ly, ix, lx, cols, sx, sy, dens, renorm, by, h, w, nb, ws.dst, ws.tgt, ws.weight,
        ws.occ, ws.occ64, ws.row_lo, ws.row_hi, ws.pull_blk, ws.pull_blk64, ws.e_dst, ws.e_src, ws.fresh,
        ws.pulls, ws.p_of, ws.pulled, ws.e_p, ws.c_p, ws.d_p, ws.a_p, ws.den,
    )  # fmt: skip
    torch.sqrt(ws.den_t, out=ws.sden_t)  # the reference's sqrt_ on the same padded array
    if n_p:
        torch.sqrt(ws.d_p_t[:n_p], out=ws.sd_p_t[:n_p])
    # the draws (expansion splits, contraction splits, fresh) and the splits' z means, x parts and pieces
    sizes = (n_e, n_p, n_f, n_p, n_p, n_p)
    flat, at, parts = ws.scratch(c * sum(sizes)), 0, []
    for k in sizes:
        parts.append(flat[at : at + c * k].reshape(c, k))
        at += c * k
    z_e, z_c, z_f, zm, xp, piece = parts
    if n_e:  # in the reference's order and shapes
        _normal(z_e, generator)
        _normal(z_c, generator)
    if n_f:
        _normal(z_f, generator)
    merge(
        q, out, new_dens, h, w, nb, n_e, n_f, n_p, ws.dst, ws.tgt, ws.weight, ws.sden, ws.acc_d,
        ws.row_lo, ws.row_hi, ws.e_dst, ws.e_p, ws.fresh, ws.pulled, ws.c_p, ws.sd_p, ws.d_p, ws.a_p,
        z_e, z_c, z_f, zm, xp, piece, out_zeroed, nb == 1,
    )  # fmt: skip
    ws.end()
    # torch's summation order, as the reference's new_dens.mean(); the next step's plan renormalises by it
    return nb == 1, np.float32(torch.from_numpy(new_dens).mean().item())


def _sync_threads() -> None:
    """Run the parallel kernels on as many threads as torch uses (the pipeline sizes torch's pool per worker).

    Launching numba's OpenMP pool (on its first use) sets the OpenMP thread count, which torch shares, to every
    core: torch's own count is put back, or every torch op of the process would run on all cores from then on."""
    torch_threads = torch.get_num_threads()
    numba_threads = numba.get_num_threads()  # launches the pool on first use
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba_threads != want:
        numba.set_num_threads(want)


_ONE = np.float32(1.0)


def _pool(state: np.ndarray, h: int, factor: int, out: np.ndarray) -> None:
    """out (C, h / factor, w / factor) = `area_pool` of the pixel-major state (h * w, C) read as (C, h, w), by the
    kernel (the same bits, in one pass)."""
    if factor == 1:
        out[...] = state.T.reshape(out.shape)
    else:
        grid.area_pool(state, h, factor, out)


class WarpState:
    """A noise state on one warp grid, warped frame after frame: the noise stays in the kernels' pixel-major layout
    (h * w, C) between steps, so the merge scatters a pixel's channels together (`warped_noise_video`'s frame loop;
    `warp_step` converts one step in and out of the (C, H, W) layout). One thread at a time."""

    def __init__(self, h: int, w: int, channels: int, generator: torch.Generator, reuse: bool = False) -> None:
        """reuse: the state lives in the thread's memory (no page faults per video; one such state per thread at a
        time), else in arrays of its own."""
        n = h * w
        self.h, self.w, self.generator = h, w, generator
        self.ws = _workspace(h, w)
        noise, density = (
            (self.ws.states(channels), self.ws.dens)
            if reuse
            else (np.empty((2, n, channels), np.float32), np.empty((2, n), np.float32))
        )
        self.noise, self.spare = noise[0], noise[1]  # the state (h * w, C) and the next step's output buffer
        # the density (h * w) and the next step's; with mean set, density is a step's density before its
        # renormalisation by mean, which the next step's plan does as it reads it (`density_values` applies it)
        self.density, self.spare_density = density[0], density[1]
        self.mean: np.float32 | None = None
        self.spare_zeroed = False  # whether the spare buffer is all zeros (the merge then skips clearing it)

    @classmethod
    def of(cls, noise: torch.Tensor, density: torch.Tensor, generator: torch.Generator) -> WarpState:
        """The state of noise (C, H, W) and density (H, W), float32 CPU tensors (copied in)."""
        c, h, w = noise.shape
        state = cls(h, w, c, generator)
        grid.interleave(noise.detach().reshape(c, h * w).contiguous().numpy(), state.noise)
        state.density[:] = density.detach().reshape(h * w).numpy()
        return state

    def step(self, flow: np.ndarray, sx: np.float32 = _ONE, sy: np.float32 = _ONE, tables: Any = None) -> None:
        """Warp one frame along flow (2, h, w) (or (2, fh, fw) resized by tables), its values scaled by sx, sy."""
        self.spare_zeroed, self.mean = _step(
            self.ws, self.noise, self.density, self.mean, flow, sx, sy, self.generator, self.spare,
            self.spare_density, None, tables, self.spare_zeroed,
        )  # fmt: skip
        self.noise, self.spare = self.spare, self.noise
        self.density, self.spare_density = self.spare_density, self.density

    def density_values(self) -> np.ndarray:
        """The density (h * w), renormalised: a new array."""
        if self.mean is None:
            return self.density.copy()
        out = np.empty_like(self.density)
        kernels.renormalise(self.density, self.mean, out)
        return out

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise (C, H, W), density (H, W)) as new tensors."""
        noise = torch.from_numpy(np.ascontiguousarray(self.noise.T)).view(-1, self.h, self.w)
        return noise, torch.from_numpy(self.density_values()).view(self.h, self.w)


def warp_step(
    noise: torch.Tensor, density: torch.Tensor, flow: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`annotators.noise_warp.warp_step`, fused: same arguments, same random draws, bit-identical result (one
    `WarpState` step, the layout converted in and out: a loop over frames keeps a WarpState instead)."""
    if noise.ndim != 3 or density.shape != noise.shape[1:] or flow.shape != (2, *noise.shape[1:]):
        raise ValueError(
            f"expected noise (C,H,W), density (H,W), flow (2,H,W); got {tuple(noise.shape)}, "
            f"{tuple(density.shape)}, {tuple(flow.shape)}"
        )
    on_cpu = noise.device.type == density.device.type == flow.device.type == "cpu"
    if not on_cpu or noise.dtype != torch.float32 or density.dtype != torch.float32 or not flow.is_floating_point():
        return noise_warp.warp_step(noise, density, flow, generator)
    # the reference rounds the flow in its own dtype: float64 stays (the kernel's specialisation for it), narrower
    # floats widen to float32 exactly, so their rounding is the same
    f = flow.detach()
    f = (f if f.dtype == torch.float64 else f.to(torch.float32)).contiguous().numpy()
    _sync_threads()
    state = WarpState.of(noise, density, generator)  # a copy: the step consumes (zeroes) its input state
    state.step(f)
    return state.tensors()


def warped_noise_video(
    flows: Any,
    *,
    channels: int,
    noise_size: tuple[int, int],
    warp_scale: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """`annotators.noise_warp.warped_noise_video`, fused: the same checks, draws and output bit for bit.

    A `WarpState` on the workspace's reused buffers (no page faults per video) warps frame by frame; the plan
    resizes each flow itself (the reference's bilinear resize, with its dx/dy scaling folded into the rounding).
    Non-CPU devices run the reference."""
    flows = check_video_args(flows, channels, noise_size, warp_scale)
    device = torch.device(device)
    if device.type != "cpu":
        return noise_warp.warped_noise_video(
            flows, channels=channels, noise_size=noise_size, warp_scale=warp_scale, seed=seed, device=device
        )
    nh, nw = int(noise_size[0]), int(noise_size[1])
    big_h, big_w = nh * warp_scale, nw * warp_scale
    fh, fw = flows.shape[-2:]
    generator = torch.Generator(device).manual_seed(int(seed))
    state = WarpState(big_h, big_w, channels, generator, reuse=True)
    state.density.fill(1.0)
    first = state.spare.reshape(channels, big_h * big_w)  # the spare buffer's memory, free until the first step
    _normal(first, generator)  # = torch.randn((channels, big_h, big_w), generator=generator)
    grid.interleave(first, state.noise)
    out = torch.empty((flows.shape[0] + 1, channels, nh, nw), dtype=torch.float32)
    _pool(state.noise, big_h, warp_scale, out[0].numpy())
    resized = (fh, fw) != (big_h, big_w)
    # the reference's resize_flow: scale = tensor([big_w / w, big_h / h], float32), applied after the resize
    sx, sy = (np.float32(big_w / fw), np.float32(big_h / fh)) if resized else (_ONE, _ONE)
    # the plan resizes each flow row by row as it routes (torch's values, checked); else torch resizes the frame
    tables = _resize_tables(fh, fw, big_h, big_w) if resized else None
    flow_buf = torch.empty((1, 2, big_h, big_w), dtype=torch.float32) if resized and tables is None else None
    _sync_threads()
    for i in range(flows.shape[0]):
        f = flows[i].to(dtype=torch.float32)
        if flow_buf is not None:  # F.interpolate(bilinear, align_corners=False) writing into the reused buffer
            torch._C._nn.upsample_bilinear2d(f[None], (big_h, big_w), False, None, None, out=flow_buf)
            f = flow_buf[0]
        state.step(f.contiguous().numpy(), sx, sy, tables)
        _pool(state.noise, big_h, warp_scale, out[i + 1].numpy())
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels, sequential and threaded, on a tiny input, so no timed or
    per-clip call pays it."""
    gen = torch.Generator().manual_seed(0)
    flow = torch.zeros(2, 4, 4)
    flow[0, :, :2] = 1.0  # a split and a fresh column: every branch of the kernels
    _sync_threads()
    all_finite(np.zeros(4, np.float16))  # the flows' finiteness check (`check_video_args`), compiled too
    q, d, f = np.zeros((16, 1), np.float32), np.ones(16, np.float32), flow.numpy()
    _pool(q, 4, 2, np.empty((1, 2, 2), np.float32))
    grid.interleave(q.T.copy(), q.copy())
    tables = _resize_tables(2, 2, 4, 4)
    for threaded in (False, True):
        for mean in (None, _ONE):
            _step(_workspace(4, 4), q, d, mean, f, _ONE, _ONE, gen, q.copy(), d.copy(), threaded)
        if tables is not None:  # the resizing specialisation
            f_small = f[:, :2, :2].copy()
            _step(_workspace(4, 4), q, d, _ONE, f_small, _ONE, _ONE, gen, q.copy(), d.copy(), threaded, tables)


__all__ = ["WARPER_VERSION", "WarpState", "area_pool", "resize_flow", "warm_up", "warp_step", "warped_noise_video"]
