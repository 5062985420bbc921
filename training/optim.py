"""Optimisation pieces shared by every training stage: optimizer and schedule, weight EMA, data-parallel gradient
averaging and autocast. Pure of the loop: `training.train` and `training.trainers` both use them."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.distributed as dist

from training.config import OptimConfig


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate before optimizer step `step` (0-based): linear warm-up over
    `warmup_steps`, then constant or cosine down to `min_lr_ratio` at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, norms, scalars (event alpha) and embedding tables are left alone."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or "embed" in name or "norm" in name or name.endswith(".bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(modules: list[torch.nn.Module], cfg: OptimConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW (default) or RMSProp (AAPT's adversarial stage, smoothing `alpha`) over the modules' trainable weights."""
    groups = param_groups(modules, cfg.weight_decay)
    lr = cfg.lr if lr is None else lr
    if cfg.kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.alpha)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total_steps))


class EMA:
    """Exponential moving average of trainable weights (kept in float32 next to them)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> list[torch.Tensor]:
        return self.shadow

    def load_state_dict(self, shadow: list[torch.Tensor]) -> None:
        self.shadow = [s.to(self.shadow[0].device) for s in shadow]


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Data parallel: one all-reduce of all gradients (flattened), then the mean. Every rank starts from rank 0's
    weights and applies the same averaged update, so the replicas stay identical (what DDP does, without its hooks,
    which the objective's optional second forward pass and the adversarial rollout would trip)."""
    if world <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_parameters(modules: list[torch.nn.Module]) -> None:
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA under precision auto (or bf16 anywhere asked); fp32 otherwise."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
