"""Warped noise per clip: the training noise video transported along the clip's optical flow (EquiVDM, GWTF).

The noise lives on the training latent grid: `channels` x (frame height / factor) x (frame width / factor) of the
STORED frames, so it must match the model's latent grid (the manifest records it). Warping runs on a grid
`warp_scale` times finer than the noise grid so sub-pixel motion accumulates (flow is rounded on that grid), then
area-pools back. What is stored is the pure warped noise, before EquiVDM's beta mixing and GWTF's degradation,
which happen at training time (`annotators.noise_warp.mix_noise`, `degrade_noise`). The math is in
`annotators.noise_warp`; this module picks the grid, the per-clip seed and the device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import warnings
from types import ModuleType
from typing import ClassVar

import numpy as np

from annotators.base import AnnotatorError, Batch, per_clip
from annotators.models import resolve_device


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    """Warped-noise grid and seeding; the grid must equal the training latent grid."""

    enabled: bool = True
    channels: int = 4  # latent channels (4 for SD-style VAEs, 16 for Wan/CogVideoX-style ones)
    factor: int = 8  # spatial downsampling from the stored frames to the latent grid (8 for common VAEs)
    warp_scale: int = 16  # warp grid = latent grid x this; 2x the frame grid resolves 0.5 px/frame (GWTF: 4x)
    seed: int = 0  # base seed; each clip's seed is derived from it and the clip_id
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Latent frames: 1 keeps every stored frame (pixel space, image VAEs); a video VAE's temporal factor (set from
    # [latents] when a VAE is configured) keeps 1 + (T - 1) / factor frames, chosen by `temporal`.
    temporal_factor: int = 1
    temporal: str = "nearest"  # nearest (frames 0, 4, 8, ...: GWTF's default) | blend (group mean, renormalised)
    # auto | reference | fused: the numba-fused CPU warp is bit-identical to the torch reference, so the choice
    # changes speed only; auto takes fused when numba imports (CPU devices; CUDA always runs the reference)
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.channels < 1 or self.factor < 1 or self.warp_scale < 1 or self.temporal_factor < 1:
            raise ValueError("noise.channels, noise.factor, noise.warp_scale and noise.temporal_factor must be >= 1")
        if self.temporal not in ("nearest", "blend"):
            raise ValueError(f"noise.temporal must be nearest or blend, got {self.temporal!r}")
        if self.seed < 0:
            raise ValueError("noise.seed must be >= 0")
        if self.backend not in BACKENDS:
            raise ValueError(f"noise.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


BACKENDS = ("auto", "reference", "fused")
_warned_fallback = False


def select_warper(backend: str, device_type: str) -> ModuleType:
    """The module whose `warped_noise_video` makes the noise: `annotators.noise_warp_fused` or the reference
    `annotators.noise_warp`. `auto` falls back to the reference when numba is missing (one warning per process)
    or the device is not a CPU; `fused` there is a configuration error."""
    global _warned_fallback
    from annotators import noise_warp  # torch: loaded where noise is made, not by everything importing configs

    if backend == "reference":
        return noise_warp
    if device_type != "cpu":
        if backend == "fused":
            raise ValueError(f"noise.backend = fused runs on CPU only; the noise device is {device_type}")
        return noise_warp
    try:
        noise_warp_fused = importlib.import_module("annotators.noise_warp_fused")
    except ImportError as exc:
        if backend == "fused":
            raise ValueError(f"noise.backend = fused needs numba: {exc}") from exc
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"numba unavailable ({exc}): warped noise uses the torch reference warp", stacklevel=2)
        return noise_warp
    noise_warp_fused.warm_up()  # compile or load the cached kernels once, not inside the first clip
    return noise_warp_fused


def clip_noise_seed(clip_id: str, base_seed: int) -> int:
    """A 63-bit seed that depends only on the clip and the base seed (stable across runs and machines)."""
    digest = hashlib.sha256(f"{base_seed}:{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _device_type(device: str) -> str:
    return str(device).split(":")[0]  # "cuda:1" -> "cuda"


def noise_grid(frame_height: int, frame_width: int, factor: int) -> tuple[int, int]:
    if frame_height % factor or frame_width % factor:
        raise AnnotatorError("bad_noise_grid", f"frames {frame_width}x{frame_height} not divisible by {factor}")
    return frame_height // factor, frame_width // factor


class WarpedNoiser:
    """Warped noise (T', C, H/factor, W/factor) float16 per clip from its `flow` and `frames` columns; T' = T, or
    the VAE's latent frames with `temporal_factor` > 1."""

    name: ClassVar[str] = "warped_noise"
    output_columns: ClassVar[tuple[str, ...]] = (
        "warped_noise",
        "noise_seed",
        "noise_warper_version",
        "warped_noise_error",
    )

    def __init__(self, cfg: NoiseConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        from annotators import noise_warp  # torch: loaded where noise is made, not by everything importing configs

        self.warper = noise_warp  # version, frame reduction; the warp itself comes from the chosen backend
        self.backend = select_warper(cfg.backend, _device_type(self.device))

    def __call__(self, batch: Batch) -> Batch:
        inputs = zip(batch["clip_id"], batch["flow"], batch["frames"], strict=True)
        return {"clip_id": batch["clip_id"], **per_clip(self.name, self.output_columns, inputs, self.annotate)}

    def annotate(self, clip_id: str, flow: np.ndarray | None, frames: np.ndarray) -> dict:
        seed = clip_noise_seed(str(clip_id), self.cfg.seed)
        noise = self.noise_for(flow, frames.shape[1:3], seed)
        return {"warped_noise": noise, "noise_seed": seed, "noise_warper_version": self.warper.WARPER_VERSION}

    def noise_for(self, flow: np.ndarray | None, frame_size: tuple[int, int], seed: int) -> np.ndarray:
        if flow is None:
            raise AnnotatorError("no_flow", "the flow annotator produced nothing for this clip")
        c = self.cfg
        try:  # the warp checks the flow's finiteness (once per clip: it is a pass over all of it)
            noise = self.backend.warped_noise_video(
                flow,
                channels=c.channels,
                noise_size=noise_grid(*frame_size, c.factor),
                warp_scale=c.warp_scale,
                seed=seed,
                device=self.device,
            )
        except self.warper.NonFiniteFlowError as exc:
            raise AnnotatorError("flow_not_finite", "flow has NaN or inf values") from exc
        if c.temporal_factor > 1:
            if (noise.shape[0] - 1) % c.temporal_factor:
                raise AnnotatorError(
                    "bad_noise_frames",
                    f"{noise.shape[0]} frames do not make whole latent frames at temporal factor {c.temporal_factor}",
                )
            noise = self.warper.reduce_noise_frames(noise, c.temporal_factor, c.temporal)
        return noise.cpu().numpy().astype(np.float16)
