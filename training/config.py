"""Training configuration: one typed tree (data, model, objective, optimizer, loop), loaded from a TOML preset in
`training/configs/` plus `--set section.key=value` overrides, validated before any work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from curation.typed_config import ConfigError, load_dataclass
from training.aapt import STAGES, AAPTConfig
from training.data import DataConfig
from training.model import ModelConfig
from training.objective import ObjectiveConfig

__all__ = ["ConfigError", "OptimConfig", "TrainConfig", "load_train_config", "preset_path"]

OPTIMIZERS = ("adamw", "rmsprop")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW (or RMSProp) with linear warm-up then cosine decay, global-norm clipping and an EMA of the weights
    (EVD §4 values where they apply at small scale)."""

    kind: str = "adamw"  # adamw | rmsprop (AAPT's adversarial stages: RMSProp with alpha 0.9)
    alpha: float = 0.9  # RMSProp smoothing constant
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.02  # not on biases, norms, embeddings of position/time (see train.param_groups)
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    grad_clip: float = 0.5  # global L2 norm; 0 = off
    ema_decay: float = 0.999  # 0 = no EMA

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {self.betas}")
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"optim.kind must be one of {OPTIMIZERS}, got {self.kind!r}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"optim.alpha must be in [0, 1), got {self.alpha}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be cosine or constant, got {self.schedule!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.warmup_steps, weight_decay and grad_clip must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("optim.min_lr_ratio must be in [0, 1] and optim.ema_decay in [0, 1)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; recorded in every checkpoint."""

    stage: str = "diffusion"  # diffusion (bidirectional) | AAPT: adapt | distill | adversarial | long (--stage)
    steps: int = 200  # optimizer steps
    seed: int = 0
    device: str = "auto"  # auto (cuda:LOCAL_RANK when available, else cpu) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    log_every: int = 10  # steps between progress lines (every step goes to metrics.jsonl)
    checkpoint_every: int = 50  # steps; the last step always checkpoints
    keep_checkpoints: int = 2  # newest kept; older ones deleted
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    aapt: AAPTConfig = dataclasses.field(default_factory=AAPTConfig)

    def __post_init__(self) -> None:
        if self.stage not in ("diffusion", *STAGES):
            raise ValueError(f"stage must be diffusion or one of {STAGES}, got {self.stage!r}")
        for name in ("steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def preset_path(name: str) -> Path:
    """A preset shipped in `training/configs/` ('debug': the CPU smoke size; 'default'; 'stages/adapt', ...)."""
    return Path(str(resources.files("training") / "configs" / f"{name}.toml"))


def load_train_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), stage: str | None = None
) -> TrainConfig:
    """The preset at `path` (default: 'default'), then the stage's recipe (`training/configs/stages/STAGE.toml`:
    the keys that make the stage, such as the causal model, the time shift and the optimizer, not sizes), then
    `section.key=value` overrides; ConfigError names a bad key."""
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    layers = [preset_path(f"stages/{stage}")] if stage else []
    return load_dataclass(TrainConfig, Path(path) if path else preset_path("default"), overrides, layers)
