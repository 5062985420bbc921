"""Golden tests of the opt-in motion corpus (`pipelines.samples.MOTION_SPECS`): world-anchored objects under each
camera motion. The truth must describe the decoded pixels (boxes sit on the rendered objects, the labels agree with
the true camera path), the clips must be reproducible, and the default corpus must not change."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from annotators.qcm import (
    QCMConfig,
    relative_poses,
    split_token,
    step_keys,
    step_mouse,
    token_of,
    translation_parallax,
)
from curation.decode import probe_video
from curation.metrics import event_mass_in_boxes, interval_iou, object_peak_activity, true_event_window
from curation.sampling import decode_size
from pipelines.annotate import annotate_file
from pipelines.config import load_config
from pipelines.samples import MOTION_SPECS, SPECS, generate_corpus, load_truth, spec_names
from pipelines.samples.motion import build_motion
from pipelines.samples.specs import MOTION_FAMILIES

NAMES = [s.name for s in MOTION_SPECS]
DEFAULT_PRESET = ["buckets.aspect_ratios=[]"]  # the default preset's fixed 256x256x16 shape
Decoded = tuple[dict[str, Any], np.ndarray]


@pytest.fixture(scope="module")
def motion_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("motion")
    generate_corpus(out, collection="motion")  # ~15 s on 2 cores
    return out


@pytest.fixture(scope="module")
def annotated(motion_corpus: Path) -> Callable[[str], tuple[dict[str, Any], dict[str, Any]]]:
    """(truth, annotate_file's output) of a clip at the default preset's fixed 256x256x16 shape, once per clip."""
    cfg = load_config(None, DEFAULT_PRESET)
    cache: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def _annotated(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if name not in cache:
            truth = load_truth(motion_corpus / f"{name}.json")
            cache[name] = (truth, annotate_file(str(motion_corpus / truth["file"]), cfg))
        return cache[name]

    return _annotated


@pytest.fixture(scope="module")
def decode(motion_corpus: Path) -> Callable[[str], Decoded]:
    cache: dict[str, Decoded] = {}

    def _decode(name: str) -> Decoded:
        if name not in cache:
            truth = load_truth(motion_corpus / f"{name}.json")
            with av.open(str(motion_corpus / truth["file"])) as container:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            cache[name] = (truth, frames.astype(np.float32).mean(axis=-1))  # grey is enough to find the objects
        return cache[name]

    return _decode


def test_the_motion_set_is_opt_in_and_complete(motion_corpus: Path) -> None:
    assert not set(NAMES) & set(spec_names())  # the default corpus keeps its clips
    assert spec_names("motion") == NAMES and [s.name for s in SPECS] == spec_names()
    motions, roles = ("pan", "tilt", "dolly", "strafe", "zoom", "shake"), ("camera", "rest", "movers")
    assert [*(f"{m}_{r}" for m in motions for r in roles), "pan_large"] == NAMES
    index = json.loads((motion_corpus / "corpus.json").read_text())
    assert [v["name"] for v in index["videos"]] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_truth_is_self_consistent(decode: Callable[[str], Decoded], name: str) -> None:
    truth, frames = decode(name)
    n, family, role = truth["n_frames"], truth["motion_clip"]["family"], truth["motion_clip"]["role"]
    assert frames.shape == (n, truth["height"], truth["width"]) and truth["shots"] == [{"start": 0, "end": n}]
    c2w = np.asarray(truth["camera"]["c2w"])
    assert c2w.shape == (n, 4, 4) and np.allclose(c2w[0], np.eye(4))
    assert len(truth["objects"]) == {"camera": 0, "rest": 2, "movers": 2, "large": 1}[role]
    for obj in truth["objects"]:
        boxes = np.asarray(obj["boxes"])
        assert boxes.shape == (n, 4) and len(obj["moving"]) == n
        assert (
            (boxes[:, :2] >= 0).all()
            and (boxes[:, 2] <= truth["width"]).all()
            and (boxes[:, 3] <= truth["height"]).all()
        )
        assert obj["events"] == ([] if role == "rest" else [{"start": 26, "end": 46}])
    if role == "movers":  # the second object moves at half the first's speed
        first, second = (np.hypot(*o["velocity"]) for o in _spec(name).params["objects"])
        assert second == pytest.approx(first / 2) and first > 0
    if role == "large":
        x0, y0, x1, y1 = truth["objects"][0]["boxes"][0]
        assert (x1 - x0) * (y1 - y0) / (truth["width"] * truth["height"]) == pytest.approx(0.30, abs=0.01)
    assert family in MOTION_FAMILIES


@pytest.mark.parametrize("name", [n for n in NAMES if not n.endswith("_camera")])
def test_boxes_sit_on_the_rendered_objects(decode: Callable[[str], Decoded], name: str) -> None:
    """The camera-only clip of the same motion shares the world and the camera path, so the pixels that differ from
    it are the objects': they must fill the truth boxes and stay inside them (up to codec blur)."""
    truth, frames = decode(name)
    if truth["motion_clip"]["role"] == "large":  # its own scene: render its world without the object
        spec = _spec(name)
        empty = build_motion(dataclasses.replace(spec, params={**spec.params, "objects": ()}), truth["seed"])
        background = np.stack([f.astype(np.float32).mean(axis=-1) for f in empty.frames])
    else:
        background = decode(f"{truth['motion_clip']['family']}_camera")[1]
    for t in range(0, truth["n_frames"], 7):
        changed = np.abs(frames[t] - background[t]) > 12
        inside = np.zeros_like(changed)
        for obj in truth["objects"]:
            x0, y0, x1, y1 = obj["boxes"][t]
            inside[y0:y1, x0:x1] = True
            assert changed[y0:y1, x0:x1].mean() > 0.6, (t, obj["id"])  # the box is filled by the object
        grown = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        # and nothing else differs: the world is the same. Codec noise flips up to 0.35 % of the pixels of a dolly
        # (none in the first, intra-coded frame); one misplaced object would flip 1.2 %
        # (raw against coded frames, for the large object: up to 0.7 %; its misplacement would flip 10 % and more)
        large = truth["motion_clip"]["role"] == "large"
        assert changed[~grown].mean() < (0.02 if large else 0.0001 if t == 0 else 0.006), t


def test_rest_and_movers_agree_until_the_move(decode: Callable[[str], Decoded]) -> None:
    for family in MOTION_FAMILIES:
        rest, movers = decode(f"{family}_rest")[0], decode(f"{family}_movers")[0]
        for a, b in zip(rest["objects"], movers["objects"], strict=True):
            assert a["boxes"][:27] == b["boxes"][:27] and a["boxes"][27:] != b["boxes"][27:]


def _spec(name: str) -> Any:
    return next(s for s in MOTION_SPECS if s.name == name)


@pytest.mark.parametrize("family", list(MOTION_FAMILIES))
def test_labels_follow_the_true_camera_path(motion_corpus: Path, family: str) -> None:
    """Quantized as the camera bench's truth is (QCM thresholds times the stride), the true path gives the clip's
    label in every step at every stride the presets may use; handheld shake gives `none` at every stride."""
    truth = load_truth(motion_corpus / f"{family}_camera.json")
    cam, cfg = truth["camera"], QCMConfig()
    c2w = np.asarray(cam["c2w"])
    depth = min(cam["plane_depths"] + [6.0])  # the nearest thing in view: the objects
    mouse = {"right": "→", "up": "↑"}.get(cam["expected_mouse"], "none")
    for stride in (1, 2, 3, 4, 8):
        rel = relative_poses(c2w[::stride])
        parallax = translation_parallax(c2w[::stride], depth)
        got_mouse = {step_mouse(r[:3, :3], stride, cfg) for r in rel}
        got_keys = {step_keys(r[:3, 3], p, stride, cfg) for r, p in zip(rel, parallax, strict=True)}
        assert got_mouse == {mouse}, (stride, got_mouse)
        assert got_keys == {cam["expected_keys"]}, (stride, got_keys)
    if family == "shake":  # visible jitter, not a still camera
        yaw_pitch = np.asarray(cam["per_frame_rotation_deg"])[:, :2]
        assert 0.06 < np.hypot(*yaw_pitch.T).max() < 0.1 and np.ptp(np.cumsum(yaw_pitch[:, 0])) > 0.25


def test_generation_is_deterministic(motion_corpus: Path, tmp_path: Path) -> None:
    for name in ("shake_movers", "dolly_rest"):  # random camera path; parallax world with objects
        generate_corpus(tmp_path, only=[name])
        for suffix in (".mp4", ".json"):
            assert (tmp_path / f"{name}{suffix}").read_bytes() == (motion_corpus / f"{name}{suffix}").read_bytes()


def test_the_default_corpus_is_untouched(tmp_path: Path) -> None:
    """Generating the default set writes no motion clip, and its index lists only the default names."""
    generate_corpus(tmp_path, only=["static"])
    index = json.loads((tmp_path / "corpus.json").read_text())
    assert [v["name"] for v in index["videos"]] == ["static"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "static.json", "static.mkv"]


@pytest.mark.parametrize(
    ("name", "at_least"),
    [
        ("dolly_camera", 15),
        ("dolly_rest", 15),
        ("dolly_movers", 14),
        ("zoom_camera", 15),
        ("zoom_movers", 15),
        ("pan_large", 14),
    ],
)
def test_camera_motions_under_movers_at_the_default_preset(annotated: Callable, name: str, at_least: int):
    """Golden: a dolly through the layered world is a forward translation in (nearly) every step, even with objects
    moving in view; a zoom scaling the image as much is no camera move at all; and the pan under an object that
    fills half the default crop stays a pan while the object moves (the camera bench measures every clip of the
    motion corpus at both presets)."""
    truth, out = annotated(name)
    want = token_of(
        truth["camera"]["expected_keys"], {"right": "→", "up": "↑"}.get(truth["camera"]["expected_mouse"], "none")
    )
    tokens = [int(t) for t in out["camera_tokens"]]
    assert len(tokens) == 15 and sum(t == want for t in tokens) >= at_least, [split_token(t) for t in tokens]


@pytest.mark.parametrize("name", NAMES)
def test_events_under_every_camera_motion_at_the_default_preset(motion_corpus: Path, annotated: Callable, name: str):
    """Golden, the events issue's goals on every clip of the motion corpus at the default preset: a camera-only or
    object-at-rest clip switches on at most 0.1 % of its (frame, cell) positions and holds no confident event; a clip
    with moving objects finds their window (temporal IoU >= 0.9) and puts >= 0.75 of its activity inside their boxes,
    and the second object, at half the first's speed, peaks at >= 0.5x the first's activity."""
    truth, out = annotated(name)
    role = truth["motion_clip"]["role"]
    active = out["event_active"]
    if role in ("camera", "rest"):
        assert active.sum() <= 0.001 * active.size, active.sum()
        assert out["event_confidence"] < 0.5 or out["event_diffuse"], out["event_confidence"]
        return
    info = probe_video(str(motion_corpus / truth["file"]))
    frames = load_config(None, DEFAULT_PRESET).frames
    indices = out["frame_indices"]
    sizes = (info.width, info.height), decode_size(info.width, info.height, frames), (frames.width, frames.height)
    expected = true_event_window(truth, int(indices[0]), int(indices[-1]), sizes)
    found = (out["event_start_frame"], out["event_end_frame"]) if out["event_start_frame"] is not None else None
    assert interval_iou(found, expected) >= 0.9, (found, expected)
    activity = out["event_activity"].astype(np.float32)
    assert event_mass_in_boxes(activity, indices, truth, *sizes) >= 0.75
    if role == "movers":
        first, second = (object_peak_activity(activity, indices, obj, *sizes) for obj in truth["objects"])
        assert second >= 0.5 * first > 0, (first, second)
