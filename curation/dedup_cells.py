"""The two-level list search of the embedding index (`dedup_index.assign_lists` with coarse cells), in numba.

Each row is compared with the coarse centroids, keeps its `cells` nearest cells, and is compared with the list
centroids of those cells only; it keeps the lists within `margin` of its best one, at most `nprobe`, most similar
first. Rows are independent, so the result does not depend on the thread count. The dot products are float32 with
reassociation allowed (SIMD): this search only proposes candidates, which are verified exactly afterwards.
"""

from __future__ import annotations

import numba
import numpy as np

_CHUNK = 256  # rows per parallel task: its scratch buffers are allocated once per task, not per row
_FAST = {"reassoc", "contract"}  # SIMD dot products; not "ninf"/"nnan", which would void the comparisons below
_NONE = np.float32(-4.0)  # below any dot product of unit vectors: an empty slot of a top list


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _dots(x: np.ndarray, block: np.ndarray, offset: int, count: int, out: np.ndarray) -> None:
    """out[:count] = the dot products of x with `count` centroids stored dimension-major at block[offset:] (a (d,
    count) matrix): the inner loop runs over centroids, so it vectorises without a horizontal sum per product."""
    out[:count] = 0.0
    for k in range(x.shape[0]):
        xk = x[k]
        row = block[offset + k * count : offset + (k + 1) * count]
        for j in range(count):
            out[j] += xk * row[j]


@numba.njit(cache=True, nogil=True, inline="always")
def _insert(sims: np.ndarray, ids: np.ndarray, s: np.float32, ident: int) -> None:
    """Insert (s, ident) into the descending top list (sims, ids) if it beats the last entry."""
    k = sims.shape[0] - 1
    if s <= sims[k]:
        return
    while k > 0 and sims[k - 1] < s:
        sims[k] = sims[k - 1]
        ids[k] = ids[k - 1]
        k -= 1
    sims[k] = s
    ids[k] = ident


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def search_cells(
    vectors: np.ndarray,
    top: np.ndarray,
    fine: np.ndarray,
    first_list: np.ndarray,
    cells: int,
    nprobe: int,
    margin: float,
    lists: np.ndarray,
    counts: np.ndarray,
) -> None:
    """For each row of `vectors` (m, d): lists[i, :counts[i]] its probed lists, most similar first (the first is
    its owner). top is the (d, C) coarse centroids raveled, fine the list centroids, cell by cell, each cell's (d,
    k) block raveled (`dimension_major`); cell c's lists are first_list[c] .. first_list[c + 1]."""
    m, d = vectors.shape
    n_top = first_list.shape[0] - 1
    for task in numba.prange((m + _CHUNK - 1) // _CHUNK):
        cell_sims = np.empty(cells, np.float32)
        cell_ids = np.empty(cells, np.int64)
        list_sims = np.empty(nprobe, np.float32)
        list_ids = np.empty(nprobe, np.int64)
        dots = np.empty(max(n_top, np.max(first_list[1:] - first_list[:-1])), np.float32)
        for i in range(task * _CHUNK, min(m, (task + 1) * _CHUNK)):
            x = vectors[i]
            cell_sims[:] = _NONE
            cell_ids[:] = -1
            _dots(x, top, 0, n_top, dots)
            for c in range(n_top):
                if dots[c] > cell_sims[cells - 1]:
                    _insert(cell_sims, cell_ids, dots[c], c)
            list_sims[:] = _NONE
            list_ids[:] = -1
            for j in range(cells):
                c = cell_ids[j]
                if c < 0:
                    break
                lo, count = first_list[c], first_list[c + 1] - first_list[c]
                _dots(x, fine, lo * d, count, dots)
                for li in range(count):
                    if dots[li] > list_sims[nprobe - 1]:
                        _insert(list_sims, list_ids, dots[li], lo + li)
            floor = list_sims[0] - margin
            n = 0
            while n < nprobe and list_ids[n] >= 0 and list_sims[n] >= floor:
                lists[i, n] = list_ids[n]
                n += 1
            counts[i] = n


def dimension_major(blocks: list[np.ndarray]) -> np.ndarray:
    """The (k, d) centroid blocks, each transposed to (d, k) and raveled, concatenated (`search_cells`' layout)."""
    return np.concatenate([np.ascontiguousarray(b.T, dtype=np.float32).ravel() for b in blocks])
