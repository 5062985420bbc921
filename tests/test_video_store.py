"""Frames stored as an encoded stream (`frames.store = video`): the round trip's quality and size, the decode
against FFmpeg's own demuxers, rows of the older Matroska format, bad streams, deterministic encoding, and every
reader (iter_clips, the loader) getting uint8 frames back; `frames.store = none` keeps no frames."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import av
import numpy as np
import pytest

from curation.decode import iter_frames, probe_video
from curation.sampling import FramesConfig, decode_size, fit_to_target
from curation.shards import decode_tensor, encode_tensor, iter_clips, read_manifest
from curation.video_store import HEADER, VideoCodec, decode_video, encode_video, is_video_dtype, psnr
from tests.conftest import run_pipeline


def corpus_frames(corpus_dir: Path, name: str, height: int, width: int, count: int) -> np.ndarray:
    """`count` frames of a sample video, 3 source frames apart, at a bucket size (cover + centre crop)."""
    path = corpus_dir / name
    info = probe_video(str(path))
    fc = FramesConfig(height=height, width=width)
    size = decode_size(info.width, info.height, fc)
    frames = iter_frames(str(path), info, size=size, indices=list(range(0, 3 * count, 3)))
    return np.stack([fit_to_target(rgb, fc) for _, _, rgb in frames])


def legacy_matroska(frames: np.ndarray, codec: VideoCodec) -> bytes:
    """A row's frames as the previous `encode_video` wrote them (dtype "video:h264" / "video:av1"): one Matroska
    stream, CABAC, the container's own frame conversion: the writer of the old rows this file decodes."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream({"h264": "libx264", "av1": "libsvtav1"}[codec.codec], rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], codec.pix_fmt
        options = {"crf": str(codec.crf), "preset": codec.preset}
        if codec.codec == "h264":
            options["bf"] = "0"
        stream.codec_context.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def reference_decode(data: bytes, fmt: str) -> np.ndarray:
    """Every frame of `data` through FFmpeg's demuxer for `fmt` and PyAV's direct RGB conversion: the decode
    `decode_video` must reproduce pixel for pixel, however it gets there."""
    with av.open(io.BytesIO(data), "r", format=fmt) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


CODECS = {
    "h264 yuv444p (default)": VideoCodec(),
    "h264 rgb24": VideoCodec(pix_fmt="rgb24", crf=18),
    "h264 yuv420p": VideoCodec(pix_fmt="yuv420p"),
    "h264 cabac": VideoCodec(fast_decode=False),
}


@pytest.mark.parametrize("name", ["objects.mp4", "pan_right.mp4", "forward.mp4"])
@pytest.mark.parametrize("codec", [VideoCodec(), VideoCodec(pix_fmt="rgb24", crf=18)], ids=["default", "rgb24"])
def test_round_trip_keeps_40_db_at_a_tenth_of_the_bytes(corpus_dir, name, codec):
    frames = corpus_frames(corpus_dir, name, 128, 224, 17)
    data = encode_video(frames, codec)
    back = decode_video(data, frames.shape)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert psnr(frames, back) >= 40.0
    assert len(data) <= frames.nbytes / 10


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_bitstream_decodes_as_ffmpeg_decodes_it(corpus_dir, codec):
    """The stored payload is a plain Annex-B stream: FFmpeg's raw h264 demuxer reads it, and decode_video (codec
    context, parser, its own RGB conversion) returns exactly the frames that path does."""
    frames = corpus_frames(corpus_dir, "objects.mp4", 96, 160, 9)
    data = encode_video(frames, codec)
    assert codec.dtype == "video:h264-annexb" and data[HEADER.size : HEADER.size + 4] == b"\0\0\0\1"
    np.testing.assert_array_equal(decode_video(data, frames.shape), reference_decode(data[HEADER.size :], "h264"))


def test_fast_decode_turns_off_cabac_and_deblocking(corpus_dir):
    """x264 records its settings in the stream (a user-data SEI): the default codes for a cheap decode."""
    frames = corpus_frames(corpus_dir, "objects.mp4", 64, 96, 3)
    fast, cabac = (encode_video(frames, VideoCodec(fast_decode=f)) for f in (True, False))
    assert b"cabac=0" in fast and b"deblock=0" in fast and b"bframes=0" in fast
    assert b"cabac=1" in cabac and b"deblock=1" in cabac


def test_rgb_storage_codes_the_rgb_planes():
    """rgb24 codes the RGB planes themselves (no colour matrix): the decoder hands back planar RGB, and at CRF 0
    (x264's lossless) the frames come back bit-exact, which no YUV storage can do; odd sides are fine."""
    frames = np.random.default_rng(1).integers(0, 256, (3, 15, 33, 3), dtype=np.uint8)
    data = encode_video(frames, VideoCodec(pix_fmt="rgb24", crf=0))
    with av.open(io.BytesIO(data[HEADER.size :]), "r", format="h264") as container:
        assert next(container.decode(video=0)).format.name == "gbrp"
    np.testing.assert_array_equal(decode_video(data, frames.shape), frames)
    assert psnr(frames, decode_video(encode_video(frames, VideoCodec(crf=0)), frames.shape)) < 60.0
    with pytest.raises(ValueError, match="yuv420p only"):
        VideoCodec(codec="av1", pix_fmt="rgb24")


def test_encoding_is_deterministic(corpus_dir):
    frames = corpus_frames(corpus_dir, "pan_right.mp4", 64, 96, 5)
    av1 = VideoCodec(codec="av1", pix_fmt="yuv420p", crf=30, preset="10")
    for codec in [*CODECS.values(), av1]:
        first = encode_video(frames, codec)
        assert encode_video(frames.copy(), codec) == first, codec
        assert encode_video(frames[::-1].copy(), codec) != first  # and it depends on the frames


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to vary the core count")
def test_encoding_does_not_depend_on_the_core_count(corpus_dir):
    """x264 left to pick its thread count picks it from the cores it may use, and its bytes change with it:
    encode_video pins it, so a machine with more cores writes the same rows."""
    frames = corpus_frames(corpus_dir, "pan_right.mp4", 128, 224, 9)
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})  # this thread and the encoder threads it starts: one core
        one_core = encode_video(frames, VideoCodec())
    finally:
        os.sched_setaffinity(0, cores)
    assert encode_video(frames, VideoCodec()) == one_core


@pytest.mark.parametrize(
    ("codec", "min_db"),  # the second: the frames are the clip's (64x96 synthetic frames at 4:2:0 lose the most)
    [(VideoCodec(), 38.0), (VideoCodec(codec="av1", pix_fmt="yuv420p", crf=16, preset="10"), 25.0)],
    ids=["h264", "av1"],
)
def test_older_matroska_rows_still_decode(corpus_dir, codec, min_db):
    """Rows written before the bitstream format (dtype "video:h264" / "video:av1") decode to the frames FFmpeg's
    Matroska demuxer gives, through decode_video and decode_tensor alike."""
    frames = corpus_frames(corpus_dir, "objects.mp4", 64, 96, 5)
    old = legacy_matroska(frames, codec)
    back = decode_video(old, frames.shape)
    np.testing.assert_array_equal(back, reference_decode(old, "matroska"))
    assert psnr(frames, back) > min_db
    row = {"frames": old, "frames_dtype": f"video:{codec.codec}", "frames_shape": list(frames.shape)}
    np.testing.assert_array_equal(decode_tensor(row, "frames"), back)
    with pytest.raises(ValueError):
        decode_video(old[: len(old) // 2], frames.shape)
    for dtype in ("video:h264", "video:av1", "video:h264-annexb", "video:av1-obu"):
        assert is_video_dtype(dtype)
    assert not is_video_dtype("<u1")


def test_quality_follows_crf_and_chroma(corpus_dir):
    frames = corpus_frames(corpus_dir, "objects.mp4", 128, 224, 9)
    fine, coarse = (encode_video(frames, VideoCodec(crf=c)) for c in (8, 30))
    assert len(fine) > len(coarse)
    assert psnr(frames, decode_video(fine, frames.shape)) > psnr(frames, decode_video(coarse, frames.shape))
    subsampled = encode_video(frames, VideoCodec(pix_fmt="yuv420p"))
    assert psnr(frames, decode_video(subsampled, frames.shape)) <= psnr(frames, decode_video(fine, frames.shape))


def test_av1_storage_round_trips(corpus_dir):
    frames = corpus_frames(corpus_dir, "objects.mp4", 128, 224, 9)
    codec = VideoCodec(codec="av1", pix_fmt="yuv420p", crf=16, preset="10")
    data = encode_video(frames, codec)
    assert codec.dtype == "video:av1-obu" and data[HEADER.size] == 0x12  # an OBU stream: temporal delimiter first
    # 4:2:0 chroma costs the corpus's saturated synthetic edges several dB: AV1 is the compact option, not the default
    assert psnr(frames, decode_video(data, frames.shape)) > 30.0 and len(data) < frames.nbytes / 20


def test_bad_streams_and_settings_are_refused():
    frames = np.zeros((5, 16, 32, 3), np.uint8)
    data = encode_video(frames, VideoCodec())
    with pytest.raises(ValueError, match="expected 6"):
        decode_video(data, (6, 16, 32, 3))
    with pytest.raises(ValueError, match="16x32|32x16"):
        decode_video(data, (5, 32, 16, 3))
    with pytest.raises(ValueError, match="truncated or damaged"):
        decode_video(data[: len(data) // 3], frames.shape)
    with pytest.raises(ValueError, match="truncated or damaged"):
        decode_video(data[:-1], frames.shape)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x10  # one bit inside the bitstream: the decoder might conceal it, the checksum won't
    with pytest.raises(ValueError, match="truncated or damaged"):
        decode_video(bytes(damaged), frames.shape)
    with pytest.raises(ValueError, match="shorter than its header"):
        decode_video(data[:5], frames.shape)
    with pytest.raises(ValueError, match="unknown frames stream format"):
        decode_video(data[:2] + b"x" + data[3:], frames.shape)
    with pytest.raises(ValueError, match="not a stored frames stream"):
        decode_video(b"not a video", frames.shape)
    with pytest.raises(ValueError, match="not a stored frames stream"):
        decode_video(b"", frames.shape)
    # A well-framed blob whose payload is no H.264 at all: no frames come out of it.
    junk = b"\x00\x00\x00\x01" + bytes(range(256)) * 4
    with pytest.raises(ValueError, match="expected 5|undecodable"):
        decode_video(data[:4] + zlib.crc32(junk).to_bytes(4, "little") + junk, frames.shape)
    with pytest.raises(ValueError, match="odd side"):
        encode_video(np.zeros((2, 15, 32, 3), np.uint8), VideoCodec(pix_fmt="yuv420p"))
    with pytest.raises(ValueError, match="yuv420p only"):
        VideoCodec(codec="av1")
    with pytest.raises(ValueError, match="frames.store"):
        FramesConfig(store="jpeg")


def test_decode_tensor_serves_both_storages():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    raw = encode_tensor("frames", frames)
    coded = encode_tensor("frames", frames, VideoCodec(crf=0))
    assert coded["frames_dtype"] == "video:h264-annexb" and coded["frames_shape"] == [3, 16, 16, 3]
    np.testing.assert_array_equal(decode_tensor(raw, "frames"), frames)
    assert psnr(frames, decode_tensor(coded, "frames")) > 45.0  # crf 0 on noise: near lossless


VIDEOS = ("objects.mp4", "pan_right.mp4", "portrait.mp4")


@pytest.fixture(scope="module")
def stored_runs(corpus_dir, ray_local, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    runs = {}
    for store in ("raw", "video", "none"):
        runs[store] = root / store
        inputs = [str(corpus_dir / v) for v in VIDEOS]
        args = ["--stage=all", "--input", *inputs, "--output", str(runs[store]), "--set", f"frames.store={store}"]
        assert run_pipeline(*args) == 0
    return runs


def test_iter_clips_decodes_video_storage_to_the_raw_clips(stored_runs):
    raw = {r["clip_id"]: r for r in iter_clips(stored_runs["raw"])}
    coded = {r["clip_id"]: r for r in iter_clips(stored_runs["video"])}
    assert raw and set(raw) == set(coded)
    for clip_id, row in raw.items():
        frames = coded[clip_id]["frames"]
        assert frames.dtype == np.uint8 and frames.shape == row["frames"].shape
        assert psnr(row["frames"], frames) > 35.0  # 64x64 synthetic frames are the hard case
        np.testing.assert_array_equal(row["warped_noise"], coded[clip_id]["warped_noise"])  # annotated before coding
    manifest = read_manifest(stored_runs["video"])
    assert (
        manifest["frames_store"]["store"] == "video" and manifest["tensors"]["frames"]["storage"] == "video:h264-annexb"
    )


def test_the_loader_trains_from_video_storage(stored_runs):
    from training.data import DataConfig, make_loader

    batches = {}
    for store in ("raw", "video"):
        cfg = DataConfig(source=str(stored_runs[store]), batch_size=2, latent_size=(16, 16), num_workers=2)
        batches[store] = next(iter(make_loader(cfg)))
    assert batches["raw"]["clip_id"] == batches["video"]["clip_id"]
    a, b = batches["raw"]["latents"], batches["video"]["latents"]
    assert a.shape == b.shape and float((a - b).abs().mean()) < 0.02  # the same frames, to coding error


def test_store_none_keeps_annotations_only(stored_runs):
    run = stored_runs["none"]
    rows = list(iter_clips(run))
    assert rows and all("frames" not in r for r in rows)
    assert all(r["warped_noise"] is not None for r in rows)
    assert "frames" not in read_manifest(run)["tensors"]
    assert (run / "report.html").exists()
    from training.data import DataConfig, make_loader

    with pytest.raises(ValueError, match="frames.store=none"):
        make_loader(DataConfig(source=str(run), batch_size=2))
