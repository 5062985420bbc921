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

import threading
from typing import Any

import numba
import numpy as np
import torch

from annotators import noise_warp
from annotators import noise_warp_kernels as kernels
from annotators.noise_warp import area_pool, check_video_args, resize_flow

WARPER_VERSION: str = noise_warp.WARPER_VERSION  # same outputs as the reference, so the same version

_PAR_MIN_PLAN = 1 << 18  # grid pixels from which the plan runs in parallel
_PAR_MIN_MERGE = 1 << 18  # pixels x channels from which the merge does


class _Workspace:
    """Every buffer of one step on an (h, w) grid, reused across steps: allocating them per step costs page faults
    that add up to a good part of a step. Channel-sized buffers grow on demand."""

    def __init__(self, h: int, w: int) -> None:
        n, n_pad = h * w, (h + 2) * (w + 2)
        self.h, self.w = h, w
        i32, f32 = np.int32, np.float32
        self.dst, self.dst_u, self.tgt = np.empty(n, i32), np.empty(n, i32), np.empty(n, i32)
        self.e_dst, self.e_src, self.fresh = np.empty(n, i32), np.empty(n, i32), np.empty(n, i32)
        self.pulls = np.zeros(n, i32)
        self.p_of, self.pulled, self.e_p = np.empty(n, i32), np.empty(n, i32), np.empty(n, i32)
        self.mark = np.empty(n, i32)
        self.occ = np.zeros(-(-n // 8) * 8 + 8, np.uint8)  # whole words and the dummy byte n; past n never read
        self.occ64 = self.occ[: -(-n // 8) * 8].view(np.uint64)
        self.row_lo, self.row_hi, self.row_flag = np.empty(h, i32), np.empty(h, i32), np.zeros(h, np.uint8)
        self.weight, self.coef, self.acc_d, self.nd = (np.empty(n, f32) for _ in range(4))
        self.c_p, self.d_p, self.a_p, self.sd_p = (np.empty(n, f32) for _ in range(4))
        self.den = np.full(n_pad, np.inf, f32)  # the top and bottom border rows stay inf
        self.sden = np.empty(n_pad, f32)
        self.den_t, self.sden_t = torch.from_numpy(self.den), torch.from_numpy(self.sden)
        self.d_p_t, self.sd_p_t = torch.from_numpy(self.d_p), torch.from_numpy(self.sd_p)
        self.nd_t = torch.from_numpy(self.nd)
        self.flat = np.empty(0, f32)  # randn draws, z means and pieces: grown to the largest step seen

    def scratch(self, size: int) -> np.ndarray:
        if self.flat.size < size:
            self.flat = np.empty(max(size, self.flat.size * 5 // 4), np.float32)
        return self.flat


_local = threading.local()  # workspaces per thread: concurrent callers never share buffers


def _workspace(h: int, w: int) -> _Workspace:
    """This thread's workspace for an (h, w) grid: the four most recently used sizes are kept (clips of a run come
    in a few bucket sizes; a workspace is ~25 numbers per pixel)."""
    cache: dict[tuple[int, int], _Workspace] = _local.__dict__.setdefault("workspaces", {})
    ws = cache.pop((h, w), None)
    if ws is None:
        ws = _Workspace(h, w)
        while len(cache) >= 4:
            cache.pop(next(iter(cache)))  # the least recently used (dicts keep insertion order)
    cache[(h, w)] = ws
    return ws


def _normal(buf: np.ndarray, generator: torch.Generator) -> None:
    """Fill buf with torch's normals: the same values and generator advance as torch.randn of its shape."""
    torch.from_numpy(buf).normal_(generator=generator)


def _step(
    ws: _Workspace,
    q: np.ndarray,
    dens: np.ndarray,
    flow: np.ndarray,
    sx: np.float32,
    sy: np.float32,
    generator: torch.Generator,
    out: np.ndarray,
    new_dens: np.ndarray,
    threaded: bool | None = None,
) -> None:
    """One warp step from q (C, n), dens (n) and flow (2, n) (scaled by sx, sy) into out (C, n), new_dens (n).
    threaded forces the threaded or the sequential kernels; None picks them by thread count and grid size."""
    c = q.shape[0]
    h, w = ws.h, ws.w
    # Threads pay off only on large grids: each parallel loop costs a launch and a barrier, which stalls whenever
    # the machine is busy (measured on a 256x256 grid: the parallel plan is slower than the sequential one).
    nb = numba.get_num_threads()
    if threaded is None:
        plan = kernels.plan_par if nb > 1 and h * w >= _PAR_MIN_PLAN else kernels.plan_seq
        merge = kernels.merge_par if nb > 1 and h * w * c >= _PAR_MIN_MERGE else kernels.merge_seq
    else:
        plan, merge = (kernels.plan_par, kernels.merge_par) if threaded else (kernels.plan_seq, kernels.merge_seq)
    nb = nb if merge is kernels.merge_par else 1  # bands: the plan's den pass and the merge share them
    n_e, n_f, n_p = plan(
        flow, sx, sy, dens, h, w, nb, ws.dst, ws.dst_u, ws.tgt, ws.weight, ws.mark, ws.occ, ws.occ64, ws.row_lo,
        ws.row_hi, ws.row_flag, ws.e_dst, ws.e_src, ws.fresh, ws.pulls, ws.p_of, ws.pulled, ws.e_p, ws.c_p, ws.d_p,
        ws.a_p, ws.den,
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
        q, out, ws.nd, h, w, nb, n_e, n_f, n_p, ws.dst, ws.dst_u, ws.tgt, ws.weight, ws.sden, ws.coef, ws.acc_d,
        ws.row_lo, ws.row_hi, ws.e_dst, ws.e_p, ws.fresh, ws.pulled, ws.c_p, ws.sd_p, ws.d_p, ws.a_p,
        z_e, z_c, z_f, zm, xp, piece,
    )  # fmt: skip
    mean = np.float32(ws.nd_t.mean().item())  # torch's summation order, as the reference's new_dens.mean()
    kernels.renormalise(ws.nd, mean, new_dens)


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


def warp_step(
    noise: torch.Tensor, density: torch.Tensor, flow: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`annotators.noise_warp.warp_step`, fused: same arguments, same random draws, bit-identical result."""
    if noise.ndim != 3 or density.shape != noise.shape[1:] or flow.shape != (2, *noise.shape[1:]):
        raise ValueError(
            f"expected noise (C,H,W), density (H,W), flow (2,H,W); got {tuple(noise.shape)}, "
            f"{tuple(density.shape)}, {tuple(flow.shape)}"
        )
    on_cpu = noise.device.type == density.device.type == flow.device.type == "cpu"
    if not on_cpu or noise.dtype != torch.float32 or density.dtype != torch.float32 or not flow.is_floating_point():
        return noise_warp.warp_step(noise, density, flow, generator)
    c, h, w = noise.shape
    n = h * w
    q = noise.detach().reshape(c, n).contiguous().numpy()
    dens = density.detach().reshape(n).contiguous().numpy()
    # the reference rounds the flow in its own dtype: float64 stays (the kernel's specialisation for it), narrower
    # floats widen to float32 exactly, so their rounding is the same
    f = flow.detach().reshape(2, n)
    f = (f if f.dtype == torch.float64 else f.to(torch.float32)).contiguous().numpy()
    out, new_dens = np.empty((c, n), np.float32), np.empty(n, np.float32)  # numpy's allocator: reused pages
    _sync_threads()
    _step(_workspace(h, w), q, dens, f, _ONE, _ONE, generator, out, new_dens)
    return torch.from_numpy(out).view(c, h, w), torch.from_numpy(new_dens).view(h, w)


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

    The frame loop keeps the state in two reused buffers and resizes each flow into a reused buffer (the
    reference's bilinear resize, with its dx/dy scaling folded into the rounding). Non-CPU devices run the
    reference."""
    flows = check_video_args(flows, channels, noise_size, warp_scale)
    device = torch.device(device)
    if device.type != "cpu":
        return noise_warp.warped_noise_video(
            flows, channels=channels, noise_size=noise_size, warp_scale=warp_scale, seed=seed, device=device
        )
    nh, nw = int(noise_size[0]), int(noise_size[1])
    big_h, big_w = nh * warp_scale, nw * warp_scale
    n = big_h * big_w
    fh, fw = flows.shape[-2:]
    generator = torch.Generator(device).manual_seed(int(seed))
    ws = _workspace(big_h, big_w)
    state, nxt = np.empty((channels, n), np.float32), np.empty((channels, n), np.float32)
    dens, new_dens = np.ones(n, np.float32), np.empty(n, np.float32)
    _normal(state, generator)  # = torch.randn((channels, big_h, big_w), generator=generator)
    out = torch.empty((flows.shape[0] + 1, channels, nh, nw), dtype=torch.float32)
    out[0] = area_pool(torch.from_numpy(state).view(channels, big_h, big_w), warp_scale)
    resized = (fh, fw) != (big_h, big_w)
    # the reference's resize_flow: scale = tensor([big_w / w, big_h / h], float32), applied after the resize
    sx, sy = (np.float32(big_w / fw), np.float32(big_h / fh)) if resized else (_ONE, _ONE)
    flow_buf = torch.empty((1, 2, big_h, big_w), dtype=torch.float32) if resized else None
    _sync_threads()
    for i in range(flows.shape[0]):
        f = flows[i].to(dtype=torch.float32)
        if flow_buf is not None:  # F.interpolate(bilinear, align_corners=False) writing into the reused buffer
            torch._C._nn.upsample_bilinear2d(f[None], (big_h, big_w), False, None, None, out=flow_buf)
            f = flow_buf
        _step(ws, state, dens, f.reshape(2, n).contiguous().numpy(), sx, sy, generator, nxt, new_dens)
        state, nxt, dens, new_dens = nxt, state, new_dens, dens
        out[i + 1] = area_pool(torch.from_numpy(state).view(channels, big_h, big_w), warp_scale)
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels, sequential and threaded, on a tiny input, so no timed or
    per-clip call pays it."""
    gen = torch.Generator().manual_seed(0)
    flow = torch.zeros(2, 4, 4)
    flow[0, :, :2] = 1.0  # a split and a fresh column: every branch of the kernels
    _sync_threads()
    q, f = np.zeros((1, 16), np.float32), flow.reshape(2, 16).numpy()
    for threaded in (False, True):
        _step(_workspace(4, 4), q, np.ones(16, np.float32), f, _ONE, _ONE, gen, q.copy(), q[0].copy(), threaded)


__all__ = ["WARPER_VERSION", "area_pool", "resize_flow", "warm_up", "warp_step", "warped_noise_video"]
