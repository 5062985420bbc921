"""The event window resolved to source frames (`activity.moving_share`, `activity.window_frames`): a mover that starts
or stops part-way through a pair of sampled frames, against the truth of when it moved."""

from __future__ import annotations

import numpy as np
import pytest

from annotators import activity as act


def mover_maps(start: int, stop: int, indices: np.ndarray, speed: float = 2.0, other: tuple | None = None):
    """(change, active) of a constant-speed mover on a 6x6 grid stepping one cell right per pair, moving during
    source steps [start, stop); `other`: a second mover (start, stop, speed) in another row."""
    pairs = len(indices) - 1
    change = np.zeros((pairs, 6, 6), np.float32)
    active = np.zeros((pairs + 1, 6, 6), np.uint8)
    movers = [(1, (start, stop, speed))] + ([(4, other)] if other else [])
    for row, (a, b, v) in movers:
        for p in range(pairs):
            lo, hi = int(indices[p]), int(indices[p + 1])
            moved = max(0, min(hi, b) - max(lo, a))  # source steps of this pair during which it moved
            if moved:
                change[p, row, p % 6] = v * moved / (hi - lo)  # a speed over the whole pair
                active[p + 1, row, p % 6] = 1
    return change, active


def window_of(active: np.ndarray) -> tuple[int, int]:
    on = np.flatnonzero(active.reshape(len(active), -1).any(axis=1))
    return int(on[0]), int(on[-1])


@pytest.mark.parametrize("start, stop", [(26, 46), (25, 46), (27, 47), (24, 52), (30, 44)])
def test_a_constant_speed_mover_is_resolved_to_its_source_frames(start: int, stop: int):
    indices = np.arange(1, 64, 3)  # every third source frame
    change, active = mover_maps(start, stop, indices)
    window = window_of(active)
    found = act.window_frames(window, act.moving_share(change, active, window), indices)
    assert found == (start, stop)
    sampled = (int(indices[window[0] - 1]), int(indices[window[1]]))  # the sampled frames around it
    assert sampled[0] <= found[0] and found[1] <= sampled[1]


def test_a_faster_second_mover_does_not_move_the_first_ones_start():
    indices = np.arange(1, 64, 3)
    change, active = mover_maps(26, 46, indices, speed=1.0, other=(34, 40, 8.0))
    window = window_of(active)
    assert act.window_frames(window, act.moving_share(change, active, window), indices) == (26, 46)


def test_short_windows_keep_the_sampled_bounds():
    indices = np.array([0, 4, 8, 12, 16])
    change, active = mover_maps(5, 10, indices)  # pairs 1 and 2 only: no inner pair to compare with
    window = window_of(active)
    assert act.moving_share(change, active, window) == (1.0, 1.0)
    assert act.window_frames(window, (1.0, 1.0), indices) == (4, 12)


@pytest.mark.parametrize("seed", range(20))
def test_the_window_stays_inside_the_sampled_bounds_and_is_never_empty(seed: int):
    rng = np.random.default_rng(seed)
    indices = np.cumsum(rng.integers(1, 5, 12))
    change = rng.uniform(0, 3, (11, 5, 5)).astype(np.float32)
    active = (rng.uniform(size=(12, 5, 5)) > 0.6).astype(np.uint8)
    active[0] = 0
    first = int(rng.integers(1, 11))
    window = (first, int(rng.integers(first, 12)))
    start, end = act.window_frames(window, act.moving_share(change, active, window), indices)
    assert indices[window[0] - 1] <= start < end <= max(indices[window[1]], start + 1)
