"""Optical flow between consecutive frames of a clip: OpenCV DIS / Farneback on CPU, torchvision RAFT on GPU.

Conventions: flow is *forward* flow in pixels of the working resolution: frame t at pixel p (x = column,
y = row, pixel centres at integer coordinates) matches frame t+1 at p + flow[p]; channel 0 is dx, channel 1 dy.
`FlowEstimator.pairs` returns (T-1, H, W, 2); the `flow` column of `FlowAnnotator` is channels-first
(T-1, 2, H, W), the layout the noise warper and torch code consume.

Working resolution: with `short_side > 0` frames are resized (aspect kept) so that their short side is
`short_side` before flow is computed, and the flow is in pixels of that resized frame; `resize_flow` maps a
field to another resolution (values rescaled).

Backends and the `flow_backend` label recorded per clip:
- `dis` (label `dis/<preset>`): `cv2.DISOpticalFlow` on grayscale, the CPU default.
- `farneback` (label `farneback`): `cv2.calcOpticalFlowFarneback` on grayscale, pyramid depth from the frame size.
- `raft_small` / `raft_large` (label = backend name): torchvision RAFT with a local state_dict (`weights`);
  weights are never downloaded. Frames are replicate-padded to multiples of 8 and at least 128 px per side (RAFT
  returns NaN below 128 px, pytorch/vision#7338) and the flow is cropped back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any, ClassVar

import cv2
import numpy as np

from annotators.base import AnnotatorError, Batch, error_text, object_array
from annotators.models import read_state_dict, resolve_device

BACKENDS = ("dis", "farneback", "raft_small", "raft_large")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
MIN_SIDE = 16  # below this DIS (needs >= 12 px) / Farneback / RAFT produce nothing worth keeping
RAFT_MIN_SIDE = 128  # torchvision RAFT outputs NaN below 128x128
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Which flow backend to run, at what resolution, on which device."""

    backend: str = "dis"  # dis | farneback | raft_small | raft_large | none (no flow; motion columns stay null)
    weights: str = ""  # local torchvision RAFT state_dict (.pth); required for raft_*; never downloaded
    short_side: int = 0  # working resolution: resize so the short side is this (0 = frames as stored)
    batch_size: int = 8  # frame pairs per RAFT forward pass
    raft_iters: int = 12  # RAFT num_flow_updates (torchvision default)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto = cuda if available, else cpu)
    dis_preset: str = "medium"  # ultrafast | fast | medium
    store_scale: int = 1  # shards keep the flow on its grid / store_scale (area mean); 1 = as computed

    def __post_init__(self) -> None:
        if self.store_scale not in STORE_SCALES:
            raise ValueError(f"flow.store_scale must be one of {STORE_SCALES}, got {self.store_scale}")
        if self.backend not in (*BACKENDS, "none"):
            raise ValueError(f"flow.backend must be one of {(*BACKENDS, 'none')}, got {self.backend!r}")
        if self.backend.startswith("raft_"):
            if not self.weights:
                raise ValueError(
                    f"flow.weights is required for flow.backend={self.backend!r} "
                    "(a local torchvision RAFT state_dict; weights are never downloaded)"
                )
            if not os.path.isfile(self.weights):
                raise ValueError(
                    f"flow.weights: RAFT weights file not found: {self.weights} "
                    "(set flow.weights to a local torchvision RAFT state_dict)"
                )
        if self.short_side != 0 and self.short_side < MIN_SIDE:
            raise ValueError(f"flow.short_side must be 0 (stored size) or >= {MIN_SIDE}, got {self.short_side}")
        if self.batch_size < 1 or self.raft_iters < 1:
            raise ValueError("flow.batch_size and flow.raft_iters must be >= 1")
        if not _DEVICE_RE.match(self.device):
            raise ValueError(f"flow.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f"flow.dis_preset must be one of {tuple(DIS_PRESETS)}, got {self.dis_preset!r}")

    @property
    def label(self) -> str:
        """The `flow_backend` value recorded with every clip."""
        return f"dis/{self.dis_preset}" if self.backend == "dis" else self.backend


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) after scaling so the short side is `short_side` (0 = unchanged); the aspect ratio is kept."""
    if short_side <= 0:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


STORE_SCALES = (1, 2, 4, 8)


def downscale_flow(flow: np.ndarray, scale: int) -> np.ndarray:
    """(..., 2, h, w) flow in pixels of its grid -> (..., 2, h/scale, w/scale) in pixels of the smaller grid: the
    area mean of each scale x scale cell, divided by `scale`. A uniform field stays uniform (its vectors shrink by
    `scale`), and what the shards keep of flow shrinks by scale^2."""
    if scale == 1:
        return flow
    *lead, two, h, w = flow.shape
    if two != 2 or h % scale or w % scale:
        raise ValueError(f"flow of shape {flow.shape} cannot be stored at 1/{scale}: its sides must divide by {scale}")
    cells = flow.astype(np.float32).reshape(*lead, 2, h // scale, scale, w // scale, scale)
    return cells.mean(axis=(-3, -1)) / np.float32(scale)


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resample a (H, W, 2) flow field to (height, width, 2) and rescale its values to the new pixel size.

    Bilinear with cv2's half-pixel alignment (sample centres map to centres), so fields stay aligned both ways.
    """
    h, w = flow.shape[:2]
    if (h, w) == (height, width):
        return flow.astype(np.float32, copy=False)
    out = cv2.resize(flow.astype(np.float32, copy=False), (width, height), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= width / w
    out[..., 1] *= height / h
    return out


def load_raft_weights(model: Any, path: str, arch: str) -> None:
    """Load a local state_dict into a torchvision RAFT model, strictly; ValueError that says what went wrong.

    Accepts a raw state_dict or a checkpoint dict holding it under `state_dict` or `model`; a DataParallel
    `module.` prefix is stripped.
    """

    if not os.path.isfile(path):
        raise ValueError(
            f"flow.weights: RAFT weights file not found: {path} (set flow.weights to a local torchvision RAFT "
            "state_dict)"
        )
    state = read_state_dict(path, "flow.weights")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = [
            f"{len(name)} {what} (e.g. {name[0]})"
            for name, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (mismatched, "shape mismatches"),
            )
            if name
        ]
        raise ValueError(f"flow.weights: {path} is not a torchvision {arch} state_dict: {', '.join(parts)}")
    model.load_state_dict(state, strict=True)


def farneback_levels(height: int, width: int) -> int:
    """Pyramid depth (cv2 counts the full-size image as level 1) so the coarsest level keeps >= ~16 px."""
    return max(1, min(6, int(math.log2(min(height, width) / MIN_SIDE)) + 1))


class FlowEstimator:
    """Loads one backend once; `pairs(frames)` computes forward flow between consecutive frames."""

    def __init__(self, cfg: FlowConfig) -> None:
        if cfg.backend not in BACKENDS:
            raise ValueError(f"FlowEstimator needs a flow backend, got flow.backend={cfg.backend!r}")
        self.cfg = cfg
        self.device = "cpu"
        self._dis: Any = None
        self._raft: Any = None
        if cfg.backend == "dis":
            self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[cfg.dis_preset])
        elif cfg.backend.startswith("raft_"):
            self._raft = self._load_raft(cfg)

    def _load_raft(self, cfg: FlowConfig) -> Any:
        from torchvision.models.optical_flow import raft_large, raft_small

        build = raft_small if cfg.backend == "raft_small" else raft_large
        model = build(weights=None, progress=False)  # architecture only; weights come from the local file
        load_raft_weights(model, cfg.weights, cfg.backend)
        self.device = resolve_device(cfg.device)
        return model.eval().to(self.device)

    @property
    def label(self) -> str:
        return self.cfg.label

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the backend sees for stored frames of (height, width)."""
        return working_size(height, width, self.cfg.short_side)

    def pairs(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T-1, h, w, 2) float32 forward flow at the working resolution."""
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
            shape = getattr(frames, "shape", type(frames).__name__)
            raise AnnotatorError("bad_frames", f"expected (T, H, W, 3) frames, got {shape}")
        if frames.dtype != np.uint8:
            raise AnnotatorError("bad_frames", f"expected uint8 frames, got {frames.dtype}")
        t, h, w = frames.shape[:3]
        if t < 2:
            raise AnnotatorError("too_few_frames", f"{t} frame(s), flow needs >= 2")
        if min(h, w) < MIN_SIDE:
            raise AnnotatorError("frame_too_small", f"{w}x{h} frames, flow needs >= {MIN_SIDE} px per side")
        wh, ww = self.working_size(h, w)
        if (wh, ww) != (h, w):
            interp = cv2.INTER_AREA if wh < h else cv2.INTER_LINEAR  # area averaging avoids aliasing on shrink
            frames = np.stack([cv2.resize(f, (ww, wh), interpolation=interp) for f in frames])
        flow = self._raft_pairs(frames) if self._raft is not None else self._cv_pairs(frames)
        if not np.isfinite(flow).all():
            raise AnnotatorError("flow_not_finite", f"{self.label} returned NaN/inf for {ww}x{wh} frames")
        return flow

    def _cv_pairs(self, frames: np.ndarray) -> np.ndarray:
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        h, w = gray[0].shape
        out = np.empty((len(gray) - 1, h, w, 2), np.float32)
        if self._dis is not None:
            for i in range(len(gray) - 1):
                out[i] = self._dis.calc(gray[i], gray[i + 1], None)
        else:
            levels = farneback_levels(h, w)
            for i in range(len(gray) - 1):
                # pyr_scale 0.5, winsize 15, 3 iterations, poly_n 5 / sigma 1.2: the values OpenCV's own samples use.
                out[i] = cv2.calcOpticalFlowFarneback(gray[i], gray[i + 1], None, 0.5, levels, 15, 3, 5, 1.2, 0)
        return out

    def _raft_pairs(self, frames: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        t, h, w = frames.shape[:3]
        # RAFT needs sides that are multiples of 8 and at least 128 px; replicate padding adds no new edges.
        ph = max(RAFT_MIN_SIDE, -(-h // 8) * 8) - h
        pw = max(RAFT_MIN_SIDE, -(-w // 8) * 8) - w
        out = np.empty((t - 1, h, w, 2), np.float32)
        with torch.inference_mode():
            images = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            if ph or pw:
                images = F.pad(images, (0, pw, 0, ph), mode="replicate")
            for start in range(0, t - 1, self.cfg.batch_size):
                stop = min(start + self.cfg.batch_size, t - 1)
                flows = self._raft(
                    images[start:stop], images[start + 1 : stop + 1], num_flow_updates=self.cfg.raft_iters
                )
                out[start:stop] = flows[-1][:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy()
        return out


@functools.lru_cache(maxsize=8)
def _cached_estimator(backend: str, weights: str, device: str) -> FlowEstimator:
    return FlowEstimator(FlowConfig(backend=backend, weights=weights, device=device))


def estimate_flow(
    frame_a: np.ndarray, frame_b: np.ndarray, backend: str = "dis", *, weights: str | None = None, device: str = "auto"
) -> np.ndarray:
    """Forward flow (H, W, 2) float32 from uint8 RGB `frame_a` to `frame_b`, at their own resolution.

    `flow[..., 0]` is dx, `flow[..., 1]` dy: frame_a at p matches frame_b at p + flow[p]. RAFT backends need
    `weights` (a local state_dict). Estimators are cached per (backend, weights, device).
    """
    if backend.startswith("raft_") and not weights:
        raise ValueError(f"estimate_flow(backend={backend!r}) needs weights= a local torchvision RAFT state_dict")
    estimator = _cached_estimator(backend, weights or "", device)
    return estimator.pairs(np.stack([frame_a, frame_b]))[0]


class FlowAnnotator:
    """Annotator: per clip, forward flow between consecutive stored frames (channels-first, working resolution)."""

    name: ClassVar[str] = "flow"
    output_columns: ClassVar[tuple[str, ...]] = ("flow", "flow_backend", "flow_error")

    def __init__(self, cfg: FlowConfig) -> None:
        self.cfg = cfg
        self.estimator = FlowEstimator(cfg) if cfg.backend != "none" else None

    def __call__(self, batch: Batch) -> Batch:
        flows: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for frames in batch["frames"]:
            if self.estimator is None:
                flows.append(None)
                errors.append(None)
                continue
            try:
                flow = self.estimator.pairs(frames)
            except AnnotatorError as exc:
                flows.append(None)
                errors.append(error_text(exc))
                continue
            flows.append(np.ascontiguousarray(flow.transpose(0, 3, 1, 2)))
            errors.append(None)
        n = len(batch["clip_id"])
        return {
            "clip_id": batch["clip_id"],
            "flow": object_array(flows),
            "flow_backend": np.array([self.cfg.label] * n, dtype=str),
            "flow_error": object_array(errors),
        }
