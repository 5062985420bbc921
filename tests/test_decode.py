"""curation.decode: tiny synthetic videos written with PyAV in a tmp dir, plus every file in ../shared/media.

The shared media run in-process: a survey (decord and PyAV on every file, plus 135 truncated / byte-flipped
variants, one subprocess each) found no input that crashes or hangs either decoder through the calls
``probe_video`` makes; the one hang (decord random access near the end of a raw .m1v) is behind the container
allowlist. Media tests skip when ../shared/media is absent.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from curation.decode import DecodeError, VideoInfo, iter_frames, probe_video
from tests.conftest import SHARED_MEDIA

av = pytest.importorskip("av")

N, FPS, W, H = 64, 24, 128, 96
VFR_PTS_MS = [0]
for _i in range(1, 48):
    VFR_PTS_MS.append(VFR_PTS_MS[-1] + (40 if _i % 5 else 120))  # every 5th gap is 3x longer
KNOWN_REASONS = {
    "missing", "not_a_file", "empty_file", "unreadable", "not_a_video", "no_video_stream", "unsupported_codec",
    "too_many_pixels", "too_long", "no_frames", "decode_failed", "unsupported_container", "open_gop",
    "decoder_mismatch", "inexact_seek", "decoder_unavailable",
}  # fmt: skip
both_decoders = pytest.mark.parametrize("decoders", [("decord",), ("pyav",)], ids=["decord", "pyav"])


def pattern(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Frame i: a gradient scrolling right, a blue level and a white square that both depend on i."""
    x, y = np.arange(w)[None, :], np.arange(h)[:, None]
    red = np.broadcast_to(((x * 2 + i * 4) % 256).astype(np.uint8), (h, w))
    green = np.broadcast_to(((y * 2) % 256).astype(np.uint8), (h, w))
    img = np.stack([red, green, np.full((h, w), (i * 9) % 256, np.uint8)], -1)
    left = (i * 3) % (w - 8)
    img[4:12, left : left + 8] = 255
    return img


def write_video(path: Path, n: int = N, *, codec: str = "libx264", size: tuple[int, int] = (W, H), **kw) -> Path:
    """Encode `pattern` frames; kw: pts_ms (VFR), rotation (display-matrix degrees, counter-clockwise), faststart."""
    options = {"movflags": "faststart"} if kw.get("faststart") else {}
    with av.open(str(path), "w", container_options=options) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = 16  # several GOPs, so index access has to seek
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}  # B-frames on: decode order != display order
        if kw.get("pts_ms"):
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if kw.get("rotation") is not None:
            stream.set_display_rotation(kw["rotation"])
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(pattern(i, *size), format="rgb24")
            if kw.get("pts_ms"):
                frame.pts, frame.time_base = kw["pts_ms"][i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp2", rate=44100)
        for k in range(8):
            samples = (np.sin(np.arange(1152) / 10) * 3000).astype(np.int16)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 44100, k * 1152
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("decode")
    files = {
        "h264": write_video(d / "h264.mp4"),
        "vfr": write_video(d / "vfr.mp4", len(VFR_PTS_MS), pts_ms=VFR_PTS_MS),
        "rot": write_video(d / "rot.mp4", 8, rotation=-90),  # displayed after turning 90 degrees clockwise
        "fast": write_video(d / "fast.mp4", faststart=True),  # moov first, so a truncated copy still has an index
        "audio": write_audio_only(d / "audio.mka"),
    }
    if "libsvtav1" in av.codecs_available:
        files["av1"] = write_video(d / "av1.mkv", 16, codec="libsvtav1", size=(64, 64))
    data = files["fast"].read_bytes()
    for name, cut in (("trunc_half", 0.5), ("trunc_header", 0.05)):
        files[name] = d / f"{name}.mp4"
        files[name].write_bytes(data[: int(len(data) * cut)])
    files.update(empty=d / "empty.mp4", random=d / "random.mp4", text=d / "text.mp4", html=d / "page.avi")
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(random.Random(0).randbytes(20000))
    files["text"].write_text("this is a plain text file\n" * 50)
    files["html"].write_text("<!DOCTYPE html>\n<html><body>not a video</body></html>\n")
    return files


def decode_all(path: Path, info: VideoInfo, **kw) -> tuple[list[int], list[float], list[np.ndarray]]:
    items = list(iter_frames(str(path), info, **kw))
    return [i for i, _, _ in items], [t for _, t, _ in items], [f for _, _, f in items]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------- synthetic: probe


def test_probe_h264_picks_decord(synth):
    info = probe_video(str(synth["h264"]))
    assert (info.decoder, info.n_frames, info.width, info.height, info.rotation) == ("decord", N, W, H, 0)
    assert info.fps == pytest.approx(FPS)
    assert info.duration_s == pytest.approx(N / FPS, abs=0.05)
    assert (info.codec, info.vfr) == ("h264", False)
    assert "mp4" in info.container


def test_probe_pyav_only_reports_the_same_video(synth):
    by_decord = probe_video(str(synth["h264"]), decoders=("decord",))
    by_pyav = probe_video(str(synth["h264"]), decoders=("pyav",))
    assert by_pyav.decoder == "pyav"
    assert {**vars(by_pyav), "decoder": "decord"} == vars(by_decord)


def test_av1_is_served_by_pyav(synth):
    if "av1" not in synth:
        pytest.skip("no libsvtav1 encoder in this PyAV build")
    info = probe_video(str(synth["av1"]))
    assert (info.decoder, info.codec, info.n_frames, info.width, info.height) == ("pyav", "av1", 16, 64, 64)
    indices, pts, frames = decode_all(synth["av1"], info)
    assert indices == list(range(16)) and np.all(np.diff(pts) > 0)
    with pytest.raises(DecodeError) as err:  # decord alone cannot serve AV1: a DecodeError, not a decord error
        probe_video(str(synth["av1"]), decoders=("decord",))
    assert err.value.reason == "unsupported_codec"


def test_limits_are_checked_before_decoding(synth):
    with pytest.raises(DecodeError) as err:
        probe_video(str(synth["h264"]), max_pixels=W * H - 1)
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(DecodeError) as err:
        probe_video(str(synth["h264"]), max_duration_s=1.0)
    assert err.value.reason == "too_long"
    assert probe_video(str(synth["h264"]), max_pixels=W * H, max_duration_s=3.0).n_frames == N


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty", "empty_file"), ("random", "unreadable"), ("text", "not_a_video"), ("html", "not_a_video"),
     ("audio", "no_video_stream"), ("trunc_header", "unreadable")],
)  # fmt: skip
def test_bad_inputs_raise_decode_error_with_reason(synth, name, reason):
    with pytest.raises(DecodeError) as err:
        probe_video(str(synth[name]))
    assert err.value.reason == reason
    assert err.value.detail


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(DecodeError, match="missing"):
        probe_video(str(tmp_path / "nope.mp4"))
    with pytest.raises(DecodeError) as err:
        probe_video(str(tmp_path))
    assert err.value.reason == "not_a_file"


def test_decode_error_survives_transport_between_processes():
    cls, args = DecodeError("too_long", "5 h > 4 h").__reduce__()  # what Ray uses to rebuild it in the driver
    err = cls(*args)
    assert (err.reason, err.detail, str(err)) == ("too_long", "5 h > 4 h", "too_long: 5 h > 4 h")


def test_bad_arguments_are_value_errors(synth):
    info = probe_video(str(synth["h264"]))
    with pytest.raises(ValueError):
        probe_video(str(synth["h264"]), decoders=("ffmpeg",))
    with pytest.raises(ValueError):
        list(iter_frames(str(synth["h264"]), info, indices=[N]))
    with pytest.raises(ValueError):
        list(iter_frames(str(synth["h264"]), info, size=(0, 10)))


def test_importing_decode_does_not_import_decoders():
    code = "import sys, curation.decode; print('av' in sys.modules, 'decord' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- synthetic: iter_frames


@both_decoders
def test_iter_frames_yields_every_frame_in_order(synth, decoders):
    info = probe_video(str(synth["h264"]), decoders=decoders)
    indices, pts, frames = decode_all(synth["h264"], info)
    assert indices == list(range(info.n_frames))
    assert pts[0] == 0.0 and np.allclose(np.diff(pts), 1 / FPS, atol=1e-3)
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 and f.flags.c_contiguous for f in frames)
    for i in (0, 17, 40, N - 1):  # frame i is the encoded frame i, not a neighbour (B-frame reordering, seeks)
        assert int(np.argmin([mad(frames[i], pattern(j)) for j in range(N)])) == i
        assert mad(frames[i], pattern(i)) < 4


@both_decoders
def test_indices_give_exactly_those_frames_bitwise(synth, decoders):
    info = probe_video(str(synth["h264"]), decoders=decoders)
    _, all_pts, all_frames = decode_all(synth["h264"], info)
    indices, pts, frames = decode_all(synth["h264"], info, indices=[50, 3, 3, 17, N - 1, 0, 33], chunk=2)
    assert indices == [0, 3, 17, 33, 50, N - 1]
    for i, t, f in zip(indices, pts, frames, strict=True):
        assert t == pytest.approx(all_pts[i], abs=1e-6)
        assert np.array_equal(f, all_frames[i])
    assert decode_all(synth["h264"], info, indices=[])[0] == []


def test_decord_and_pyav_frames_agree(synth):
    pytest.importorskip("decord")
    a = decode_all(synth["h264"], probe_video(str(synth["h264"]), decoders=("decord",)))
    b = decode_all(synth["h264"], probe_video(str(synth["h264"]), decoders=("pyav",)))
    assert a[0] == b[0]
    assert np.allclose(a[1], b[1], atol=1e-4)
    assert max(mad(x, y) for x, y in zip(a[2], b[2], strict=True)) < 1.0


@both_decoders
@pytest.mark.parametrize("size", [(64, 48), (48, 36), (50, 50)])  # decord cannot scale to width 48: cv2 steps in
def test_resize_at_decode(synth, decoders, size):
    info = probe_video(str(synth["h264"]), decoders=decoders)
    indices, _, frames = decode_all(synth["h264"], info, size=size, indices=[0, 20, 40])
    assert indices == [0, 20, 40]
    for i, frame in zip(indices, frames, strict=True):
        assert frame.shape == (size[1], size[0], 3)
        small = av.VideoFrame.from_ndarray(pattern(i), format="rgb24").to_ndarray(
            format="rgb24", width=size[0], height=size[1]
        )
        assert mad(frame, small) < 8


@both_decoders
def test_vfr_timestamps_come_from_the_stream(synth, decoders):
    info = probe_video(str(synth["vfr"]), decoders=decoders)
    assert info.vfr and info.n_frames == len(VFR_PTS_MS)
    assert not probe_video(str(synth["h264"]), decoders=decoders).vfr
    _, pts, _ = decode_all(synth["vfr"], info)
    assert np.allclose(pts, np.array(VFR_PTS_MS) / 1000, atol=1e-3)


@both_decoders
def test_rotation_is_applied_in_display_orientation(synth, decoders):
    info = probe_video(str(synth["rot"]), decoders=decoders)
    assert (info.rotation, info.width, info.height) == (90, H, W)
    _, _, frames = decode_all(synth["rot"], info)
    assert frames[0].shape == (W, H, 3)
    assert mad(frames[3], np.rot90(pattern(3), k=-1)) < 4  # turned clockwise
    _, _, small = decode_all(synth["rot"], info, size=(48, 64), indices=[3])
    assert small[0].shape == (64, 48, 3)


def test_truncated_file_yields_partial_frames(synth, caplog):
    info = probe_video(str(synth["trunc_half"]))
    assert info.decoder == "pyav"  # decord refuses a truncated mp4 at open (its index read fails)
    with caplog.at_level(logging.WARNING, logger="curation"):
        indices, _, _ = decode_all(synth["trunc_half"], info)
    assert 0 < len(indices) <= info.n_frames < N
    assert indices == list(range(len(indices)))
    assert len(indices) == info.n_frames or "decoding stopped at frame" in caplog.text


def test_damaged_copies_raise_only_decode_error(synth, tmp_path):
    data = synth["h264"].read_bytes()
    rng = random.Random(1)
    for k in range(6):
        damaged = bytearray(data)
        for _ in range(20):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"flip{k}.mp4"
        path.write_bytes(bytes(damaged))
        try:
            info = probe_video(str(path))
            for _ in iter_frames(str(path), info, indices=[0, info.n_frames // 2, info.n_frames - 1]):
                pass
        except DecodeError as exc:
            assert exc.reason in KNOWN_REASONS


# ---------------------------------------------------------------- ../shared/media

media = pytest.mark.skipif(not SHARED_MEDIA.is_dir(), reason="../shared/media is absent")
MEDIA_FILES = sorted(p for p in SHARED_MEDIA.rglob("*") if p.is_file() and p.name != "SOURCES.md")


@functools.cache
def pyav_decodable() -> set[Path]:
    """Files whose PyAV column in SOURCES.md's table starts with 'ok'."""
    rows = re.findall(r"^\| `([^`]+)` \| [^|]* \| ([^|]*) \|$", (SHARED_MEDIA / "SOURCES.md").read_text(), re.M)
    return {SHARED_MEDIA / path for path, pyav in rows if pyav.strip().startswith("ok")}


@media
@pytest.mark.parametrize("path", MEDIA_FILES, ids=lambda p: str(p.relative_to(SHARED_MEDIA)))
def test_media_probe(path):
    try:
        info = probe_video(str(path))
    except DecodeError as exc:
        assert exc.reason in KNOWN_REASONS
        assert path not in pyav_decodable(), f"PyAV decodes this file, probe said {exc}"
        return
    assert info.n_frames > 0 and info.width > 0 and info.height > 0 and info.decoder in ("decord", "pyav")
    try:
        items = list(iter_frames(str(path), info, indices=sorted({0, min(info.n_frames - 1, 12)})))
    except DecodeError as exc:  # allowed only for files known to be damaged
        assert exc.reason == "decode_failed" and path not in pyav_decodable()
        return
    assert items and items[0][0] == 0
    assert all(f.shape == (info.height, info.width, 3) for _, _, f in items)


@media
def test_a_broken_seek_sends_the_file_to_pyav():
    """cockatoo.mp4 (H.264 High 4:4:4): decord's frame 0 and sequential decode are right, but a seek past the second
    keyframe lands on wrong pictures (mean abs diff ~70). The probe must catch it, and sparse indices must then give
    exactly PyAV's sequential frames."""
    import av

    path = SHARED_MEDIA / "videos" / "imageio_test_images" / "cockatoo.mp4"
    if not path.exists():
        pytest.skip("../shared/media is absent")
    from curation import _decord, _pyav

    meta = _pyav.inspect(str(path), 10**9, 10**6)
    with pytest.raises(DecodeError) as exc:
        _decord.probe(str(path), meta)
    assert exc.value.reason == "inexact_seek"
    info = probe_video(str(path))
    assert info.decoder == "pyav"
    wanted = [80, 120, 200]
    got = {i: f for i, _, f in iter_frames(str(path), info, indices=wanted)}
    with av.open(str(path)) as c:
        seq = [f.to_ndarray(format="rgb24") for n, f in zip(range(201), c.decode(video=0), strict=False)]
    for i in wanted:
        np.testing.assert_array_equal(got[i], seq[i])


@media
def test_media_pyav_decodable_list_is_parsed():
    assert len(pyav_decodable()) > 40


ROTATED = [
    ("edge_cases/decord_test_data/video_0.mov", 0, 568, 320),
    ("edge_cases/decord_test_data/video_90.mov", 90, 320, 568),
    ("edge_cases/decord_test_data/video_180.mov", 180, 568, 320),
    ("edge_cases/decord_test_data/video_270.mov", 270, 320, 568),
    ("edge_cases/streamio_ffmpeg/sideways_movie.mov", 90, 480, 640),
    ("edge_cases/php_ffmpeg/portrait.MOV", 90, 320, 568),
]


@media
@pytest.mark.parametrize(("name", "rotation", "width", "height"), ROTATED, ids=[r[0].split("/")[-1] for r in ROTATED])
def test_media_rotation_and_decoders_agree(name, rotation, width, height):
    pytest.importorskip("decord")
    path = str(SHARED_MEDIA / name)
    by_decord = probe_video(path, decoders=("decord",))
    by_pyav = probe_video(path, decoders=("pyav",))
    for info in (by_decord, by_pyav):
        assert (info.rotation, info.width, info.height) == (rotation, width, height)
    a = list(iter_frames(path, by_decord, indices=[0, 2]))
    b = list(iter_frames(path, by_pyav, indices=[0, 2]))
    assert [x[0] for x in a] == [x[0] for x in b] == [0, 2]
    assert max(mad(x[2], y[2]) for x, y in zip(a, b, strict=True)) < 1.0


@media
def test_media_stream_choice_matches_decord():
    """nasa_13013.mp4 has two video streams; both decoders must read the same one (the 480x270, 390 frames)."""
    path = str(SHARED_MEDIA / "videos/torchcodec_resources/nasa_13013.mp4")
    by_decord = probe_video(path, decoders=("decord",))
    by_pyav = probe_video(path, decoders=("pyav",))
    assert (by_decord.n_frames, by_decord.width) == (by_pyav.n_frames, by_pyav.width) == (390, 480)


@media
def test_media_decord_partial_decode_of_corrupted_file(caplog):
    path = str(SHARED_MEDIA / "edge_cases/decord_test_data/corrupted.mp4")
    info = probe_video(path)
    assert (info.decoder, info.n_frames) == ("decord", 50)
    with caplog.at_level(logging.WARNING, logger="curation"):
        indices = [i for i, _, _ in iter_frames(path, info)]
    assert 0 < len(indices) < 50 and indices == list(range(len(indices)))
    assert "decoding stopped at frame" in caplog.text


@media
@pytest.mark.parametrize(
    ("name", "reason"),
    [("edge_cases/paul_romeo_opencv_mirror/Megamind.avi.actually_html", "not_a_video"),
     ("edge_cases/libwebm_testdata/discard_padding.webm", "no_video_stream"),
     ("edge_cases/mediainfo_js_fixtures/AudioVideoInterleave.avi", "no_frames"),
     ("videos/moviepy_media/doc_medias_result.webm", "empty_file"),
     ("edge_cases/streamio_ffmpeg/broken.mp4", "unreadable"),
     ("edge_cases/mp4ff/MP4FF_LICENSE_MIT.txt", "not_a_video")],
)  # fmt: skip
def test_media_known_bad_files(name, reason):
    with pytest.raises(DecodeError) as err:
        probe_video(str(SHARED_MEDIA / name))
    assert err.value.reason == reason


@media
@pytest.mark.parametrize(
    ("name", "decoder"),
    [("edge_cases/mediainfo_js_fixtures/test-sample-320x240-29.970fps-14.014s.m1v", "pyav"),  # raw stream: no seeks
     ("edge_cases/streamio_ffmpeg/weird_aspect.small.mpg", "pyav"),  # MPEG-PS: decord drops the first GOP
     ("edge_cases/mediainfo_js_fixtures/freeMXF-mxf1.mxf", "pyav"),  # open GOP: decord seeks inexact
     ("videos/torchcodec_resources/h265_video.mp4", "pyav"),  # open GOP (HEVC) in mp4
     ("videos/moviepy_media/test_video.mp4", "pyav"),  # 1x1: decord returns a garbage shape
     ("videos/torchcodec_resources/av1_video.mkv", "pyav"),
     ("videos/mmaction2/test.mp4", "decord")],
)  # fmt: skip
def test_media_decoder_choice(name, decoder):
    pytest.importorskip("decord")
    assert probe_video(str(SHARED_MEDIA / name)).decoder == decoder
