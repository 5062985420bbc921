"""Clip annotators: one class per module, registered here (the only registration point).

Each entry names the class and the `RunConfig` section that configures it. Classes are imported on demand so
that importing this package stays light (torch and OpenCV load only where an annotator is built). Order matters:
an annotator may read the columns of the ones before it (motion, warped noise and camera read `flow`;
events reads `flow`, `global_homography`, the camera's trajectory, and with events.source=latent the latents).
Quality, latents, aesthetics and captions read only the frames; the text encoder reads the caption (or the camera
text). The model-backed ones run on batches of clips.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> ("module:Class", config section)
ANNOTATORS: dict[str, tuple[str, str]] = {
    "flow": ("annotators.flow:FlowAnnotator", "flow"),
    "motion": ("annotators.motion:MotionScorer", "motion"),
    "warped_noise": ("annotators.warped_noise:WarpedNoiser", "noise"),
    "camera": ("annotators.camera:CameraEstimator", "camera"),
    "events": ("annotators.events:EventAnnotator", "events"),
    "quality": ("annotators.quality:QualityScorer", "quality"),
    "latents": ("annotators.latents:LatentEncoder", "latents"),
    "aesthetics": ("annotators.aesthetics:AestheticScorer", "aesthetics"),
    "captions": ("annotators.captions:Captioner", "captions"),
    "text_encoder": ("annotators.text_encoder:TextEncoder", "text_encoder"),
}


def annotator_class(name: str) -> Any:
    module, _, cls = ANNOTATORS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)
