"""Sampling the video DiT: Euler or Heun along the flow-matching path (t = 0 noise → t = 1 data, see
`training.flow_matching`), classifier-free guidance on the text, camera tokens as control, warped-noise
initialisation from a driving clip, STIV first-frame conditioning and EVD event gating.

Guidance is the standard form V = V(∅) + w·(V(y) − V(∅)) (EVD's reference code uses (1+w)·V(y) − w·V(∅); ours at
w equals theirs at w − 1). The camera tokens condition both branches: guidance is on the text only.

Event gating (EVD Algorithm 1): the conditional branch's head gives the activity a = σ(logits); smoothed 3×3, it
drives a soft gate σ(12·(ã − 0.5)) times a hysteresis state (on at 0.62, off at 0.38, starting off), scheduled as
ρ(t)·g + (1 − ρ(t)) with ρ = 1 until t* = 0.6 and linear to 0 at t = 1; the guided velocity is multiplied by the
gate, token by token. EVD's notes (§8.3) warn that gating the denoising velocity leaves gated tokens under-denoised;
`gate_floor` keeps a minimum share of the update (0 = the paper's rule).
"""

from __future__ import annotations

import dataclasses

import torch

from annotators.noise_warp import mix_noise
from training.events import event_gate, expand_to_pixels
from training.flow_matching import sampling_grid
from training.model import CAMERA_NULL, VideoDiT
from training.text import TextEncoder


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How to integrate the path."""

    steps: int = 50
    solver: str = "euler"  # euler | heun
    cfg_scale: float = 4.0  # text guidance w; 1 = no guidance (one model pass per evaluation)
    time_shift: float = 1.0  # the training objective's shift, so steps sit where training put its times
    event_gating: bool = True  # EVD gating (needs the model's event head)
    gate_floor: float = 0.0  # minimum gate value; 0 = the paper's rule
    beta: float = 0.9  # share of the driving clip's warped noise in the initial noise (EquiVDM)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.solver not in ("euler", "heun"):
            raise ValueError(f"steps must be >= 1 and solver euler or heun, got {self.steps}, {self.solver!r}")
        if self.cfg_scale < 0 or not 0 <= self.gate_floor <= 1 or not 0 <= self.beta <= 1:
            raise ValueError("cfg_scale must be >= 0, gate_floor and beta in [0, 1]")


@dataclasses.dataclass
class _Guided:
    """One guided evaluation of the model, carrying the hysteresis state and the last activity between calls."""

    model: VideoDiT
    cond: tuple[torch.Tensor, torch.Tensor]
    uncond: tuple[torch.Tensor, torch.Tensor]
    camera: torch.Tensor | None
    cfg: SamplerConfig
    state: torch.Tensor | None = None
    activity: torch.Tensor | None = None
    gates: list[float] = dataclasses.field(default_factory=list)

    def __call__(self, x: torch.Tensor, t: float, update_gate: bool = True) -> torch.Tensor:
        b = x.shape[0]
        tt = torch.full((b,), float(t), device=x.device)
        field = self.activity if self.model.event_in is not None else None
        out = self.model(x, tt, *self.cond, camera_tokens=self.camera, event_field=field)
        v = out.velocity
        if self.cfg.cfg_scale != 1.0:
            v_u = self.model(x, tt, *self.uncond, camera_tokens=self.camera, event_field=field).velocity
            v = v_u + self.cfg.cfg_scale * (v - v_u)
        if out.event_logits is None:
            return v
        activity = torch.sigmoid(out.event_logits.float())
        if self.cfg.event_gating:
            gate, state = event_gate(activity, self.state, t)
            gate = self.cfg.gate_floor + (1.0 - self.cfg.gate_floor) * gate
            if update_gate:  # Heun's corrector re-evaluates the same step: the hysteresis advances once per step
                self.state = state
                self.gates.append(float(gate.mean()))
            v = v * expand_to_pixels(gate, self.model.patch).to(v.dtype)
        if update_gate:
            self.activity = activity
        return v


@torch.no_grad()
def sample(
    model: VideoDiT,
    text_encoder: TextEncoder,
    texts: list[str],
    shape: tuple[int, int, int, int],
    cfg: SamplerConfig,
    generator: torch.Generator,
    *,
    warped_noise: torch.Tensor | None = None,
    camera_tokens: torch.Tensor | None = None,
    first_frame: torch.Tensor | None = None,
    text: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Generate len(texts) videos of `shape` = (C, T, h, w): returns (B, C, T, h, w) in about [-1, 1] and a trace
    (mean gate per step). `warped_noise` (B, C, T, h, w) starts from a driving clip's motion (mixed with fresh noise
    at `cfg.beta`); `camera_tokens` (B, T-1) steer the camera; `first_frame` (B, C, h, w) is kept clean (STIV);
    `text` (embeddings (B, L, D), mask (B, L)) replaces encoding `texts` (precomputed embeddings)."""
    model.eval()
    device = next(model.parameters()).device
    b = len(texts)
    if warped_noise is not None:
        x = mix_noise(warped_noise.to(device).float(), cfg.beta, generator)
    else:
        x = torch.randn((b, *shape), generator=generator, device=generator.device).to(device)
    cond = tuple(e.to(device) for e in (text if text is not None else text_encoder(list(texts))))
    uncond = tuple(e.to(device) for e in text_encoder([""] * b))
    camera = camera_tokens.to(device).long() if camera_tokens is not None else None
    if camera is not None and model.camera_embed is None:
        raise ValueError("camera tokens given, but the model was trained without camera conditioning")
    guided = _Guided(model, cond, uncond, camera, cfg)  # type: ignore[arg-type]

    def clamp_first(z: torch.Tensor) -> torch.Tensor:
        if first_frame is None:
            return z
        z = z.clone()
        z[:, :, 0] = first_frame.to(device, z.dtype)
        return z

    grid = sampling_grid(cfg.steps, cfg.time_shift).tolist()
    x = clamp_first(x)
    for k in range(cfg.steps):
        t, t_next = grid[k], grid[k + 1]
        dt = t_next - t
        v = guided(x, t)
        if cfg.solver == "heun" and k < cfg.steps - 1:
            x_pred = clamp_first(x + dt * v)
            v = 0.5 * (v + guided(x_pred, t_next, update_gate=False))
        x = clamp_first(x + dt * v)
    return x, {"gate_mean": guided.gates}


def camera_null(b: int, frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Camera tokens that say "no camera information" for every step."""
    return torch.full((b, frames - 1), CAMERA_NULL, dtype=torch.long, device=device)
