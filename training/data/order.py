"""The sample order: counter-based random numbers, the shuffle buffer and the per-rank epoch plan, all pure
functions of (seed, epoch, rank, world_size, source metadata)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from training.data.config import DataConfig
from training.data.source import _Source

# ---------------------------------------------------------------------------------------------------------------
# Deterministic randomness: counter-based splitmix64, the same on every platform and library version.

_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _random_u64(key: Sequence[int], n: int) -> np.ndarray:
    """n pseudo-random uint64 for `key` (a tuple of non-negative ints): splitmix64 of a keyed counter."""
    state = np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for part in key:
            state = _mix64(state ^ np.uint64(part & _M64)) + _GOLDEN
        return _mix64(state + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64))


def _uniform(key: Sequence[int], n: int) -> np.ndarray:
    return (_random_u64(key, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _permutation(key: Sequence[int], n: int) -> np.ndarray:
    return np.argsort(_random_u64(key, n), kind="stable")


def shuffle_buffer_order(n: int, size: int, key: Sequence[int]) -> np.ndarray:
    """The emission order of a shuffle buffer of `size` over a stream of n items: out[k] = stream index emitted k-th.

    Fill `size` items; then each arriving item replaces a random buffered one, which is emitted; at the end the
    buffer drains in random order. Item k is emitted no later than after stream item k + size arrived, which is
    what bounds the loader's memory."""
    if size <= 0 or n <= 1:
        return np.arange(n, dtype=np.int64)
    u = _uniform(key, n + min(size, n))
    out = np.empty(n, np.int64)
    buf = list(range(min(size, n)))
    o = 0
    picks = (u[:n] * size).astype(np.int64)
    for i in range(size, n):
        j = int(picks[i])
        out[o] = buf[j]
        buf[j] = i
        o += 1
    for t in range(len(buf)):
        j = int(u[n + t] * len(buf))
        out[o] = buf[j]
        buf[j] = buf[-1]
        buf.pop()
        o += 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# The epoch plan: which unit row is emitted at every position of this rank's epoch, batch by batch


@dataclasses.dataclass(frozen=True)
class _Plan:
    epoch: int
    samples: int  # this rank's samples per epoch (padded), all buckets
    padded: int  # how many of them repeat an earlier sample
    stream_unit: np.ndarray  # stream index -> unit (the stream: each bucket's share of this rank, bucket after bucket)
    stream_item: np.ndarray  # stream index -> index into the unit's rows
    order: np.ndarray  # output position -> stream index: the batches in epoch order, then what drop_last drops
    batch_start: np.ndarray  # batch -> its first output position (one more entry: the end of the last batch)
    batch_bucket: np.ndarray  # batch -> bucket
    batch_src: np.ndarray  # batch -> its first index into `by_bucket`
    by_bucket: np.ndarray  # each bucket's emission order (stream indices), bucket after bucket
    bucket_start: np.ndarray  # bucket -> its first index into `by_bucket` (one more entry: `samples`)
    read_of: np.ndarray  # stream index -> read (a run of consecutive stream samples from one unit)
    read_unit: np.ndarray  # read -> unit
    read_start: np.ndarray  # read -> its first stream index (one more entry: the stream length)

    def bucket_positions(self, batch: int, after: int) -> np.ndarray:
        """`by_bucket` indices of the batch's bucket, starting `after` samples past the batch's first and wrapping
        around the bucket: where replacements for a wholly bad batch come from (same bucket, same shapes)."""
        g = int(self.batch_bucket[batch])
        lo, hi = int(self.bucket_start[g]), int(self.bucket_start[g + 1])
        return lo + (int(self.batch_src[batch]) - lo + after + np.arange(hi - lo)) % (hi - lo)


def _unit_buckets(src: _Source, unit_bucket: np.ndarray | None) -> np.ndarray:
    return np.zeros(len(src.units), np.int64) if unit_bucket is None else np.asarray(unit_bucket, np.int64)


def bucket_sizes(src: _Source, cfg: DataConfig, world: int, unit_bucket: np.ndarray | None = None) -> np.ndarray:
    """(samples per rank, batches per rank) of every bucket, (n_buckets, 2): the same on every rank."""
    ub = _unit_buckets(src, unit_bucket)
    counts = np.bincount(ub, weights=[len(u.rows) for u in src.units], minlength=int(ub.max(initial=0)) + 1)
    per_rank = -(-counts.astype(np.int64) // world)
    b = cfg.batch_size
    batches = per_rank // b if cfg.drop_last else -(-per_rank // b)
    return np.stack([per_rank, batches], axis=1)


def _rank_share(
    src: _Source, units: np.ndarray, key: tuple[int, ...], shuffle: bool, rank: int, world: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(unit, item) of this rank's samples of one bucket and how many of them are padding."""
    unit_order = units[_permutation(key, len(units))] if shuffle else units
    sizes = np.array([len(src.units[u].rows) for u in unit_order], np.int64)
    g_unit = np.repeat(unit_order, sizes)
    g_item = np.arange(len(g_unit)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    total = len(g_unit)
    q, rem = divmod(total, world)
    start, size = rank * q + min(rank, rem), q + (rank < rem)
    per_rank = q + (rem > 0)
    take = np.arange(start, start + size)
    pad = per_rank - size
    if pad:
        # Repeat the rank's own first samples (its row groups are the ones it reads anyway); a rank with none
        # (fewer samples than ranks) takes the bucket's sample at its rank index.
        own = take if size else np.array([rank % total])
        take = np.concatenate([take, own[np.arange(pad) % len(own)]])
    return g_unit[take], g_item[take], pad


def _plan(
    src: _Source, cfg: DataConfig, epoch: int, rank: int, world: int, unit_bucket: np.ndarray | None = None
) -> _Plan:
    """The epoch's plan for one rank. Per bucket: permute its units, cut the samples into `world` balanced
    contiguous chunks (padded to equal length), run the shuffle buffer over the rank's chunk and cut that into
    batches. Then the (bucket, batch) list is permuted with a key shared by all ranks, so every rank has the same
    number of batches of every bucket, in the same bucket sequence. Bucket 0 uses the keys of the loader before
    buckets, and one bucket skips the batch permutation: a source without buckets keeps its order."""
    ub = _unit_buckets(src, unit_bucket)
    n_buckets = int(ub.max(initial=0)) + 1
    shuffle = cfg.shuffle_buffer > 0
    b = cfg.batch_size
    units, items, by_bucket, bucket_start, padded = [], [], [], [0], 0
    batch_bucket, batch_src, batch_size = [], [], []
    for g in range(n_buckets):
        extra = () if g == 0 else (g,)
        s_unit, s_item, pad = _rank_share(
            src, np.flatnonzero(ub == g), (cfg.seed, epoch, 1, *extra), shuffle, rank, world
        )
        n, offset = len(s_unit), bucket_start[-1]
        order = shuffle_buffer_order(n, cfg.shuffle_buffer, (cfg.seed, epoch, 2, rank, world, *extra))
        units.append(s_unit)
        items.append(s_item)
        by_bucket.append(offset + order)
        bucket_start.append(offset + n)
        padded += pad
        full, rest = divmod(n, b)
        sizes = [b] * full + ([rest] if rest and not cfg.drop_last else [])
        batch_bucket += [g] * len(sizes)
        batch_src += [offset + k * b for k in range(len(sizes))]
        batch_size += sizes
    stream_unit, stream_item = np.concatenate(units), np.concatenate(items)
    by_bucket_all = np.concatenate(by_bucket)
    samples = len(stream_unit)
    b_bucket, b_src, b_size = (np.array(x, np.int64) for x in (batch_bucket, batch_src, batch_size))
    if shuffle and n_buckets > 1:
        perm = _permutation((cfg.seed, epoch, 3), len(b_bucket))  # no rank in the key: the same on every rank
        b_bucket, b_src, b_size = b_bucket[perm], b_src[perm], b_size[perm]
    batch_start = np.concatenate([[0], np.cumsum(b_size)]).astype(np.int64)
    emitted = int(batch_start[-1])
    # Output position -> by_bucket index, batch by batch; then the samples no batch takes, bucket by bucket.
    src_pos = np.repeat(b_src - batch_start[:-1], b_size) + np.arange(emitted)
    used = np.zeros(samples, bool)
    used[src_pos] = True
    order = by_bucket_all[np.concatenate([src_pos, np.flatnonzero(~used)])]
    boundary = np.ones(samples, bool)
    boundary[1:] = (stream_unit[1:] != stream_unit[:-1]) | (stream_item[1:] <= stream_item[:-1])
    boundary[np.array(bucket_start[:-1], np.int64)] = True
    read_of = np.cumsum(boundary) - 1
    starts = np.append(np.flatnonzero(boundary), samples)
    return _Plan(
        epoch,
        samples,
        padded,
        stream_unit,
        stream_item,
        order,
        batch_start,
        b_bucket,
        b_src,
        by_bucket_all,
        np.array(bucket_start, np.int64),
        read_of,
        stream_unit[boundary],
        starts,
    )
