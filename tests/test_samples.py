"""Behavioural tests of the embedded sample corpus: decoded frames must agree with the recorded truth."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from pipelines.samples import SPECS, generate_corpus, get_spec, load_flow, load_truth, spec_names
from pipelines.samples.boundaries import dissolve_shots
from pipelines.samples.copies import build_copy, crop_box, transform_frame
from pipelines.samples.specs import BUILDERS

REPO = Path(__file__).resolve().parents[1]
FLOW_VIDEOS = ["pan_right", "tilt_up", "pan_left", "zoom_in", "forward", "backward", "strafe_right"]

Decoded = tuple[dict[str, Any], list[np.ndarray]]


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> Path:
    return corpus_dir  # the session-wide corpus from conftest, generated once


@pytest.fixture(scope="module")
def decode(corpus: Path) -> Callable[[str], Decoded]:
    """Decode a corpus video with PyAV (cached): (truth, RGB frames on screen, i.e. turned by the display matrix)."""
    cache: dict[str, Decoded] = {}

    def _decode(name: str) -> Decoded:
        if name not in cache:
            truth = load_truth(corpus / f"{name}.json")
            with av.open(str(corpus / truth["file"])) as container:
                # PyAV reports the display matrix counter-clockwise, as np.rot90 turns
                frames = [np.rot90(f.to_ndarray(format="rgb24"), k=f.rotation // 90) for f in container.decode(video=0)]
            cache[name] = (truth, frames)
        return cache[name]

    return _decode


def gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(gray(a) - gray(b)).mean())


def test_index_lists_every_video(corpus: Path) -> None:
    index = json.loads((corpus / "corpus.json").read_text())
    assert [v["name"] for v in index["videos"]] == spec_names()
    for entry in index["videos"]:
        assert (corpus / entry["file"]).is_file()
        truth = load_truth(corpus / entry["file"])
        assert truth["file"] == entry["file"] and truth["tags"] == entry["tags"]
    assert {15.0, 24.0, 25.0, 30.0} <= {v["fps"] for v in index["videos"]}
    assert {"mp4", "avi", "webm", "mkv"} <= {v["container"] for v in index["videos"]}
    assert {"h264", "hevc", "vp9", "av1", "mpeg4", "mjpeg"} <= {v["codec"] for v in index["videos"]}


@pytest.mark.parametrize("name", spec_names())
def test_decodes_to_declared_frames(decode: Callable[[str], Decoded], corpus: Path, name: str) -> None:
    truth, frames = decode(name)
    assert len(frames) == truth["n_frames"]
    assert {f.shape for f in frames} == {(truth["height"], truth["width"], 3)}
    with av.open(str(corpus / truth["file"])) as container:
        stream = container.streams.video[0]
        assert stream.codec.canonical_name == truth["codec"]
        assert float(stream.average_rate) == pytest.approx(truth["fps"])
        coded = [stream.codec_context.width, stream.codec_context.height]
        assert coded == truth.get("coded_size", [truth["width"], truth["height"]])
        assert -next(container.decode(video=0)).rotation % 360 == truth.get("rotation", 0)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_truth_is_self_consistent(corpus: Path, spec: Any) -> None:
    truth = load_truth(corpus / spec.file_name)
    n = truth["n_frames"]
    fades, dissolves, flats = truth["fades"], truth.get("dissolves", []), truth.get("flats", [])
    spans = sorted([(s["start"], s["end"]) for s in truth["shots"] + fades + dissolves + flats])
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))  # a partition of [0, n)
    assert all(a < b for a, b in spans)
    transition_ends = {f["end"] for f in fades + dissolves}
    assert truth["cuts"] == [s["start"] for s in truth["shots"][1:] if s["start"] not in transition_ends]
    assert all(f.get("kind", "fade") in ("fade", "black") for f in fades)
    assert truth.get("flat", False) == (truth["shots"] == []) == bool(flats)  # only the flat video has no shot
    if "camera" in truth:
        c2w = np.asarray(truth["camera"]["c2w"])
        assert c2w.shape == (n, 4, 4) and np.allclose(c2w[0], np.eye(4))
    for obj in truth["objects"]:
        assert len(obj["boxes"]) == len(obj["moving"]) == n


def test_hard_cuts_show_as_frame_differences(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("cuts")
    diffs = np.array([mean_abs_diff(frames[i - 1], frames[i]) for i in range(1, len(frames))])
    at_cuts = diffs[np.asarray(truth["cuts"]) - 1]
    elsewhere = np.delete(diffs, np.asarray(truth["cuts"]) - 1)
    assert len(truth["cuts"]) == 3
    assert at_cuts.min() > 30 and elsewhere.max() < 15
    assert at_cuts.min() > 3 * elsewhere.max()


@pytest.mark.parametrize("name", ["cuts", "pan_right", "forward", "objects", "square", "portrait_rotated"])
def test_scenedetect_agrees_with_truth(corpus: Path, name: str) -> None:
    scenedetect = pytest.importorskip("scenedetect")
    truth = load_truth(corpus / f"{name}.json")
    manager = scenedetect.SceneManager()
    manager.add_detector(scenedetect.ContentDetector())
    manager.detect_scenes(scenedetect.open_video(str(corpus / truth["file"]), backend="pyav"))
    found = [start.get_frames() for start, _ in manager.get_scene_list()[1:]]
    assert found == truth["cuts"]


def test_fade_goes_through_black_without_jumps(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("fade")
    assert truth["cuts"] == [] and len(truth["fades"]) == 1
    start, end = truth["fades"][0]["start"], truth["fades"][0]["end"]
    luma = np.array([gray(f).mean() for f in frames])
    assert luma[start:end].min() < 1.0
    assert luma[start - 1] > 40 and luma[end] > 40
    assert np.all(np.diff(luma[start - 1 : start + 16]) < 0.5)  # ramps down monotonically
    assert np.abs(np.diff(luma)).max() < 10  # no hard jump anywhere
    gains = truth["brightness_gain"]
    assert gains[start - 1] == 1.0 and gains[start] < 1.0 and gains[end] == 1.0 and gains[end - 1] < 1.0


def flow_residuals(a: np.ndarray, b: np.ndarray, flow: np.ndarray) -> tuple[float, float, float]:
    """(warp error, identity error, fraction of pixels used) of explaining frame a by frame b warped with flow.

    Only pixels whose true flow is non-trivial (> 0.5 px), that stay inside the frame and that are away from flow
    discontinuities (occlusion edges, where the downscaled flow grid cannot be upsampled) are compared.
    """
    h, w = a.shape[:2]
    full = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xx + full[..., 0], yy + full[..., 1]
    kernel = np.ones((9, 9), np.uint8)
    spread = np.maximum(*(cv2.morphologyEx(full[..., c], cv2.MORPH_GRADIENT, kernel) for c in range(2)))
    use = (mx >= 1) & (mx <= w - 2) & (my >= 1) & (my <= h - 2) & (spread < 0.5) & (np.hypot(*full.T).T > 0.5)
    use[:8], use[-8:], use[:, :8], use[:, -8:] = False, False, False, False
    warped = cv2.remap(b, mx, my, cv2.INTER_LINEAR)
    return float(np.abs(warped - a)[use].mean()), float(np.abs(b - a)[use].mean()), float(use.mean())


@pytest.mark.parametrize("name", FLOW_VIDEOS)
def test_true_flow_explains_the_frames(decode: Callable[[str], Decoded], corpus: Path, name: str) -> None:
    truth, frames = decode(name)
    flow = load_flow(corpus / truth["file"])
    assert flow is not None and list(flow.shape) == truth["flow"]["shape"] and flow.shape[0] == len(frames) - 1
    stats = np.array(
        [
            flow_residuals(gray(frames[i]), gray(frames[i + 1]), flow[i])
            for i in range(0, len(frames) - 1, max(1, len(frames) // 8))
        ]
    )
    ratios = stats[:, 0] / stats[:, 1]
    assert stats[:, 2].min() > 0.1  # a good part of the frame really moves and is checked
    assert np.median(ratios) < 0.5 and ratios.max() < 0.7, ratios


@pytest.mark.parametrize("name", FLOW_VIDEOS)
def test_true_flow_matches_an_independent_estimate(decode: Callable[[str], Decoded], corpus: Path, name: str) -> None:
    truth, frames = decode(name)
    flow = load_flow(corpus / truth["file"])
    assert flow is not None
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    h, w = frames[0].shape[:2]
    for i in (1, len(frames) // 2):
        a, b = (gray(f).astype(np.uint8) for f in (frames[i], frames[i + 1]))
        err = np.linalg.norm(dis.calc(a, b, None) - cv2.resize(flow[i], (w, h)), axis=-1)[16:-16, 16:-16]
        assert np.median(err) < 0.3 and err.mean() < 0.5


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("pan_right", lambda f: f[..., 0].mean() < -1),  # yaw right: content moves left
        ("pan_left", lambda f: f[..., 0].mean() > 1),
        ("tilt_up", lambda f: f[..., 1].mean() > 1),  # pitch up: content moves down
        ("strafe_right", lambda f: f[..., 0].mean() < -0.2),
        ("zoom_in", lambda f: _radial(f) > 0.2),
        ("forward", lambda f: _radial(f) > 0.05),
        ("backward", lambda f: _radial(f) < -0.05),
    ],
)
def test_flow_signs_follow_conventions(corpus: Path, name: str, check: Callable[[np.ndarray], bool]) -> None:
    flow = load_flow(corpus / f"{name}.json")
    assert flow is not None and check(flow[0])


def _radial(flow: np.ndarray) -> float:
    """Mean outward flow component (positive = expansion)."""
    rows, cols = flow.shape[:2]
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    rx, ry = xx - (cols - 1) / 2, yy - (rows - 1) / 2
    norm = np.hypot(rx, ry) + 1e-6
    return float(((flow[..., 0] * rx + flow[..., 1] * ry) / norm).mean())


@pytest.mark.parametrize(
    ("name", "keys", "mouse", "axis", "sign"),
    [
        ("pan_right", "none", "right", "yaw", 1),
        ("pan_left", "none", "left", "yaw", -1),
        ("tilt_up", "none", "up", "pitch", 1),
        ("forward", "W", "none", "z", 1),
        ("backward", "S", "none", "z", -1),
        ("strafe_right", "D", "none", "x", 1),
    ],
)
def test_camera_truth(corpus: Path, name: str, keys: str, mouse: str, axis: str, sign: int) -> None:
    cam = load_truth(corpus / f"{name}.json")["camera"]
    assert (cam["expected_keys"], cam["expected_mouse"]) == (keys, mouse)
    c2w = np.asarray(cam["c2w"])
    if axis in ("yaw", "pitch"):
        rel = np.asarray(cam["per_frame_rotation_deg"])
        assert np.all(np.sign(rel[:, 0 if axis == "yaw" else 1]) == sign)
        assert np.allclose(c2w[:, :3, 3], 0)
    else:
        moved = c2w[-1, :3, 3]
        assert np.sign(moved["xyz".index(axis)]) == sign and np.allclose(np.delete(moved, "xyz".index(axis)), 0)
        assert np.allclose(c2w[:, :3, :3], np.eye(3))


@pytest.mark.parametrize("name", ["objects", "fast_object"])
def test_objects_move_only_inside_events(decode: Callable[[str], Decoded], corpus: Path, name: str) -> None:
    truth, frames = decode(name)
    flow = load_flow(corpus / truth["file"])
    assert flow is not None and len(truth["objects"]) == 2
    n, h, w = truth["n_frames"], truth["height"], truth["width"]
    for obj in truth["objects"]:
        boxes = np.asarray(obj["boxes"])
        in_event = np.zeros(n, bool)
        for ev in obj["events"]:
            in_event[ev["start"] : ev["end"]] = True
        changed = np.any(boxes[1:] != boxes[:-1], axis=1)
        assert np.array_equal(changed, in_event[:-1]) and np.array_equal(obj["moving"], in_event.tolist())
        assert in_event.any() and not in_event[0] and not in_event[-1]
    any_moving = np.array([any(o["moving"][t] for o in truth["objects"]) for t in range(n - 1)])
    assert np.array_equal(np.abs(flow).reshape(n - 1, -1).max(axis=1) > 0, any_moving)
    for t in range(n - 1):
        moved = np.zeros((h, w), bool)
        for obj in truth["objects"]:
            for x0, y0, x1, y1 in (obj["boxes"][t], obj["boxes"][t + 1]):
                moved[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
        diff = np.abs(gray(frames[t + 1]) - gray(frames[t]))
        assert diff[~moved].mean() < 2.0  # only codec noise (key frames) away from the objects
        if any_moving[t]:
            assert diff[moved].mean() > 5.0


def test_static_frames_are_nearly_identical(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("static")
    assert truth["camera"]["motion"] == "static"
    assert max(mean_abs_diff(frames[0], f) for f in frames[1:]) < 2.0


def test_dark_video_is_dark_but_not_black(decode: Callable[[str], Decoded]) -> None:
    _, frames = decode("dark")
    luma = np.mean([gray(f).mean() for f in frames])
    assert 12 < luma < 32
    assert np.mean([gray(f).std() for f in frames]) > 3  # still textured


def test_blurry_video_has_low_laplacian_variance(decode: Callable[[str], Decoded]) -> None:
    def sharpness(name: str) -> float:
        return float(np.median([cv2.Laplacian(gray(f), cv2.CV_32F).var() for f in decode(name)[1]]))

    assert sharpness("blurry") < 0.1 * sharpness("tilt_up")


def test_odd_and_portrait_sizes(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("odd_size")
    assert truth["width"] % 2 == 1 and truth["height"] % 2 == 1 and frames[0].shape[:2] == (187, 333)
    truth, frames = decode("portrait")
    assert truth["height"] > truth["width"] and frames[0].shape[:2] == (480, 270)


def test_generation_is_deterministic_and_skips_current(corpus: Path, tmp_path: Path) -> None:
    names = ["objects", "static", "pan_left"]
    generate_corpus(tmp_path / "a", only=names)
    for name in names:
        spec_file = load_truth(corpus / f"{name}.json")["file"]
        assert (tmp_path / "a" / f"{name}.json").read_bytes() == (corpus / f"{name}.json").read_bytes()
        assert (tmp_path / "a" / spec_file).read_bytes() == (corpus / spec_file).read_bytes()
    stamp = (tmp_path / "a" / "static.mkv").stat().st_mtime_ns
    generate_corpus(tmp_path / "a", only=["static"])
    assert (tmp_path / "a" / "static.mkv").stat().st_mtime_ns == stamp
    generate_corpus(tmp_path / "a", only=["static"], seed=1)  # another seed regenerates, with other pixels
    assert (tmp_path / "a" / "static.mkv").read_bytes() != (corpus / "static.mkv").read_bytes()
    assert load_truth(tmp_path / "a" / "static.mkv")["seed"] == 1


def test_only_writes_the_requested_videos(tmp_path: Path) -> None:
    paths = generate_corpus(tmp_path, only=["static"])
    assert paths == [tmp_path / "static.mkv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "static.json", "static.mkv"]
    assert [v["name"] for v in json.loads((tmp_path / "corpus.json").read_text())["videos"]] == ["static"]
    with pytest.raises(KeyError):
        generate_corpus(tmp_path, only=["no_such_video"])


def test_cli(corpus: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.samples", "--out", str(tmp_path), "--only", "static"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert load_truth(tmp_path / "static.mkv")["name"] == "static"
    assert "1 videos" in result.stdout
    # Another process, same seed: the very same bytes.
    assert (tmp_path / "static.mkv").read_bytes() == (corpus / "static.mkv").read_bytes()
    assert (tmp_path / "static.json").read_bytes() == (corpus / "static.json").read_bytes()


# --- near-duplicates (kind "copy") -----------------------------------------------------------------------------

# The registry before the copies were added: their order (and so the corpus index) must not change.
ORIGINALS = [
    "cuts",
    "fade",
    "pan_right",
    "tilt_up",
    "pan_left",
    "forward",
    "backward",
    "strafe_right",
    "zoom_in",
    "objects",
    "pan_objects",
    "static",
    "dark",
    "blurry",
    "portrait",
    "odd_size",
]
COPIES = {
    "objects_reencoded": "objects",
    "pan_right_small": "pan_right",
    "cuts_cropped": "cuts",
    "sharp_twin": "blurry",
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


# Appended after the copies for the aspect-ratio buckets: display aspect (width / height on screen) of each.
ASPECT_SOURCES = {"wide_long": 2.39, "square": 1.0, "portrait_rotated": 9 / 16}


# Appended after the aspect-ratio sources: the shot-boundary hard cases (boundaries.py).
BOUNDARY_CASES = ["whip_pan", "fast_object", "dissolve", "cut_from_black", "fade_exact", "flat"]


def test_copies_are_appended_after_the_originals() -> None:
    assert spec_names() == [*ORIGINALS, *COPIES, *ASPECT_SOURCES, *BOUNDARY_CASES]
    for name, source in COPIES.items():
        spec = get_spec(name)
        assert spec.kind == "copy" and spec.params["of"] == source
        assert "duplicate" in spec.tags and "camera" not in spec.tags
    assert all(get_spec(name).kind != "copy" for name in ORIGINALS)


@pytest.mark.parametrize("name", ["objects_reencoded", "pan_right_small", "cuts_cropped"])
def test_copy_frames_match_the_transformed_source(decode: Callable[[str], Decoded], name: str) -> None:
    truth, frames = decode(name)
    _, source = decode(truth["duplicate_of"])
    transform = truth["copy_transform"]
    box, size = tuple(transform["crop_box"]), tuple(transform["size"])
    n = len(frames)
    for i in range(0, n, n // 4):
        same = psnr(frames[i], transform_frame(source[i], box, size))
        other = psnr(frames[i], transform_frame(source[(i + n // 2) % n], box, size))
        assert same > 30 and other < same - 10, (i, same, other)  # the same frame, not just the same scene


def test_sharp_twin_differs_from_blurry_only_by_the_blur(decode: Callable[[str], Decoded]) -> None:
    truth, sharp = decode("sharp_twin")
    _, blurry = decode("blurry")
    sigma = get_spec("blurry").params["blur_sigma"]
    assert truth["twin_of"] == "blurry" and truth["copy_transform"]["overrides"] == {"blur_sigma": 0}
    for i in range(0, len(sharp), 15):
        reblurred = cv2.GaussianBlur(sharp[i].astype(np.float32), (0, 0), sigma)
        assert psnr(reblurred, blurry[i]) > 35 > psnr(sharp[i], blurry[i]) + 5

    def sharpness(frames: list[np.ndarray]) -> float:
        return float(np.median([cv2.Laplacian(gray(f), cv2.CV_32F).var() for f in frames]))

    assert sharpness(sharp) > 20 * sharpness(blurry)


def test_copy_truth(corpus: Path) -> None:
    for name, source in COPIES.items():
        truth, src = load_truth(corpus / f"{name}.json"), load_truth(corpus / f"{source}.json")
        assert truth["duplicate_of"] == source and ("twin_of" in truth) == (name == "sharp_twin")
        assert [truth[k] for k in ("cuts", "fades", "shots", "n_frames", "fps")] == [
            src[k] for k in ("cuts", "fades", "shots", "n_frames", "fps")
        ]
        transform = truth["copy_transform"]
        assert transform["size"] == [truth["width"], truth["height"]] and transform["encoder"] == truth["encoder"]
        src_size = [src["width"], src["height"]]
        same_geometry = transform["crop_box"] == [0, 0, *src_size] and transform["size"] == src_size
        assert same_geometry == (name in ("objects_reencoded", "sharp_twin"))
        if same_geometry:  # camera, objects and flow carry over unchanged
            assert truth["camera"] == src["camera"] and truth["objects"] == src["objects"]
            flow, src_flow = load_flow(corpus / truth["file"]), load_flow(corpus / src["file"])
            assert (flow is None and src_flow is None) or np.array_equal(flow, src_flow)
        else:
            assert truth["objects"] == [] and "camera" not in truth and "flow" not in truth
    assert load_truth(corpus / "objects_reencoded.json")["codec"] == "vp9"
    assert load_truth(corpus / "cuts_cropped.json")["copy_transform"]["crop_box"] == [14, 8, 466, 262]
    assert crop_box(480, 270, 0.03) == (14, 8, 466, 262)
    for name in ORIGINALS:  # the originals' truth gained nothing
        truth = load_truth(corpus / f"{name}.json")
        assert not {"duplicate_of", "copy_transform", "twin_of"} & set(truth)


def test_bad_copy_specs_are_refused() -> None:
    copy = get_spec("pan_right_small")
    with pytest.raises(ValueError, match="n_frames and fps"):
        build_copy(dataclasses.replace(copy, n_frames=copy.n_frames - 1), 0)
    with pytest.raises(ValueError, match="n_frames and fps"):
        build_copy(dataclasses.replace(copy, fps=25), 0)
    with pytest.raises(ValueError, match="original video"):
        build_copy(dataclasses.replace(copy, params={"of": "sharp_twin"}, fps=25, n_frames=60), 0)
    with pytest.raises(ValueError, match="crop"):
        build_copy(dataclasses.replace(copy, params={"of": "pan_right", "crop": 0.5}), 0)
    with pytest.raises(KeyError):
        build_copy(dataclasses.replace(copy, params={"of": "no_such_video"}), 0)


def test_copies_regenerate_identically_and_leave_their_sources_alone(corpus: Path, tmp_path: Path) -> None:
    paths = generate_corpus(tmp_path, only=["sharp_twin", "blurry"])
    assert [p.name for p in paths] == ["sharp_twin.webm", "blurry.webm"]
    for name in ("sharp_twin.webm", "sharp_twin.json", "blurry.webm", "blurry.json"):
        assert (tmp_path / name).read_bytes() == (corpus / name).read_bytes(), name


# --- aspect-ratio sources (for the buckets) ------------------------------------------------------------------------


def test_the_corpus_spans_portrait_square_wide_and_cinemascope(corpus: Path) -> None:
    index = json.loads((corpus / "corpus.json").read_text())
    aspects = {v["name"]: v["width"] / v["height"] for v in index["videos"]}  # on screen
    for name, aspect in ASPECT_SOURCES.items():
        assert aspects[name] == pytest.approx(aspect, rel=0.01)
    for target in (9 / 16, 1.0, 16 / 9, 2.39):
        assert any(a == pytest.approx(target, rel=0.02) for a in aspects.values()), target


@pytest.mark.parametrize("name", ["square", "portrait_rotated"])
def test_cuts_of_the_aspect_sources_show_as_frame_differences(decode: Callable[[str], Decoded], name: str) -> None:
    truth, frames = decode(name)
    diffs = np.array([mean_abs_diff(frames[i - 1], frames[i]) for i in range(1, len(frames))])
    at_cuts = diffs[np.asarray(truth["cuts"]) - 1]
    elsewhere = np.delete(diffs, np.asarray(truth["cuts"]) - 1)
    assert truth["cuts"] and at_cuts.min() > 30 and elsewhere.max() < 15


def test_rotated_portrait_turns_back_into_the_rendered_frames(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("portrait_rotated")
    spec = get_spec("portrait_rotated")
    assert truth["rotation"] == 90 and truth["coded_size"] == [480, 270] == list(spec.coded_size)
    rendered = BUILDERS[spec.kind](spec, truth["seed"]).frames
    n = len(frames)
    for i in range(0, n, n // 4):
        same = psnr(frames[i], rendered[i])
        assert same > 30 and psnr(frames[i], rendered[i][::-1, ::-1]) < same - 10, i  # not upside down


def test_the_long_shot_is_ten_seconds_panning_right(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("wide_long")
    assert truth["shots"] == [{"start": 0, "end": truth["n_frames"]}] and truth["duration_s"] == 10.0
    assert np.all(np.asarray(truth["camera"]["per_frame_rotation_deg"])[:, 0] > 0)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for i in (0, len(frames) // 2, len(frames) - 2):
        a, b = (gray(f).astype(np.uint8) for f in (frames[i], frames[i + 1]))
        assert dis.calc(a, b, None)[16:-16, 16:-16, 0].mean() < -0.5  # yaw right: content moves left


# --- shot-boundary hard cases --------------------------------------------------------------------------------------


def frame_diffs(frames: list[np.ndarray]) -> np.ndarray:
    """Mean absolute grey-level difference of each frame from the next (n - 1 values)."""
    return np.array([mean_abs_diff(a, b) for a, b in zip(frames[:-1], frames[1:], strict=True)])


def lumas(frames: list[np.ndarray]) -> np.ndarray:
    return np.array([gray(f).mean() for f in frames])


def test_boundary_cases_carry_the_new_keys_and_the_old_videos_do_not(corpus: Path) -> None:
    for name in BOUNDARY_CASES:
        truth = load_truth(corpus / f"{name}.json")
        assert isinstance(truth["dissolves"], list) and all("kind" in f for f in truth["fades"]), name
        assert "camera" not in truth["tags"] and "duplicate_of" not in truth, name
    for name in [*ORIGINALS, *COPIES, *ASPECT_SOURCES]:  # their sidecars keep their bytes: nothing was added
        truth = load_truth(corpus / f"{name}.json")
        assert not {"dissolves", "flat", "flats"} & set(truth) and all("kind" not in f for f in truth["fades"])
    # the tests that take the first .mp4 / .mkv files of the sorted corpus still get the same ones
    firsts = sorted(p.name for p in corpus.iterdir() if p.suffix in (".mp4", ".mkv", ".mov"))[:3]
    assert firsts == ["cuts.mp4", "dark.mp4", "forward.mp4"]


def test_whip_pan_is_fast_but_one_shot(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("whip_pan")
    assert truth["cuts"] == [] and truth["fades"] == [] and truth["dissolves"] == []
    assert truth["shots"] == [{"start": 0, "end": truth["n_frames"]}]
    speed = np.asarray(truth["image_speed_px"])
    fast = np.flatnonzero(speed >= 30)
    assert 8 <= len(fast) <= 12 and np.all(np.diff(fast) == 1) and speed.max() <= 60  # one whip of 8-12 frames
    yaw = np.asarray(truth["camera"]["per_frame_rotation_deg"])[:, 0]
    assert np.all(yaw > 0) and np.allclose(np.radians(yaw) * truth["camera"]["K"][0][0], speed)
    diffs = frame_diffs(frames)
    pan = np.median(frame_diffs(decode("pan_right")[1]))  # a normal pan: ~2 px per frame
    # (blur softens the fast frames, and grey-level differences of a detailed texture grow slower than the motion)
    assert diffs[fast].mean() > 2 * pan and diffs[fast].mean() > 3 * np.median(diffs)
    # ... and yet no cut: each fast frame is the one before it moved left by the pan speed (centre band, where the
    # cylinder's image motion is the centre speed)
    h, w = frames[0].shape[:2]
    for t in fast:
        a, b = gray(frames[t]), gray(frames[t + 1])
        s, c0, c1 = round(speed[t]), w // 2 - 80, w // 2 + 80
        band = slice(h // 2 - 60, h // 2 + 60)
        moved = np.abs(a[band, c0:c1] - b[band, c0 - s : c1 - s]).mean()
        assert moved < 0.4 * np.abs(a[band, c0:c1] - b[band, c0:c1]).mean(), t


def test_fast_objects_cross_the_frame_in_a_few_frames(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("fast_object")
    assert truth["shots"] == [{"start": 0, "end": truth["n_frames"]}] and truth["cuts"] == []
    w = truth["width"]
    pan = np.median(frame_diffs(decode("pan_right")[1]))
    for obj in truth["objects"]:
        boxes = np.asarray(obj["boxes"])
        (event,) = obj["events"]
        steps = np.abs(np.diff(boxes[event["start"] : event["end"] + 1, 0]))
        assert steps.min() >= 40 and {boxes[:, 0].min(), boxes[:, 2].max()} == {0, w}  # edge to edge, fast
        for t in range(event["start"], event["end"]):
            x0, y0 = np.minimum(boxes[t], boxes[t + 1])[:2]
            x1, y1 = np.maximum(boxes[t], boxes[t + 1])[2:]
            region = np.abs(gray(frames[t + 1]) - gray(frames[t]))[y0:y1, x0:x1]
            assert region.mean() > 3 * pan, t  # far more change than a normal pan, where the object passes


def test_dissolve_blends_linearly_between_its_ends(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("dissolve")
    (dissolve,) = truth["dissolves"]
    start, end = dissolve["start"], dissolve["end"]
    assert truth["shots"] == [{"start": 0, "end": start}, {"start": end, "end": truth["n_frames"]}]
    assert truth["cuts"] == [] and truth["fades"] == [] and end - start >= 8
    a, b, weights = dissolve_shots(get_spec("dissolve"), truth["seed"])
    assert np.allclose(weights, truth["dissolve_weight"])
    fitted = []
    for t in range(start - 1, end + 1):
        # B's weight that explains the decoded frame best; just outside the span the nearest A / B frame stands in
        fa, fb = a[min(t, end - 1)], b[max(t - start, 0)]
        d = frames[t].astype(np.float32) - fa
        fitted.append(float((d * (fb - fa)).sum() / ((fb - fa) ** 2).sum()))
    fitted = np.asarray(fitted)
    assert abs(fitted[0]) < 0.02 and abs(fitted[-1] - 1) < 0.02, fitted  # start - 1 is pure A, end pure B
    assert np.all(np.diff(fitted) > 0.04), fitted  # B's weight grows on every frame in between
    assert np.allclose(fitted, weights[start - 1 : end + 1], atol=0.02), fitted
    pure_a, pure_b = psnr(frames[start - 1], a[start - 1]), psnr(frames[end], b[end - start])
    assert pure_a > 30 and pure_b > 30  # the codec's noise, nothing more
    assert psnr(frames[start], a[start]) < pure_a - 2 and psnr(frames[end - 1], b[end - 1 - start]) < pure_b - 3
    for t in range(start, end):  # each frame inside is the blend the truth says
        assert psnr(frames[t], (1 - weights[t]) * a[t] + weights[t] * b[t - start]) > 30, t
    diffs = frame_diffs(frames)
    assert diffs.max() < 15  # no jump anywhere: a cut detector sees no cut
    assert lumas(frames)[start : end + 1].min() > 0.8 * lumas(frames)[[start - 1, end]].min()  # never through black


def test_cut_from_black_has_hard_edges(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("cut_from_black")
    (black,) = truth["fades"]
    start, end = black["start"], black["end"]
    assert black["kind"] == "black" and truth["cuts"] == [] and truth["dissolves"] == []
    assert truth["shots"] == [{"start": 0, "end": start}, {"start": end, "end": truth["n_frames"]}]
    luma = lumas(frames)
    assert luma[start:end].max() < 1.0 and end - start >= 8  # pure black in between
    a_level, b_level = np.median(luma[:start]), np.median(luma[end:])
    assert min(a_level, b_level) > 40
    # hard on both sides: the last frame of A and the first of B are as bright as their neighbours, no ramp
    assert abs(luma[start - 1] - luma[start - 2]) < 1 and abs(luma[end] - luma[end + 1]) < 1
    assert mean_abs_diff(frames[end], frames[end + 1]) < 10  # the first frame of B is B already


def test_fade_exact_ramps_start_and_end_on_the_frame(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("fade_exact")
    (fade,) = truth["fades"]
    start, end = fade["start"], fade["end"]
    assert fade["kind"] == "fade" and truth["cuts"] == [] and truth["dissolves"] == []
    gains = np.asarray(truth["brightness_gain"])
    assert gains[start - 1] == 1 and gains[start] < 1 and gains[end - 1] < 1 and gains[end] == 1
    luma = lumas(frames)
    a_level, b_level = np.median(luma[:start]), np.median(luma[end:])
    assert min(a_level, b_level) > 130  # bright shots, so every ramp frame is a big step
    assert abs(luma[start - 1] - a_level) < 2 and abs(luma[end] - b_level) < 2  # the ends are at full brightness
    assert luma[start] < a_level - 15 and luma[end - 1] < b_level - 15  # the frames inside are clearly not
    assert luma[start:end].min() < 1.0
    level = np.where(np.arange(len(luma)) < start + (end - start) // 2, a_level, b_level)
    inside = slice(start, end)
    assert np.allclose(luma[inside], gains[inside] * level[inside], atol=3)  # brightness follows the gains


def test_flat_video_has_no_shot(decode: Callable[[str], Decoded]) -> None:
    truth, frames = decode("flat")
    assert truth["flat"] is True and truth["shots"] == [] and truth["cuts"] == [] and truth["dissolves"] == []
    assert truth["fades"] == [] and truth["flats"] == [{"start": 0, "end": truth["n_frames"]}]  # no shot to fade
    assert max(gray(f).std() for f in frames) < 1.5  # every frame is one flat colour
    luma, gains = lumas(frames), np.asarray(truth["brightness_gain"])
    black = np.flatnonzero(gains == 0)
    before = np.flatnonzero(gains[: black[0]] == 1)
    after = black[-1] + 1 + np.flatnonzero(gains[black[-1] + 1 :] == 1)
    assert luma[black].max() < 1.0 and luma[before].min() > 60 and luma[after].min() > 60
    assert np.ptp(luma[before]) < 1.5 and np.ptp(luma[after]) < 1.5 and abs(luma[0] - luma[-1]) > 5  # two colours
    assert np.all(np.diff(luma[before[-1] : black[0] + 1]) < -5)  # ramps down through black...
    assert np.all(np.diff(luma[black[-1] : after[0] + 1]) > 5)  # ...and up again into the second colour
