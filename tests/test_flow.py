"""Optical flow: accuracy against the sample corpus' true flow, RAFT through the real weight-loading path (random
weights, no download), working resolution, and per-clip failures."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotators.base import AnnotatorError
from annotators.flow import (
    FlowAnnotator,
    FlowConfig,
    FlowEstimator,
    estimate_flow,
    resize_flow,
    working_size,
)
from curation.decode import iter_frames, probe_video
from pipelines.samples import load_flow

# Mean end-point error bounds (px, stored resolution) per video. Measured on these 4 pairs: DIS medium 0.06-0.16,
# Farneback 0.11-0.34 (rotation/zoom videos <= 0.24); the bounds leave about 2x margin.
EPE_BOUNDS = {  # video: (dis, farneback)
    "pan_right.mp4": (0.3, 0.4),
    "tilt_up.webm": (0.3, 0.4),
    "pan_left.mkv": (0.3, 0.4),
    "zoom_in.mkv": (0.3, 0.4),
    "forward.mp4": (0.4, 0.6),
    "backward.avi": (0.4, 0.6),
    "strafe_right.mp4": (0.4, 0.6),
}
N_PAIRS = 4


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smoothed random noise as an RGB uint8 image: texture at several scales, as flow methods like it."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 1.5)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=-1)


@functools.cache
def corpus_pairs(path: str, n_pairs: int, first: int = 0, last: int | None = None) -> tuple[np.ndarray, ...]:
    """Frame pairs (i, i+1) for `n_pairs` evenly spaced i in [first, last], with their indices."""
    truth = load_flow(path)
    last = len(truth) - 1 if last is None else last
    idx = np.unique(np.linspace(first, last, n_pairs).round().astype(int))
    info = probe_video(path)
    frames = {i: rgb for i, _, rgb in iter_frames(path, info, indices=sorted({*idx, *(idx + 1)}))}
    return idx, np.stack([np.stack([frames[i], frames[i + 1]]) for i in idx]), truth[idx]


def sample_on_truth_grid(flow: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear samples of a full-resolution (H, W, 2) flow at the truth grid, x = (c + 0.5) * W / cols - 0.5."""
    h, w = flow.shape[:2]
    gx = ((np.arange(cols) + 0.5) * w / cols - 0.5).astype(np.float32)
    gy = ((np.arange(rows) + 0.5) * h / rows - 0.5).astype(np.float32)
    mx, my = np.meshgrid(gx, gy)
    return cv2.remap(flow, mx, my, cv2.INTER_LINEAR)


def end_point_errors(estimator: FlowEstimator, pairs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per grid sample: EPE, and whether the sample's match stays inside the frame (else no method can know)."""
    h, w = pairs.shape[2:4]
    rows, cols = truth.shape[1:3]
    errors, inside = [], []
    for pair, true in zip(pairs, truth, strict=True):
        flow = resize_flow(estimator.pairs(pair)[0], h, w)
        errors.append(np.linalg.norm(sample_on_truth_grid(flow, rows, cols) - true, axis=-1))
        gx = (np.arange(cols) + 0.5) * w / cols - 0.5
        gy = (np.arange(rows) + 0.5) * h / rows - 0.5
        tx, ty = gx[None, :] + true[..., 0], gy[:, None] + true[..., 1]
        inside.append((tx >= 2) & (tx <= w - 3) & (ty >= 2) & (ty <= h - 3))
    return np.stack(errors), np.stack(inside)


@pytest.fixture(scope="module")
def estimators() -> dict[str, FlowEstimator]:
    return {
        "dis": FlowEstimator(FlowConfig(backend="dis")),
        "farneback": FlowEstimator(FlowConfig(backend="farneback")),
    }


@pytest.mark.parametrize("video", list(EPE_BOUNDS))
def test_epe_against_corpus_truth(corpus_dir: Path, estimators: dict[str, FlowEstimator], video: str):
    _, pairs, truth = corpus_pairs(str(corpus_dir / video), N_PAIRS)
    for backend, bound in zip(("dis", "farneback"), EPE_BOUNDS[video], strict=True):
        errors, inside = end_point_errors(estimators[backend], pairs, truth)
        assert inside.mean() > 0.8
        assert errors[inside].mean() < bound, f"{backend} on {video}: EPE {errors[inside].mean():.3f} >= {bound}"


def test_epe_on_moving_objects(corpus_dir: Path, estimators: dict[str, FlowEstimator]):
    """`objects`: static camera; truth is the object displacement on object pixels (alpha >= 0.5) and 0 elsewhere,
    so the moving-object pixels are where the estimate is really tested. Both objects move in frames 50-74."""
    _, pairs, truth = corpus_pairs(str(corpus_dir / "objects.mp4"), N_PAIRS, 52, 72)
    moving = np.linalg.norm(truth, axis=-1) > 0
    assert moving.mean() > 0.02
    for backend, bound in (("dis", 0.6), ("farneback", 0.4)):  # measured 0.20 and 0.11
        errors, _ = end_point_errors(estimators[backend], pairs, truth)
        assert errors[moving].mean() < bound, f"{backend}: EPE on objects {errors[moving].mean():.3f}"
        assert errors[~moving].mean() < 0.2, f"{backend}: EPE on the static background {errors[~moving].mean():.3f}"


@pytest.mark.parametrize("backend", ["dis", "farneback"])
def test_integer_translation(backend: str):
    a = textured(128, 160)
    b = np.roll(a, shift=(2, 3), axis=(0, 1))  # content moves 3 px right, 2 px down
    flow = estimate_flow(a, b, backend)
    assert flow.shape == (128, 160, 2) and flow.dtype == np.float32
    interior = flow[16:-16, 16:-16]
    np.testing.assert_allclose(np.median(interior, axis=(0, 1)), [3.0, 2.0], atol=0.05)
    assert np.abs(interior - [3.0, 2.0]).mean() < 0.15


def test_working_resolution_scales_flow():
    a = textured(128, 160, seed=3)
    frames = np.stack([a, np.roll(a, shift=(2, 4), axis=(0, 1))])
    est = FlowEstimator(FlowConfig(backend="dis", short_side=64))
    assert est.working_size(128, 160) == (64, 80) == working_size(128, 160, 64)
    flow = est.pairs(frames)
    assert flow.shape == (1, 64, 80, 2)
    # Flow is in working-resolution pixels: a (4, 2) px shift at full size is (2, 1) at half size.
    np.testing.assert_allclose(np.median(flow[0, 8:-8, 8:-8], axis=(0, 1)), [2.0, 1.0], atol=0.05)
    np.testing.assert_allclose(np.median(resize_flow(flow[0], 128, 160)[16:-16, 16:-16], axis=(0, 1)), [4, 2], atol=0.1)


def test_config_validation(tmp_path: Path):
    assert FlowConfig().label == "dis/medium"
    assert FlowConfig(backend="farneback").label == "farneback"
    with pytest.raises(ValueError, match="flow.backend"):
        FlowConfig(backend="pwc")
    with pytest.raises(ValueError, match="flow.weights is required"):
        FlowConfig(backend="raft_small")
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match=f"flow.weights: RAFT weights file not found: {missing}"):
        FlowConfig(backend="raft_large", weights=str(missing))
    for bad in ({"short_side": 8}, {"batch_size": 0}, {"raft_iters": 0}, {"device": "gpu"}, {"dis_preset": "slow"}):
        with pytest.raises(ValueError, match="flow\\."):
            FlowConfig(**bad)
    assert FlowConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match="weights"):
        estimate_flow(textured(32, 32), textured(32, 32), "raft_small")


@pytest.fixture(scope="module")
def raft_small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised raft_small state_dict, saved like a real checkpoint (nothing is downloaded)."""
    import torch
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "raft_small.pth"
    torch.save(raft_small(weights=None, progress=False).state_dict(), path)
    return path


def test_raft_random_weights_pads_and_crops(raft_small_file: Path):
    frames = np.stack([np.roll(textured(96, 120, seed=5), 2 * t, axis=1) for t in range(3)])
    cfg = FlowConfig(backend="raft_small", weights=str(raft_small_file), raft_iters=3, batch_size=1, device="cpu")
    est = FlowEstimator(cfg)
    assert est.label == "raft_small" and est.device == "cpu"
    flow = est.pairs(frames)  # 96x120 -> padded to 128x128 for RAFT, cropped back
    assert flow.shape == (2, 96, 120, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
    # One batch of two pairs gives the same flow as two batches of one.
    batched = FlowEstimator(dataclasses.replace(cfg, batch_size=8)).pairs(frames)
    np.testing.assert_allclose(batched, flow, atol=1e-3)


def test_raft_checkpoint_formats(raft_small_file: Path, tmp_path: Path):
    import torch

    state = torch.load(raft_small_file, weights_only=True)
    for name, payload in (
        ("wrapped.pth", {"state_dict": state}),
        ("ddp.pth", {"model": {f"module.{k}": v for k, v in state.items()}}),
    ):
        torch.save(payload, tmp_path / name)
        FlowEstimator(FlowConfig(backend="raft_small", weights=str(tmp_path / name), device="cpu"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        FlowEstimator(FlowConfig(backend="raft_small", weights=str(tmp_path / "junk.pth"), device="cpu"))


def test_raft_wrong_architecture(tmp_path: Path):
    import torch
    from torchvision.models.optical_flow import raft_large

    path = tmp_path / "raft_large.pth"
    torch.save(raft_large(weights=None, progress=False).state_dict(), path)
    with pytest.raises(ValueError, match="is not a torchvision raft_small state_dict: .*missing keys"):
        FlowEstimator(FlowConfig(backend="raft_small", weights=str(path), device="cpu"))


def test_bad_inputs(monkeypatch: pytest.MonkeyPatch):
    est = FlowEstimator(FlowConfig())
    with pytest.raises(AnnotatorError) as err:
        est.pairs(textured(64, 64)[None])
    assert err.value.reason == "too_few_frames"
    with pytest.raises(AnnotatorError) as err:
        est.pairs(np.zeros((3, 8, 8, 3), np.uint8))
    assert err.value.reason == "frame_too_small"
    for bad in (np.zeros((3, 32, 32), np.uint8), np.zeros((2, 32, 32, 3), np.float32), [1, 2]):
        with pytest.raises(AnnotatorError) as err:
            est.pairs(bad)
        assert err.value.reason == "bad_frames"
    monkeypatch.setattr(FlowEstimator, "_cv_pairs", lambda self, f: np.full((len(f) - 1, *f.shape[1:3], 2), np.nan))
    with pytest.raises(AnnotatorError) as err:
        est.pairs(np.stack([textured(32, 32)] * 2))
    assert err.value.reason == "flow_not_finite"


def test_annotator_isolates_bad_clips():
    good = np.stack([np.roll(textured(48, 64, seed=7), t, axis=1) for t in range(4)])
    batch = {"clip_id": np.array(["bad", "good", "tiny"]), "frames": np.empty(3, dtype=object)}
    batch["frames"][0], batch["frames"][1], batch["frames"][2] = good[:1], good, np.zeros((4, 8, 8, 3), np.uint8)
    out = FlowAnnotator(FlowConfig())(batch)
    assert set(out) == {"clip_id", *FlowAnnotator.output_columns}
    assert list(out["clip_id"]) == ["bad", "good", "tiny"]
    assert out["flow"][0] is None and out["flow"][2] is None
    assert out["flow_error"][0].startswith("too_few_frames: ") and out["flow_error"][2].startswith("frame_too_small: ")
    flow = out["flow"][1]
    assert flow.shape == (3, 2, 48, 64) and flow.dtype == np.float32 and out["flow_error"][1] is None
    np.testing.assert_allclose(np.median(flow[:, :, 8:-8, 8:-8], axis=(2, 3)), [[1.0, 0.0]] * 3, atol=0.05)
    assert list(out["flow_backend"]) == ["dis/medium"] * 3


def test_annotator_backend_none():
    batch = {"clip_id": np.array(["a"]), "frames": np.empty(1, dtype=object)}
    batch["frames"][0] = np.zeros((2, 32, 32, 3), np.uint8)
    out = FlowAnnotator(FlowConfig(backend="none"))(batch)
    assert out["flow"][0] is None and out["flow_error"][0] is None and out["flow_backend"][0] == "none"
