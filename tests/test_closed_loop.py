"""The closed-loop camera bench (bench/closed_loop.py): its analysis recovers the commanded token from synthetic
videos that truly move, scores unusable clips as misses, and runs end to end on a tiny random causal checkpoint."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from annotators import qcm
from tests.test_stream import write_checkpoint, write_image
from training.stream import parse_command

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_closed_loop", ROOT / "bench" / "closed_loop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def estimate(bench: ModuleType, command: str, size: tuple[int, int], overrides: list[str], gain: float = 1.0) -> dict:
    analysis = bench.Analysis.from_pipeline(overrides, stride=4)
    token = parse_command(command)
    video = bench.synthetic_video(token, STEPS, size, seed=0, gain=gain)
    assert video.shape == (STEPS + 1, *size, 3) and video.dtype == np.uint8
    return bench.score([token] * STEPS, bench.annotate(video, analysis, analysis.annotators()), 2)


@pytest.mark.parametrize("command", ["none", "right", "left", "up", "down"])
def test_sanity_recovers_turns_on_the_model_grid(bench: ModuleType, command: str) -> None:
    """On a 32 px grid (the debug model's), the pipeline's analysis as configured reads a true turn (or stillness)
    back as the commanded clip token, every step."""
    rec = estimate(bench, command, (32, 32), [])
    assert rec["unusable"] is None and rec["confidence"] > 0.5
    assert rec["estimated"] == rec["commanded"] == command
    assert rec["clip_match"] and rec["step_agreement"] == 1.0


def test_pan_right_is_the_mouse_right_token(bench: ModuleType) -> None:
    analysis = bench.Analysis.from_pipeline([], stride=4)
    video = bench.synthetic_video(parse_command("right"), STEPS, (32, 32), seed=1)
    out = bench.annotate(video, analysis, analysis.annotators())
    assert out["qcm_token"] == qcm.token_of("none", "→")
    assert (np.asarray(out["camera_tokens"]) == qcm.token_of("none", "→")).all()


@pytest.mark.parametrize("command", ["W", "A", "D"])
def test_sanity_recovers_moves_at_the_stored_resolution(bench: ModuleType, command: str) -> None:
    """Translation needs parallax the flow resolves: with flow at the stored-frame size (short side 256) and a move
    of 4x the commanded step, the keys come back."""
    rec = estimate(bench, command, (16, 16), ["flow.short_side=256"], gain=4.0)
    assert rec["estimated"] == command and rec["key_match"] and rec["mouse_match"]


def test_unusable_clips_are_misses(bench: ModuleType) -> None:
    analysis = bench.Analysis.from_pipeline([], stride=1)
    tiny = np.zeros((5, 8, 8, 3), np.uint8)  # below the flow's 16 px minimum: the flow annotator rejects it
    out = bench.annotate(tiny, analysis, analysis.annotators())
    assert out["error"].startswith("flow: frame_too_small")
    right = parse_command("right")
    miss = bench.score([right] * 4, out, 2)
    flat = bench.score(
        [right] * 4, bench.annotate(np.full((5, 32, 32, 3), 90, np.uint8), analysis, analysis.annotators()), 2
    )
    assert flat["unusable"].startswith("confidence 0")  # no texture: every step unknown
    estimate = {"qcm_token": right, "camera_tokens": [right, right, 0, right], "camera_confidence": 0.9}
    hit = bench.score([right] * 4, {**estimate, "camera_static": False}, 2)
    assert not miss["clip_match"] and miss["unusable"] and hit["clip_match"] and hit["step_agreement"] == 0.75
    summary = bench.summarise([{"script": "right", "seed": i, **r} for i, r in enumerate((miss, flat, hit))])
    assert summary["overall"]["clip_match"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["overall"]["unusable"] == 2 and summary["overall"]["chance"] == 1.0  # one commanded token
    assert summary["per_script"]["right"]["estimated"] == {"unusable": 2, "right": 1}


def test_bench_end_to_end_on_a_tiny_checkpoint(bench: ModuleType, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt", shape=(4, 16, 16))
    image = write_image(tmp_path / "first.png", 48, 48)
    out = tmp_path / "results"
    argv = ["--checkpoint", str(ckpt), "--image", str(image), "--quick", "--out", str(out), "--device", "cpu"]
    assert bench.main([*argv, "--videos", str(tmp_path / "videos")]) == 0
    result = json.loads((out / "closed_loop.json").read_text())
    for key in ("checkpoint", "frames", "frame_size", "stride", "stride_source", "overall", "per_script", "videos"):
        assert key in result
    assert result["frame_size"] == [16, 16] and result["frames"] == STEPS
    assert result["stride"] == bench.DEFAULT_STRIDE  # the tiny checkpoint records no training data
    overall = result["overall"]
    for key in (
        "clip_match",
        "step_agreement",
        "mean_confidence",
        "unusable",
        "chance",
        "clip_match_resolved",
        "seed_dominance",
    ):
        assert key in overall
    assert overall["videos"] == 2 and overall["chance"] == 0.5
    assert set(result["per_script"]) == {"none", "right"}
    for s in result["per_script"].values():
        assert 0.0 <= s["clip_match"] <= 1.0 and 0.0 <= s["step_agreement"] <= 1.0 and "ceiling" in s
    assert all(len(v["steps"] or [None] * STEPS) == STEPS for v in result["videos"])
    assert (out / "closed_loop.md").read_text().startswith("### closed loop")
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["none_0.mp4", "right_0.mp4"]


def test_seed_dominance_and_upscale(bench: ModuleType) -> None:
    """The same estimate for every script of a seed is dominance 1; frames below the flow minimum get the smallest
    upscale that reaches it."""

    def rec(script: str, seed: int, estimated: str) -> dict:
        return {"script": script, "seed": seed, "estimated": estimated}

    ignored = [rec("none", 0, "up"), rec("right", 0, "up"), rec("none", 1, "left"), rec("right", 1, "left")]
    followed = [rec("none", 0, "none"), rec("right", 0, "right"), rec("none", 1, "none"), rec("right", 1, "right")]
    assert bench.seed_dominance(ignored) == 1.0 and bench.seed_dominance(followed) == 0.5
    assert bench.seed_dominance(ignored[:1]) is None
    assert bench.auto_upscale((8, 8)) == 2 and bench.auto_upscale((12, 40)) == 2 and bench.auto_upscale((16, 56)) == 1


def test_bad_script_is_a_usage_error(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--sanity", "--size", "16", "16", "--scripts", "W+S", "--out", str(tmp_path)]) == 2
    assert "W and S" in capsys.readouterr().err
