"""Quantized camera motion: vocabulary, per-step labels, invariances, stride scaling, segments, speeds, text."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from annotators.qcm import (
    KEYS,
    MOUSE,
    QCMConfig,
    clip_token,
    condition_text,
    motion_segments,
    quantize_steps,
    relative_poses,
    speed_indicators,
    split_token,
    step_keys,
    step_mouse,
    token_of,
    translation_parallax,
    yaw_pitch_deg,
)
from pipelines.samples import get_spec
from pipelines.samples.render import make_c2w, rot_x, rot_y, rot_z, yaw_pitch_roll

CFG = QCMConfig()


def step(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """One relative motion (camera t+1 in camera t's frame) as a 4x4."""
    return make_c2w(rot_y(yaw) @ rot_x(pitch) @ rot_z(roll), np.asarray(t, dtype=float))


def trajectory(steps: list[np.ndarray]) -> np.ndarray:
    """c2w (T, 4, 4) starting at the identity, each step composed in the moving camera's frame."""
    poses = [np.eye(4)]
    for s in steps:
        poses.append(poses[-1] @ s)
    return np.stack(poses)


def random_rigid(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # a proper rotation
    return make_c2w(q, rng.normal(scale=5.0, size=3))


def random_steps(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Mixed motions well away from every threshold and sector boundary, with their parallax."""
    steps, parallax = [], []
    for _ in range(n):
        yaw, pitch = rng.choice([-1.0, 0.0, 1.0], size=2) * rng.uniform(0.5, 3.0, size=2)
        heading = math.radians(rng.choice([0, 45, 90, 135, 180, 225, 270, 315]) + rng.uniform(-10, 10))
        t = rng.uniform(0.1, 2.0) * np.array([math.sin(heading), rng.uniform(-0.05, 0.05), math.cos(heading)])
        steps.append(step(yaw, pitch, rng.uniform(-3, 3), t))
        parallax.append(rng.choice([0.0, rng.uniform(0.002, 0.02)]))
    return steps, np.array(parallax)


# ---- vocabulary -------------------------------------------------------------------------------------------------


def test_vocabulary_order_and_round_trip():
    assert KEYS == ("none", "W", "S", "A", "D", "W+A", "W+D", "S+A", "S+D")
    assert MOUSE == ("none", "→", "←", "↑", "↓", "↑→", "↑←", "↓→", "↓←")
    for token in range(81):
        assert token_of(*split_token(token)) == token
    for ki, k in enumerate(KEYS):
        for mi, m in enumerate(MOUSE):
            assert token_of(k, m) == ki * 9 + mi
            assert split_token(np.int16(ki * 9 + mi)) == (k, m)
    assert token_of("none", "none") == 0 and token_of("W", "→") == 10 and token_of("S+D", "↓←") == 80
    for bad in (-1, 81):
        with pytest.raises(ValueError):
            split_token(bad)
    with pytest.raises(ValueError):
        token_of("Q", "none")
    with pytest.raises(ValueError):
        token_of("W", "right")


@pytest.mark.parametrize(
    "field, value",
    [
        ("rotation_deg_per_frame", 0.0),
        ("rotation_deg_per_frame", float("nan")),
        ("parallax_per_frame", -1e-4),
        ("direction_cos", 1.0),
        ("direction_cos", -0.1),
        ("min_confidence", 1.5),
        ("min_segment_steps", 0),
        ("min_segment_steps", 2.5),
    ],
)
def test_config_is_validated(field, value):
    with pytest.raises(ValueError, match=f"camera.qcm.{field}"):
        QCMConfig(**{field: value})


# ---- per-step labels -------------------------------------------------------------------------------------------


def test_yaw_pitch_matches_the_sample_convention():
    rng = np.random.default_rng(0)
    for _ in range(50):
        yaw, pitch, roll = rng.uniform(-80, 80, size=3)
        r = rot_y(yaw) @ rot_x(pitch) @ rot_z(roll)
        assert yaw_pitch_deg(r) == pytest.approx((yaw, pitch), abs=1e-9)
        assert yaw_pitch_deg(r) == pytest.approx(yaw_pitch_roll(r)[:2], abs=1e-9)
    # yaw > 0 turns the optical axis toward +x; pitch > 0 toward -y (up).
    assert rot_y(10)[:, 2][0] > 0 and rot_x(10)[:, 2][1] < 0


@pytest.mark.parametrize(
    "heading_deg, keys",
    [
        (0, "W"),
        (180, "S"),
        (-90, "A"),
        (90, "D"),
        (-45, "W+A"),
        (45, "W+D"),
        (-135, "S+A"),
        (135, "S+D"),
        (15, "W"),  # within 22.5 deg of an axis: pure
        (-75, "A"),
        (30, "W+D"),  # beyond 22.5 deg: the diagonal
    ],
)
def test_axis_and_diagonal_translations_give_keys(heading_deg, keys):
    h = math.radians(heading_deg)
    t = 0.7 * np.array([math.sin(h), 0.0, math.cos(h)])
    assert step_keys(t, 0.01, 1, CFG) == keys
    tokens = quantize_steps(trajectory([step(t=t)] * 5), np.full(5, 0.01), None, 1, CFG)
    assert tokens.tolist() == [token_of(keys, "none")] * 5


@pytest.mark.parametrize(
    "yaw, pitch, mouse",
    [
        (1.0, 0.0, "→"),
        (-1.0, 0.0, "←"),
        (0.0, 1.0, "↑"),
        (0.0, -1.0, "↓"),
        (1.0, 1.0, "↑→"),
        (-1.0, 1.0, "↑←"),
        (1.0, -1.0, "↓→"),
        (-1.0, -1.0, "↓←"),
        (2.0, 0.3, "→"),  # a strong pan with a little pitch noise stays a pan
        (0.15, 0.05, "→"),  # the `portrait` sample: 0.15 deg/frame yaw, 0.05 pitch
    ],
)
def test_pure_and_diagonal_rotations_give_mouse(yaw, pitch, mouse):
    assert step_mouse(rot_y(yaw) @ rot_x(pitch), 1, CFG) == mouse
    tokens = quantize_steps(trajectory([step(yaw, pitch)] * 6), None, None, 1, CFG)
    assert tokens.tolist() == [token_of("none", mouse)] * 6


def test_jitter_below_threshold_is_none():
    rng = np.random.default_rng(1)
    steps = []
    for _ in range(200):
        angle, size = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.099)  # yaw/pitch deflection < 0.1 deg
        t = rng.normal(size=3)  # any direction: the parallax says it is negligible
        steps.append(step(size * math.cos(angle), size * math.sin(angle), rng.uniform(-2, 2), t))
    parallax = rng.uniform(0, 0.0004, size=200)
    assert not quantize_steps(trajectory(steps), parallax, np.ones(200), 1, CFG).any()


def test_labels_invariant_to_a_global_rigid_transform_and_scale():
    rng = np.random.default_rng(2)
    steps, parallax = random_steps(rng, 60)
    c2w = trajectory(steps)
    ref = quantize_steps(c2w, parallax, None, 1, CFG)
    assert len(set(ref.tolist())) > 10  # the trajectory exercises many tokens
    for _ in range(5):
        g, scale = random_rigid(rng), rng.uniform(0.01, 100.0)
        moved = c2w.copy()
        moved[:, :3, 3] *= scale  # monocular: any translation scale; the parallax carries the magnitude
        moved = g[None] @ moved
        np.testing.assert_array_equal(quantize_steps(moved, parallax, None, 1, CFG), ref)
        np.testing.assert_allclose(relative_poses(moved)[:, :3, :3], relative_poses(c2w)[:, :3, :3], atol=1e-9)


def test_thresholds_scale_with_the_stride():
    def source(yaw: float, par: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-source-frame motion: yaw deg and forward travel with `par` parallax per frame."""
        return trajectory([step(yaw, 0.0, 0.0, (0.0, 0.0, 0.05))] * n), np.full(n, par)

    c2w, par = source(0.15, 0.0006, 40)  # 1.5x both thresholds per frame
    at1 = quantize_steps(c2w, par, None, 1, CFG)
    sub, sub_par = c2w[::4], par.reshape(-1, 4).sum(axis=1)  # every 4th frame: 4x the motion per step
    at4 = quantize_steps(sub, sub_par, None, 4, CFG)
    assert set(at1.tolist()) == set(at4.tolist()) == {token_of("W", "→")}

    c2w, par = source(0.09, 0.00036, 40)  # just under both thresholds per frame
    assert not quantize_steps(c2w, par, None, 1, CFG).any()
    sub, sub_par = c2w[::4], par.reshape(-1, 4).sum(axis=1)
    assert not quantize_steps(sub, sub_par, None, 4, CFG).any()
    # Without the stride scaling the same subsampled motion would pass: the scaling is what keeps it `none`.
    assert set(quantize_steps(sub, sub_par, None, 1, CFG).tolist()) == {token_of("W", "→")}


def test_low_confidence_and_broken_poses_are_none():
    c2w = trajectory([step(2.0, 0.0, 0.0, (0, 0, 1))] * 6)
    conf = np.array([1.0, 0.29, 0.3, float("nan"), 0.0, 0.9])
    tokens = quantize_steps(c2w, np.full(6, 0.01), conf, 1, CFG)
    w_right = token_of("W", "→")
    assert tokens.tolist() == [w_right, 0, w_right, 0, 0, w_right]
    assert tokens.dtype == np.int16
    c2w[3, 0, 0] = np.nan
    assert quantize_steps(c2w, np.full(6, 0.01), None, 1, CFG).tolist() == [w_right, w_right, 0, 0, w_right, w_right]
    assert quantize_steps(c2w[:1], np.zeros(0), None, 1, CFG).shape == (0,)
    with pytest.raises(ValueError):
        quantize_steps(c2w, np.full(5, 0.01), None, 1, CFG)


def test_vertical_translation_and_roll_are_ignored():
    assert step_keys(np.array([0.0, -1.0, 0.0]), 0.05, 1, CFG) == "none"  # straight up
    assert step_keys(np.array([0.0, 1.0, 0.0]), 0.05, 1, CFG) == "none"  # straight down
    assert step_keys(np.array([0.0, 0.5, 1.0]), 0.05, 1, CFG) == "W"  # forward and down
    # Mostly vertical (a lift with a little drift): the travel is neither W nor D, whatever the xz ratio.
    assert step_keys(np.array([0.3, -1.0, 0.1]), 0.05, 1, CFG) == "none"
    assert step_keys(np.zeros(3), 0.05, 1, CFG) == "none"
    assert step_mouse(rot_z(10.0), 1, CFG) == "none"
    assert step_mouse(rot_y(-1.0) @ rot_z(10.0), 1, CFG) == "←"


def test_ground_truth_of_the_sample_videos():
    """Metric ground truth through `translation_parallax`: every sample camera spec gets its expected label."""
    arrows = {"right": "→", "left": "←", "up": "↑", "down": "↓", "none": "none"}
    for name in (
        "pan_right",
        "tilt_up",
        "pan_left",
        "dark",
        "blurry",
        "portrait",
        "static",
        "forward",
        "backward",
        "strafe_right",
    ):
        spec = get_spec(name)
        p = spec.params
        if "velocity" in p:  # layered scene: constant velocity, planes at depths 4..30 world units
            c2w = np.stack([make_c2w(center=np.asarray(p["velocity"]) * t) for t in range(spec.n_frames)])
        else:
            c2w = trajectory([step(p.get("yaw", 0.0), p.get("pitch", 0.0))] * (spec.n_frames - 1))
        tokens = quantize_steps(c2w, translation_parallax(c2w, depth=10.0), None, 1, CFG)
        expected = token_of(p.get("keys", "none"), arrows[p.get("mouse", "none")])
        assert set(tokens.tolist()) == {expected}, name
        assert clip_token(tokens, CFG.min_segment_steps) == expected


# ---- segments and clip token -----------------------------------------------------------------------------------


def test_segments_are_maximal_runs():
    tokens = np.array([3, 3, 0, 0, 0, 7, 3, 3])
    assert motion_segments(tokens, 1) == [(0, 2, 3), (2, 5, 0), (5, 6, 7), (6, 8, 3)]
    assert motion_segments(np.zeros(0, dtype=np.int16), 2) == []
    assert motion_segments(np.array([5]), 3) == [(0, 1, 5)]


def test_short_runs_merge_into_the_longer_neighbour():
    # The 1-step `2` joins the 3-step `1` on its left; the 2-step `1` after it then coalesces too.
    assert motion_segments(np.array([1, 1, 1, 2, 1, 1, 3, 3, 3, 0]), 2) == [(0, 6, 1), (6, 10, 3)]
    # A blip between two different runs joins the longer one; on a tie, the earlier one.
    assert motion_segments(np.array([1, 1, 9, 2, 2, 2]), 2) == [(0, 2, 1), (2, 6, 2)]
    assert motion_segments(np.array([1, 1, 9, 2, 2]), 2) == [(0, 3, 1), (3, 5, 2)]
    # Everything short: it collapses deterministically into one run (1 joins 2, 3 joins the longer 2, then 4).
    assert motion_segments(np.array([1, 2, 3, 4]), 5) == [(0, 4, 2)]


def test_segments_cover_every_step_in_order():
    rng = np.random.default_rng(3)
    for _ in range(300):
        tokens = rng.choice([0, 10, 11, 37], size=rng.integers(1, 40), p=[0.4, 0.3, 0.2, 0.1])
        min_steps = int(rng.integers(1, 6))
        segments = motion_segments(tokens, min_steps)
        assert segments[0][0] == 0 and segments[-1][1] == len(tokens)
        for (_, end, tok), (start, _, nxt) in zip(segments[:-1], segments[1:], strict=True):
            assert end == start and tok != nxt
        assert all(e - s >= min_steps for s, e, _ in segments) or len(segments) == 1
        assert all(tok in set(tokens.tolist()) for _, _, tok in segments)
        assert motion_segments(tokens, min_steps) == segments  # deterministic


def test_clip_token_is_the_dominant_motion():
    w, d, none = token_of("W", "none"), token_of("D", "→"), 0
    assert clip_token(np.array([w] * 5 + [none] * 3 + [w] * 4), 2) == w
    assert clip_token(np.array([none, none, d, d, d, d, d, none, d, none]), 2) == d  # blips absorbed
    a, b, c = 1, 2, 3
    # Longest segments tie (3 steps); `a` covers 5 steps overall, so it wins over the earlier `b`.
    assert clip_token(np.array([b, b, b, a, a, a, c, c, a, a]), 2) == a
    assert clip_token(np.array([b, b, b, a, a, a]), 2) == b  # full tie: the earlier
    assert clip_token(np.zeros(0, dtype=np.int16), 2) == 0


# ---- speed indicators ------------------------------------------------------------------------------------------


def test_speed_indicators_constant_turn():
    c2w = trajectory([step(2.0, 0.0, 0.0, (0.0, 0.0, 1.0))] * 20)
    speeds = speed_indicators(c2w, np.full(20, 0.003), np.full(20, 0.1))
    assert speeds["path_turn_deg"] == pytest.approx(2.0, abs=1e-9)
    assert speeds["view_rotation_deg_per_s"] == pytest.approx(20.0, abs=1e-6)
    assert speeds["translation_speed"] == pytest.approx(0.03)
    # Scale-free: per-step translation lengths that vary (monocular estimates) change nothing but the parallax.
    rng = np.random.default_rng(4)
    varied = trajectory([step(2.0, 0.0, 0.0, (0.0, 0.0, s)) for s in rng.uniform(0.01, 10, size=20)])
    again = speed_indicators(varied, np.full(20, 0.003), 0.1)
    assert again == pytest.approx(speeds)


def test_speed_indicators_pure_rotation_and_static():
    # Roll about the optical axis does not move it, so only the 1.5 deg yaw per step counts.
    yaw_roll = trajectory([step(1.5, 0.0, 4.0)] * 10)
    speeds = speed_indicators(yaw_roll, np.zeros(10), np.full(10, 1 / 30))
    assert speeds["path_turn_deg"] == 0.0 and speeds["translation_speed"] == 0.0
    assert speeds["view_rotation_deg_per_s"] == pytest.approx(45.0)
    pitch_only = speed_indicators(trajectory([step(0.0, -0.5)] * 10), None, 0.1)
    assert pitch_only["view_rotation_deg_per_s"] == pytest.approx(5.0)

    static = np.repeat(np.eye(4)[None], 8, axis=0)
    for par in (np.zeros(7), None):
        out = speed_indicators(static, par, np.full(7, 0.04))
        assert out == {"translation_speed": 0.0, "path_turn_deg": 0.0, "view_rotation_deg_per_s": 0.0}
    one = speed_indicators(static[:1], np.zeros(0), np.zeros(0))
    assert all(v == 0.0 for v in one.values())
    bad_dt = speed_indicators(trajectory([step(1.0)] * 3), None, np.zeros(3))
    assert all(math.isfinite(v) for v in bad_dt.values())


def test_path_turn_skips_steps_without_translation():
    # Forward, stop, then right: the pairs touching the stop are skipped, so no 90 deg turn is averaged in.
    steps = [step(t=(0, 0, 1))] * 3 + [step()] + [step(t=(1, 0, 0))] * 3
    par = np.array([0.01, 0.01, 0.01, 0.0, 0.01, 0.01, 0.01])
    assert speed_indicators(trajectory(steps), par, 0.1)["path_turn_deg"] == 0.0
    steps[3] = step(t=(1, 0, 1))
    par[3] = 0.01
    assert speed_indicators(trajectory(steps), par, 0.1)["path_turn_deg"] == pytest.approx(90.0 / 6)


# ---- condition text --------------------------------------------------------------------------------------------


def test_condition_text_per_state_and_deterministic():
    speeds = {"translation_speed": 0.01234, "path_turn_deg": 1.26, "view_rotation_deg_per_s": 3.04}
    texts = {condition_text(k, m, speeds) for k in KEYS for m in MOUSE}
    assert len(texts) == 81
    assert len({condition_text(k, "none", None) for k in KEYS}) == 9
    assert len({condition_text("none", m, None) for m in MOUSE}) == 9
    text = condition_text("W", "→", speeds)
    assert text == condition_text("W", "→", dict(speeds))
    assert "0.012" in text and "1.3" in text and "3.0" in text and "nan" not in text.lower()
    assert condition_text("W", "→", {**speeds, "view_rotation_deg_per_s": 9.0}) != text
    assert condition_text("W", "→", None) in text
    zero = {"translation_speed": 0.0, "path_turn_deg": 0.0, "view_rotation_deg_per_s": 0.0}
    assert "nan" not in condition_text("none", "none", zero).lower()
    with pytest.raises(ValueError):
        condition_text("forward", "none", None)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.direction_cos = 0.5  # type: ignore[misc]


# ---- the named query -------------------------------------------------------------------------------------------


def test_distribution_query_on_a_hand_made_table():
    duckdb = pytest.importorskip("duckdb")
    from curation.duck import load_named

    rng = np.random.default_rng(5)
    tokens = rng.choice([0, 10, 10, 11, 37, 80, 5], size=60)
    con = duckdb.connect(":memory:")
    con.sql("CREATE TABLE clips (clip_id VARCHAR, qcm_token SMALLINT, qcm_keys VARCHAR, qcm_mouse VARCHAR)")
    rows = [(f"c{i}", int(t), *split_token(t)) for i, t in enumerate(tokens)] + [("no_camera", None, None, None)]
    con.executemany("INSERT INTO clips VALUES (?, ?, ?, ?)", rows)
    result = con.sql(load_named("qcm_distribution"))
    assert result.columns == [
        "keys", "mouse_none", "turn_right", "turn_left", "tilt_up", "tilt_down", "up_right", "up_left",
        "down_right", "down_left", "total",
    ]  # fmt: skip
    expected = np.zeros((9, 9), dtype=int)
    np.add.at(expected, (tokens // 9, tokens % 9), 1)
    got = result.fetchall()
    assert [r[0] for r in got] == list(KEYS)  # every key state, in order, even the empty ones
    assert [list(r[1:10]) for r in got] == expected.tolist()
    assert [r[10] for r in got] == expected.sum(axis=1).tolist()
