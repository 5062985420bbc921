"""Clip frames stored as a short encoded video stream in the shard row (`frames.store = video`).

A window's frames (T, H, W, 3) uint8 become one bare elementary stream: H.264 (libx264) by default, AV1
(libsvtav1) as an option, at a constant-quality CRF. The tensor keeps the shard's three-column convention: the
bytes in `frames`, the shape in `frames_shape`, and `frames_dtype` = `"video:<codec>-<format>"` in place of a numpy
dtype, so every reader that goes through `curation.shards.decode_tensor` gets the decoded uint8 frames back.

Stored formats (`decode_video` tells them apart by their first bytes, so a caller needs only the blob and shape):
- `video:h264-annexb` / `video:av1-obu` (written now): an 8-byte header (magic, codec, CRC-32 of the payload), then
  the encoder's packets as they came out (H.264 Annex-B with in-band SPS/PPS; AV1 low-overhead OBUs). Decoding
  opens no container: a container open (probing, stream info) cost ~1/4 of a clip's decode. The checksum makes a
  truncated or damaged blob an error instead of silently concealed frames.
- `video:h264` / `video:av1` (older rows): one in-memory Matroska stream; still decoded.

Full-chroma `yuv444p` is the default pixel format: 4:2:0 subsampling costs colour edges several dB of PSNR, and the
frames are training targets, not something to watch. `rgb24` (H.264 only, libx264rgb) codes the G, B, R planes
themselves: no colour matrix, so no conversion loss and no YUV->RGB conversion on decode (~1/3 of a yuv444p clip's
decode time), at ~2x the bytes of yuv444p for the same CRF (a CRF 7 higher gives about the same bytes and PSNR). H.264
is coded for fast decoding by default (`fast_decode`, x264's tune=fastdecode): CAVLC instead of CABAC (entropy decoding
dominates at these bitrates; CAVLC halves it) and no deblocking filter (another ~15%), for ~12% more bytes and ~0.3 dB.
Every frame is coded at the same quality with no B-frames (the decoder returns exactly T frames in order).
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

ENCODERS = {"h264": "libx264", "av1": "libsvtav1"}
DECODERS = {"h264": "h264", "av1": "libdav1d"}
PIX_FMTS = ("yuv444p", "yuv420p", "rgb24")
VIDEO_DTYPE_PREFIX = "video:"
# The stored format of each codec now; rows written before it say "video:h264" / "video:av1" (Matroska).
BITSTREAM_DTYPES = {"h264": "video:h264-annexb", "av1": "video:av1-obu"}

# Bitstream blob header: magic, codec tag, format version, CRC-32 (little-endian) of the payload that follows.
MAGIC = b"VS"
CODEC_TAGS = {"h264": b"h", "av1": b"a"}
VERSION = b"\x01"
HEADER = struct.Struct("<2s1s1sI")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # every Matroska file starts with its EBML header


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoCodec:
    """How stored frames are encoded."""

    codec: str = "h264"  # h264 | av1
    crf: int = 11  # constant quality: lower is better (h264 0-51, av1 0-63)
    preset: str = "faster"  # libx264 preset name, or libsvtav1's 0-13 as a string
    pix_fmt: str = "yuv444p"  # yuv444p | yuv420p (halves the chroma, needs even sides) | rgb24 (h264: RGB planes)
    fast_decode: bool = True  # h264: x264's tune=fastdecode (CAVLC, no deblocking filter, no weighted prediction)

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
        """The `<tensor>_dtype` value that marks a column as encoded by this codec (in the current format)."""
        return BITSTREAM_DTYPES[self.codec]

    @property
    def encoder(self) -> str:
        if self.codec == "h264" and self.pix_fmt == "rgb24":
            return "libx264rgb"
        return ENCODERS[self.codec]

    def options(self) -> dict[str, str]:
        """The encoder's private options."""
        options = {"crf": str(self.crf), "preset": self.preset}
        if self.codec == "h264":
            options["bf"] = "0"  # no frame reordering: decode order = presentation order
            if self.fast_decode:
                options["tune"] = "fastdecode"
        return options


def is_video_dtype(dtype: str) -> bool:
    """True for every stored video format, current (`video:h264-annexb`, ...) and older (`video:h264`, ...)."""
    return dtype.startswith(VIDEO_DTYPE_PREFIX)


def encode_video(frames: np.ndarray, codec: VideoCodec, fps: float = 8.0) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames into one header-framed bitstream (`codec.dtype`); the same frames and
    settings give the same bytes."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"encode_video needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if codec.pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"{w}x{h} frames cannot be coded as yuv420p (odd side): use frames.pix_fmt=yuv444p")
    rate = max(1, round(fps))
    ctx = av.CodecContext.create(codec.encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, codec.pix_fmt
    ctx.time_base, ctx.framerate = Fraction(1, rate), Fraction(rate, 1)
    ctx.options = codec.options()
    # One thread: x264's output depends on its thread count (the bytes would differ between machines), and the
    # clips step already runs one encode per CPU slot.
    ctx.thread_count = 1
    # No container, so no global-header flag: parameter sets (SPS/PPS, the AV1 sequence header) stay in-band.
    payload = io.BytesIO()
    for i, frame in enumerate(frames):
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        if codec.pix_fmt != "rgb24":
            image = image.reformat(format=codec.pix_fmt)
        image.pts = i
        for packet in ctx.encode(image):
            payload.write(bytes(packet))
    for packet in ctx.encode(None):
        payload.write(bytes(packet))
    body = payload.getvalue()
    return HEADER.pack(MAGIC, CODEC_TAGS[codec.codec], VERSION, zlib.crc32(body)) + body


def decode_video(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a stream written by `encode_video` (either stored format) into (T, H, W, 3) uint8; ValueError when it
    does not hold exactly T frames of H x W (a truncated, damaged or foreign stream)."""
    import av

    t, h, w, _ = shape
    out = np.empty(shape, dtype=np.uint8)
    try:
        if data[:2] == MAGIC:
            n = _decode_bitstream(data, out)
        elif data[:4] == EBML_MAGIC:
            n = _decode_matroska(data, out)
        else:
            raise ValueError(f"not a stored frames stream (starts {bytes(data[:8]).hex()})")
    except av.FFmpegError as e:
        raise ValueError(f"undecodable frames stream: {e}") from e
    if n != t:
        raise ValueError(f"frames stream holds {n} frames, expected {t}")
    return out


def _decode_bitstream(data: bytes, out: np.ndarray) -> int:
    """Decode a header-framed bitstream into `out`; the number of frames it held."""
    import av

    if len(data) < HEADER.size:
        raise ValueError(f"frames stream of {len(data)} bytes is shorter than its header")
    _, tag, version, crc = HEADER.unpack_from(data)
    codec = next((c for c, v in CODEC_TAGS.items() if v == tag), None)
    if codec is None or version != VERSION:
        raise ValueError(f"unknown frames stream format (codec tag {tag!r}, version {version!r})")
    body = memoryview(data)[HEADER.size :]
    if zlib.crc32(body) != crc:
        raise ValueError("frames stream is truncated or damaged (checksum mismatch)")
    ctx = av.CodecContext.create(DECODERS[codec], "r")
    # One thread: the loader already decodes several clips at once in its own threads, one per core; codec threads
    # on top only add hand-offs (H.264 from x264 has one slice per frame, so slice threads would idle anyway).
    ctx.thread_count = 1
    n = 0
    for packet in [*ctx.parse(bytes(body)), *ctx.parse(None), None]:
        for frame in ctx.decode(packet):
            n = _store(frame, out, n)
    return n


def _decode_matroska(data: bytes, out: np.ndarray) -> int:
    """Decode an older Matroska-framed row into `out`; the number of frames it held."""
    import av

    n = 0
    with av.open(io.BytesIO(data), "r", format="matroska") as container:
        if not container.streams.video:
            raise ValueError("Matroska frames stream has no video track")
        container.streams.video[0].codec_context.thread_count = 1  # as for the bitstream (the loader's threads)
        for frame in container.decode(video=0):
            n = _store(frame, out, n)
    return n


def _store(frame: av.VideoFrame, out: np.ndarray, n: int) -> int:
    """Write decoded `frame` as RGB into `out[n]`; n + 1."""
    t, h, w, _ = out.shape
    if n >= t or (frame.height, frame.width) != (h, w):
        raise ValueError(f"stream frame {n} is {frame.width}x{frame.height}, expected {t} of {w}x{h}")
    if frame.format.name == "yuv444p":
        # Planar RGB first: swscale has SIMD YUV -> packed RGB for 4:2:0 but not for 4:4:4, and a fast planar ->
        # packed RGB step; the two together take ~0.8x the time of the direct conversion (bit-identical pixels).
        frame = frame.reformat(format="gbrp", threads=1)
    # threads=1: swscale's default spawns one thread per core, and the loader already decodes a clip per core.
    out[n] = frame.to_ndarray(format="rgb24", threads=1)
    return n + 1


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images (inf when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
