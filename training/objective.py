"""The training objective: flow matching on warped noise + STIV conditioning dropout + EVD event losses.

Per batch (conventions of `training.flow_matching`: t = 0 noise, t = 1 data):

* x0 = make_noise (warped noise degraded by gamma and mixed by beta, else i.i.d.), t = sample_t (time shift),
  x_t = t*x1 + (1-t)*x0, target v = x1 - x0.
* STIV: with probability 1 - p_image_drop a clip is image-conditioned: frame 0 of x_t is replaced by its clean
  latent (bit for bit) and masked out of every loss. Text is replaced by the empty string (precomputed embeddings:
  an all-masked row) with p_text_drop and the camera tokens by the null token with p_camera_drop, independently,
  so that CFG has an unconditional branch.
* EVD input injection gets the event pseudo-target (shrunk towards 0.5 by a random amount, see below) with dropout
  `event_dropout` to the null field.
* Loss = FM (masked MSE) + w(t)*c*(l_real*L_real + l_cons*L_cons + l_ord*L_ord) + l_act*BCE(head, pseudo-target)*c,
  the EVD terms and the activity term on rows with pseudo-targets only (`has_events`): elsewhere the head has no
  grounding, so pushing velocities around by its guesses would only add noise.

Missing optional batch keys switch their paths off: no `noise` -> i.i.d. noise; no `camera_tokens` -> null camera;
no `event_activity` -> no injection, no activity loss and (with `evd_rows="events"`) no EVD terms.

Random draws come from `generator` in a fixed order, whatever the configuration: t, noise, one (4, B) uniform block
(text, image, camera, event dropout), the field shrink (B,), the consistency offset (B,). Same generator state and
batch -> same losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from training import events
from training.flow_matching import interpolate, make_noise, rand, sample_t, velocity_target
from training.model import CAMERA_NULL, EVENT_NULL, VideoDiT
from training.text import TextEncoder

LOSS_KEYS = ("loss", "fm", "real", "cons", "ord", "act")
EVD_ROWS = ("events", "all")


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """Noise, time sampling, condition dropout and loss weights of one training step."""

    beta: float = 0.9  # EquiVDM: share of warped noise (1 = warped only, 0 = i.i.d.)
    gamma: float = 0.0  # GWTF degradation of the warped noise before mixing
    time_shift: float = 1.0  # AAPT/SD3 shift s (>1 = more time near noise; AAPT 24 and Yume 3 at high resolution)
    logit_normal: bool = False  # t = sigmoid(N(0, 1)) before the shift instead of U(0, 1)
    p_text_drop: float = 0.1  # STIV: text -> empty string
    p_image_drop: float = 0.08  # STIV: no first-frame replacement; otherwise frame 0 is clean and loss-masked
    p_camera_drop: float = 0.1  # camera tokens -> null (rows with has_camera only)
    event_dropout: float = 0.25  # EVD: injected event field -> null
    # The head is supervised against the same pseudo-target that is injected, so with a clean field it could learn
    # to copy its input; at sampling the field is its own previous (noisier) prediction. Shrinking the field towards
    # 0.5 by u ~ U(0, shrink) per row makes it a hint that still has to be checked against the video.
    event_field_shrink: float = 0.5
    lambda_real: float = 0.12  # EVD weights (papers/000 §3.7)
    lambda_cons: float = 0.08
    lambda_ord: float = 0.03
    # Supervised activity BCE. At init BCE = ln 2 ~ 0.69 against an FM loss of ~2 (var x1 + var x0), so 0.5 makes it
    # about a sixth of the objective: strong enough to dominate the EVD terms that otherwise decide what the head
    # means (realization pushes a -> 1, consistency a -> 0), weak enough not to steer the backbone away from FM.
    lambda_act: float = 0.5
    consistency_pass: bool = True  # L_cons needs a second forward pass at t' (about doubles the step's cost)
    cons_delta: float = 0.05  # |t' - t| <= delta (the paper's value is lost)
    time_weight_cutoff: float = 0.6  # EVD w(t) = 1 for t <= cutoff, exp(-kappa (t - cutoff)) after
    time_weight_kappa: float = 6.0
    use_time_weight: bool = True
    confidence_weighting: bool = True  # EVD Eq. 43: scale the event terms by the pseudo-target confidence
    evd_rows: str = "events"  # rows the EVD terms apply to: "events" (with pseudo-targets) | "all"
    tau_on: float = events.TAU_ON  # ordering-loss thresholds
    tau_off: float = events.TAU_OFF

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "p_text_drop", "p_image_drop", "p_camera_drop", "event_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"objective.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.event_field_shrink <= 1.0 or not 0.0 <= self.cons_delta <= 1.0:
            raise ValueError("objective.event_field_shrink and objective.cons_delta must be in [0, 1]")
        if self.time_shift <= 0:
            raise ValueError(f"objective.time_shift must be > 0, got {self.time_shift}")
        if min(self.lambda_real, self.lambda_cons, self.lambda_ord, self.lambda_act) < 0:
            raise ValueError("objective loss weights must be >= 0")
        if self.evd_rows not in EVD_ROWS:
            raise ValueError(f"objective.evd_rows must be one of {EVD_ROWS}, got {self.evd_rows!r}")


def _rows(batch: Mapping[str, Any], key: str, b: int, device: torch.device, default: bool) -> torch.Tensor:
    value = batch.get(key)
    if value is None:
        return torch.full((b,), default, dtype=torch.bool, device=device)
    return torch.as_tensor(value, device=device).to(torch.bool).reshape(b)


def replace_first_frame(xt: torch.Tensor, x1: torch.Tensor, replace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """STIV frame replacement: frame 0 of x_t becomes the clean x1 where `replace` (B,) is set; returns
    (x_t, loss mask (B, 1, T, 1, 1) float with frame 0 zeroed on replaced rows)."""
    b, _, frames = x1.shape[:3]
    first = torch.zeros((b, 1, frames, 1, 1), dtype=torch.bool, device=x1.device)
    first[:, :, 0] = replace.view(b, 1, 1, 1).to(torch.bool)
    return torch.where(first, x1, xt), (~first).to(x1.dtype)


def compute_losses(
    model: VideoDiT,
    text_encoder: TextEncoder,
    batch: Mapping[str, Any],
    cfg: ObjectiveConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss with grad, {loss, fm, real, cons, ord, act} as floats) for one batch; see the module docstring."""
    x1 = batch["latents"].float()
    b, _, frames = x1.shape[:3]
    device = x1.device
    grid = model.token_grid(x1.shape)
    patch = model.patch

    # Random draws, in the documented fixed order.
    t = sample_t(b, generator, cfg.time_shift, logit_normal=cfg.logit_normal, device=device)
    x0 = make_noise(batch, cfg, generator)
    u = rand((4, b), generator)  # on the generator's device: the text choice is made on the host
    shrink = rand((b,), generator, device) * cfg.event_field_shrink
    offset = (rand((b,), generator, device) * 2.0 - 1.0) * cfg.cons_delta

    drop_text = (u[0] < cfg.p_text_drop).tolist()
    replace = (u[1] >= cfg.p_image_drop).to(device) & (frames > 1)
    drop_camera, drop_events = (u[2] < cfg.p_camera_drop).to(device), (u[3] < cfg.event_dropout).to(device)

    xt, loss_mask = replace_first_frame(interpolate(x0, x1, t), x1, replace)
    target = velocity_target(x0, x1)

    text_emb, text_mask = text_encoder.encode_batch(batch, drop_text)
    text_emb, text_mask = text_emb.to(device), text_mask.to(device)

    camera = None
    if batch.get("camera_tokens") is not None and model.camera_embed is not None:
        keep = _rows(batch, "has_camera", b, device, True) & ~drop_camera
        camera = torch.where(keep[:, None], batch["camera_tokens"].to(device).long(), CAMERA_NULL)

    targets = batch.get("event_activity")
    has_events = _rows(batch, "has_events", b, device, True) if targets is not None else torch.zeros_like(replace)
    if targets is not None:
        targets = targets.to(device=device, dtype=torch.float32)
        if tuple(targets.shape) != (b, *grid):
            raise ValueError(f"event_activity must be on the token grid {(b, *grid)}, got {tuple(targets.shape)}")
    confidence = batch.get("event_confidence")
    confidence = torch.ones(b, device=device) if confidence is None else confidence.to(device).float()

    field = None
    if targets is not None and model.event_in is not None:
        hint = targets + shrink.view(b, 1, 1, 1) * (0.5 - targets)
        on = (has_events & ~drop_events).view(b, 1, 1, 1)
        field = torch.where(on, hint, torch.full_like(hint, EVENT_NULL))

    out = model(xt, t, text_emb, text_mask, camera, field)
    fm = events.masked_mean((out.velocity.float() - target).square(), loss_mask).mean()
    total = fm
    zero = torch.zeros((), device=device)
    real = cons = order = act = zero

    # Without pseudo-targets in the batch no row qualifies for the EVD terms (evd_rows="events"): skip them, and
    # above all the second pass, statically (a per-row test would need a device sync).
    if out.event_logits is not None and (targets is not None or cfg.evd_rows == "all"):
        logits = out.event_logits.float()
        activity = torch.sigmoid(logits)
        smooth = events.smooth_activity(activity)
        weight = has_events.float() if cfg.evd_rows == "events" else torch.ones(b, device=device)
        if cfg.confidence_weighting:
            conf = confidence.nan_to_num(0.0).clamp(0.0, 1.0)
            weight = weight * torch.where(has_events, conf, torch.ones_like(conf))
        if cfg.use_time_weight:
            weight = weight * events.time_weight(t, cfg.time_weight_cutoff, cfg.time_weight_kappa)
        v = out.velocity.float()
        real = (weight * events.realization_loss(v, smooth, patch, loss_mask)).sum() / b
        order = (weight * events.ordering_loss(v, smooth, patch, loss_mask, cfg.tau_on, cfg.tau_off)).sum() / b
        if cfg.consistency_pass and cfg.lambda_cons > 0:
            t2 = (t + offset).clamp(0.0, 1.0)
            xt2, _ = replace_first_frame(interpolate(x0, x1, t2), x1, replace)
            out2 = model(xt2, t2, text_emb, text_mask, camera, field)
            pair = events.consistency_loss(
                v, activity, out2.velocity.float(), torch.sigmoid(out2.event_logits.float()), patch, loss_mask
            )
            cons = (weight * pair).sum() / b
        if targets is not None:
            act = events.activity_loss(logits, targets, confidence, has_events)
        for lam, term in ((cfg.lambda_real, real), (cfg.lambda_cons, cons), (cfg.lambda_ord, order)):
            if lam > 0:  # skipped (not multiplied by 0) so that all-zero weights give exactly the FM loss
                total = total + lam * term
        if cfg.lambda_act > 0 and targets is not None:
            total = total + cfg.lambda_act * act

    values = torch.stack([total, fm, real, cons, order, act]).detach().float().cpu().tolist()  # one device sync
    return total, dict(zip(LOSS_KEYS, values, strict=True))
