"""decord side of :mod:`curation.decode`: the primary (fast, random-access) decoder, used only where it was measured
to be correct. Only :mod:`curation.decode` should import this module; ``decord`` is imported inside functions.

Facts measured with decord 0.6.0 on the shared test media (see /tmp/decode_survey.md for the table):

* decord applies the container rotation itself (90/180/270 via the display matrix), and ``width=/height=`` are in
  that rotated (display) orientation; so frames from decord are never rotated again here.
* Random access on containers without a frame index (raw MPEG-1/H.264/HEVC elementary streams, MPEG-PS) returns
  the wrong frames and can hang (m1v: ``get_batch([419])`` never returns); MPEG-PS silently drops the first GOP and
  pads the end with copies. Hence the container allowlist below.
* Tiny frames (1x1, 2x2) and some output widths (e.g. 48, 72 px) come back with a garbage shape or raise
  ``DECORDArrayCopyFromTo``; every batch's shape is therefore checked.
* ``get_frame_timestamp`` returns garbage (about -3.7e17) for AVI/MXF, where packets carry no pts.
* On open-GOP streams (MPEG-2 in MXF, an HEVC mp4) frames reached by a seek differ from sequentially decoded
  ones (mean abs diff 2-4); closed-GOP H.264/HEVC/VP8/VP9/MPEG-4/Theora files were bit-exact at random indices.
* ``num_threads=0`` (auto) fails on some VP9 WebM files that decode fine with 1 or 2 threads.
* A seek to a keyframe other than the first can land on wrong pictures although frame 0 and a sequential decode are
  right: cockatoo.mp4 (H.264 High 4:4:4 Predictive, keyframes 0, 76, 145) gave frames 80-150 off by a mean 69-80
  levels. So the probe also compares one frame just past the second keyframe with PyAV's sequential decode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation._pyav import StreamMeta, frame_at, has_open_gop, seek_check_index
from curation.decode import DecodeError, VideoInfo, detect_vfr, stop_on_error

log = logging.getLogger(__name__)

DECORD_THREADS = 1
# Containers with a per-frame index where decord's seeks were verified frame-exact against PyAV's sequential decode
# (every closed-GOP test file of these kinds). MXF is left out: its only sample is open-GOP, so never verified.
SAFE_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "ogg"})
# Codecs decord 0.6's bundled FFmpeg cannot decode: skip the (whole-file indexing) open attempt.
UNSUPPORTED_CODECS = frozenset({"av1", "vvc", "gif"})
# Mean absolute difference (0..255) allowed between decord's and PyAV's first frame: 10-bit sources differ by ~3.6
# (another 10->8 bit conversion), 8-bit ones by 0; a wrong frame or a wrong rotation differed by 50+ when measured.
MAX_FIRST_FRAME_DIFF = 12.0


def _reader(path: str, size: tuple[int, int] | None = None) -> Any:
    import decord

    if size is None:
        return decord.VideoReader(path, num_threads=DECORD_THREADS)
    return decord.VideoReader(path, num_threads=DECORD_THREADS, width=size[0], height=size[1])


def _batch(reader: Any, indices: Sequence[int], width: int, height: int) -> np.ndarray:
    frames = reader.get_batch(list(indices)).asnumpy()
    if frames.shape != (len(indices), height, width, 3):
        raise DecodeError("decode_failed", f"decord returned shape {frames.shape}, expected {height}x{width}x3")
    return frames


def _timestamps(reader: Any, n_frames: int) -> np.ndarray | None:
    """Frame start times in seconds, or None when decord's values are not real timestamps."""
    try:
        ts = np.asarray(reader.get_frame_timestamp(list(range(n_frames))), dtype=np.float64)[:, 0]
    except Exception:  # decord raises on some index layouts; timestamps are then unknown
        return None
    if not np.all(np.isfinite(ts)) or ts.min() < -1e-3 or ts.max() > 1e7 or np.any(np.diff(ts) < 0):
        return None
    return ts - ts[0]  # relative to the first frame, as PyAV's (a no-op on every test file)


def probe(path: str, meta: StreamMeta) -> VideoInfo:
    """Accept decord only for an indexed container, a codec it has and a closed-GOP stream, and only if it opens
    and its frame 0 matches PyAV's (same frame, same orientation, right shape)."""
    if meta.container not in SAFE_CONTAINERS:
        raise DecodeError("unsupported_container", f"decord seeks are not frame-exact in {meta.container!r}")
    if meta.codec in UNSUPPORTED_CODECS:
        raise DecodeError("unsupported_codec", f"decord 0.6 has no {meta.codec} decoder")
    try:
        open_gop = has_open_gop(path, meta.stream_index)
    except Exception as exc:  # demux trouble: let PyAV (which tolerates a broken tail) serve the file
        raise DecodeError("unreadable", f"open-GOP scan: {type(exc).__name__}: {exc}") from exc
    if open_gop:
        raise DecodeError("open_gop", "decord's seeks would return inexact frames (leading pictures)")
    try:
        reader = _reader(path)
        n_frames = len(reader)
        if n_frames == 0:
            raise DecodeError("no_frames", "decord reports 0 frames")
        first = _batch(reader, [0], meta.width, meta.height)[0]
        ts = _timestamps(reader, n_frames)
    except DecodeError:
        raise
    except Exception as exc:  # DECORDError / RuntimeError: decord cannot read this file
        raise DecodeError("decode_failed", f"decord: {type(exc).__name__}: {str(exc)[:200]}") from exc
    diff = _mean_diff(first, meta.first_rgb)
    if diff > MAX_FIRST_FRAME_DIFF:
        raise DecodeError("decoder_mismatch", f"decord frame 0 differs from PyAV's (mean abs diff {diff:.1f})")
    _check_seek(path, meta, n_frames)
    return _info(meta, n_frames, ts)


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _check_seek(path: str, meta: StreamMeta, n_frames: int) -> None:
    """DecodeError unless a fresh reader's seek past the second keyframe gives PyAV's frame (see the module notes).
    Costs one sequential PyAV decode of at most ~300 frames per video, once, at probe time."""
    try:
        index = seek_check_index(path, meta.stream_index)
        if index is None or index >= n_frames:
            return
        got = _batch(_reader(path), [index], meta.width, meta.height)[0]
        want = frame_at(path, meta, index)
    except DecodeError:
        raise
    except Exception as exc:  # decord or PyAV cannot do it: PyAV (the fallback) decides how far the file reads
        raise DecodeError("decode_failed", f"seek check: {type(exc).__name__}: {str(exc)[:200]}") from exc
    diff = _mean_diff(got, want)
    if diff > MAX_FIRST_FRAME_DIFF:
        raise DecodeError(
            "inexact_seek", f"decord's frame {index} (after a seek) differs from PyAV's (mean abs diff {diff:.1f})"
        )


def _info(meta: StreamMeta, n_frames: int, ts: np.ndarray | None) -> VideoInfo:
    fps = meta.fps
    measured = 0.0
    if ts is not None and n_frames > 1:
        step = float(np.median(np.diff(ts)))
        measured = float(ts[-1] - ts[0]) + step
        fps = fps or (n_frames / measured if measured > 0 else 0.0)
    duration = meta.duration_s or measured or (n_frames / fps if fps else 0.0)
    vfr = detect_vfr(ts if ts is not None else np.empty(0), meta.time_base)
    return meta.video_info("decord", n_frames, fps, duration, vfr)


def iter_frames(
    path: str, info: VideoInfo, size: tuple[int, int], wanted: Sequence[int] | None, chunk: int
) -> Iterator[tuple[int, float, np.ndarray]]:
    """get_batch over chunks of wanted indices; decord resizes at decode time and has already rotated."""
    try:
        source = _open_source(path, info, size)
        n_frames = len(source.reader)
        ts = _timestamps(source.reader, n_frames)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError("decode_failed", f"decord: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if n_frames != info.n_frames:
        log.warning("%s: decord now reports %d frames, probe said %d", path, n_frames, info.n_frames)
    indices = [i for i in (wanted if wanted is not None else range(info.n_frames)) if i < n_frames]
    fps = info.fps if info.fps > 0 else 1.0
    produced = 0
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        frames, error = source.read(part)
        for i, frame in zip(part, frames, strict=False):  # frames may stop short
            produced += 1
            yield i, (float(ts[i]) if ts is not None else i / fps), frame
        if error is not None:
            stop_on_error(path, part[len(frames)], produced, error)
            return


@dataclass
class _Source:
    """A VideoReader plus how to get frames of the requested size out of it."""

    path: str
    size: tuple[int, int]  # requested output (w, h), display orientation
    decode_size: tuple[int, int]  # what the reader produces; differs only when cv2 has to resize
    native: bool  # decode_size is the video's own size: open the reader without width/height
    reader: Any = None

    def __post_init__(self) -> None:
        if self.reader is None:
            self.reader = self._fresh_reader()

    def _fresh_reader(self) -> Any:
        return _reader(self.path, None if self.native else self.decode_size)

    def read(self, part: list[int]) -> tuple[list[np.ndarray], Exception | None]:
        """Frames of one chunk; on a decode error, salvage the frames before the bad one."""
        try:
            return self._convert(_batch(self.reader, part, *self.decode_size)), None
        except Exception as exc:  # DECORDError mid-file (truncated / corrupt data)
            log.debug("%s: batch %d..%d failed (%s); retrying frame by frame", self.path, part[0], part[-1], exc)
        return self._salvage(part)

    def _salvage(self, part: list[int]) -> tuple[list[np.ndarray], Exception | None]:
        # A reader that hit an error stays broken; measured on corrupted.mp4: a fresh reader recovers all 28 good
        # frames (PyAV's count) every time, the failed one only 24-27. Each frame gets one more fresh try, because
        # decord's threaded decoder fails intermittently on damaged input (no_timescale.mp4: 8 frames, or 0).
        frames: list[np.ndarray] = []
        for i in part:
            for attempt in range(2):
                try:
                    if attempt or not frames:
                        self.reader = self._fresh_reader()
                    frames.extend(self._convert(_batch(self.reader, [i], *self.decode_size)))
                    break
                except Exception as exc:
                    if attempt:
                        return frames, exc
        return frames, None

    def _convert(self, frames: np.ndarray) -> list[np.ndarray]:
        if self.decode_size == self.size:
            return list(frames)
        import cv2

        return [cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA) for frame in frames]


def _open_source(path: str, info: VideoInfo, size: tuple[int, int]) -> _Source:
    """Reader that scales at decode time; if decord botches this output size, native size + cv2 resize instead."""
    native = (info.width, info.height)
    if size == native:
        return _Source(path, size, native, native=True)
    source = _Source(path, size, size, native=False)
    try:
        _batch(source.reader, [0], *size)
        return source
    except Exception as exc:  # measured: some widths give DECORDArrayCopyFromTo or a garbage shape
        log.info("%s: decord cannot scale to %s (%s); resizing with cv2", path, size, str(exc)[:80])
        return _Source(path, size, native, native=True)
