"""The noise warp of `annotators.noise_warp` fused into two numba kernels (CPU): bit-identical to the reference.

Same algorithm, same float32 operations in the same order per output element, so for the same seed and flow the
output equals the torch reference bit for bit:

* `_plan` (one pass over the sources, one over the empty targets, one over the pulled sources) rounds the flow,
  scatters the contraction edges and their `sum a^2`, and finds the expansion edges, fresh targets and pulled
  sources. Their counts fix the shapes of the random draws.
* The random normals are drawn with torch from the caller's generator in the reference's order and shapes (split
  noise of expansion edges, of pulled sources' contraction edges, fresh noise), so the generator state matches too.
* `_merge` does the split, the weighted merge and the density in one pass per channel (channels in parallel: every
  accumulator belongs to one channel, so its additions keep the reference's source order at any thread count).

The reference's scatters are sequential on CPU (`bincount`, `index_add_`), which is what makes this reproducible:
each accumulator receives its addends in increasing source index, then the pulled sources' pieces in increasing
source index. Skipping the reference's `+ 0.0` addends is exact because its accumulators start at +0.0 and so can
never hold -0.0. The square roots are torch's, on arrays of the reference's lengths: its vectorised sqrt is not
always correctly rounded (an ulp off at some elements, which depend on the length). The density's renormalisation
(a torch mean, whose summation order is torch's) and the pooling in `warped_noise_video` stay torch ops. CUDA
tensors and non-float32 inputs go to the reference.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from annotators import noise_warp
from annotators.noise_warp import _MIN_DENSITY, _randn, area_pool, resize_flow

WARPER_VERSION: str = noise_warp.WARPER_VERSION  # same outputs as the reference, so the same version


@numba.njit(cache=True, nogil=True)
def _round_clamp(v: float, lim: int) -> int:
    """torch's round (half to even) then clamp to [-lim, lim], as the reference does before its int32 cast."""
    r = np.rint(v)
    if r > lim:
        r = lim
    elif r < -lim:
        r = -lim
    return int(r)


@numba.njit(cache=True, nogil=True)
def _plan(flow: np.ndarray, dens: np.ndarray, h: int, w: int) -> tuple:
    """Edges and weights of one step, everything before the reference's square roots.

    Returns (dst, dst_u, den, e_dst, e_p, fresh, pulled, pulls, c_p, d_p, a_p, weight): dst is every source's
    contraction target on the canvas padded by one pixel (the reference's layout: edges leaving the frame land on
    the border), dst_u the in-frame pixel it is clamped to; den the padded `sum a^2` per target with the border at
    inf (the reference's second bincount, or its first when nothing is pulled); e_dst / e_p the expansion edges in
    row-major target order and the compact id of their source; fresh the targets with no edge; pulled the sources
    with expansion edges (ascending), pulls their pull counts; c_p, d_p, a_p their contraction flag, degree and
    split weight; weight every source's merge weight a = density/deg.
    """
    n, wp = h * w, w + 2
    lim = h + w
    dst = np.empty(n, np.int64)
    dst_u = np.empty(n, np.int64)
    den = np.zeros((h + 2) * wp, np.float32)
    for y in range(h):
        for x in range(w):
            i = y * w + x
            ty = min(max(y + _round_clamp(flow[1, i], lim), -1), h)
            tx = min(max(x + _round_clamp(flow[0, i], lim), -1), w)
            dst[i] = (ty + 1) * wp + tx + 1
            dst_u[i] = min(max(ty, 0), h - 1) * w + min(max(tx, 0), w - 1)
            den[dst[i]] += dens[i] * dens[i]
    e_dst = np.empty(n, np.int64)
    e_src = np.empty(n, np.int64)
    fresh = np.empty(n, np.int64)
    pulls = np.zeros(n, np.int64)
    n_e = 0
    n_f = 0
    for y in range(h):
        for x in range(w):
            t = y * w + x
            if den[(y + 1) * wp + x + 1] != 0.0:
                continue
            sy = y - _round_clamp(flow[1, t], lim)
            sx = x - _round_clamp(flow[0, t], lim)
            if 0 <= sy < h and 0 <= sx < w:
                e_dst[n_e] = t
                e_src[n_e] = sy * w + sx
                pulls[sy * w + sx] += 1
                n_e += 1
            else:
                fresh[n_f] = t
                n_f += 1
    p_of = np.empty(n, np.int64)
    pulled = np.empty(n_e, np.int64)
    n_p = 0
    if n_e:
        for i in range(n):
            if pulls[i]:
                p_of[i] = n_p
                pulled[n_p] = i
                n_p += 1
    e_p = np.empty(n_e, np.int64)
    for j in range(n_e):
        e_p[j] = p_of[e_src[j]]
    c_p = np.empty(n_p, np.float32)
    d_p = np.empty(n_p, np.float32)
    a_p = np.empty(n_p, np.float32)
    weight = dens
    if n_e:
        weight = dens.copy()
        for k in range(n_p):
            i = pulled[k]
            ty, tx = dst[i] // wp, dst[i] % wp
            c_p[k] = 1.0 if 0 < ty <= h and 0 < tx <= w else 0.0
            d_p[k] = np.float32(pulls[i]) + c_p[k]
            a_p[k] = weight[i] / d_p[k]
            weight[i] = a_p[k]
        den[:] = 0.0
        for i in range(n):
            den[dst[i]] += weight[i] * weight[i]
    for x in range(wp):  # the border: merge coefficient a / sqrt(inf) = 0 for edges leaving the frame
        den[x] = np.inf
        den[(h + 1) * wp + x] = np.inf
    for y in range(1, h + 1):
        den[y * wp] = np.inf
        den[y * wp + w + 1] = np.inf
    return dst, dst_u, den, e_dst[:n_e], e_p, fresh[:n_f], pulled[:n_p], pulls, c_p, d_p, a_p, weight


@numba.njit(cache=True, nogil=True, parallel=True)
def _merge(
    q: np.ndarray,
    h: int,
    w: int,
    dst: np.ndarray,
    dst_u: np.ndarray,
    sden: np.ndarray,
    e_dst: np.ndarray,
    e_p: np.ndarray,
    fresh: np.ndarray,
    pulled: np.ndarray,
    pulls: np.ndarray,
    c_p: np.ndarray,
    sd_p: np.ndarray,
    d_p: np.ndarray,
    a_p: np.ndarray,
    weight: np.ndarray,
    z_e: np.ndarray,
    z_c: np.ndarray,
    z_f: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Split, merge and density of one step: (next noise (C, n), next density (n) before renormalisation).
    sden = sqrt(den) and sd_p = sqrt(d_p) come from torch, whose vectorised sqrt is not always correctly rounded."""
    c, n = q.shape
    n_e, n_p, n_f = e_dst.shape[0], pulled.shape[0], fresh.shape[0]
    coef = np.empty(n, np.float32)
    acc_d = np.zeros(n, np.float32)
    for i in range(n):
        coef[i] = weight[i] / sden[dst[i]]
        acc_d[dst_u[i]] += coef[i]
    out = np.empty((c, n), np.float32)
    for ch in numba.prange(c):
        acc = out[ch]
        acc[:] = 0.0
        qc = q[ch]
        for i in range(n):
            if pulls[i] == 0:  # pulled sources send their split piece instead (below)
                acc[dst_u[i]] += qc[i] * coef[i]
        if n_e:
            zc = np.empty(n_p, np.float32)
            zm = np.empty(n_p, np.float32)
            xp = np.empty(n_p, np.float32)
            for k in range(n_p):
                zc[k] = z_c[ch, k] * c_p[k]
                zm[k] = zc[k]
                xp[k] = qc[pulled[k]] / sd_p[k]
            for j in range(n_e):
                zm[e_p[j]] += z_e[ch, j]
            for k in range(n_p):
                zm[k] = zm[k] / d_p[k]
                i = pulled[k]
                acc[dst_u[i]] += ((zc[k] - zm[k]) + xp[k]) * coef[i]
            for j in range(n_e):
                acc[e_dst[j]] = (z_e[ch, j] - zm[e_p[j]]) + xp[e_p[j]]
        for j in range(n_f):
            acc[fresh[j]] = z_f[ch, j]
    new_dens = np.empty(n, np.float32)
    for y in range(h):
        for x in range(w):
            new_dens[y * w + x] = acc_d[y * w + x] * sden[(y + 1) * (w + 2) + x + 1]
    for j in range(n_e):
        new_dens[e_dst[j]] = a_p[e_p[j]]
    for j in range(n_f):
        new_dens[fresh[j]] = 1.0
    return out, new_dens


def _sync_threads() -> None:
    """Run the parallel kernel on as many threads as torch uses (the pipeline sizes torch's pool per worker)."""
    want = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


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
    plan = _plan(flow.detach().reshape(2, n).contiguous().numpy(), dens, h, w)
    dst, dst_u, den, e_dst, e_p, fresh, pulled, pulls, c_p, d_p, a_p, weight = plan
    n_e, n_f = e_dst.shape[0], fresh.shape[0]
    # the reference's sqrt calls on arrays of the same length: torch's vectorised sqrt can differ from a correctly
    # rounded one by an ulp, and where it does depends on the array's length (vector body vs scalar tail)
    sden = torch.from_numpy(den).sqrt_().numpy()
    sd_p = torch.from_numpy(d_p).sqrt().numpy()
    empty = np.empty((c, 0), np.float32)
    z_e = z_c = z_f = empty
    if n_e:  # the reference's draw order: expansion splits, then the pulled sources' contraction splits
        z_e = _randn((c, n_e), generator, noise).numpy()
        z_c = _randn((c, pulled.shape[0]), generator, noise).numpy()
    if n_f:
        z_f = _randn((c, n_f), generator, noise).numpy()
    _sync_threads()
    out, new_dens = _merge(
        q, h, w, dst, dst_u, sden, e_dst, e_p, fresh, pulled, pulls, c_p, sd_p, d_p, a_p, weight, z_e, z_c, z_f
    )
    nd = torch.from_numpy(new_dens)
    nd = (nd / nd.mean()).clamp_min_(_MIN_DENSITY)
    return torch.from_numpy(out).view(c, h, w), nd.view(h, w)


def warped_noise_video(
    flows: Any,
    *,
    channels: int,
    noise_size: tuple[int, int],
    warp_scale: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """`annotators.noise_warp.warped_noise_video` with the fused step: the reference's checks, frame loop and
    draws, so the output is bit-identical. Non-CPU devices run the reference step (`warp_step` falls back)."""
    return noise_warp.warped_noise_video(
        flows, channels=channels, noise_size=noise_size, warp_scale=warp_scale, seed=seed, device=device, step=warp_step
    )


def warm_up() -> None:
    """Compile (or load from numba's cache) both kernels on a tiny input, so no timed or per-clip call pays it."""
    gen = torch.Generator().manual_seed(0)
    flow = torch.zeros(2, 4, 4)
    flow[0, :, :2] = 1.0  # a split and a fresh column: every branch of both kernels
    warp_step(torch.zeros(1, 4, 4), torch.ones(4, 4), flow, gen)


__all__ = ["WARPER_VERSION", "area_pool", "resize_flow", "warm_up", "warp_step", "warped_noise_video"]
