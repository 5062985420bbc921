"""Score thresholds from config: `[filters.min]` and `[filters.max]` tables keyed by a numeric `clips` column.

    [filters.min]
    sharpness = 20.0
    aesthetic_score = 4.5
    [filters.max]
    clipped_dark = 0.5

or on the command line `--set filters.min.sharpness=20`. A clip below a minimum (above a maximum) leaves `clips`
for `rejected` (stage `filters`, reason `low_<column>` / `high_<column>`, the value and the rule in the detail);
every score is kept in the shards and in `rejected`'s clip id, so thresholds can be re-tuned in DuckDB without
recomputing. A clip whose score is null (the scorer did not run) is kept.

`[filters.camera]` (`curation.camera_filter.CameraFilterConfig`) adds the camera-embedding outlier filter: a
relative rule over the run, computed from the shards' camera tensors in `pipelines.finalize`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from curation.camera_filter import CameraFilterConfig
from curation.schema import CLIPS

# Columns of `clips` a threshold can apply to: numeric scores, not ids, positions or bookkeeping.
_NOT_SCORES = {
    "scene_index",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "num_frames",
    "frame_stride",
    "shard_row",
    "qcm_token",  # a category, not a magnitude
    "event_start_frame",
    "event_end_frame",
}
FILTERABLE = tuple(
    f.name for f in CLIPS if (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)) and f.name not in _NOT_SCORES
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """Per-column thresholds: keep a clip when min <= value <= max; `camera`: the camera-embedding outlier rule."""

    min: dict[str, float] = dataclasses.field(default_factory=dict)
    max: dict[str, float] = dataclasses.field(default_factory=dict)
    camera: CameraFilterConfig = dataclasses.field(default_factory=CameraFilterConfig)

    def __post_init__(self) -> None:
        for bound in ("min", "max"):
            for column, value in getattr(self, bound).items():
                if column not in FILTERABLE:
                    raise ValueError(
                        f"filters.{bound}.{column}: not a score column of `clips` (filterable: {', '.join(FILTERABLE)})"
                    )
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ValueError(f"filters.{bound}.{column} must be a finite number, got {value!r}")
        for column in set(self.min) & set(self.max):
            if self.min[column] > self.max[column]:
                raise ValueError(f"filters: min {column}={self.min[column]} exceeds max {column}={self.max[column]}")

    @property
    def columns(self) -> set[str]:
        return set(self.min) | set(self.max)


def violation(clip: Mapping[str, Any], cfg: FilterConfig) -> tuple[str, str] | None:
    """(reason, detail) of the first rule `clip` breaks, in column order, or None when it passes every rule."""
    for column in FILTERABLE:
        value = clip.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if column in cfg.min and value < cfg.min[column]:
            return f"low_{column}", f"{column} {value:.4g} < filters.min.{column}={cfg.min[column]:g}"
        if column in cfg.max and value > cfg.max[column]:
            return f"high_{column}", f"{column} {value:.4g} > filters.max.{column}={cfg.max[column]:g}"
    return None


def filter_columns(columns: Mapping[str, np.ndarray], cfg: FilterConfig) -> tuple[np.ndarray, list[str], list[str]]:
    """`violation` over whole columns (one array per column of `cfg.columns`, NaN where null): the indices of the
    clips that break a rule, ascending, with each one's reason and detail (the first broken rule in column order,
    worded as `violation` words it)."""
    n = len(next(iter(columns.values()))) if columns else 0
    undecided = np.ones(n, dtype=bool)
    hits, reasons, details = [], [], []
    for column in (c for c in FILTERABLE if c in cfg.columns):
        value = np.asarray(columns[column], dtype=np.float64)
        for bound, word, sign in (("min", "low", "<"), ("max", "high", ">")):
            if column not in getattr(cfg, bound):
                continue
            limit = getattr(cfg, bound)[column]
            hit = np.flatnonzero(undecided & ((value < limit) if bound == "min" else (value > limit)))  # NaN: neither
            undecided[hit] = False
            hits.append(hit)
            reasons += [f"{word}_{column}"] * len(hit)
            details += [f"{column} {value[i]:.4g} {sign} filters.{bound}.{column}={limit:g}" for i in hit]
    order = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
    sort = np.argsort(order, kind="stable")
    return order[sort], [reasons[i] for i in sort], [details[i] for i in sort]
