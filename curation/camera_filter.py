"""Camera-embedding outlier filter (AAPT, Appendix I: "drop samples with very large camera-embedding values"; bad
camera estimates destabilise the adversarial stage of a camera-conditioned model).

    [filters.camera]
    enabled = true
    mad_k = 6.0
    min_threshold = 20.0

Per clip, the statistic is the largest |value| of its ray embedding (`training.camera_rays.clip_magnitude`: poses
relative to the previous frame, ray origin + direction, scaled to about unit std by the corpus scales). Directions
are unit vectors, so only a step's translation can make it large: the filter catches translation spikes (a jump of
the estimated camera), not rotations. Over the run's clips with camera data the threshold is

    threshold = max(median + mad_k * 1.4826 * MAD, min_threshold)

(1.4826 * MAD estimates the std of the bulk without the outliers' pull). The floor matters: most clips of a corpus
barely translate, so their magnitudes sit at the directions' ~2 with a MAD near 0, and the robust term alone would
drop every real move; it is in units of the corpus std, like the embedding. A clip above the threshold leaves
`clips` for `rejected` (stage `filters`, reason `camera_outlier`, the value and the rule in the detail); a clip
with non-finite poses always does; a clip without camera data (no `camera_c2w` / `camera_intrinsics`) is kept.
The threshold is computed over every clip before the score thresholds, so it does not depend on them (and the SQL
selection can reuse the run's decisions, as it does dedup's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MAD_TO_STD = 1.4826  # std of a normal distribution per unit of its median absolute deviation
REASON = "camera_outlier"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CameraFilterConfig:
    """`[filters.camera]`: the outlier rule. Off by default (see `enabled`)."""

    # Off by default, like the score thresholds and the event filter: it is for the data of a camera-conditioned
    # model (AAPT trains that one apart), its unit is the corpus std measured on the small sample corpus, and it
    # reruns in seconds on a finished run (`--set filters.camera.enabled=true`), nothing recomputed.
    enabled: bool = False
    mad_k: float = 6.0  # robust std above the median
    min_threshold: float = 20.0  # never below this magnitude (embedding units: corpus std)

    def __post_init__(self) -> None:
        for name in ("mad_k", "min_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"filters.camera.{name} must be a finite number >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CameraThreshold:
    """The rule as applied to one run: what the manifest records."""

    threshold: float | None  # None: no clip has camera data
    median: float | None
    mad: float | None
    clips: int  # clips with finite magnitudes, the statistics' sample
    mad_k: float
    min_threshold: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rule(self) -> str:
        return (
            f"max(median {self.median:.4g} + {self.mad_k:g} x {MAD_TO_STD} x MAD {self.mad:.4g}, "
            f"filters.camera.min_threshold={self.min_threshold:g}) over {self.clips} clips"
        )


def camera_magnitude(c2w: np.ndarray | None, k: np.ndarray | None) -> float | None:
    """The clip's embedding magnitude; None without camera data, inf for poses or K that are malformed or not
    finite (a broken estimate: never a valid trajectory)."""
    if c2w is None or k is None:
        return None
    c2w, k = np.asarray(c2w), np.asarray(k)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or k.shape != (3, 3):
        return math.inf
    if not (np.isfinite(c2w).all() and np.isfinite(k).all()) or k[0, 0] <= 0 or k[1, 1] <= 0:
        return math.inf
    import torch  # here, not at the top: the report and query tools import this module (via curation.filters)

    from training.camera_rays import clip_magnitude

    try:
        value = clip_magnitude(torch.from_numpy(c2w.astype(np.float64)), torch.from_numpy(k.astype(np.float64)))
    except RuntimeError:  # a singular pose: torch.linalg.solve cannot take the relative step
        return math.inf
    return value if math.isfinite(value) else math.inf


def outlier_threshold(magnitudes: Sequence[float | None], cfg: CameraFilterConfig) -> CameraThreshold:
    """The run's threshold from its clips' magnitudes (None and non-finite ones left out of the statistics)."""
    values = np.array([m for m in magnitudes if m is not None and math.isfinite(m)], dtype=np.float64)
    if not len(values):
        return CameraThreshold(None, None, None, 0, cfg.mad_k, cfg.min_threshold)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    threshold = max(median + cfg.mad_k * MAD_TO_STD * mad, cfg.min_threshold)
    return CameraThreshold(threshold, median, mad, len(values), cfg.mad_k, cfg.min_threshold)


def find_outliers(
    magnitudes: Sequence[float | None], cfg: CameraFilterConfig
) -> tuple[CameraThreshold, list[tuple[int, str]]]:
    """(the threshold, [(index, detail)] of the clips to drop): magnitude above the threshold, or not finite."""
    rule = outlier_threshold(magnitudes, cfg)
    dropped = []
    for i, m in enumerate(magnitudes):
        if m is None:
            continue
        if not math.isfinite(m):
            dropped.append((i, "camera poses or intrinsics malformed or not finite"))
        elif rule.threshold is not None and m > rule.threshold:
            dropped.append((i, f"camera embedding magnitude {m:.4g} > threshold {rule.threshold:.4g} = {rule.rule()}"))
    return rule, dropped
