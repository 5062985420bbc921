"""The fused noise warp's grid kernels (numba, CPU): the flow's bilinear resize to the warp grid as torch computes
it, the area pool of the reference, and the change to the pixel-major layout the fused warp keeps its state in.

* `resize_table` / `resize`: torch's CPU bilinear resize (align_corners=False), with the multiply-adds its
  compiler fuses (`fma32`); `_plan` (`annotators.noise_warp_kernels`) runs `resize_row` and `blend_rows`
  inline. `annotators.noise_warp_fused` checks the formula against torch once per size pair.
* `area_pool`: `annotators.noise_warp.area_pool` (rows, then columns, added in order) on the pixel-major state.
* `interleave`: (C, n) to (n, C).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types as nbtypes
from numba.core.extending import intrinsic


@intrinsic
def fma32(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """float32 a * b + c rounded once (LLVM's fma): what torch's AVX2 build of its bilinear kernel computes for
    `a * b + c * d` (as fma(a, b, c * d); the compiler contracts it)."""
    sig = nbtypes.float32(nbtypes.float32, nbtypes.float32, nbtypes.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fma(*args)

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def resize_table(out_size: int, in_size: int, scale: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (2, out_size) and weights (2, out_size) of one axis of torch's bilinear resize
    (align_corners=False; scale = in_size / out_size in float32), computed as its CPU kernel does."""
    idx, lam = np.empty((2, out_size), np.int64), np.empty((2, out_size), np.float32)
    half, one, zero = np.float32(0.5), np.float32(1.0), np.float32(0.0)
    for d in range(out_size):
        if out_size == in_size:
            idx[0, d], idx[1, d], lam[0, d], lam[1, d] = d, d, one, zero
            continue
        real = max(fma32(scale, np.float32(d) + half, -half), zero)
        i0 = min(np.int64(np.floor(real)), in_size - 1)
        l1 = min(max(real - np.float32(i0), zero), one)
        idx[0, d], idx[1, d] = i0, i0 + (1 if i0 < in_size - 1 else 0)
        lam[0, d], lam[1, d] = one - l1, l1
    return idx, lam


@numba.njit(cache=True, nogil=True, inline="always")
def resize_row(src: np.ndarray, ix: np.ndarray, lx: np.ndarray, out: np.ndarray) -> None:
    """The column pass of torch's bilinear resize on one row: out (W) from src (w) float32. torch computes each
    value as fma(row0, w0, row1 * w1) with row_k = fma(src[x0], wx0, src[x1] * wx1), so resizing the columns of
    every source row first and then the rows gives its bits (and reads contiguous memory in the row pass)."""
    f32 = np.float32  # src is float32 wherever this runs; the casts only let the float64 kernels type-check
    w, big = src.shape[0], out.shape[0]
    if big == 2 * w and w > 2:
        # Doubling (the default warp grid): outputs 2k and 2k + 1 blend src[k - 1], src[k] and src[k], src[k + 1]
        # with the same two weights everywhere inside, so the loop reads src contiguously (no gathers) and
        # vectorises; the weights are the table's, and the edges take the general formula.
        a, b = lx[0, 2], lx[1, 2]  # output 2: src[0] * a + src[1] * b
        c, d = lx[0, 3], lx[1, 3]  # output 3: src[1] * c + src[2] * d
        for k in range(1, w - 1):
            out[2 * k] = fma32(f32(src[k - 1]), a, f32(src[k]) * b)
            out[2 * k + 1] = fma32(f32(src[k]), c, f32(src[k + 1]) * d)
        for x in (0, 1, big - 2, big - 1):
            out[x] = fma32(f32(src[ix[0, x]]), lx[0, x], f32(src[ix[1, x]]) * lx[1, x])
        return
    for x in range(big):
        out[x] = fma32(f32(src[ix[0, x]]), lx[0, x], f32(src[ix[1, x]]) * lx[1, x])


@numba.njit(cache=True, nogil=True, inline="always")
def blend_rows(top: Any, bottom: Any, w0: Any, w1: Any) -> Any:
    """The row pass of the resize for one value, from the column pass of its two source rows: torch's
    fma(top, w0, bottom * w1). The one place the formula `_resize_tables` checks is written."""
    return fma32(top, w0, bottom * w1)


@numba.njit(cache=True, nogil=True, inline="always")
def resized_at(cols: np.ndarray, iy: np.ndarray, ly: np.ndarray, y: int, x: int) -> Any:
    """Value (y, x) of the resized grid from the column pass cols (h, W) of `resize_row`."""
    return blend_rows(cols[iy[0, y], x], cols[iy[1, y], x], ly[0, y], ly[1, y])


@numba.njit(cache=True, nogil=True)
def resize(src: np.ndarray, iy: np.ndarray, ly: np.ndarray, ix: np.ndarray, lx: np.ndarray, out: np.ndarray) -> None:
    """out (C, H, W) = the bilinear resize of src (C, h, w) with the tables of `resize_table`, value by value as
    the plan computes it (what `noise_warp_fused` checks against torch before trusting the fused resize)."""
    cols = np.empty((src.shape[1], out.shape[2]), np.float32)
    for c in range(src.shape[0]):
        for r in range(src.shape[1]):
            resize_row(src[c, r], ix, lx, cols[r])
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                out[c, y, x] = resized_at(cols, iy, ly, y, x)


@numba.njit(cache=True, nogil=True)
def area_pool(noise: np.ndarray, h: int, f: int, out: np.ndarray) -> None:
    """out (C, h/f, w/f) = `annotators.noise_warp.area_pool` bit for bit of noise (h * w, C) (pixel-major, the fused
    warp's layout) read as (C, h, w): each block's rows added one after the other, then its columns, then / f, in
    one pass over the noise."""
    n, c = noise.shape
    w = n // h
    line = w * c  # one row of pixels, channels interleaved: the row adds run over it flat (and vectorise)
    flat = noise.reshape(n * c)
    rows = np.empty(line, np.float32)
    ff = np.float32(f)
    for r in range(h // f):
        top, nxt = flat[r * f * line : (r * f + 1) * line], flat[(r * f + 1) * line : (r * f + 2) * line]
        for x in range(line):
            rows[x] = top[x] + nxt[x]
        for k in range(2, f):
            more = flat[(r * f + k) * line : (r * f + k + 1) * line]
            for x in range(line):
                rows[x] += more[x]
        for j in range(w // f):
            for ch in range(c):
                acc = rows[j * f * c + ch] + rows[(j * f + 1) * c + ch]
                for k in range(2, f):
                    acc += rows[(j * f + k) * c + ch]
                out[ch, r, j] = acc / ff


@numba.njit(cache=True, nogil=True)
def interleave(src: np.ndarray, out: np.ndarray) -> None:
    """out (n, C) = src (C, n) transposed: a video's first noise, drawn channel-major as the reference draws it,
    into the fused warp's pixel-major state (numpy's strided copy is 2-3x slower)."""
    c, n = src.shape
    for i in range(n):
        for ch in range(c):
            out[i, ch] = src[ch, i]
