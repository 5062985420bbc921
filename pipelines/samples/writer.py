"""Encoding with PyAV and byte-stable sidecar writing (truth JSON, flow npz).

Files are written to a temporary name in the target directory and renamed into place, so an interrupted run
never leaves a half-written video that a later run would mistake for a finished one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from .model import VideoSpec

logger = logging.getLogger(__name__)

__all__ = ["ENCODER_OPTIONS", "encode_video", "write_json", "write_flow", "clean_json"]

# Quality-oriented but fast settings; FF_QP2LAMBDA = 118 turns a qscale into global_quality for mpeg4 / mjpeg.
ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    # mbtree off: with it, this libx264 build gives a different bitstream on every run (seen even single-threaded).
    "libx264": {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"},
    "libx265": {"crf": "20", "preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "28", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    "libsvtav1": {"crf": "30", "preset": "10"},
    "mpeg4": {"flags": "+qscale", "global_quality": str(3 * 118)},
    "mjpeg": {"flags": "+qscale", "global_quality": str(3 * 118)},
}
# bitexact keeps muxers from writing random UIDs / version strings, so identical frames give identical files.
_CONTAINER_OPTIONS = {"fflags": "+bitexact"}


def _tmp_path(path: Path) -> Path:
    """Sibling temp name that keeps the extension (PyAV picks the muxer from it); the pid keeps concurrent
    generators (e.g. parallel test workers) from writing into each other's files."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def encode_video(path: Path, frames: Iterable[np.ndarray], spec: VideoSpec) -> None:
    """Encode RGB uint8 frames to ``path`` with the spec's encoder, pixel format and frame rate; with a
    ``rotation``, each display-oriented frame is stored turned back and the display matrix records the turn."""
    tmp = _tmp_path(path)
    if spec.encoder == "libsvtav1":
        # SVT-AV1 prints an info banner straight to stderr; its own env switch is the only way to quiet it.
        os.environ.setdefault("SVT_LOG", "1")
    count = 0
    try:
        with av.open(str(tmp), "w", options=_CONTAINER_OPTIONS) as container:
            stream = container.add_stream(spec.encoder, rate=Fraction(spec.fps), options=ENCODER_OPTIONS[spec.encoder])
            stream.width, stream.height = spec.coded_size
            stream.pix_fmt = spec.pix_fmt
            stream.codec_context.gop_size = spec.fps  # one key frame per second: cheap seeking for the pipeline
            if spec.rotation:
                # PyAV counts counter-clockwise; a player turns the coded frames clockwise by spec.rotation
                stream.set_display_rotation(-spec.rotation)
            for rgb in frames:
                if spec.rotation:
                    rgb = np.rot90(rgb, k=spec.rotation // 90)  # counter-clockwise: undone by the display matrix
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("encoded %s: %d frames", path.name, count)


def clean_json(obj: Any, digits: int = 9) -> Any:
    """Convert numpy / tuple values to plain JSON types and round floats so the text is stable and compact."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist(), digits)
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = round(float(obj), digits)
        return 0.0 if value == 0 else value  # avoid "-0.0" flip-flopping between platforms
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (after ``clean_json``), atomically."""
    tmp = _tmp_path(path)
    tmp.write_text(json.dumps(clean_json(obj), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_flow(path: Path, flow: np.ndarray, key: str = "flow") -> None:
    """Store flow as float16 in an ``.npz`` that ``np.load`` reads, written by hand for two reasons: a fixed zip
    timestamp (``np.savez`` stamps the clock) and LZMA, whose large window finds the repeats between frames
    that deflate's 32 KiB window misses (10-100x smaller files here)."""
    buf = io.BytesIO()
    np.save(buf, flow.astype(np.float16), allow_pickle=False)
    tmp = _tmp_path(path)
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_LZMA
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)
