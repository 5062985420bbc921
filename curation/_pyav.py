"""PyAV side of :mod:`curation.decode`: container inspection (the safe gatekeeper) and the fallback decoder.

Only :mod:`curation.decode` should import this module. ``av`` is imported inside functions so that importing the
package stays cheap.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.decode import DecodeError, VideoInfo, detect_vfr, rotate_frame, stop_on_error

log = logging.getLogger(__name__)

# Multi-threaded decoding inside one worker; the pipeline already runs several workers per machine, so keep it small.
PYAV_THREADS = 2
# Text-mode "video" that libavformat happily opens (a .txt file is demuxed by the `tty` demuxer and decoded as ANSI
# art). Such files must not become clips.
_TEXT_FORMATS = frozenset({"tty"})
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
# Give up looking for the first frame after this many packets: a video whose first picture needs more is broken.
_MAX_PACKETS_FIRST_FRAME = 1000


@dataclass(frozen=True)
class StreamMeta:
    """What PyAV learned about the file before any decoder is chosen (shared by both decoder probes)."""

    stream_index: int
    width: int  # display orientation
    height: int
    rotation: int
    fps: float
    duration_s: float  # 0.0 when the container does not say
    codec: str
    container: str
    time_base: float
    first_rgb: np.ndarray  # first frame in presentation order, display orientation, for cross-checking decord

    def video_info(self, decoder: str, n_frames: int, fps: float, duration_s: float, vfr: bool) -> VideoInfo:
        """The probe result for `decoder`, with what that decoder measured."""
        return VideoInfo(
            decoder=decoder,
            n_frames=n_frames,
            fps=fps,
            width=self.width,
            height=self.height,
            rotation=self.rotation,
            duration_s=duration_s,
            codec=self.codec,
            container=self.container,
            vfr=vfr,
        )


def _open(path: str) -> Any:
    import av

    # metadata_errors="replace": PyAV's default ("strict") turns one mis-encoded metadata tag into an exception.
    return av.open(path, metadata_errors="replace")


def _select_stream(container: Any) -> Any:
    """The same stream decord reads (both use av_find_best_stream), skipping cover art / thumbnails."""
    from av.stream import Disposition

    still = Disposition.attached_pic | Disposition.timed_thumbnails
    candidates = [s for s in container.streams.video if not (s.disposition & still)]
    if not candidates:
        kinds = sorted({s.type for s in container.streams})
        raise DecodeError("no_video_stream", f"streams: {kinds or 'none'}")
    best = container.streams.best("video")
    return best if best in candidates else candidates[0]


def _codec_name(stream: Any) -> str:
    ctx = stream.codec_context
    if ctx is None or ctx.codec is None:
        raise DecodeError("unsupported_codec", f"no decoder for video stream {stream.index}")
    return str(ctx.codec.canonical_name)


def _rate(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:  # 1000+ fps is a timebase leaking through, not a frame rate
            return float(rate)
    return 0.0


def _meta_duration(container: Any, stream: Any) -> float:
    if stream.duration and stream.time_base:
        return max(0.0, float(stream.duration * stream.time_base))
    if container.duration:
        return max(0.0, container.duration / 1_000_000)
    return 0.0


def _clean_rotation(raw: Any) -> int:
    """PyAV reports the display matrix angle counter-clockwise; we store the clockwise angle to apply."""
    if raw is None:
        return 0
    angle = int(raw)
    if abs(angle) > 360 or angle % 90:  # garbage matrices exist (no_timescale.mp4 reports INT_MIN)
        log.warning("ignoring implausible rotation %r", raw)
        return 0
    return (-angle) % 360


def _first_frame(container: Any, stream: Any) -> Any:
    """Decode the first frame in presentation order; DecodeError if the stream yields none."""
    stream.thread_type = "AUTO"
    stream.thread_count = PYAV_THREADS
    try:
        for n, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return frame
            if n > _MAX_PACKETS_FIRST_FRAME:
                break
    except Exception as exc:  # any libav error on the first frame means the stream is not usable
        raise DecodeError("decode_failed", f"first frame: {type(exc).__name__}: {exc}") from exc
    raise DecodeError("no_frames", "video stream produced no frame")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DecodeError("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")


def _check_not_text(container: Any, codec: str) -> None:
    if container.format.name in _TEXT_FORMATS or codec in _TEXT_CODECS:
        raise DecodeError("not_a_video", f"text rendered as video ({container.format.name}/{codec})")


def inspect(path: str, max_pixels: int, max_duration_s: float) -> StreamMeta:
    """Open with PyAV, apply the cheap guards from headers, then decode exactly one frame."""
    try:
        container = _open(path)
    except Exception as exc:
        raise DecodeError(_open_failure_reason(path), f"{type(exc).__name__}: {exc}") from exc
    try:
        stream = _select_stream(container)
        codec = _codec_name(stream)
        _check_not_text(container, codec)
        _check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        duration = _meta_duration(container, stream)
        if duration > max_duration_s:
            raise DecodeError("too_long", f"{duration:.0f} s > {max_duration_s:.0f} s")
        frame = _first_frame(container, stream)
        _check_pixels(frame.width, frame.height, max_pixels)  # headers may have said 0x0
        rotation = _clean_rotation(frame.rotation)
        rgb = rotate_frame(frame.to_ndarray(format="rgb24"), rotation)
        return StreamMeta(
            stream_index=stream.index,
            width=rgb.shape[1],
            height=rgb.shape[0],
            rotation=rotation,
            fps=_rate(stream),
            duration_s=duration,
            codec=codec,
            container=container.format.name,
            time_base=float(stream.time_base or 0),
            first_rgb=rgb,
        )
    except DecodeError:
        raise
    except Exception as exc:  # e.g. IndexError / AttributeError from half-parsed headers
        raise DecodeError("unreadable", f"{type(exc).__name__}: {exc}") from exc
    finally:
        container.close()


def _open_failure_reason(path: str) -> str:
    """Tell 'this is not a video at all' (HTML, text) from 'a damaged video' when libavformat rejects a file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return "unreadable"
    if b"\0" in head:
        return "unreadable"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unreadable"
    printable = sum(ch.isprintable() or ch.isspace() for ch in text)
    return "not_a_video" if printable >= 0.95 * max(1, len(text)) else "unreadable"


def _count_packets(path: str, stream_index: int) -> tuple[int, np.ndarray]:
    """Demux (no decode) the stream: number of frames and their sorted timestamps in seconds (NaN-free)."""
    from av.stream import Discard

    container = _open(path)
    try:
        stream = container.streams[stream_index]
        for other in container.streams:
            if other.index != stream_index:
                other.discard = Discard.all  # skip other tracks' payloads in the demuxer
        count, pts = 0, []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # flush packet / edit-list pre-roll: no output frame
                    continue
                count += 1
                if packet.pts is not None:
                    pts.append(packet.pts)
        except Exception as exc:  # truncated tail: the frames before it still count
            log.warning("%s: demux stopped after %d packets: %s", path, count, exc)
        start = stream.start_time or 0
        seconds = (np.sort(np.asarray(pts, dtype=np.float64)) - start) * float(stream.time_base or 0)
        return count, seconds if len(pts) == count else np.empty(0)
    finally:
        container.close()


def has_open_gop(path: str, stream_index: int, max_packets: int = 600) -> bool:
    """True if pictures follow a keyframe in decode order but precede it in display order (open GOP / RASL).

    After a seek to such a keyframe those leading pictures cannot be decoded exactly; measured: decord's random
    access returned frames off by a mean 2-4 levels on an open-GOP MPEG-2 MXF and an HEVC mp4, while closed-GOP
    streams came back bit-exact. Scans only the first packets: GOP structure is an encoder setting.
    """
    container = _open(path)
    try:
        key_pts = None
        for n, packet in enumerate(container.demux(container.streams[stream_index])):
            if n >= max_packets:
                break
            if packet.pts is None or not packet.size:
                continue
            if packet.is_keyframe:
                key_pts = packet.pts
            elif key_pts is not None and packet.pts < key_pts:
                return True
        return False
    finally:
        container.close()


def seek_check_index(path: str, stream_index: int, max_packets: int = 300, past_key: int = 3) -> int | None:
    """Display index of a frame `past_key` frames after the second keyframe (in display order) among the first
    `max_packets` packets, or None when they hold one keyframe only: the frame a decoder must reach by a seek to a
    keyframe other than the first, which is where a broken seek shows."""
    container = _open(path)
    try:
        packets = []
        for n, packet in enumerate(container.demux(container.streams[stream_index])):
            if n >= max_packets:
                break
            if packet.pts is not None and packet.size:
                packets.append((packet.pts, bool(packet.is_keyframe)))
    finally:
        container.close()
    keys = [i for i, (_, key) in enumerate(sorted(packets)) if key]
    if len(keys) < 2:
        return None
    return min(keys[1] + past_key, len(packets) - 1)


def frame_at(path: str, meta: StreamMeta, index: int) -> np.ndarray:
    """Frame `index` (presentation order) by decoding from the start, in display orientation (uint8 RGB)."""
    container = _open(path)
    try:
        stream = container.streams[meta.stream_index]
        stream.thread_type = "AUTO"
        stream.thread_count = PYAV_THREADS
        for n, frame in enumerate(container.decode(stream)):
            if n == index:
                return rotate_frame(frame.to_ndarray(format="rgb24"), meta.rotation)
    finally:
        container.close()
    raise DecodeError("no_frames", f"PyAV decoded fewer than {index + 1} frames")


def probe(path: str, meta: StreamMeta) -> VideoInfo:
    """PyAV as the serving decoder: n_frames = demuxed video packets (measured equal to decoded frames)."""
    try:
        n_frames, seconds = _count_packets(path, meta.stream_index)
    except Exception as exc:
        raise DecodeError("unreadable", f"packet count: {type(exc).__name__}: {exc}") from exc
    if n_frames == 0:
        raise DecodeError("no_frames", "no video packets")
    span = _span(seconds)
    fps = meta.fps or (n_frames / span if span > 0 else 0.0)
    duration = meta.duration_s or span or (n_frames / fps if fps else 0.0)
    return meta.video_info("pyav", n_frames, fps, duration, detect_vfr(seconds, meta.time_base))


def _span(seconds: np.ndarray) -> float:
    """Duration covered by the frames' timestamps (last - first + one median frame), 0.0 if unknown."""
    if len(seconds) < 2:
        return 0.0
    step = float(np.median(np.diff(seconds)))
    return float(seconds[-1] - seconds[0]) + step if step > 0 else 0.0


class _PtsClock:
    """Presentation timestamps for decoded frames: the k-th output frame gets the k-th smallest packet pts.

    This is decord's convention (it sorts packet pts), so both decoders report the same timestamps. It also fixes
    AVI with packed B-frames, where libav attaches the pts of the wrong packet to output frames. Falls back to the
    frame's own pts, then to index / fps, when packets carry no timestamps (raw elementary streams). Times are
    relative to the first frame, like decord's (whose first timestamp is 0.0 on every test file).
    """

    def __init__(self, stream: Any, fps: float) -> None:
        self._pending: list[int] = []
        self._tb = float(stream.time_base or 0)
        self._fps = fps if fps > 0 else 1.0
        self._origin: float | None = None

    def push(self, packet: Any) -> None:
        if packet.pts is not None and packet.size and not packet.is_discard:
            heapq.heappush(self._pending, packet.pts)

    def pop(self, frame: Any, index: int) -> float:
        if self._pending and self._tb:
            seconds = heapq.heappop(self._pending) * self._tb
        elif frame.pts is not None and self._tb:
            seconds = frame.pts * self._tb
        else:
            seconds = index / self._fps
        if self._origin is None:
            self._origin = seconds
        return seconds - self._origin


def iter_frames(
    path: str, info: VideoInfo, size: tuple[int, int], wanted: Sequence[int] | None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Sequential decode; only wanted frames are converted to RGB (the expensive step). size is display (w, h)."""
    container = _open(path)
    try:
        stream = _select_stream(container)
        stream.thread_type = "AUTO"
        stream.thread_count = PYAV_THREADS
        yield from _decode_loop(container, stream, info, size, wanted)
    finally:
        container.close()


def _decode_loop(
    container: Any, stream: Any, info: VideoInfo, size: tuple[int, int], wanted: Sequence[int] | None
) -> Iterator[tuple[int, float, np.ndarray]]:
    width, height = (size[1], size[0]) if info.rotation in (90, 270) else size  # scale in coded orientation
    want = set(wanted) if wanted is not None else None
    last = max(wanted) if wanted else info.n_frames - 1
    clock, index, produced = _PtsClock(stream, info.fps), 0, 0
    packets = container.demux(stream)
    while index <= last:
        try:
            packet = next(packets, None)
            if packet is None:  # fewer frames than packets: only seen on damaged files
                log.warning("%s: stream ended at frame %d, probe counted %d", container.name, index, info.n_frames)
                return
            clock.push(packet)
            frames = packet.decode()
        except Exception as exc:  # truncated / corrupt data: keep what we have (see decode.iter_frames)
            stop_on_error(container.name, index, produced, exc)
            return
        for frame in frames:
            pts = clock.pop(frame, index)
            if (want is None or index in want) and index <= last:
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                produced += 1
                yield index, pts, rotate_frame(rgb, info.rotation)
            index += 1
