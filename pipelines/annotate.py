"""Runs the clip annotators a run enables on one clip's decoded frames, inside the step that decoded them.

Frames are decoded once per clip (in the clips step) and every dense annotator works on them there: flow, then the
motion scores and warped noise derived from it. Frames never travel between Ray operators. Annotators are built
once per worker process (`annotators_for`), so a model loads once, not once per video.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np

from annotators import ANNOTATORS, annotator_class
from annotators.base import AnnotatorError, object_array
from pipelines.config import RunConfig


class ClipRejected(Exception):
    """An annotator could not process a clip; the clip goes to `rejected` with this stage and reason."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.reason, _, self.detail = error.partition(": ")


def enabled_annotators(cfg: RunConfig) -> list[str]:
    """Names of the annotators this configuration runs, in registry order."""
    names = []
    if cfg.flow.backend != "none":
        names += ["flow", "motion"]
        if cfg.noise.enabled:
            names.append("warped_noise")
    return names


class ClipAnnotators:
    """The enabled annotators, constructed once; call with one clip's frames to get its annotation columns."""

    def __init__(self, cfg: RunConfig) -> None:
        self.annotators = [annotator_class(n)(getattr(cfg, ANNOTATORS[n][1])) for n in enabled_annotators(cfg)]
        self.seconds: dict[str, float] = defaultdict(float)  # cumulative per annotator, for the run report

    def __call__(self, clip_id: str, frames: np.ndarray, frame_pts: list[float]) -> dict[str, Any]:
        batch = {
            "clip_id": np.array([clip_id], dtype=object),
            "frames": object_array([frames]),
            "frame_pts": object_array([np.asarray(frame_pts, dtype=np.float64)]),
        }
        produced: dict[str, Any] = {}
        for annotator in self.annotators:
            started = time.perf_counter()
            out = annotator(batch)
            self.seconds[annotator.name] += time.perf_counter() - started
            error = out.get(f"{annotator.name}_error", [None])[0]
            if error:
                raise ClipRejected(annotator.name, error)
            for column in annotator.output_columns:
                batch[column] = out[column]
                if not column.endswith("_error"):
                    produced[column] = out[column][0]
        return produced


_CACHE: dict[str, ClipAnnotators] = {}


def annotators_for(cfg: RunConfig) -> ClipAnnotators:
    """This process's annotators for `cfg` (Ray reuses worker processes across tasks, so models load once)."""
    key = cfg.content_hash()
    if key not in _CACHE:
        _CACHE[key] = ClipAnnotators(cfg)
    return _CACHE[key]


__all__ = ["AnnotatorError", "ClipAnnotators", "ClipRejected", "annotators_for", "enabled_annotators"]
