"""Approximate near-duplicate search for large runs (`dedup.method = approximate`, or `auto` above
`dedup.exact_max_clips` clips). Each search proposes candidate pairs and keeps those that pass curation/dedup.py's
exact rule (same thresholds, same arithmetic); the exact path's grouping and keeper choice then apply unchanged, so
a search that finds every true pair gives the exact result. The only approximation is in which pairs are proposed.

Key-frame hashes (mean Hamming distance <= t over the key frames both clips have):

- `lsh`, bit-sampling LSH (Indyk & Motwani 1998): a table keys one key-frame position on K of the 64 hash bits
  (disjoint K-bit chunks of seeded random permutations); clips that share a key are candidates. A pair d bits apart
  on that frame shares the key with probability C(64-d, K) / C(64, K), unrelated hashes (about 32 bits apart) with
  about 2^-K, so K = log2(n) - 4 keeps the random candidates linear in n. Every key frame gets its own tables, so a
  pair is found through whichever of its frames is closest.
- `mih`, multi-index hashing with exact chunk matches (Norouzi et al. 2012): each frame's 64 bits are cut into
  floor(t) + 1 disjoint chunks. A pair within mean t has a frame within floor(t) bits (the minimum is at most the
  mean; distances are integers) and that frame has a chunk with no differing bit (pigeonhole), so every true pair is
  a candidate: recall 1 by construction. The chunks are 64 / (floor(t) + 1) bits wide, so it is cheap only for small
  t: at t = 10 they are ~6 bits and about 1/64 of all pairs per table are candidates, slower than brute force.

Embeddings (cosine >= tau, unit rows as the exact path makes them):

1. Uncentred PCA to `dims` (top eigenvectors of X^T X over a sample). Each clip's index vector is [r, rho]: r its
   unit row's projection, rho the norm of the residual outside the subspace, so it has unit norm. For unit x, y:
   x.y = r_x.r_y + res_x.res_y <= r_x.r_y + rho_x rho_y = [r_x, rho_x].[r_y, rho_y] (Cauchy-Schwarz), so every pair
   with cosine >= tau has index vectors with dot product >= tau: that filter loses no pair.
2. Spherical k-means (faiss) on the index vectors into `nlist` lists of about 256 clips (an IVF index): each clip
   is stored in its nearest list and probes the lists whose centroid similarity is within `margin` of its nearest
   one (at most `nprobe`); it is compared with every clip stored in a list it probes (a faiss range search per
   list: BLAS, the threshold applied in C++). Lists of constant size keep this self-join linear in the clips. From
   1,024 lists the lists are found through coarse cells (k-means of the clips, then each cell's clips into its share
   of the lists), a clip searching the lists of its nearest cells only (`dedup_cells`): a flat search of every list
   would cost clips x lists, quadratic. This is the approximate step: a pair is missed when neither probes the
   other's list.
3. The pairs that pass are verified on the full vectors (read in row batches; `embeddings` may be a disk-backed
   np.memmap: 10 M x 768 float16 is 15 GB, the index vectors at 64 dimensions 2.6 GB).
"""

from __future__ import annotations

import math
import mmap
from typing import Any

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier (2^64 / golden ratio) that spreads a key into the high bits
BOUND_SLACK = 1e-4  # float32 rounding of the reduced dot products and residual norms; keeps the bound conservative


def unit_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit norm in float32 (0 where unusable), usable: finite and non-zero). Row by row, so a row
    comes out bit-identical whichever block it is in (the exact and approximate paths share it)."""
    x = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    usable = np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)
    return np.where(usable[:, None], x / np.where(usable[:, None], norms, 1.0), np.float32(0.0)), usable


def take_rows(source: np.ndarray, index: np.ndarray | slice) -> np.ndarray:
    """Rows of `source` as an in-memory array. A np.memmap is reopened for the read and closed after it, so the file
    pages it touched leave this process's resident set (they stay in the page cache)."""
    if isinstance(source, np.memmap) and isinstance(source.base, mmap.mmap):  # a whole mapping, not a view of one
        view = np.memmap(source.filename, source.dtype, "r", offset=source.offset, shape=source.shape)
        try:
            return np.array(view[index])
        finally:
            del view
    return np.asarray(source[index])


# --- key-frame hashes -----------------------------------------------------------------------------------------------


def bits_mask(positions: np.ndarray) -> np.uint64:
    """uint64 with the given bit positions set."""
    mask = 0
    for p in positions:
        mask |= 1 << int(p)
    return np.uint64(mask)


def auto_key_bits(n: int) -> int:
    """LSH key width for n clips: log2(n) - 4, in [16, 32]: about 8n random candidates per table, which the frame
    check in `hash_pairs_indexed` rejects cheaply; narrower keys would cost more, wider ones lose recall."""
    return int(np.clip(math.ceil(math.log2(max(n, 2))) - 4, 16, 32))


def lsh_masks(key_bits: int, tables: int, seed: int) -> np.ndarray:
    """`tables` masks of `key_bits` bits each: disjoint chunks of seeded random permutations of the 64 bits."""
    if not 1 <= key_bits <= 64:
        raise ValueError("key_bits must be in [1, 64]")
    rng = np.random.default_rng(seed)
    masks: list[np.uint64] = []
    while len(masks) < tables:
        perm = rng.permutation(64)
        for c in range(min(64 // key_bits, tables - len(masks))):
            masks.append(bits_mask(perm[c * key_bits : (c + 1) * key_bits]))
    return np.array(masks, dtype=np.uint64)


def mih_masks(max_distance: float) -> np.ndarray:
    """floor(max_distance) + 1 disjoint contiguous chunks covering the 64 bits (see the module docstring)."""
    chunks = math.floor(max_distance) + 1
    edges = np.linspace(0, 64, chunks + 1).round().astype(int)
    return np.array([bits_mask(np.arange(a, b)) for a, b in zip(edges[:-1], edges[1:], strict=True)], dtype=np.uint64)


def close_pairs(keys: np.ndarray, values: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (p, q), p < q, of the pairs with equal `keys` (sorted) whose `values` differ in at most `limit`
    bits. Walks offsets w = 1, 2, ...: p pairs with p + w only if it paired with p + w - 1 (keys are sorted), so the
    work is the number of same-key pairs, in contiguous passes with memory of one array of positions."""
    firsts, seconds = [], []
    active = np.flatnonzero(keys[1:] == keys[:-1])  # positions whose bucket goes on at p + 1
    w = 1
    while len(active):
        close = np.bitwise_count(values[active] ^ values[active + w]) <= limit
        if close.any():
            firsts.append(active[close])
            seconds.append(active[close] + w)
        w += 1
        active = active[active + w < len(keys)]
        active = active[keys[active + w] == keys[active]]
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def hash_verify(
    values: np.ndarray, valid: np.ndarray, a: np.ndarray, b: np.ndarray, max_distance: float, min_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """(passes, mean distance) of pairs (a, b) under the exact rule, with the exact path's dtypes and division."""
    both = valid[a] & valid[b]
    bits = np.where(both, np.bitwise_count(values[a] ^ values[b]).astype(np.int32), 0).sum(axis=1, dtype=np.int32)
    common = both.sum(axis=1, dtype=np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = bits / common
    return (common >= min_frames) & (mean <= max_distance), mean


def hash_pairs_indexed(
    values: np.ndarray, valid: np.ndarray, max_distance: float, min_frames: int, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, mean distance), a < b, sorted, of the pairs within the hash rule among those sharing a key of some
    table (`masks` applied to each key-frame position in turn)."""
    n, k = values.shape
    eligible = valid.sum(axis=1) >= min_frames  # fewer hashed frames can never pair
    found = np.zeros(0, dtype=np.uint64)  # a * n + b of the verified pairs so far
    limit = math.floor(max_distance)
    for f in range(k):
        rows = np.flatnonzero(valid[:, f] & eligible)  # a missing hash is 0: it must not key a giant bucket
        column = values[rows, f]
        # Sort one packed word per row, (hashed key | position), instead of argsorting the keys: about twice as
        # fast, and positions come out ascending within a bucket. Hashing the key into the high bits keeps equal
        # keys equal; two keys that collide only add candidates, which verification rejects.
        low = np.uint64((1 << max(1, int(len(rows)).bit_length())) - 1)
        position = np.arange(len(rows), dtype=np.uint64)
        new: list[np.ndarray] = []
        for mask in masks:
            packed = ((column & mask) * GOLDEN) & ~low | position
            packed.sort()
            order = (packed & low).astype(np.int64)
            # A true pair has a frame within floor(t) bits (min <= mean); demanding it of the frame that keyed this
            # table rejects nearly all random candidates before gathering their other frames, and keeps MIH exact
            # (the pigeonhole chunk lies in such a frame).
            first, second = close_pairs(packed & ~low, column[order], limit)
            a, b = rows[order[first]], rows[order[second]]  # a < b: positions ascend within a bucket
            ok, _ = hash_verify(values, valid, a, b, max_distance, min_frames)
            new.append(a[ok].astype(np.uint64) * np.uint64(n) + b[ok].astype(np.uint64))
            if sum(map(len, new)) > max(1 << 22, len(found)):  # true pairs recur in many tables: merge now and then
                found, new = np.union1d(found, np.concatenate(new)), []
        found = np.union1d(found, np.concatenate(new)) if new else found
    a, b = (found // np.uint64(n)).astype(np.int64), (found % np.uint64(n)).astype(np.int64)
    return a, b, hash_verify(values, valid, a, b, max_distance, min_frames)[1]


# --- embeddings -----------------------------------------------------------------------------------------------------


LIST_ROWS = 256  # rows per list that auto_nlist aims at: a clip's comparisons stay constant as the run grows
TWO_LEVEL_LISTS = 1024  # from this many lists, nearest lists are searched through a coarse level (see assign_lists)


def auto_nlist(n: int) -> int:
    """Lists for n clips: one per LIST_ROWS clips, at least 1 and at most n / 32 (k-means needs points per
    centroid). Lists of constant size keep the self-join linear in n (n x probes x LIST_ROWS dot products)."""
    return max(1, min(round(n / LIST_ROWS), n // 32))


def auto_coarse(nlist: int) -> int:
    """Coarse cells for `nlist` lists: 1 (a flat search) below TWO_LEVEL_LISTS, else 2 sqrt(nlist). A row compares
    with C + P nlist / C centroids (P = `auto_coarse_nprobe`); this C was the fastest measured at 10 M clips."""
    return 1 if nlist < TWO_LEVEL_LISTS else round(2 * math.sqrt(nlist))


def auto_coarse_nprobe(coarse: int) -> int:
    """Nearest cells a row searches: max(16, 2 sqrt(coarse)). In high dimension the cells overlap (on the bench, a
    row's nearest list lies outside its nearest cell half the time), so many are searched; at 1 M clips, from 62
    to 1,000 cells, 2 sqrt(cells) kept the recall at 0.9956-0.9976 (flat: 0.9988; 16 of 198 cells: 0.991)."""
    return max(16, round(2 * math.sqrt(coarse)))


def spherical_kmeans(
    x: np.ndarray, k: int, seed: int, rows: np.ndarray | None = None, points_per_centroid: int = 32
) -> np.ndarray:
    """(k, d) unit centroids of faiss's spherical k-means over a seeded sample of `points_per_centroid` x k rows of
    x (of its `rows`, ascending, when given: only the sample is gathered, not every row)."""
    import faiss  # here, not at module import: the exact path never needs it

    rng = np.random.default_rng(seed)
    n = len(x) if rows is None else len(rows)
    pick = np.sort(rng.choice(n, min(n, k * points_per_centroid), replace=False))
    train = x[pick if rows is None else rows[pick]]
    if k == 1:  # the unit mean: what k-means converges to, without faiss's warning about one centroid
        mean = train.astype(np.float64).sum(axis=0)
        return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)[None, :]
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=10, seed=seed, spherical=True, max_points_per_centroid=points_per_centroid
    )
    kmeans.cp.min_points_per_centroid = 1  # a small run is fine with few points per list
    kmeans.train(np.ascontiguousarray(train))
    return kmeans.centroids


def pca_basis(
    embeddings: np.ndarray, dims: int, seed: int, sample: int = 65536, block_rows: int = 8192
) -> np.ndarray | None:
    """(D, dims) orthonormal top eigenvectors of X^T X over a sample of unit rows; None when dims keeps all of D."""
    n, d = embeddings.shape
    if dims <= 0 or dims >= d:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))
    gram = np.zeros((d, d), dtype=np.float64)
    for start in range(0, len(rows), block_rows):  # in blocks: the whole sample in float64 is 0.4 GB at 768-d
        x, usable = unit_rows(take_rows(embeddings, rows[start : start + block_rows]))
        x = x[usable].astype(np.float64)
        gram += x.T @ x
    _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


def reduce_rows(
    embeddings: np.ndarray, basis: np.ndarray | None, block_rows: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the usable rows, their index vectors (m, dims + 1) float32), streaming the rows. An index vector is
    [r, rho]: r the projection of the unit row, rho the norm of its residual, so it has unit norm and the dot
    product of two is r_x.r_y + rho_x rho_y, the Cauchy-Schwarz upper bound of the full cosine. Without a basis the
    unit rows themselves (the bound is then the cosine)."""
    n, d = embeddings.shape
    width = d if basis is None else basis.shape[1] + 1
    vectors = np.empty((n, width), dtype=np.float32)  # usable rows packed at the front: no second copy to compact
    keep = np.zeros(n, dtype=bool)
    filled = 0
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        x = take_rows(embeddings, slice(start, stop)).astype(np.float32)
        if basis is None:
            block, keep[start:stop] = unit_rows(x)
        else:
            square = np.einsum("ij,ij->i", x, x)
            keep[start:stop] = np.isfinite(square) & (square > 0)
            r = np.nan_to_num(x @ basis) / np.sqrt(np.where(keep[start:stop], square, 1.0))[:, None]
            rho = np.sqrt(np.maximum(0.0, 1.0 - np.einsum("ij,ij->i", r, r)))
            block = np.concatenate([r, rho[:, None]], axis=1)
        block = block[keep[start:stop]]
        vectors[filled : filled + len(block)] = block
        filled += len(block)
    return np.flatnonzero(keep), vectors[:filled]  # the unused tail was never written: it takes no memory


def assign_lists(
    vectors: np.ndarray,
    nlist: int,
    nprobe: int,
    margin: float,
    seed: int,
    coarse: int = 0,
    coarse_nprobe: int = 0,
    block_rows: int = 131072,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss) into `nlist` lists: (owners, probes), both `pack`ed (list, row). Each row is owned
    by its nearest list and probes that one and the next ones within `margin` of its similarity, at most `nprobe`:
    a margin rather than a fixed count spends probes on the rows near a boundary, where pairs get split.

    With `coarse` > 1 cells (0: `auto_coarse`), the lists are found in two levels (a flat search costs n x nlist,
    which grows as n^2 with lists of constant size): k-means into the coarse cells, then each cell's rows into that
    cell's share of the lists. A row is compared with the coarse centroids, then with the lists of its
    `coarse_nprobe` nearest cells (0: `auto_coarse_nprobe`); its owner and probes are then chosen among those
    lists as above."""
    m = len(vectors)
    if nlist <= 1:
        every = pack(np.zeros(m, dtype=np.int64), np.arange(m))
        return every, every
    coarse = min(coarse or auto_coarse(nlist), nlist)
    if coarse <= 1:
        return _assign_flat(vectors, nlist, nprobe, margin, seed, block_rows)
    coarse_nprobe = coarse_nprobe or auto_coarse_nprobe(coarse)
    return _assign_two_level(vectors, nlist, nprobe, margin, seed, coarse, coarse_nprobe, block_rows)


def _flat_index(centroids: np.ndarray) -> Any:  # a faiss.IndexFlatIP (faiss has no type stubs)
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def _assign_flat(
    vectors: np.ndarray, nlist: int, nprobe: int, margin: float, seed: int, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """`assign_lists` with every row compared with every list's centroid (BLAS)."""
    m = len(vectors)
    quantizer = _flat_index(spherical_kmeans(vectors, nlist, seed))
    owner = np.empty(m, dtype=np.int64)
    probes = np.empty(m * min(nprobe, nlist), dtype=np.uint64)  # filled from the front: the unused tail is never
    filled = 0  # written, so it takes no memory, and there is no second copy to concatenate
    for start in range(0, m, block_rows):
        sims, labels = quantizer.search(vectors[start : start + block_rows], min(nprobe, nlist))
        owner[start : start + len(sims)] = labels[:, 0]
        i, j = np.nonzero((sims >= sims[:, :1] - margin) & (labels >= 0))
        probes[filled : filled + len(i)] = pack(labels[i, j], i + start)
        filled += len(i)
    return pack(owner, np.arange(m)), probes[:filled]


def _assign_two_level(
    vectors: np.ndarray,
    nlist: int,
    nprobe: int,
    margin: float,
    seed: int,
    coarse: int,
    coarse_nprobe: int,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`assign_lists` through `coarse` cells (see there; the search itself is `dedup_cells.search_cells`)."""
    from curation.dedup_cells import dimension_major, search_cells

    m = len(vectors)
    top = spherical_kmeans(vectors, coarse, seed)
    index = _flat_index(top)
    cell = np.empty(m, dtype=np.int64)
    for start in range(0, m, block_rows):
        cell[start : start + block_rows] = index.search(vectors[start : start + block_rows], 1)[1][:, 0]
    members = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[members], np.arange(coarse + 1))
    del cell, index
    sizes = np.diff(bounds)
    # Each cell gets its share of the lists, at least one and at most one per row, k-means trained on its own rows.
    # Cells that drew no rows are dropped, so every searched cell has lists.
    used = np.flatnonzero(sizes)
    share = np.minimum(sizes[used], np.maximum(1, np.round(sizes[used] * nlist / m))).astype(np.int64)
    first_list = np.concatenate([[0], np.cumsum(share)])
    fine = dimension_major(
        [
            spherical_kmeans(vectors, int(k), seed + 1 + int(c), rows=members[bounds[c] : bounds[c + 1]])
            for c, k in zip(used, share, strict=True)
        ]
    )
    del members
    top = dimension_major([top[used]])
    owner = np.empty(m, dtype=np.int64)
    probes = np.empty(m * nprobe, dtype=np.uint64)  # filled from the front, as in _assign_flat
    filled = 0
    for start in range(0, m, block_rows):
        x = np.ascontiguousarray(vectors[start : start + block_rows])
        lists = np.empty((len(x), nprobe), dtype=np.int64)
        counts = np.empty(len(x), dtype=np.int64)
        search_cells(x, top, fine, first_list, min(coarse_nprobe, len(used)), nprobe, np.float32(margin), lists, counts)
        owner[start : start + len(x)] = lists[:, 0]
        r, j = np.nonzero(np.arange(nprobe) < counts[:, None])
        probes[filled : filled + len(r)] = pack(lists[r, j], r + start)
        filled += len(r)
    return pack(owner, np.arange(m)), probes[:filled]


def pack(lists: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One sortable uint64 per (list, row): 8 bytes a probe where separate arrays plus an argsort would take 24."""
    return (lists.astype(np.uint64) << np.uint64(32)) | rows.astype(np.uint64)


def by_list(packed: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows grouped by list, ascending within one; bounds (nlist + 1,)) of packed (list, row) values, which are
    sorted in place; the rows are a view of their low halves, so no copy is made (10 M clips x 11 probes: 0.9 GB)."""
    packed.sort()
    bounds = np.searchsorted(packed, np.arange(nlist + 1, dtype=np.uint64) << np.uint64(32))
    low_half = 0 if np.little_endian else 1
    return packed.view(np.uint32)[low_half::2], bounds


def list_join(vectors: np.ndarray, owners: np.ndarray, probes: np.ndarray, min_similarity: float) -> np.ndarray:
    """Sorted unique codes a * m + b (a < b, row numbers of `vectors`) of the pairs (x probes a list that y owns)
    whose index vectors' dot product (the cosine bound) reaches `min_similarity`: the IVF search of every row
    against all the others, one faiss range search (BLAS, thresholded in C++) per list."""
    import faiss

    m = np.uint64(len(vectors))
    nlist = int(max(owners.max(initial=0), probes.max(initial=0)) >> np.uint64(32)) + 1
    owners, owner_bounds = by_list(owners, nlist)
    probes, probe_bounds = by_list(probes, nlist)
    radius = min_similarity - BOUND_SLACK
    found, batch, batch_size = np.zeros(0, dtype=np.uint64), [], 0
    for c in range(nlist):
        own = owners[owner_bounds[c] : owner_bounds[c + 1]]
        probe = probes[probe_bounds[c] : probe_bounds[c + 1]]
        if not len(own) or not len(probe) or len(own) + len(probe) < 3:
            continue
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors[own])
        lims, _, hits = index.range_search(vectors[probe], radius)
        a, b = np.repeat(probe, np.diff(lims).astype(np.int64)), own[hits]
        ok = a != b
        if ok.any():
            a, b = a[ok], b[ok]
            batch.append(np.minimum(a, b).astype(np.uint64) * m + np.maximum(a, b).astype(np.uint64))
            batch_size += len(a)
        if batch_size > 1 << 22:  # a pair is found from both sides and from several lists: merge now and then
            found, batch, batch_size = np.union1d(found, np.concatenate(batch)), [], 0
    return np.union1d(found, np.concatenate(batch)) if batch else found


def embedding_verify(
    embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, min_similarity: float, chunk: int = 32768
) -> tuple[np.ndarray, np.ndarray]:
    """(passes, cosine) of pairs (a, b) on the full vectors, unit rows as in the exact path."""
    passes = np.zeros(len(a), dtype=bool)
    cosine = np.zeros(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        sl = slice(start, start + chunk)
        xa, ua = unit_rows(take_rows(embeddings, a[sl]))
        xb, ub = unit_rows(take_rows(embeddings, b[sl]))
        cosine[sl] = np.einsum("ij,ij->i", xa, xb)
        passes[sl] = ua & ub & (cosine[sl] >= min_similarity)
    return passes, cosine


def embedding_pairs_indexed(
    embeddings: np.ndarray,
    min_similarity: float,
    dims: int,
    nlist: int,
    nprobe: int,
    margin: float,
    seed: int,
    coarse: int = 0,
    coarse_nprobe: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cosine), a < b, sorted, of the pairs with cosine >= `min_similarity` that the IVF self-join finds
    (see the module docstring); rows with a NaN or zero embedding never pair. `nlist` 0: `auto_nlist`; `coarse`
    0: `auto_coarse`."""
    ids, vectors = reduce_rows(embeddings, pca_basis(embeddings, dims, seed))
    lists = assign_lists(vectors, nlist or auto_nlist(len(ids)), nprobe, margin, seed, coarse, coarse_nprobe)
    codes = list_join(vectors, *lists, min_similarity)
    del vectors, lists
    m = np.uint64(len(ids))
    a, b = ids[(codes // m).astype(np.int64)], ids[(codes % m).astype(np.int64)]  # ids ascending: order kept
    passes, cosine = embedding_verify(embeddings, a, b, min_similarity)
    return a[passes], b[passes], cosine[passes]
