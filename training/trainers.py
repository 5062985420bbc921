"""One optimisation step per stage: what `training.train`'s loop calls, and what its checkpoints hold.

* `DiffusionTrainer`: the bidirectional objective (`training.objective`) or AAPT's stage (a) (`aapt.adapt_losses`):
  one loss, AdamW (or RMSProp), warm-up/cosine schedule, clipping, EMA.
* `DistillTrainer`: stage (b); a frozen teacher (the `--init` model) next to the student.
* `AdversarialTrainer`: stages (c) and (d); per step one discriminator update then one generator update on the same
  student-forcing rollout, both RMSProp (AAPT: alpha 0.9). The discriminator starts from the stage-(a) weights.

Every trainer keeps the checkpoint keys of the bidirectional run ("model", "text_encoder", "ema", "optimizer",
"scheduler"), so the samplers read any stage; stages add their own ("teacher", "discriminator", "d_optimizer").
In the stages after (a) the text encoder is frozen: the teacher and the discriminator were trained against it.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from training import aapt
from training.adversarial import approx_r_penalty, discriminator_loss, rpgan_g_loss
from training.config import TrainConfig
from training.discriminator import FrameDiscriminator
from training.flow_matching import rand
from training.model import ModelConfig, VideoDiT
from training.objective import compute_losses
from training.optim import EMA, autocast, average_gradients, build_optimizer, build_scheduler

logger = logging.getLogger("training")

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class StepContext:
    """What every trainer needs besides the modules: the config, the device and the data-parallel world size."""

    cfg: TrainConfig
    device: torch.device
    world: int = 1


def _params(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def _freeze(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list, ctx: StepContext) -> float:
    """Backward, average across ranks, clip, step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params, ctx.world)
    norm = torch.nn.utils.clip_grad_norm_(params, ctx.cfg.optim.grad_clip or float("inf")).item()
    optimizer.step()
    return norm


def _check_finite(loss: torch.Tensor, step: int, terms: Mapping[str, float], what: str = "loss") -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"step {step}: {what} is {loss.item()} ({dict(terms)}); lower optim.lr")


class DiffusionTrainer:
    """One loss, one optimizer over the model and text encoder (bidirectional training and AAPT stage (a))."""

    def __init__(self, model: VideoDiT, text_encoder: torch.nn.Module, ctx: StepContext, loss_fn: LossFn) -> None:
        self.model, self.text_encoder, self.ctx, self.loss_fn = model, text_encoder, ctx, loss_fn
        self.modules = [model, text_encoder]
        self.params = _params(*self.modules)
        self.optimizer = build_optimizer(self.modules, ctx.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, ctx.cfg.optim, ctx.cfg.steps)
        self.ema = EMA(self.params, ctx.cfg.optim.ema_decay) if ctx.cfg.optim.ema_decay > 0 else None

    def modules_to_sync(self) -> list[torch.nn.Module]:
        """Modules whose weights rank 0 broadcasts at the start of data-parallel training."""
        return self.modules

    def losses(self, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, self.text_encoder, batch, generator)

    def train_step(self, batch: Mapping[str, Any], generator: torch.Generator, step: int) -> dict[str, float]:
        with autocast(self.ctx.device, self.ctx.cfg.precision):
            loss, terms = self.losses(batch, generator)
        _check_finite(loss, step, terms)
        grad_norm = _update(loss, self.optimizer, self.params, self.ctx)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.params)
        return {**terms, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


class DistillTrainer(DiffusionTrainer):
    """Stage (b): the student trains against the frozen teacher (a copy of the `--init` weights)."""

    def __init__(self, model: VideoDiT, text_encoder: torch.nn.Module, ctx: StepContext) -> None:
        _freeze(text_encoder)
        self.teacher = copy.deepcopy(model)
        _freeze(self.teacher)
        loss = functools.partial(_distill, self.teacher, ctx.cfg)
        super().__init__(model, text_encoder, ctx, loss)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])


def _distill(teacher, cfg, model, text_encoder, batch, generator):  # noqa: ANN001, ANN202 - a partial's body
    return aapt.distill_losses(model, teacher, text_encoder, batch, cfg.objective, cfg.aapt, generator)


def _adapt(cfg, model, text_encoder, batch, generator):  # noqa: ANN001, ANN202
    return aapt.adapt_losses(model, text_encoder, batch, cfg.objective, cfg.aapt, generator)


def _bidirectional(cfg, model, text_encoder, batch, generator):  # noqa: ANN001, ANN202
    return compute_losses(model, text_encoder, batch, cfg.objective, generator)


class AdversarialTrainer:
    """Stages (c)/(d): a generator (`model`) in student forcing against a per-frame causal discriminator."""

    def __init__(
        self,
        model: VideoDiT,
        text_encoder: torch.nn.Module,
        ctx: StepContext,
        discriminator: FrameDiscriminator,
        camera_bank: Any | None = None,
    ) -> None:
        cfg = ctx.cfg
        _freeze(text_encoder)
        self.model, self.text_encoder, self.ctx, self.disc = model, text_encoder, ctx, discriminator
        self.camera_bank = camera_bank
        self.params = _params(model)
        self.d_params = _params(discriminator)
        self.optimizer = build_optimizer([model], cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.d_optimizer = build_optimizer([discriminator], cfg.optim, lr=cfg.aapt.d_lr or cfg.optim.lr)
        self.ema = EMA(self.params, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None

    def modules_to_sync(self) -> list[torch.nn.Module]:
        return [self.model, self.text_encoder, self.disc]

    def _bank(self, b: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens (B, steps), relative poses (B, steps, 4, 4)) of corpus trajectories for the extended frames."""
        if self.camera_bank is None or steps <= 0 or not self.ctx.cfg.aapt.camera_bank:
            return None
        drawn = [self.camera_bank.sample(steps, generator) for _ in range(b)]
        return torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])

    def train_step(self, batch: Mapping[str, Any], generator: torch.Generator, step: int) -> dict[str, float]:
        cfg, pt = self.ctx.cfg.aapt, self.model.patch[0]
        real = batch["latents"].float()
        b, c, frames, h, w = real.shape
        length = aapt.rollout_length(frames, cfg, pt)
        gdev = generator.device
        # Draws in a fixed order: rollout noise, discriminator t and noise, then R1 and R2 perturbations.
        noise = torch.randn((b, c, length - pt, h, w), generator=generator, device=gdev).to(real.device)
        t = rand((b,), generator, real.device)  # unshifted, as APT/AAPT give the discriminator
        eps = torch.randn((b, c, frames - pt, h, w), generator=generator, device=gdev).to(real.device)
        with torch.no_grad():
            cond = aapt.conditions(self.model, self.text_encoder, batch)
        bank = self._bank(b, length - frames, generator)
        factor = getattr(self.camera_bank, "temporal_factor", 1)
        gen_cond = aapt.Conditions(
            cond.text_emb,
            cond.text_mask,
            aapt.extend_camera(cond.camera, length - pt, None if bank is None else bank[0]),
            aapt.extend_rays(cond.rays, length - pt, None if bank is None else bank[1], factor),
        )
        with autocast(self.ctx.device, self.ctx.cfg.precision):
            fake = aapt.student_rollout(self.model, real[:, :, :pt], noise, gen_cond, cfg)
            windows, starts = aapt.fake_windows(fake, frames, cfg.overlap)
            n = len(starts)
            win_cond = aapt.window_conditions(gen_cond, starts, frames - pt)
            t_w, eps_w = t.repeat(n), eps.repeat(n, 1, 1, 1, 1)

            def d_real_fn(x: torch.Tensor) -> torch.Tensor:
                return aapt.score(self.disc, x, t, eps, cond, pt)

            def d_fake_fn(x: torch.Tensor) -> torch.Tensor:
                return aapt.score(self.disc, x, t_w, eps_w, win_cond, pt)

            # Discriminator step on the detached rollout.
            d_real = d_real_fn(real)
            d_fake = d_fake_fn(windows.detach())
            r1 = approx_r_penalty(d_real_fn, real, d_real, cfg.r_sigma, cfg.r_lambda, generator)
            r2 = approx_r_penalty(d_fake_fn, windows.detach(), d_fake, cfg.r_sigma, cfg.r_lambda, generator)
            d_terms = discriminator_loss(d_real.repeat(n, 1), d_fake, r1, r2)
        _check_finite(d_terms["loss"], step, {k: v.item() for k, v in d_terms.items()}, "discriminator loss")
        d_norm = _update(d_terms["loss"], self.d_optimizer, self.d_params, self.ctx)

        # Generator step: the updated discriminator scores the same rollout, gradients reach the generator only.
        for p in self.d_params:
            p.requires_grad_(False)
        try:
            with autocast(self.ctx.device, self.ctx.cfg.precision):
                with torch.no_grad():
                    d_real_g = d_real_fn(real)
                d_fake_g = d_fake_fn(windows)
                g_loss = rpgan_g_loss(d_real_g.repeat(n, 1), d_fake_g)
            _check_finite(g_loss, step, {"d_fake": d_fake_g.mean().item()}, "generator loss")
            grad_norm = _update(g_loss, self.optimizer, self.params, self.ctx)
        finally:
            for p in self.d_params:
                p.requires_grad_(True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.params)
        return {
            "loss": g_loss.item(),
            "g_loss": g_loss.item(),
            "d_loss": d_terms["loss"].item(),
            "rpgan_d": d_terms["rpgan"].item(),
            "r1": d_terms["r1"].item(),
            "r2": d_terms["r2"].item(),
            "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item(),
            "rollout_frames": length,
            "windows": n,
            "camera_bank_steps": 0 if bank is None else int(bank[0].shape[1]),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "d_grad_norm": d_norm,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "discriminator": self.disc.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.disc.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


# -- building a stage ---------------------------------------------------------------------------------------------


def convert_weights(source: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, list[str]]:
    """Load `source` into `model` where names and shapes agree; a bidirectional patch embedding (C input channels)
    goes into the first C channels of a causal one (2C: the recycled channels start at zero, so the first step of
    adaptation computes what the bidirectional model did). Returns {"new": [...], "dropped": [...]} key lists;
    raises ValueError on any other shape mismatch (another architecture)."""
    target = model.state_dict()
    merged, mismatched = {}, []
    for key, value in target.items():
        src = source.get(key)
        if src is None:
            merged[key] = value
        elif src.shape == value.shape:
            merged[key] = src
        elif key == "x_embed.weight" and src.shape[1] * 2 == value.shape[1] and src.shape[2:] == value.shape[2:]:
            merged[key] = torch.cat([src, torch.zeros_like(src)], dim=1)
        else:
            mismatched.append(f"{key} {tuple(src.shape)} -> {tuple(value.shape)}")
    if mismatched:
        raise ValueError(f"the --init checkpoint has another architecture: {', '.join(mismatched[:4])}")
    model.load_state_dict(merged)
    return {"new": sorted(set(target) - set(source)), "dropped": sorted(set(source) - set(target))}


def ema_weights_into(model: torch.nn.Module, text_encoder: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Load a checkpoint's EMA weights (the ones to sample with) into modules built from its own config.

    The EMA list follows the trainable parameters of the run that wrote it: model and text encoder in the stages
    that train the text encoder (bidirectional diffusion, adapt), the model alone in the others."""
    model.load_state_dict(state["model"])
    text_encoder.load_state_dict(state["text_encoder"])
    if state.get("ema") is None:
        return
    trains_text = state.get("stage", "diffusion") in ("diffusion", "adapt")
    params = _params(model, text_encoder) if trains_text else _params(model)
    with torch.no_grad():
        for p, s in zip(params, state["ema"], strict=True):
            p.copy_(s.to(p.dtype))


def sampling_weights(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The (model, text encoder) weights to continue from: a checkpoint's EMA where it has one, else its weights."""
    from training.model import build_model
    from training.text import TextConfig

    if state.get("ema") is None:
        return dict(state["model"]), dict(state["text_encoder"])
    raw = dict(state["config"]["model"])
    raw["text"] = TextConfig(**raw["text"])
    with torch.device("cpu"):
        model, text_encoder = build_model(ModelConfig(**raw))
    ema_weights_into(model, text_encoder, state)
    return model.state_dict(), text_encoder.state_dict()


def build_trainer(
    model: VideoDiT,
    text_encoder: torch.nn.Module,
    ctx: StepContext,
    init: Mapping[str, Any] | None = None,
    camera_bank: Any | None = None,
    resuming: bool = False,
) -> DiffusionTrainer | DistillTrainer | AdversarialTrainer:
    """The trainer of `ctx.cfg.stage`, its model (and discriminator/teacher) initialised from `init` (a checkpoint
    state of the previous stage; None = from scratch, which only `diffusion` and `adapt` accept, or `resuming`: the
    caller loads a checkpoint of this stage, teacher and discriminator included, next)."""
    cfg = ctx.cfg
    stage = cfg.stage
    if init is not None:
        model_sd, text_sd = sampling_weights(init)
        report = convert_weights(model_sd, model)
        text_encoder.load_state_dict(text_sd)
        logger.info(
            "initialised from stage %s (step %s): new %s, dropped %s",
            init.get("stage", "diffusion"),
            init.get("step"),
            report["new"] or "none",
            report["dropped"] or "none",
        )
    elif stage in ("distill", "adversarial", "long") and not resuming:
        raise ValueError(f"--stage {stage} needs --init (the output directory of the previous stage)")
    if stage == "diffusion":
        return DiffusionTrainer(model, text_encoder, ctx, functools.partial(_bidirectional, cfg))
    if not model.cfg.causal:
        raise ValueError(f"--stage {stage} needs model.causal = true")
    if stage == "adapt":
        return DiffusionTrainer(model, text_encoder, ctx, functools.partial(_adapt, cfg))
    if stage == "distill":
        return DistillTrainer(model, text_encoder, ctx)
    # Adversarial: the discriminator starts from the stage-(a) weights. A distill checkpoint carries them as its
    # teacher; an adapt checkpoint is itself stage (a); a long stage continues an adversarial run's discriminator.
    disc = FrameDiscriminator.from_generator(model, cfg.aapt.d_taps or None)
    if init is not None and init.get("discriminator") is not None:
        disc.load_state_dict(init["discriminator"])
    elif init is not None and init.get("teacher") is not None:
        convert_weights(init["teacher"], disc.backbone)
    disc.to(next(model.parameters()).device)
    return AdversarialTrainer(model, text_encoder, ctx, disc, camera_bank)
