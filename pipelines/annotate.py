"""Runs the clip annotators a run enables on one clip's decoded frames, inside the step that decoded them.

Frames are decoded once per clip (in the clips step) and every dense annotator works on them there: flow, then the
motion scores and warped noise derived from it. Frames never travel between Ray operators. Annotators are built
once per worker process (`annotators_for`), so a model loads once, not once per video.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from annotators import ANNOTATORS, annotator_class
from annotators.base import AnnotatorError, object_array
from pipelines.config import RunConfig

logger = logging.getLogger(__name__)


class ClipRejected(Exception):
    """An annotator could not process a clip; the clip goes to `rejected` with this stage and reason."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.reason, _, self.detail = error.partition(": ")


def enabled_annotators(cfg: RunConfig) -> list[str]:
    """Names of the annotators this configuration runs, in registry order. Quality always runs; aesthetics and
    captions always run too, and record backend "none" with null columns when no weights are configured."""
    names = ["latents"] if cfg.latents.enabled else []  # first: recipe-B events read the latents
    if cfg.flow.backend != "none":
        names += ["flow", "motion"]
        if cfg.noise.enabled:
            names.append("warped_noise")
        if cfg.camera.enabled:
            names.append("camera")
        if cfg.events.enabled:
            names.append("events")
    names += ["quality", "aesthetics", "captions"]
    if cfg.text_encoder.enabled:
        names.append("text_encoder")  # after captions and camera: it encodes their text
    return names


def model_annotators(cfg: RunConfig) -> dict[str, str]:
    """The model-backed annotators this configuration loads weights for, with their configured device."""
    models = {}
    if cfg.flow.backend.startswith("raft"):
        models["flow"] = cfg.flow.device
    if cfg.aesthetics.model_path:
        models["aesthetics"] = cfg.aesthetics.device
    if cfg.captions.model_path:
        models["captions"] = cfg.captions.device
    if cfg.latents.enabled:
        models["latents"] = cfg.latents.device
    if cfg.text_encoder.enabled:
        models["text_encoder"] = cfg.text_encoder.device
    return models


def preflight_models(cfg: RunConfig) -> None:
    """Cheap checks of every configured weights path on the driver, before any video is touched: config files parse
    and weights files have readable headers (nothing is loaded). Raises ModelLoadError naming the config key."""
    from pathlib import Path

    from annotators.models import check_weight_files

    if cfg.aesthetics.model_path:
        check_weight_files(Path(cfg.aesthetics.model_path), "aesthetics.model_path")
    if cfg.aesthetics.head_path:
        check_weight_files(Path(cfg.aesthetics.head_path), "aesthetics.head_path")
    if cfg.captions.model_path:
        from annotators.captions import resolve_model_folder

        check_weight_files(resolve_model_folder(cfg.captions.model_path), "captions.model_path")
    if cfg.flow.backend.startswith("raft"):
        check_weight_files(Path(cfg.flow.weights), "flow.weights")
    if cfg.latents.enabled:
        import dataclasses

        from annotators.vae import load_vae

        check_weight_files(Path(cfg.latents.model_path), "latents.model_path")
        # Weights that do not fit their config fail only when loaded: load once here, on the CPU, and let it go.
        load_vae(dataclasses.replace(cfg.latents, device="cpu", dtype="float32"))
    if cfg.text_encoder.enabled:
        from annotators.text_encoder import check_text_encoder

        check_text_encoder(cfg.text_encoder)
    if cfg.scenes.uses_transnet:
        from annotators.transnetv2 import TransNetV2Detector

        TransNetV2Detector(device="cpu")  # checksum and a weights_only load of the bundled weights: 30 MB, < 1 s


class ClipAnnotators:
    """The enabled annotators, constructed once (models load here); call with clips to get their columns."""

    def __init__(self, cfg: RunConfig) -> None:
        self.annotators = [annotator_class(n)(getattr(cfg, ANNOTATORS[n][1])) for n in enabled_annotators(cfg)]
        self.seconds: dict[str, float] = defaultdict(float)  # cumulative per annotator, for the run report
        self.fault = cfg.runtime.fault

    def __call__(self, clip: dict[str, Any]) -> dict[str, Any]:
        """One clip's annotation columns; raises ClipRejected when an annotator gives up on it."""
        (result,) = self.annotate([clip])
        if isinstance(result, ClipRejected):
            raise result
        return result

    def annotate(self, clips: list[dict[str, Any]]) -> list[dict[str, Any] | ClipRejected]:
        """Annotate a batch of clips together (model annotators batch across them); one result per clip, in order:
        its columns, or the ClipRejected of the first annotator that gave up on it (later ones skip that clip).

        A clip: clip_id, frames (T, H, W, 3) uint8, frame_pts, frame_indices, source_size and decoded_size
        ((width, height) of the source video and of the frames before the crop/pad to the stored size).

        An annotator that raises (a bug, a model failing on odd input) fails only the clips it raised on: the batch
        is annotated again one clip at a time, and a clip it still raises on is rejected with `annotator_error`."""
        try:
            return self._annotate(clips)
        except _AnnotatorRaised as e:
            if len(clips) > 1:
                return [self.annotate([clip])[0] for clip in clips]
            cause = e.__cause__
            return [ClipRejected(e.name, f"annotator_error: {type(cause).__name__}: {cause}")]

    def _annotate(self, clips: list[dict[str, Any]]) -> list[dict[str, Any] | ClipRejected]:
        results: list[dict[str, Any] | ClipRejected] = [{} for _ in clips]
        batch = {name: object_array([clip[name] for clip in clips]) for name in clips[0]} if clips else {}
        if clips:
            batch["frame_pts"] = object_array([np.asarray(c["frame_pts"], dtype=np.float64) for c in clips])
        active = list(range(len(clips)))  # positions in `clips` of the rows still in `batch`
        for annotator in self.annotators:
            if not active:
                break
            started = time.perf_counter()
            try:
                self.fault.trigger(annotator.name, list(batch["clip_id"]))
                out = annotator(batch)
            except Exception as e:
                logger.warning("%s raised on %d clips", annotator.name, len(active), exc_info=True)
                raise _AnnotatorRaised(annotator.name) from e
            finally:
                self.seconds[annotator.name] += time.perf_counter() - started
            errors = out.get(f"{annotator.name}_error", [None] * len(active))
            for column in annotator.output_columns:
                batch[column] = out[column]
            survivors = []
            for row, index in enumerate(active):
                if errors[row]:
                    results[index] = ClipRejected(annotator.name, errors[row])
                    continue
                survivors.append(row)
                produced = results[index]
                for column in annotator.output_columns:
                    if not column.endswith("_error"):
                        produced[column] = out[column][row]
            if len(survivors) < len(active):
                batch = {name: values[survivors] for name, values in batch.items()}
                active = [active[row] for row in survivors]
        return results


class _AnnotatorRaised(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


_CACHE: dict[tuple, ClipAnnotators] = {}


def annotators_for(cfg: RunConfig) -> ClipAnnotators:
    """This process's annotators for `cfg` (Ray reuses worker processes across tasks, so models load once)."""
    key = (cfg.work_hash(), cfg.runtime.fault)
    if key not in _CACHE:
        _CACHE[key] = ClipAnnotators(cfg)
    return _CACHE[key]


def annotate_file(path: str, cfg: RunConfig, start_frame: int = 0, end_frame: int | None = None) -> dict[str, Any]:
    """Annotate one clip of a local video file without Ray, exactly as the clips step would (for notebooks,
    debugging and benchmarks). The clip spans source frames [start_frame, end_frame) (default: the whole file)."""
    from curation.decode import iter_frames, probe_video
    from curation.sampling import clip_windows, decode_size, fit_to_target, video_layout

    info = probe_video(path)
    end = info.n_frames if end_frame is None else end_frame
    layout = video_layout(info.width, info.height, cfg.frames, cfg.buckets)  # with buckets: the first window
    windows = clip_windows(start_frame, end, info.fps, layout)
    if not windows:
        raise ValueError(f"{path}: frames [{start_frame}, {end}) are too few for one stored clip")
    indices, _ = windows[0]
    size = decode_size(info.width, info.height, layout.frames)
    frames = iter_frames(path, info, size=size, indices=indices)
    decoded = {i: (pts, fit_to_target(rgb, layout.frames)) for i, pts, rgb in frames}
    clip = {
        "clip_id": f"{path}:{start_frame}:{end}",
        "frames": np.stack([decoded[i][1] for i in indices]),
        "frame_pts": [decoded[i][0] for i in indices],
        "frame_indices": np.asarray(indices),
        "source_size": (info.width, info.height),
        "decoded_size": size,
    }
    return {**clip, **annotators_for(cfg)(clip)}


__all__ = [
    "AnnotatorError",
    "ClipAnnotators",
    "ClipRejected",
    "annotate_file",
    "annotators_for",
    "enabled_annotators",
    "model_annotators",
    "preflight_models",
]
