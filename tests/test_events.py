"""Event pseudo-targets (EVD) against the sample corpus's object truth, plus bad input and configuration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from annotators.base import object_array
from annotators.events import EventAnnotator, EventConfig
from curation.decode import probe_video
from curation.metrics import event_mass_in_boxes, interval_iou, true_event_window
from curation.sampling import decode_size
from pipelines.annotate import annotate_file
from pipelines.config import ConfigError, load_config
from pipelines.samples import get_spec, load_truth

# Wide frames keep the whole 16:9 corpus frame (cover-cropping to a square would cut the objects off), and 28
# frames at 8 fps span the objects' rest-move-rest story.
GOLDEN = ["frames.width=448", "frames.height=256", "frames.num_frames=28", "buckets.aspect_ratios=[]"]
OBJECT_VIDEOS = ("objects", "pan_objects")
CAMERA_ONLY = ("pan_right", "pan_left", "tilt_up", "zoom_in", "forward", "backward", "strafe_right")


@pytest.fixture(scope="module")
def golden(corpus_dir: Path) -> dict[str, tuple[dict, dict, dict]]:
    """name -> (annotation, truth, sizes) for the object, camera-only and static videos."""
    cfg = load_config(None, GOLDEN)
    out = {}
    for name in (*OBJECT_VIDEOS, *CAMERA_ONLY, "static"):
        path = get_spec(name).video_path(corpus_dir)
        info = probe_video(str(path))
        sizes = {
            "source_size": (info.width, info.height),
            "decoded_size": decode_size(info.width, info.height, cfg.frames),
            "frame_size": (cfg.frames.width, cfg.frames.height),
        }
        out[name] = (annotate_file(str(path), cfg), load_truth(path), sizes)
    return out


def active_share(result: dict) -> float:
    return float(result["event_active"].mean())


@pytest.mark.parametrize("name", OBJECT_VIDEOS)
def test_active_window_and_activity_match_the_moving_objects(golden, name):
    result, truth, sizes = golden[name]
    indices = result["frame_indices"]
    expected = true_event_window(truth, int(indices[0]), int(indices[-1]), tuple(sizes.values()))
    found = (result["event_start_frame"], result["event_end_frame"])
    assert expected is not None and interval_iou(found, expected) >= 0.8, (found, expected)
    activity = result["event_activity"].astype(np.float32)
    assert event_mass_in_boxes(activity, indices, truth, **sizes) >= 0.7
    assert result["event_confidence"] > 0.5 and not result["event_diffuse"]
    # frame t holds the change from sampled frame t-1 to t: no object moves in it when that pair ends before the
    # motion starts or starts after it ended
    outside = [t for t in range(1, len(indices)) if indices[t] <= expected[0] or indices[t - 1] >= expected[1]]
    assert activity[outside].max() < 0.38  # frames with no object motion stay off


def test_camera_motion_alone_is_not_an_event(golden):
    object_scores = [golden[n][0]["event_score"] for n in OBJECT_VIDEOS]
    for name in CAMERA_ONLY:
        result = golden[name][0]
        assert result["event_confidence"] < 0.5 or result["event_diffuse"], name
        assert active_share(result) < 0.005, name  # camera-only false activation
        assert result["event_score"] < 0.5 * min(object_scores), name  # a top-fraction filter ranks them below


def test_static_clip_has_no_event(golden):
    result = golden["static"][0]
    assert result["event_activity"].astype(np.float32).max() < 0.05 and not result["event_active"].any()
    assert result["event_start_frame"] is None and result["event_end_frame"] is None
    assert result["event_confidence"] == 0.0 and not np.any(result["event_phase"])


def test_maps_align_with_the_sampled_frames_and_phase_is_a_cumulative_share(golden):
    for name, (result, _, _) in golden.items():
        t = len(result["frame_indices"])
        assert result["event_activity"].shape == result["event_active"].shape == (t, 16, 28), name
        assert result["event_activity"].dtype == np.float16 and result["event_active"].dtype == np.uint8
        phase = result["event_phase"].astype(np.float32)
        assert phase.shape == (t,) and np.all(np.diff(phase) >= 0)
        assert phase[-1] == 1.0 or not np.any(phase)
        assert set(np.unique(result["event_active"])) <= {0, 1}
        assert not np.any(result["event_activity"][0]) and not np.any(result["event_active"][0])


def clip_batch(frames: np.ndarray, flow: np.ndarray, homographies: np.ndarray | None = None) -> dict:
    t = len(frames)
    return {
        "clip_id": object_array(["c"]),
        "frames": object_array([frames]),
        "flow": object_array([flow]),
        "global_homography": object_array(
            [np.tile(np.eye(3), (max(t - 1, 0), 1, 1)) if homographies is None else homographies]
        ),
        "frame_indices": object_array([np.arange(t) * 4]),
        "frame_pts": object_array([np.arange(t) * 4 / 30.0]),
    }


def annotate_one(frames: np.ndarray, flow: np.ndarray, **cfg) -> dict:
    out = EventAnnotator(EventConfig(**cfg))(clip_batch(frames, flow))
    return {k: v[0] for k, v in out.items()}


def assert_no_event(out: dict, t: int) -> None:
    assert out["events_error"] is None
    for name in ("event_activity", "event_active", "event_phase"):
        assert np.isfinite(out[name].astype(np.float32)).all() and not np.any(out[name]), name
    assert out["event_activity"].shape[0] == t and out["event_phase"].shape == (t,)
    assert out["event_confidence"] == 0.0 and out["event_score"] == 0.0 and not out["event_diffuse"]
    assert out["event_start_frame"] is None and out["event_end_frame"] is None


@pytest.mark.parametrize("frame_change", [False, True])
def test_black_still_and_one_frame_clips_give_zero_activity(frame_change):
    black = np.zeros((8, 64, 64, 3), np.uint8)
    assert_no_event(annotate_one(black, np.zeros((7, 2, 64, 64), np.float32), frame_change=frame_change), 8)
    one = annotate_one(black[:1], np.zeros((0, 2, 64, 64), np.float32), frame_change=frame_change)
    assert_no_event(one, 1)
    assert one["event_activity"].shape == (1, 4, 4)


def test_non_finite_flow_never_reaches_the_maps():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    flow = np.zeros((5, 2, 64, 64), np.float32)
    flow[2, :, 10:20, 10:20] = np.nan
    flow[3, 0, 30:40, 30:40] = np.inf
    homographies = np.tile(np.eye(3), (5, 1, 1))
    homographies[1] = np.nan
    out = EventAnnotator(EventConfig())(clip_batch(frames, flow, homographies))
    assert out["events_error"][0] is None
    for name in ("event_activity", "event_phase"):
        assert np.isfinite(out[name][0].astype(np.float32)).all()
    assert np.isfinite([out[k][0] for k in ("event_score", "event_confidence", "event_entropy", "event_gini")]).all()


def test_frame_change_sees_what_flow_misses():
    """A patch lights up with no motion at all: only the optional frame-change signal can see it."""
    frames = np.full((8, 64, 64, 3), 60, np.uint8)
    frames[4:, 16:32, 32:48] = 200  # lit from frame 4 on
    flow = np.zeros((7, 2, 64, 64), np.float32)
    assert not annotate_one(frames, flow)["event_active"].any()
    lit = annotate_one(frames, flow, frame_change=True)
    on = lit["event_active"][4].astype(bool)
    near = np.zeros((4, 4), bool)
    near[0:3, 1:4] = True  # the lit cell (1, 2) and its 3x3 neighbourhood, which the smoothing spreads it over
    assert on[1, 2] and not on[~near].any()
    assert not lit["event_active"][:4].any()  # nothing before the light comes on


def test_a_grid_that_does_not_divide_the_frames_is_an_error_not_a_crash():
    out = annotate_one(np.zeros((4, 60, 60, 3), np.uint8), np.zeros((3, 2, 60, 60), np.float32))
    assert out["events_error"].startswith("bad_event_grid") and out["event_activity"] is None


@pytest.mark.parametrize(
    "override",
    ["events.on=0.3", "events.off=0.7", "events.top_fraction=0", "events.top_fraction=1.5", "events.cell=0"],
)
def test_bad_event_settings_fail_up_front(override):
    with pytest.raises(ConfigError, match="events"):
        load_config(None, [override])


def test_frames_must_sit_on_the_event_grid():
    fixed = "buckets.aspect_ratios=[]"  # frames.width is the stored width only without buckets
    with pytest.raises(ConfigError, match="events.cell"):
        load_config(None, ["frames.width=264", "noise.factor=8", fixed])
    assert load_config(None, ["frames.width=264", "events.enabled=false", "noise.factor=8", fixed]).frames.width == 264


def test_change_everywhere_is_unknown_or_diffuse_not_an_event():
    """Incoherent motion over the whole frame (what a camera the model cannot explain leaves behind): no camera
    model explains it, so there is no evidence either way and no activity; with that rule off it is diffuse."""
    import cv2

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    noise = rng.normal(0, 3, (7, 2, 64, 64)).astype(np.float32)
    flow = np.stack([[cv2.GaussianBlur(pair[c], (0, 0), 3) * 4 for c in range(2)] for pair in noise])
    assert_no_event(annotate_one(frames, flow), 8)
    out = annotate_one(frames, flow, min_explained=0.0)
    assert out["event_diffuse"] and out["event_entropy"] >= 0.9 and out["event_confidence"] < 0.3


def test_frames_iou_counts_every_burst_of_motion():
    """Two objects moving at separate times: the sampled frames reached through motion are two bursts, and a map
    active exactly there scores 1 (a single window would span the idle gap)."""
    from curation.metrics import frames_iou, sampled_motion, true_moving_steps

    truth = {"objects": [{"events": [{"start": 30, "end": 38}]}, {"events": [{"start": 60, "end": 68}]}]}
    indices = list(range(4, 86, 3))
    steps = true_moving_steps(truth, indices[0], indices[-1])
    assert steps == set(range(30, 38)) | set(range(60, 68))
    moving = sampled_motion(steps, indices)
    assert [indices[i] for i in np.flatnonzero(moving)] == [31, 34, 37, 40, 61, 64, 67, 70]
    assert frames_iou(moving, moving) == 1.0
    assert frames_iou(np.zeros_like(moving), np.zeros_like(moving)) == 1.0
    half = moving.copy()
    half[np.flatnonzero(moving)[4:]] = False
    assert frames_iou(half, moving) == 0.5


@pytest.mark.parametrize("name", ["blurry", "whip_pan"])
def test_weak_evidence_is_no_event(corpus_dir: Path, name: str):
    """A heavily blurred pan (flow guessed on textureless frames) and a whip pan (a camera no model explains for a
    few steps) carry no event at the default preset: no confident event and at most 0.1 % of cells on. Without
    the weak-evidence rules (`events.flow_texture`, `events.min_explained`) both light up (and came out confident
    with one scale per frame)."""
    path = get_spec(name).video_path(corpus_dir)
    result = annotate_file(str(path), load_config(None, ["buckets.aspect_ratios=[]"]))
    assert result["event_activity"] is not None
    assert result["event_confidence"] < 0.5 or result["event_diffuse"]
    assert active_share(result) <= 0.001
    ungated = annotate_file(
        str(path), load_config(None, ["buckets.aspect_ratios=[]", "events.flow_texture=0", "events.min_explained=0"])
    )
    assert active_share(ungated) > 0.005  # the rules are what removes it


def _steps(translating: list[bool]) -> np.ndarray:
    """c2w (T, 4, 4) of a camera that yaws 1 degree a step and moves sideways in the steps marked True."""
    a = np.radians(1.0)
    turn = np.array([[np.cos(a), 0, np.sin(a), 0], [0, 1, 0, 0], [-np.sin(a), 0, np.cos(a), 0], [0, 0, 0, 1]])
    poses = [np.eye(4)]
    for moves in translating:
        step = turn.copy()
        step[0, 3] = 0.05 if moves else 0.0
        poses.append(poses[-1] @ step)
    return np.stack(poses)


def test_only_a_mostly_translating_camera_lends_its_epipolar_lines():
    from annotators.events import step_epipolar

    def step_fundamentals(c2w: np.ndarray, k: np.ndarray, n_pairs: int) -> list:
        return step_epipolar(c2w, k, n_pairs)[0]

    k = np.array([[100.0, 0, 63.5], [0, 100.0, 63.5], [0, 0, 1]])
    mostly = [True] * 6 + [False] + [True] * 5  # one step without parallax in a strafe: it borrows
    lent = step_fundamentals(_steps(mostly), k, 12)
    assert all(f is not None for f in lent)
    lone = [False] * 6 + [True] + [False] * 5  # one "translating" step in a pan: nobody borrows it
    own = step_fundamentals(_steps(lone), k, 12)
    assert [f is not None for f in own] == lone
    assert step_fundamentals(_steps([False] * 12), k, 12) == [None] * 12


def test_parallax_bounds_follow_the_step_translation_and_are_borrowed_with_it():
    from annotators.events import PARALLAX_FLOOR_PX, step_epipolar

    k = np.array([[100.0, 0, 63.5], [0, 100.0, 63.5], [0, 0, 1]])
    mostly = [True] * 6 + [False] + [True] * 5
    fundamentals, bounds = step_epipolar(_steps(mostly), k, 12, bound_factor=4.0)
    # translation 0.05 (parallax radians) x focal 100 px = 5 px of median parallax, x 4, + the floor
    np.testing.assert_allclose(bounds, 4.0 * 0.05 * 100.0 + PARALLAX_FLOOR_PX)  # step 6 borrows its neighbour's
    assert all(f is not None for f in fundamentals)
    _, unbounded = step_epipolar(_steps(mostly), k, 12)
    assert unbounded == [math.inf] * 12
    lone = [False] * 6 + [True] + [False] * 5
    _, own = step_epipolar(_steps(lone), k, 12, bound_factor=4.0)
    assert own[6] == pytest.approx(21.0) and own[5] == pytest.approx(PARALLAX_FLOOR_PX)
    assert step_epipolar(None, k, 12) is None
