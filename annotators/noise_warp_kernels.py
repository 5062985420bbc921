"""The numba kernels of the fused noise warp (`annotators.noise_warp_fused`, which drives them and says why they
are bit-identical to the torch reference).

* `_plan` rounds the flow, routes every source to its contraction target, finds the empty targets (expansion edges
  and fresh noise, in row-major target order), the pulled sources (ascending) and their split weights, and sums
  `a^2` per target.
* `_merge` does the split, the weighted merge, the expansion and fresh targets and the density.
* `renormalise` divides the density by its mean and clamps it as torch does.
* The flow resize the plan does row by row, the pooling and the layout change are in
  `annotators.noise_warp_grid`.

Each of `_plan` and `_merge` is compiled twice (`plan_seq` / `plan_par`, `merge_seq` / `merge_par`): the parallel
versions split the target rows into bands, one per thread, and each band scans the sources in increasing index, so
every accumulator receives its addends in the reference's order at any thread count.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from annotators.noise_warp import _MIN_DENSITY
from annotators.noise_warp_grid import blend_rows, resize_row, resized_at

# The passes of one kernel talk through indirect indices (dst, e_src, ...), which numba's loop fusion cannot see.
_PARALLEL = {"fusion": False}
_MIN_DENSITY_F32 = np.float32(_MIN_DENSITY)  # what torch's clamp_min compares float32 values with
_ALL_SET = np.uint64(0x0101010101010101)  # eight occupied targets in one word of the occupancy bytes


def _variants(fn: Callable[..., Any]) -> tuple[Any, Any]:
    """(sequential, parallel) compilations of one kernel. On one thread the sequential one avoids the parallel
    runtime altogether (its per-loop launches cost more than they save there, and stall under CPU contention).
    Each gets its own name: numba's on-disk cache is keyed by the function's name, not by the parallel flag."""
    compiled = []
    for suffix, opts in (("_seq", {}), ("_par", {"parallel": _PARALLEL})):
        g = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
        g.__qualname__ = fn.__qualname__ + suffix
        compiled.append(numba.njit(cache=True, nogil=True, **opts)(g))
    return compiled[0], compiled[1]


@numba.njit(cache=True, nogil=True, inline="always")
def _round_clamp(v: float, lim: np.float32) -> int:
    """torch's round (half to even) then clamp to [-lim, lim] in the flow's dtype, as the reference does before its
    int32 cast (branch-free, so the routing loop vectorises)."""
    return np.int32(min(max(np.rint(v), -lim), lim))


@numba.njit(cache=True, nogil=True, inline="always")
def _add_scaled(out: np.ndarray, u: int, q: np.ndarray, k: int, cf: np.float32, keep: bool) -> None:
    """out[u, :] += q[k, :] * cf, or += +0.0 where not keep (a pulled source: the reference adds its zeroed
    values), branch-free; unrolled for 4 channels (one 16-byte add), the usual latent width."""
    zero = np.float32(0.0)
    if q.shape[1] == 4:
        m0, m1, m2, m3 = q[k, 0] * cf, q[k, 1] * cf, q[k, 2] * cf, q[k, 3] * cf
        out[u, 0] += m0 if keep else zero
        out[u, 1] += m1 if keep else zero
        out[u, 2] += m2 if keep else zero
        out[u, 3] += m3 if keep else zero
    else:
        for ch in range(q.shape[1]):
            v = q[k, ch] * cf
            out[u, ch] += v if keep else zero


@numba.njit(cache=True, nogil=True, inline="always")
def _clear(q: np.ndarray, k: int) -> None:
    """q[k, :] = 0 (unrolled for 4 channels)."""
    zero = np.float32(0.0)
    if q.shape[1] == 4:
        q[k, 0], q[k, 1], q[k, 2], q[k, 3] = zero, zero, zero, zero
    else:
        q[k] = zero


@numba.njit(cache=True, nogil=True, inline="always")
def _band(b: int, nb: int, h: int) -> tuple[int, int]:
    """Target rows [r0, r1) of band b of nb."""
    return b * h // nb, (b + 1) * h // nb


@numba.njit(cache=True, nogil=True)
def _spans(row_lo: np.ndarray, row_hi: np.ndarray, off: int, r0: int, r1: int, w: int, spans: np.ndarray) -> int:
    """The source index ranges whose targets reach rows [r0, r1), in increasing order: spans[k] = (start, stop,
    full), full when every target of the range lies inside (no per-edge check needed; consecutive such rows are
    merged into one range). A source row's targets span rows row_lo + off .. row_hi + off. Returns the count."""
    m = 0
    for y in range(row_lo.shape[0]):
        lo, hi = row_lo[y] + off, row_hi[y] + off
        if hi < r0 or lo >= r1:
            continue
        full = lo >= r0 and hi < r1
        if full and m and spans[m - 1, 2] and spans[m - 1, 1] == y * w:
            spans[m - 1, 1] = (y + 1) * w
        else:
            spans[m, 0], spans[m, 1], spans[m, 2] = y * w, (y + 1) * w, full
            m += 1
    return m


def _plan(
    flow: np.ndarray,
    resized: bool,
    iy: np.ndarray,
    ly: np.ndarray,
    ix: np.ndarray,
    lx: np.ndarray,
    cols: np.ndarray,
    sx: np.float32,
    sy: np.float32,
    dens: np.ndarray,
    renorm: bool,
    mean: np.float32,
    h: int,
    w: int,
    nb: int,
    dst: np.ndarray,
    tgt: np.ndarray,
    weight: np.ndarray,
    occ: np.ndarray,
    occ64: np.ndarray,
    row_lo: np.ndarray,
    row_hi: np.ndarray,
    pull_blk: np.ndarray,
    pull_blk64: np.ndarray,
    e_dst: np.ndarray,
    e_src: np.ndarray,
    fresh: np.ndarray,
    pulls: np.ndarray,
    p_of: np.ndarray,
    pulled: np.ndarray,
    e_p: np.ndarray,
    c_p: np.ndarray,
    d_p: np.ndarray,
    a_p: np.ndarray,
    den: np.ndarray,
) -> tuple[int, int, int]:
    """Edges and weights of one step, everything before the reference's square roots. Returns (n_e, n_f, n_p).

    dens is the sources' density, or with renorm the previous step's density before its renormalisation by mean
    (`renormalise`, done here as each value is read: one pass less over the grid per step).
    flow (2, h, w) is this grid's forward flow before its (sx, sy) scaling (the reference's `resize_flow` multiply,
    folded in; 1.0 when unscaled); resized: flow is (2, fh, fw) float32 and this grid's flow is its bilinear resize
    by the tables iy, ly (rows) and ix, lx (columns) of `resize_table`, computed here row by row from the column
    pass in cols (2, fh, w) (torch's resize bit for bit, without writing and reading back the full-size flow).

    Fills: dst every source's contraction target on the canvas padded by one pixel (the reference's layout: edges
    leaving the frame land on the border), tgt the in-frame pixel u it is clamped to, or -1 - u for pulled sources
    (they send their split piece instead), row_lo / row_hi the range
    of target rows (-1..h) of each source row; e_dst / e_src the expansion edges in row-major target order, fresh
    the targets with no edge; pulled the sources with expansion edges (ascending), e_p the compact id of each
    expansion edge's source, c_p, d_p, a_p the pulled sources' contraction flag, degree and split weight; weight
    every source's merge weight a = density/deg; den the padded `sum a^2` per target with the border at inf.
    occ (occ64: the same bytes as words), pull_blk (one byte per 8 sources: some are pulled; pull_blk64: its
    words) and pulls are scratch; occ, pull_blk and pulls are zero between calls.
    """
    n, wp = h * w, w + 2
    lim = np.float32(h + w)
    # Route every source (rows in parallel). occ marks targets whose reference den (a float32 sum of dens^2) is
    # non-zero: a float sum of non-negative terms is zero iff every term is, so "some dens^2 != 0" decides it
    # without summing (NaN != 0, as in the reference). The marks go through `marks` (n: a dummy byte) so that the
    # routing loop has no scatter and vectorises; threads only ever store 1, so any order gives the same occ.
    if resized:
        for r in numba.prange(flow.shape[1]):
            resize_row(flow[0, r], ix, lx, cols[0, r])
            resize_row(flow[1, r], ix, lx, cols[1, r])
    for y in numba.prange(h):
        lo, hi = h, -1
        if resized:
            fx, fy = np.empty(w, flow.dtype), np.empty(w, flow.dtype)
            r0, r1, w0, w1 = iy[0, y], iy[1, y], ly[0, y], ly[1, y]
            for x in range(w):
                fx[x] = blend_rows(cols[0, r0, x], cols[0, r1, x], w0, w1)
                fy[x] = blend_rows(cols[1, r0, x], cols[1, r1, x], w0, w1)
        else:
            fx, fy = flow[0, y], flow[1, y]
        # the weights start as the densities; renorm: the previous step's renormalisation, `renormalise` fused in
        # (same bits; a loop of its own, so that both loops vectorise)
        ds, ws = dens[y * w : (y + 1) * w], weight[y * w : (y + 1) * w]
        if renorm:
            for x in range(w):
                v = ds[x] / mean
                ws[x] = _MIN_DENSITY_F32 if v < _MIN_DENSITY_F32 else v
        else:
            ws[:] = ds
        marks = np.empty(w, np.int32)  # a row's worth (it stays in cache; nothing to write back)
        for x in range(w):
            i = y * w + x
            ty = min(max(y + _round_clamp(fy[x] * sy, lim), -1), h)
            tx = min(max(x + _round_clamp(fx[x] * sx, lim), -1), w)
            dst[i] = (ty + 1) * wp + tx + 1
            u = min(max(ty, 0), h - 1) * w + min(max(tx, 0), w - 1)
            tgt[i] = u
            lo = min(lo, ty)
            hi = max(hi, ty)
            d = weight[i]
            marks[x] = u if (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w) & (d * d != 0) else n
        row_lo[y] = lo
        row_hi[y] = hi
        for x in range(w):
            occ[marks[x]] = 1
    # Empty targets in row-major order (the reference's nonzero): an expansion edge from t - flow(t) if that is in
    # the frame, else fresh noise. Usually few: whole words of eight occupied targets are skipped.
    n_e, n_f = 0, 0
    for k in range(occ64.shape[0]):
        if occ64[k] != _ALL_SET:
            for t in range(8 * k, min(8 * k + 8, n)):
                if occ[t]:
                    continue
                y, x = t // w, t % w
                if resized:
                    vx = flow.dtype.type(resized_at(cols[0], iy, ly, y, x))
                    vy = flow.dtype.type(resized_at(cols[1], iy, ly, y, x))
                else:
                    vx, vy = flow[0, y, x], flow[1, y, x]
                sy_ = y - _round_clamp(vy * sy, lim)
                sx_ = x - _round_clamp(vx * sx, lim)
                if 0 <= sy_ < h and 0 <= sx_ < w:
                    e_dst[n_e] = t
                    e_src[n_e] = sy_ * w + sx_
                    pulls[sy_ * w + sx_] += 1
                    pull_blk[(sy_ * w + sx_) >> 3] = 1
                    n_e += 1
                else:
                    fresh[n_f] = t
                    n_f += 1
        occ64[k] = 0
    # Pulled sources in ascending order (the reference's nonzero of the pull counts) and their split weights; only
    # the blocks of 8 sources holding one are scanned, found eight blocks to a word (rather than every row holding
    # one: pulled sources spread over most rows).
    n_p = 0
    for k in range(pull_blk64.shape[0]):
        if pull_blk64[k] == 0:
            continue
        for b in range(8 * k, 8 * k + 8):
            if pull_blk[b] == 0:
                continue
            pull_blk[b] = 0
            for i in range(8 * b, min(8 * b + 8, n)):
                if pulls[i]:
                    p_of[i] = n_p
                    pulled[n_p] = i
                    ty, tx = dst[i] // wp, dst[i] % wp
                    c = np.float32(1.0) if 0 < ty <= h and 0 < tx <= w else np.float32(0.0)
                    c_p[n_p] = c
                    d_p[n_p] = np.float32(pulls[i]) + c
                    a_p[n_p] = weight[i] / d_p[n_p]
                    weight[i] = a_p[n_p]
                    tgt[i] = -1 - tgt[i]
                    n_p += 1
    for j in range(n_e):
        e_p[j] = p_of[e_src[j]]
        pulls[e_src[j]] = 0
    # den = sum a^2 per target in source order: the reference's bincount with the final weights (with nothing
    # pulled, its first one). Band b owns padded rows [p0, p1) (the first and last band also the top and bottom
    # border rows) and scans only the source rows that reach it, checking the target only on rows that straddle
    # its edge. The border collects the edges that left the frame and is reset to inf afterwards.
    for b in numba.prange(nb):
        r0, r1 = _band(b, nb, h)
        p0 = 0 if b == 0 else r0 + 1
        p1 = h + 2 if b == nb - 1 else r1 + 1
        lo, hi = p0 * wp, p1 * wp
        den[lo:hi] = 0.0
        spans = np.empty((h, 3), np.int64)
        for s in range(_spans(row_lo, row_hi, 1, p0, p1, w, spans)):
            # zero-based loops over slices: numba then knows the indices are >= 0 and skips its wraparound code
            ds, ws = dst[spans[s, 0] : spans[s, 1]], weight[spans[s, 0] : spans[s, 1]]
            if spans[s, 2]:
                for k in range(ds.shape[0]):
                    d = ds[k]
                    if d >= 0:  # always: tells numba the same
                        den[d] += ws[k] * ws[k]
            else:
                for k in range(ds.shape[0]):
                    d = ds[k]
                    if lo <= d < hi:
                        den[d] += ws[k] * ws[k]
        for p in range(p0, p1):
            den[p * wp] = np.inf
            den[p * wp + w + 1] = np.inf
        if b == 0:
            den[:wp] = np.inf
        if b == nb - 1:
            den[(h + 1) * wp :] = np.inf
    return n_e, n_f, n_p


def _merge(
    q: np.ndarray,
    out: np.ndarray,
    nd: np.ndarray,
    h: int,
    w: int,
    nb: int,
    n_e: int,
    n_f: int,
    n_p: int,
    dst: np.ndarray,
    tgt: np.ndarray,
    weight: np.ndarray,
    sden: np.ndarray,
    acc_d: np.ndarray,
    row_lo: np.ndarray,
    row_hi: np.ndarray,
    e_dst: np.ndarray,
    e_p: np.ndarray,
    fresh: np.ndarray,
    pulled: np.ndarray,
    c_p: np.ndarray,
    sd_p: np.ndarray,
    d_p: np.ndarray,
    a_p: np.ndarray,
    z_e: np.ndarray,
    z_c: np.ndarray,
    z_f: np.ndarray,
    zm: np.ndarray,
    xp: np.ndarray,
    piece: np.ndarray,
    out_zeroed: bool,
    consume: bool,
) -> None:
    """Split, merge and density of one step: out (n, C) the next noise (pixel-major, as q), nd (n) the next density
    before its renormalisation. sden = sqrt(den) and sd_p = sqrt(d_p) come from torch (see the module docstring).

    out_zeroed: out is all zeros already (not cleared again). consume: q is not needed after this step, so the
    scatter zeroes each source's values once read (one band only: every source is read once), leaving q ready to be
    the next step's out without a clearing pass over it."""
    c = q.shape[1]
    wp = w + 2
    # Splits of the pulled sources, per channel: z mean over each source's edges (its contraction draw first, then
    # its expansion draws in edge order, as the reference's index_add_), x part and contraction piece.
    if n_e:
        for ch in numba.prange(c):
            for k in range(n_p):
                zm[ch, k] = z_c[ch, k] * c_p[k]
            for j in range(n_e):
                zm[ch, e_p[j]] += z_e[ch, j]
            for k in range(n_p):
                z_mean = zm[ch, k] / d_p[k]
                zm[ch, k] = z_mean
                x = q[pulled[k], ch] / sd_p[k]
                xp[ch, k] = x
                piece[ch, k] = (z_c[ch, k] * c_p[k] - z_mean) + x
    # Scatter per band of target rows (as in _plan, in the clamped targets' rows): sources in increasing index, then
    # the pulled sources' pieces in increasing index; then the expansion targets (one in-edge: the piece itself) and
    # the fresh ones are overwritten, as the reference's index_copy_ does after its scatters. Each source's merge
    # coefficient a / sqrt(sum a^2 of its target) (exactly 0 for edges leaving the frame: sqrt(inf)) is computed once
    # and scatters itself (for the density) and every channel: the channels of a pixel are adjacent, so one pass over
    # the sources touches one cache line per target, and each accumulator still receives its addends in increasing
    # source index. Pulled sources (tgt < 0) add +0.0 to their target, as the reference's zeroed values do,
    # branch-free.
    for b in numba.prange(nb):
        r0, r1 = _band(b, nb, h)
        t0, t1 = r0 * w, r1 * w
        je0, je1 = np.searchsorted(e_dst[:n_e], t0), np.searchsorted(e_dst[:n_e], t1)
        jf0, jf1 = np.searchsorted(fresh[:n_f], t0), np.searchsorted(fresh[:n_f], t1)
        # the clamped targets put rows -1 and h onto 0 and h - 1: the first and last band take those rows too
        spans = np.empty((h, 3), np.int64)
        m = _spans(row_lo, row_hi, 0, -1 if r0 == 0 else r0, h + 1 if r1 == h else r1, w, spans)
        acc_d[t0:t1] = 0.0
        if not out_zeroed:
            out[t0:t1] = 0.0
        for s in range(m):
            a0, a1 = spans[s, 0], spans[s, 1]
            ts, ds, wts, qs = tgt[a0:a1], dst[a0:a1], weight[a0:a1], q[a0:a1]
            # a span that straddles a band border keeps only the targets in this band; a full one has all of them
            lo, hi = (0, h * w) if spans[s, 2] else (t0, t1)
            for k in range(ts.shape[0]):
                t = ts[k]
                keep = t >= 0
                u = t if keep else -1 - t
                if u >= lo and u < hi:
                    cf = wts[k] / sden[ds[k]]
                    acc_d[u] += cf
                    _add_scaled(out, u, qs, k, cf, keep)
                if consume:  # one band: every source is read here exactly once
                    _clear(qs, k)
        for k in range(n_p):
            i = pulled[k]
            t = -1 - tgt[i]  # pulled: its clamped target, sign-flipped
            if t0 <= t < t1:
                cf = weight[i] / sden[dst[i]]
                for ch in range(c):
                    out[t, ch] += piece[ch, k] * cf
        for j in range(je0, je1):
            k = e_p[j]
            for ch in range(c):
                out[e_dst[j], ch] = (z_e[ch, j] - zm[ch, k]) + xp[ch, k]
        for j in range(jf0, jf1):
            for ch in range(c):
                out[fresh[j], ch] = z_f[ch, j]
        # density: sum(coef) * sqrt(den) = sum(a) per target (the coefficients of pulled sources count too)
        for y in range(r0, r1):
            ns, acs, ss = nd[y * w : (y + 1) * w], acc_d[y * w : (y + 1) * w], sden[(y + 1) * wp + 1 :]
            for x in range(w):
                ns[x] = acs[x] * ss[x]
        for j in range(je0, je1):
            nd[e_dst[j]] = a_p[e_p[j]]
        for j in range(jf0, jf1):
            nd[fresh[j]] = 1.0


plan_seq, plan_par = _variants(_plan)
merge_seq, merge_par = _variants(_merge)


@numba.njit(cache=True, nogil=True)
def renormalise(nd: np.ndarray, mean: np.float32, out: np.ndarray) -> None:
    """out = clamp_min(nd / mean, 1e-6) as torch computes it (true division; NaN passes through the clamp)."""
    for i in range(nd.shape[0]):
        v = nd[i] / mean
        out[i] = _MIN_DENSITY_F32 if v < _MIN_DENSITY_F32 else v
