"""Generate the sample corpus (videos + truth sidecars + flow + index) and read the truth back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .model import CODEC_NAMES, Rendered, VideoSpec
from .scenes import FLOW_SCALE
from .specs import BUILDERS, COLLECTIONS, get_spec
from .writer import encode_video, write_flow, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_VERSION",
    "INDEX_NAME",
    "generate_corpus",
    "generate_video",
    "load_truth",
    "load_flow",
    "is_current",
]

GENERATOR_VERSION = 1  # bump whenever frames or truth change, so stale corpora are regenerated
INDEX_NAME = "corpus.json"
FLOW_CONVENTION = (
    "forward flow from frame i to i+1 in pixels of the STORED video resolution, sampled on a grid "
    "downscaled by `scale` (sample (r, c) at x = (c + 0.5) * width / cols - 0.5, likewise y)"
)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_current(spec: VideoSpec, out_dir: Path, seed: int) -> bool:
    """True if the video and its truth exist and were made by this generator version with this seed."""
    truth = _read_json(spec.truth_path(out_dir))
    if truth is None or not spec.video_path(out_dir).is_file():
        return False
    if truth.get("generator_version") != GENERATOR_VERSION or truth.get("seed") != seed:
        return False
    flow = truth.get("flow")
    return flow is None or (out_dir / flow["file"]).is_file()


def _truth(spec: VideoSpec, seed: int, rendered: Rendered) -> dict[str, Any]:
    """Assemble the sidecar: fixed header fields first, then the builder's truth, then the flow reference."""
    truth: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "name": spec.name,
        "file": spec.file_name,
        "codec": CODEC_NAMES[spec.encoder],
        "encoder": spec.encoder,
        "container": spec.container,
        "pix_fmt": spec.pix_fmt,
        "fps": float(spec.fps),
        "n_frames": spec.n_frames,
        "width": spec.width,
        "height": spec.height,
        "duration_s": spec.n_frames / spec.fps,
        "tags": list(spec.tags),
        "objects": [],
    }
    if spec.rotation:  # only then, so the older sidecars keep their bytes
        truth["rotation"] = spec.rotation
        truth["coded_size"] = list(spec.coded_size)
    truth.update(rendered.truth)
    if rendered.flow is not None:
        truth["flow"] = {
            "file": f"{spec.name}.flow.npz",
            "key": "flow",
            "shape": list(rendered.flow.shape),
            "scale": FLOW_SCALE,
            "dtype": "float16",
            "convention": FLOW_CONVENTION,
        }
    return truth


def generate_video(spec: VideoSpec, out_dir: Path, seed: int = 0) -> Path:
    """Render, encode and describe one video (always regenerates); returns the video path."""
    started = time.perf_counter()
    rendered = BUILDERS[spec.kind](spec, seed)
    if len(rendered.frames) != spec.n_frames:
        raise RuntimeError(f"{spec.name}: builder made {len(rendered.frames)} frames, spec says {spec.n_frames}")
    video = spec.video_path(out_dir)
    encode_video(video, rendered.frames, spec)
    truth = _truth(spec, seed, rendered)
    if rendered.flow is not None:
        write_flow(out_dir / truth["flow"]["file"], rendered.flow)
    # The JSON goes last: its presence marks the video as complete (see is_current).
    write_json(spec.truth_path(out_dir), truth)
    logger.info(
        "%s: %d frames %dx%d in %.2fs",
        spec.file_name,
        spec.n_frames,
        spec.width,
        spec.height,
        time.perf_counter() - started,
    )
    return video


def _write_index(out_dir: Path, seed: int) -> None:
    """List every registered video (of any collection, in registry order) that is present and current in
    ``out_dir``."""
    videos = [
        {
            "name": s.name,
            "file": s.file_name,
            "stem": s.name,
            "truth": s.truth_path(out_dir).name,
            "codec": CODEC_NAMES[s.encoder],
            "container": s.container,
            "fps": float(s.fps),
            "n_frames": s.n_frames,
            "width": s.width,
            "height": s.height,
            "tags": list(s.tags),
        }
        for specs in COLLECTIONS.values()
        for s in specs
        if is_current(s, out_dir, seed)
    ]
    write_json(out_dir / INDEX_NAME, {"generator_version": GENERATOR_VERSION, "seed": seed, "videos": videos})


def generate_corpus(
    out_dir: str | Path, only: Sequence[str] | None = None, seed: int = 0, collection: str = "default"
) -> list[Path]:
    """Write the sample videos (all of ``collection``: ``default`` = SPECS, ``motion`` = MOTION_SPECS; or the names
    in ``only``, from any collection) with truth sidecars into ``out_dir``.

    Videos whose file and truth already exist for this generator version and seed are skipped, so repeated calls
    are cheap. Returns the video paths in registry order (or in ``only`` order).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if collection not in COLLECTIONS:
        raise KeyError(f"unknown collection {collection!r}; known: {', '.join(COLLECTIONS)}")
    specs = list(COLLECTIONS[collection]) if only is None else [get_spec(name) for name in dict.fromkeys(only)]
    paths = []
    for spec in specs:
        if is_current(spec, out, seed):
            logger.debug("%s is current, skipping", spec.file_name)
            paths.append(spec.video_path(out))
        else:
            paths.append(generate_video(spec, out, seed))
    _write_index(out, seed)
    return paths


def load_truth(video_path: str | Path) -> dict[str, Any]:
    """Read the truth sidecar of a corpus video (``<stem>.json`` next to it)."""
    path = Path(video_path)
    with open(path.with_suffix(".json"), encoding="utf-8") as fh:
        return json.load(fh)


def load_flow(video_path: str | Path) -> np.ndarray | None:
    """The true flow of a corpus video as float32 (T-1, rows, cols, 2), or None if it has none."""
    path = Path(video_path)
    flow = load_truth(path).get("flow")
    if flow is None:
        return None
    with np.load(path.with_name(flow["file"])) as data:
        return data[flow["key"]].astype(np.float32)
