"""EVD event math (papers/000 §3.3-3.7), pure functions on token-grid tensors.

Activity maps are (B, T', H', W') on the model's token grid (T' = T/pt, H' = h/ph, W' = w/pw); velocities are in
pixel/latent form (B, C, T, h, w) and activity is expanded to it by repeating each token over its patch, so that a
mean over elements equals EVD's token-form mean up to a constant factor.

Time follows `training.flow_matching`: t = 0 is noise, t = 1 is data, so EVD's "early steps" are small t and the
gate schedule is rho(t) = 1 for t <= t*, then (1 - t)/(1 - t*) down to 0 at t = 1.

Per-sample losses return (B,) tensors so that the objective can apply the time weight, the pseudo-target confidence
and the row masks per sample before averaging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GATE_BETA = 12.0
TAU_ON = 0.62
TAU_OFF = 0.38
T_STAR = 0.6


def _as_5d(a: torch.Tensor) -> torch.Tensor:
    if a.ndim != 4:
        raise ValueError(f"activity must be (B, T', H', W'), got shape {tuple(a.shape)}")
    return a.unsqueeze(1)


def smooth_activity(a: torch.Tensor) -> torch.Tensor:
    """3x3 spatial average per token frame (avg_pool3d kernel (1, 3, 3), stride 1, replicate padding); no temporal
    smoothing. Replicate padding keeps a constant map constant up to the border (zero padding would darken it)."""
    x = F.pad(_as_5d(a), (1, 1, 1, 1, 0, 0), mode="replicate")
    return F.avg_pool3d(x, kernel_size=(1, 3, 3), stride=1).squeeze(1)


def soft_gate(a: torch.Tensor, beta: float = GATE_BETA, on: float = TAU_ON, off: float = TAU_OFF) -> torch.Tensor:
    """sigma(beta * (a - (on + off)/2)): a soft step centred between the hysteresis thresholds."""
    return torch.sigmoid(beta * (a - 0.5 * (on + off)))


def hysteresis(
    a: torch.Tensor, prev_state: torch.Tensor | None = None, on: float = TAU_ON, off: float = TAU_OFF
) -> torch.Tensor:
    """Binary per-token state over sampling steps: a >= on -> 1, a <= off -> 0, otherwise the previous state.

    `prev_state=None` is the initial state, all off (0), as in the EVD reference code: a token has to reach `on` once
    before the band between the thresholds can keep it open. Returns a float tensor of 0/1 shaped like `a`.
    """
    if off > on:
        raise ValueError(f"hysteresis needs off <= on, got on={on}, off={off}")
    prev = torch.zeros_like(a) if prev_state is None else prev_state.to(dtype=a.dtype)
    state = torch.where(a >= on, torch.ones_like(a), prev)
    return torch.where(a <= off, torch.zeros_like(a), state)


def gate_schedule(t: torch.Tensor | float, t_star: float = T_STAR) -> torch.Tensor:
    """rho(t): 1 (full gating) for t <= t*, then linear down to 0 (no gating) at t = 1."""
    if not 0.0 <= t_star < 1.0:
        raise ValueError(f"t_star must be in [0, 1), got {t_star}")
    t = torch.as_tensor(t, dtype=torch.float32) if not isinstance(t, torch.Tensor) else t
    return ((1.0 - t) / (1.0 - t_star)).clamp(0.0, 1.0)


def scheduled_gate(g: torch.Tensor, rho: torch.Tensor | float) -> torch.Tensor:
    """rho*g + (1 - rho): rho = 1 is the full gate, rho = 0 the ungated base model. rho is a scalar or (B,)."""
    rho = torch.as_tensor(rho, dtype=g.dtype, device=g.device)
    if rho.ndim == 1:
        rho = rho.view(-1, *([1] * (g.ndim - 1)))
    return rho * g + (1.0 - rho)


def event_gate(
    activity: torch.Tensor,
    prev_state: torch.Tensor | None,
    t: torch.Tensor | float,
    *,
    beta: float = GATE_BETA,
    on: float = TAU_ON,
    off: float = TAU_OFF,
    t_star: float = T_STAR,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampling step of EVD Algorithm 1: smooth -> soft gate * hysteresis -> schedule.

    activity (B, T', H', W') in [0, 1] (sigmoid of the head's logits); returns (gate in [0, 1], new hysteresis state).
    """
    smooth = smooth_activity(activity)
    state = hysteresis(smooth, prev_state, on, off)
    gate = scheduled_gate(soft_gate(smooth, beta, on, off) * state, gate_schedule(t, t_star).to(activity.device))
    return gate, state


def expand_to_pixels(tokens: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, T', H', W') token map -> (B, 1, T'*pt, H'*ph, W'*pw), each token repeated over its patch."""
    pt, ph, pw = patch
    x = _as_5d(tokens)
    return x.repeat_interleave(pt, 2).repeat_interleave(ph, 3).repeat_interleave(pw, 4)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean of x (B, ...) over the elements where `mask` (broadcastable to x) is non-zero -> (B,)."""
    if mask is None:
        return x.flatten(1).mean(1)
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def realization_loss(
    velocity: torch.Tensor, activity: torch.Tensor, patch: tuple[int, int, int], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """EVD L_real (Eq. 14): mean ((1 - a) * V)^2, update energy spent in low-activity tokens -> (B,)."""
    a = expand_to_pixels(activity, patch)
    return masked_mean(((1.0 - a) * velocity).square(), mask)


def consistency_loss(
    velocity: torch.Tensor,
    activity: torch.Tensor,
    velocity2: torch.Tensor,
    activity2: torch.Tensor,
    patch: tuple[int, int, int],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """EVD L_cons (Eq. 15, reference form): mean (a*V - a'*V')^2 between two nearby times t, t' -> (B,)."""
    a, a2 = expand_to_pixels(activity, patch), expand_to_pixels(activity2, patch)
    return masked_mean((a * velocity - a2 * velocity2).square(), mask)


def ordering_loss(
    velocity: torch.Tensor,
    activity: torch.Tensor,
    patch: tuple[int, int, int],
    mask: torch.Tensor | None = None,
    on: float = TAU_ON,
    off: float = TAU_OFF,
) -> torch.Tensor:
    """EVD L_ord (Eq. 16): mean (1[a < on] + 1[a < off]) * V^2: updates before initiation / after termination.
    The indicators carry no gradient (they only select tokens), as in the reference code."""
    with torch.no_grad():
        w = (activity < on).to(velocity.dtype) + (activity < off).to(velocity.dtype)
    return masked_mean(expand_to_pixels(w, patch) * velocity.square(), mask)


def time_weight(t: torch.Tensor | float, cutoff: float = T_STAR, kappa: float = 6.0) -> torch.Tensor:
    """w(t) = 1 for t <= cutoff (early, noisy steps, where EVD's terms matter), exp(-kappa*(t - cutoff)) after."""
    t = torch.as_tensor(t, dtype=torch.float32) if not isinstance(t, torch.Tensor) else t
    return torch.exp(-kappa * (t - cutoff).clamp_min(0.0))


def activity_loss(
    logits: torch.Tensor, targets: torch.Tensor, confidence: torch.Tensor, has_events: torch.Tensor
) -> torch.Tensor:
    """Supervised head loss (the term EVD lacks, papers/000 §8): BCE(sigmoid(logits), pseudo-target) per row,
    weighted by the row's pseudo-target confidence, zero for rows without targets, averaged over the whole batch
    (so a row's pull does not depend on how many other rows have targets). Returns a scalar."""
    if logits.shape != targets.shape:
        raise ValueError(f"event logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    rows = has_events.to(device=logits.device, dtype=torch.bool)
    # Non-finite targets on rows without events must not poison the sum (0 * nan = nan).
    safe = torch.where(rows.view(-1, 1, 1, 1), targets.to(logits.dtype), torch.zeros_like(logits)).clamp(0.0, 1.0)
    per_row = F.binary_cross_entropy_with_logits(logits, safe, reduction="none").flatten(1).mean(1)
    conf = confidence.to(device=logits.device, dtype=logits.dtype)
    weight = torch.where(rows, conf.nan_to_num(0.0).clamp(0.0, 1.0), torch.zeros_like(conf))
    return (per_row * weight).sum() / max(logits.shape[0], 1)
