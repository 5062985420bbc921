"""The only module that touches video decoders.

Decoder policy
--------------
* **PyAV inspects every file first** (``_pyav.inspect``): open, pick the video stream, apply the cheap guards from
  the headers (``too_many_pixels``, ``too_long``), reject text "videos" (libavformat renders a .txt as ANSI art),
  then decode exactly one frame. PyAV raises Python exceptions, so a file that libavformat cannot parse never
  reaches decord, and this pass supplies what decord cannot: codec, container, the rotation (display matrix) and a
  reference first frame. The video stream is ``av_find_best_stream``'s choice, the same one decord reads (with
  ``streams.video[0]`` instead, nasa_13013.mp4 looked like "decord 390 frames vs PyAV 325": two different streams).
* **decord is the primary decoder** (fast batched random access), but only where it was measured to be right:
  indexed containers (mp4/mov, Matroska/WebM, AVI, Ogg), a codec its FFmpeg has, a closed-GOP stream (after a
  seek, open-GOP leading pictures came back inexact), and its frame 0 equal to PyAV's frame 0 after rotation (mean
  abs diff <= 12). That check catches decord's wrong frames on MPEG-PS and raw streams, wrong rotation, and tiny
  (1x1, 2x2) frames it returns with a garbage shape.
* **PyAV is the fallback** (AV1, VVC, GIF, raw elementary streams, IVF, VP9 without duration, unfinalised AVI...).
* ``VideoInfo.decoder`` records the decoder that served the probe; ``iter_frames`` always uses it again, so frame
  indices are stable across passes. ``n_frames`` is that decoder's count: ``len(VideoReader)`` for decord, the
  number of demuxed (not decoded) video packets for PyAV; on every readable test file that equals the number of
  frames decoded. Both decoders number frames 0.. in presentation order.
* Timestamps (``pts_seconds``) come from the stream and are relative to the first frame (frame 0 is at 0.0, as
  decord reports them): decord's ``get_frame_timestamp`` and, for PyAV, the sorted packet pts (decord's own
  convention, which is also right for AVI with packed B-frames, where libav labels frames with the wrong pts).
  Only when a stream has no timestamps (raw streams; AVI under decord) is ``index / fps`` used.
* Frames come out RGB uint8 HxWx3 in display orientation: decord 0.6 applies the display matrix itself (measured),
  PyAV frames are rotated here. ``size=(w, h)`` is in display orientation.
* Broken files: a decode error in the middle of a file ends ``iter_frames`` early with a logged warning; the
  caller keeps the frames it got. ``DecodeError('decode_failed')`` is raised only if no frame was yielded.

Every failure is a :class:`DecodeError` with a stable snake_case ``reason``: ``missing``, ``not_a_file``,
``empty_file``, ``unreadable``, ``not_a_video``, ``no_video_stream``, ``unsupported_codec``, ``too_many_pixels``,
``too_long``, ``no_frames``, ``decode_failed``, plus the reasons a decoder was passed over (seen only when no allowed
decoder is left): ``unsupported_container``, ``open_gop``, ``decoder_mismatch``, ``decoder_unavailable``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from curation._pyav import StreamMeta

log = logging.getLogger(__name__)

DECODERS = ("decord", "pyav")
# When every allowed decoder fails, report the reason that says most about the file (highest rank).
_REASON_RANK = {
    "no_frames": 6,
    "decode_failed": 5,
    "decoder_mismatch": 4,
    "inexact_seek": 4,
    "open_gop": 3,
    "unsupported_codec": 3,
    "unsupported_container": 2,
    "decoder_unavailable": 1,
}


class DecodeError(Exception):
    """Raised with a stable snake_case ``reason`` (e.g. 'empty_file', 'no_video_stream', 'unreadable',
    'too_many_pixels', 'too_long', 'no_frames', 'decode_failed') and a human ``detail``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        # Workers (Ray, multiprocessing) pickle exceptions; keep reason and detail apart across the trip.
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class VideoInfo:
    decoder: str  # "decord" or "pyav"
    n_frames: int  # frames the decoder will actually yield
    fps: float  # average frame rate
    width: int  # display width (after applying rotation)
    height: int  # display height (after applying rotation)
    rotation: int  # clockwise degrees (0/90/180/270) applied to coded frames to get display orientation
    duration_s: float
    codec: str
    container: str
    vfr: bool  # variable frame rate detected (timestamps not evenly spaced)


def probe_video(
    path: str,
    *,
    max_pixels: int = 4096 * 2160,
    max_duration_s: float = 4 * 3600,
    decoders: Sequence[str] = DECODERS,
) -> VideoInfo:
    """Pick the first decoder in ``decoders`` that can serve ``path``; raise DecodeError if none can."""
    unknown = set(decoders) - set(DECODERS)
    if unknown or not decoders:
        raise ValueError(f"decoders must be a non-empty subset of {DECODERS}, got {decoders!r}")
    _check_file(path)
    try:
        return _probe(path, max_pixels, max_duration_s, decoders)
    except DecodeError:
        raise
    except Exception as exc:  # a decoder bug must surface as a per-file failure, never kill the worker
        log.exception("%s: unexpected error while probing", path)
        raise DecodeError("unreadable", f"{type(exc).__name__}: {exc}") from exc


def _probe(path: str, max_pixels: int, max_duration_s: float, decoders: Sequence[str]) -> VideoInfo:
    from curation import _pyav

    meta = _pyav.inspect(path, max_pixels, max_duration_s)
    failures: list[DecodeError] = []
    for name in decoders:
        try:
            info = _probe_with(name, path, meta)
        except DecodeError as exc:
            log.info("%s: %s not used: %s", path, name, exc)
            failures.append(exc)
            continue
        if info.duration_s > max_duration_s:  # headers may not have had a duration; this one is measured
            raise DecodeError("too_long", f"{info.duration_s:.0f} s > {max_duration_s:.0f} s")
        return info
    raise max(failures, key=lambda exc: _REASON_RANK.get(exc.reason, 0))


def _probe_with(name: str, path: str, meta: StreamMeta) -> VideoInfo:
    if name == "pyav":
        from curation import _pyav

        return _pyav.probe(path, meta)
    try:
        import decord  # noqa: F401  (decord has no wheels for some platforms; PyAV still works there)
    except ImportError as exc:
        raise DecodeError("decoder_unavailable", f"decord: {exc}") from exc
    from curation import _decord

    return _decord.probe(path, meta)


def _check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DecodeError("missing", f"{path} does not exist") from exc
    except OSError as exc:
        raise DecodeError("unreadable", f"{path}: {exc}") from exc
    if not os.path.isfile(path):
        raise DecodeError("not_a_file", f"{path} is not a regular file")
    if st.st_size == 0:
        raise DecodeError("empty_file", f"{path} is 0 bytes")


def iter_frames(
    path: str,
    info: VideoInfo,
    *,
    size: tuple[int, int] | None = None,
    indices: Sequence[int] | None = None,
    chunk: int = 32,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(frame_index, pts_seconds, rgb HxWx3 uint8)`` in increasing index order, display orientation.

    ``indices`` restricts the output to those frames (sorted, deduplicated; out-of-range is a ValueError).
    ``size=(w, h)`` is the output size in display orientation. A decode error mid-file stops the iteration with a
    logged warning (the frames already yielded stand); DecodeError('decode_failed') only if nothing was yielded.
    """
    wanted = _normalize_indices(indices, info.n_frames)
    out_size = _normalize_size(size, info)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if wanted is not None and not wanted:
        return
    _check_file(path)
    if info.decoder == "decord":
        from curation import _decord

        frames = _decord.iter_frames(path, info, out_size, wanted, chunk)
    elif info.decoder == "pyav":
        from curation import _pyav

        frames = _pyav.iter_frames(path, info, out_size, wanted)
    else:
        raise ValueError(f"unknown decoder {info.decoder!r}")
    yield from _guarded(frames, path)


def _guarded(frames: Iterator[tuple[int, float, np.ndarray]], path: str) -> Iterator[tuple[int, float, np.ndarray]]:
    """Turn any stray decoder exception into DecodeError (or a clean stop, if frames were already yielded)."""
    produced = 0
    try:
        for item in frames:
            produced += 1
            yield item
    except DecodeError:
        raise
    except Exception as exc:
        if produced == 0:
            raise DecodeError("decode_failed", f"{path}: {type(exc).__name__}: {exc}") from exc
        log.warning("%s: decoding stopped after %d frames: %s: %s", path, produced, type(exc).__name__, exc)


def _normalize_indices(indices: Sequence[int] | None, n_frames: int) -> list[int] | None:
    if indices is None:
        return None
    wanted = sorted({int(i) for i in indices})
    if wanted and (wanted[0] < 0 or wanted[-1] >= n_frames):
        raise ValueError(f"indices must be in [0, {n_frames}), got {wanted[0]}..{wanted[-1]}")
    return wanted


def _normalize_size(size: tuple[int, int] | None, info: VideoInfo) -> tuple[int, int]:
    if size is None:
        return (info.width, info.height)
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (w, h), got {size!r}")
    return (width, height)


def rotate_frame(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a coded-orientation frame clockwise by ``rotation`` degrees (a contiguous copy when rotated)."""
    if rotation % 360 == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=(-rotation // 90) % 4))  # np.rot90 turns counter-clockwise


def detect_vfr(seconds: np.ndarray, tick: float) -> bool:
    """True if sorted frame timestamps are not evenly spaced.

    A gap counts as uneven when it differs from the median by more than 10 % and by more than 1.5 time-base ticks:
    a 29.97 fps stream stored in a 1/1000 or 1/600 time base alternates 33/34 ms (20/21 ticks) and is not VFR.
    """
    if len(seconds) < 3:
        return False
    gaps = np.diff(seconds)
    median = float(np.median(gaps))
    if median <= 0:
        return False
    tolerance = max(0.1 * median, 1.5 * tick)
    return bool(np.any(np.abs(gaps - median) > tolerance))


def stop_on_error(path: str, index: int, produced: int, exc: Exception) -> None:
    """End a frame iteration at a decode error: fatal only if no frame was produced (both decoders)."""
    if produced == 0:
        raise DecodeError(
            "decode_failed", f"{path}: no frame decoded before error at frame {index}: {str(exc)[:200]}"
        ) from exc
    log.warning("%s: decoding stopped at frame %d (%d frames yielded): %s", path, index, produced, str(exc)[:200])
