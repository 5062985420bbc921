"""Clip frames stored as a short encoded video stream in the shard row (`frames.store = video`).

A window's frames (T, H, W, 3) uint8 become one in-memory Matroska stream: H.264 (libx264) by default, AV1
(libsvtav1) as an option, at a constant-quality CRF. The tensor keeps the shard's three-column convention: the
bytes in `frames`, the shape in `frames_shape`, and `frames_dtype` = `"video:<codec>"` in place of a numpy dtype,
so every reader that goes through `curation.shards.decode_tensor` gets the decoded uint8 frames back.

Full-chroma `yuv444p` is the default pixel format: 4:2:0 subsampling costs colour edges several dB of PSNR, and the
frames are training targets, not something to watch. Every frame is coded at the same quality (no B-frame
reordering surprises: the decoder returns exactly T frames in order).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

ENCODERS = {"h264": "libx264", "av1": "libsvtav1"}
PIX_FMTS = ("yuv444p", "yuv420p")
VIDEO_DTYPE_PREFIX = "video:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoCodec:
    """How stored frames are encoded."""

    codec: str = "h264"  # h264 | av1
    crf: int = 11  # constant quality: lower is better (h264 0-51, av1 0-63)
    preset: str = "faster"  # libx264 preset name, or libsvtav1's 0-13 as a string
    pix_fmt: str = "yuv444p"  # yuv444p | yuv420p (halves the chroma, needs even sides)

    def __post_init__(self) -> None:
        if self.codec not in ENCODERS:
            raise ValueError(f"frames.codec must be one of {', '.join(ENCODERS)}, got {self.codec!r}")
        if self.pix_fmt not in PIX_FMTS:
            raise ValueError(f"frames.pix_fmt must be one of {', '.join(PIX_FMTS)}, got {self.pix_fmt!r}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"frames.crf must be in 0..63, got {self.crf}")
        if self.codec == "av1" and self.pix_fmt != "yuv420p":
            raise ValueError("AV1 storage (libsvtav1) codes yuv420p only: set frames.pix_fmt=yuv420p")

    @property
    def dtype(self) -> str:
        """The `<tensor>_dtype` value that marks a column as encoded by this codec."""
        return f"{VIDEO_DTYPE_PREFIX}{self.codec}"


def is_video_dtype(dtype: str) -> bool:
    return dtype.startswith(VIDEO_DTYPE_PREFIX)


def encode_video(frames: np.ndarray, codec: VideoCodec, fps: float = 8.0) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames into one Matroska stream."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"encode_video needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if codec.pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"{w}x{h} frames cannot be coded as yuv420p (odd side): use frames.pix_fmt=yuv444p")
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream(ENCODERS[codec.codec], rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, codec.pix_fmt
        options = {"crf": str(codec.crf), "preset": codec.preset}
        if codec.codec == "h264":
            options["bf"] = "0"  # no frame reordering: decode order = presentation order
        stream.codec_context.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def decode_video(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a stream written by `encode_video` into (T, H, W, 3) uint8; ValueError when it does not hold frames
    of `shape` (a truncated or foreign stream)."""
    import av

    t, h, w, _ = shape
    out = np.empty(shape, dtype=np.uint8)
    n = 0
    try:
        with av.open(io.BytesIO(data), "r", format="matroska") as container:
            for frame in container.decode(video=0):
                if n >= t or (frame.height, frame.width) != (h, w):
                    raise ValueError(f"stream frame {n} is {frame.width}x{frame.height}, expected {t} of {w}x{h}")
                out[n] = frame.to_ndarray(format="rgb24")
                n += 1
    except av.FFmpegError as e:
        raise ValueError(f"undecodable frames stream: {e}") from e
    if n != t:
        raise ValueError(f"frames stream holds {n} frames, expected {t}")
    return out


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images (inf when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
