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
        if cfg.camera.enabled:
            names.append("camera")
        if cfg.events.enabled:
            names.append("events")
    return names


class ClipAnnotators:
    """The enabled annotators, constructed once; call with one clip's frames to get its annotation columns."""

    def __init__(self, cfg: RunConfig) -> None:
        self.annotators = [annotator_class(n)(getattr(cfg, ANNOTATORS[n][1])) for n in enabled_annotators(cfg)]
        self.seconds: dict[str, float] = defaultdict(float)  # cumulative per annotator, for the run report

    def __call__(self, clip: dict[str, Any]) -> dict[str, Any]:
        """`clip`: clip_id, frames (T, H, W, 3) uint8, frame_pts, frame_indices, source_size and decoded_size
        ((width, height) of the source video and of the frames before the crop/pad to the stored size)."""
        batch = {name: object_array([value]) for name, value in clip.items()}
        batch["frame_pts"] = object_array([np.asarray(clip["frame_pts"], dtype=np.float64)])
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


def annotate_file(path: str, cfg: RunConfig, start_frame: int = 0, end_frame: int | None = None) -> dict[str, Any]:
    """Annotate one clip of a local video file without Ray, exactly as the clips step would (for notebooks,
    debugging and benchmarks). The clip spans source frames [start_frame, end_frame) (default: the whole file)."""
    from curation.decode import iter_frames, probe_video
    from curation.sampling import decode_size, fit_to_target, sample_indices

    info = probe_video(path)
    end = info.n_frames if end_frame is None else end_frame
    sampled = sample_indices(start_frame, end, info.fps, cfg.frames)
    if sampled is None:
        raise ValueError(f"{path}: frames [{start_frame}, {end}) are fewer than frames.num_frames")
    indices, _ = sampled
    size = decode_size(info.width, info.height, cfg.frames)
    frames = iter_frames(path, info, size=size, indices=indices)
    decoded = {i: (pts, fit_to_target(rgb, cfg.frames)) for i, pts, rgb in frames}
    clip = {
        "clip_id": f"{path}:{start_frame}:{end}",
        "frames": np.stack([decoded[i][1] for i in indices]),
        "frame_pts": [decoded[i][0] for i in indices],
        "frame_indices": np.asarray(indices),
        "source_size": (info.width, info.height),
        "decoded_size": size,
    }
    return {**clip, **annotators_for(cfg)(clip)}


__all__ = ["AnnotatorError", "ClipAnnotators", "ClipRejected", "annotate_file", "annotators_for", "enabled_annotators"]
