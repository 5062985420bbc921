"""The annotator contract every model or dense-math stage follows.

An annotator is a class constructed once per worker or actor (it loads its model in `__init__`) and called on
batches of clips. A batch is a dict of equal-length 1-D numpy arrays keyed by column name; per-clip tensors and
values that can be None are object arrays holding one value per clip. The call returns `clip_id` plus exactly the
columns named in `output_columns`. A clip the annotator cannot handle does not fail the batch: its tensor
outputs are None and `<name>_error` holds "<reason>: <detail>" (reason is stable snake_case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import numpy as np

Batch = dict[str, np.ndarray]


class AnnotatorError(Exception):
    """A clip an annotator cannot process; `reason` is a stable snake_case code recorded in `rejected`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class Annotator(Protocol):
    """Structural type of an annotator class."""

    name: ClassVar[str]
    output_columns: ClassVar[tuple[str, ...]]  # besides clip_id; includes f"{name}_error"

    def __init__(self, cfg: Any) -> None: ...

    def __call__(self, batch: Batch) -> Batch: ...


def all_finite(x: np.ndarray) -> bool:
    """np.isfinite(x).all(), ~4x faster on float16 (flows are stored in float16; numpy has no vector loop for half
    floats): a compiled bit test, `annotators.small_kernels`, imported on first use (numba is slow to import)."""
    if x.dtype == np.float16:
        from annotators.small_kernels import half_bits_finite

        return bool(half_bits_finite(np.ascontiguousarray(x).reshape(-1).view(np.uint16)))
    return bool(np.isfinite(x).all())


def spread_indices(total: int, k: int) -> np.ndarray:
    """Indices of `min(k, total)` evenly spaced frames of `total`: ascending and unique, first and last included
    when k >= 2, the middle one when k == 1; empty when total is 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if total < 1:
        return np.zeros(0, dtype=np.int64)
    if k == 1 or total == 1:
        return np.array([(total - 1) // 2], dtype=np.int64)
    # floor(x + 0.5) rather than np.round: banker's rounding can map two positions 1 apart onto one index
    return np.floor(np.linspace(0, total - 1, min(k, total)) + 0.5).astype(np.int64)


def object_array(items: list[Any]) -> np.ndarray:
    """A 1-D object array of per-clip values (ndarrays or None) without numpy trying to stack them."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # element-wise: slice assignment would try to stack equal-shape arrays
        out[i] = item
    return out


def error_text(error: AnnotatorError) -> str:
    return f"{error.reason}: {error.detail}" if error.detail else error.reason


def per_clip(name: str, columns: tuple[str, ...], inputs: Iterable[tuple], fn: Callable[..., dict]) -> Batch:
    """Run `fn(*clip_inputs) -> {column: value}` per clip. A clip whose `fn` raises AnnotatorError gets None in
    every column and "<reason>: <detail>" in `<name>_error`; other clips are unaffected."""
    out: dict[str, list] = {c: [] for c in columns}
    for args in inputs:
        try:
            values = {**fn(*args), f"{name}_error": None}
        except AnnotatorError as e:
            values = {f"{name}_error": error_text(e)}
        for column in columns:
            out[column].append(values.get(column))
    return {c: object_array(v) for c, v in out.items()}
