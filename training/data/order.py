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
# The epoch plan: which unit row is emitted at every position of this rank's epoch


@dataclasses.dataclass(frozen=True)
class _Plan:
    epoch: int
    samples: int  # this rank's samples per epoch (padded)
    padded: int  # how many of them repeat an earlier sample
    stream_unit: np.ndarray  # stream index -> unit
    stream_item: np.ndarray  # stream index -> index into the unit's rows
    order: np.ndarray  # output position -> stream index
    read_of: np.ndarray  # stream index -> read (a run of consecutive stream samples from one unit)
    read_unit: np.ndarray  # read -> unit
    read_start: np.ndarray  # read -> its first stream index (one more entry: the stream length)


def _plan(src: _Source, cfg: DataConfig, epoch: int, rank: int, world: int) -> _Plan:
    n_units = len(src.units)
    shuffle = cfg.shuffle_buffer > 0
    unit_order = _permutation((cfg.seed, epoch, 1), n_units) if shuffle else np.arange(n_units)
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
        # (fewer samples than ranks) takes the epoch's sample at its rank index.
        own = take if size else np.array([rank % total])
        take = np.concatenate([take, own[np.arange(pad) % len(own)]])
    s_unit, s_item = g_unit[take], g_item[take]
    order = shuffle_buffer_order(per_rank, cfg.shuffle_buffer, (cfg.seed, epoch, 2, rank, world))
    boundary = np.ones(per_rank, bool)
    boundary[1:] = (s_unit[1:] != s_unit[:-1]) | (s_item[1:] <= s_item[:-1])
    read_of = np.cumsum(boundary) - 1
    starts = np.append(np.flatnonzero(boundary), per_rank)
    return _Plan(epoch, per_rank, pad, s_unit, s_item, order, read_of, s_unit[boundary], starts)
