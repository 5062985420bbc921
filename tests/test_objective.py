"""The training objective (training/objective.py) on the debug model and a tiny synthetic batch."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from training.model import CAMERA_NULL, EVENT_NULL, ModelConfig, ModelOutput, VideoDiT
from training.objective import LOSS_KEYS, ObjectiveConfig, compute_losses
from training.text import ByteTextEncoder, TextConfig

TEXT_DIM = 32
SHAPE = (2, 3, 3, 8, 8)  # B, C, T, h, w -> token grid (3, 4, 4) with the debug patch (1, 2, 2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(seed: int = 0, randomized: bool = False, **kw: Any) -> tuple[VideoDiT, ByteTextEncoder]:
    torch.manual_seed(seed)
    cfg = ModelConfig(size="debug", text=TextConfig(dim=TEXT_DIM, layers=1, heads=2, max_length=48), **kw)
    model, encoder = VideoDiT(cfg), ByteTextEncoder(TEXT_DIM, 1, 2, 48)
    if randomized:  # stands in for trained weights: the velocity is no longer exactly 0
        g = gen(seed + 100)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name != "event_alpha":
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model, encoder


def make_batch(with_events: bool = True, with_camera: bool = True, with_noise: bool = True) -> dict[str, Any]:
    """A bright square moving right over a dark background; its tokens are the 'event'."""
    b, c, frames, h, w = SHAPE
    latents = torch.full(SHAPE, -0.8)
    activity = torch.zeros(b, frames, h // 2, w // 2)
    for f in range(frames):
        latents[:, :, f, 2:6, 1 + f : 5 + f] = 0.9
        activity[:, f, 1:3, (1 + f) // 2 : (5 + f) // 2 + 1] = 1.0
    latents[1] = latents[1].flip(-1)  # the second clip moves left
    batch: dict[str, Any] = {
        "latents": latents,
        "text": ["a bright square moves right", "a square moves left"],
        "clip_id": ["c0", "c1"],
    }
    if with_noise:
        batch["noise"] = torch.randn(SHAPE, generator=gen(1))
    if with_camera:
        batch["camera_tokens"] = torch.tensor([[10, 10], [0, 3]])
        batch["has_camera"] = torch.tensor([True, False])
    if with_events:
        batch["event_activity"] = activity
        batch["has_events"] = torch.tensor([True, False])
        batch["event_confidence"] = torch.tensor([0.9, 0.0])
    return batch


class Recorder:
    """Forward pre-hook keeping every positional input of the model's calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.handle = model.register_forward_pre_hook(lambda _m, args: self.calls.append(args))


def test_every_term_is_logged_and_finite() -> None:
    model, encoder = make_model(randomized=True)
    total, logs = compute_losses(model, encoder, make_batch(), ObjectiveConfig(), gen(0))
    assert list(logs) == list(LOSS_KEYS)
    assert all(math.isfinite(v) for v in logs.values())
    assert total.requires_grad and float(total.detach()) == pytest.approx(logs["loss"])
    for key in ("fm", "real", "cons", "ord", "act"):
        assert logs[key] > 0, key
    cfg = ObjectiveConfig()
    expected = (
        logs["fm"] + 0.12 * logs["real"] + 0.08 * logs["cons"] + 0.03 * logs["ord"] + cfg.lambda_act * logs["act"]
    )
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert model.event_head.net[-1].weight.grad is not None


def test_deterministic_given_the_generator() -> None:
    model, encoder = make_model(randomized=True)
    batch, cfg = make_batch(), ObjectiveConfig()
    a = compute_losses(model, encoder, batch, cfg, gen(5))
    b = compute_losses(model, encoder, batch, cfg, gen(5))
    c = compute_losses(model, encoder, batch, cfg, gen(6))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert a[1]["fm"] != c[1]["fm"]


def test_zero_weights_and_event_paths_off_give_the_base_loss() -> None:
    cfg = ObjectiveConfig(lambda_real=0.0, lambda_cons=0.0, lambda_ord=0.0, lambda_act=0.0)
    evd, encoder = make_model(randomized=True)  # alpha = 0: injection present but off
    base, _ = make_model(event_head=False, event_injection=False)
    base.load_state_dict(evd.state_dict(), strict=False)
    batch = make_batch()
    with torch.no_grad():
        total, logs = compute_losses(evd, encoder, batch, cfg, gen(2))
        base_total, base_logs = compute_losses(base, encoder, batch, cfg, gen(2))
    assert torch.equal(total, base_total)
    assert logs["loss"] == logs["fm"] == base_logs["fm"]
    assert base_logs["real"] == base_logs["act"] == 0.0


def test_frame_replacement_is_exact_and_masked() -> None:
    model, encoder = make_model(randomized=True)
    batch = make_batch()
    cfg = ObjectiveConfig(p_image_drop=0.0)  # every clip image-conditioned
    rec = Recorder(model)
    ref, _ = compute_losses(model, encoder, batch, cfg, gen(3))
    rec.handle.remove()
    for args in rec.calls:  # both passes (t and the consistency t')
        xt = args[0]
        assert torch.equal(xt[:, :, 0], batch["latents"][:, :, 0])  # bit for bit
        assert not torch.equal(xt[:, :, 1:], batch["latents"][:, :, 1:])

    def spoil_first_frame(_m: Any, _args: Any, out: ModelOutput) -> ModelOutput:
        v = out.velocity.clone()
        v[:, :, 0] += 1000.0
        return ModelOutput(v, out.event_logits)

    handle = model.register_forward_hook(spoil_first_frame)
    spoiled, _ = compute_losses(model, encoder, batch, cfg, gen(3))
    assert torch.equal(spoiled, ref)  # the replaced frame's prediction contributes nothing to any term
    unconditioned, _ = compute_losses(model, encoder, batch, dataclasses.replace(cfg, p_image_drop=1.0), gen(3))
    handle.remove()
    assert float(unconditioned.detach()) > 1000.0  # without replacement frame 0 is trained (the check above can fail)


def test_condition_dropout_and_event_field() -> None:
    model, encoder = make_model()
    batch = make_batch()
    seen: list[list[str]] = []
    original = encoder.forward
    encoder.forward = lambda texts: (seen.append(list(texts)), original(texts))[1]  # type: ignore[method-assign]
    rec = Recorder(model)
    drop_all = ObjectiveConfig(p_text_drop=1.0, p_camera_drop=1.0, event_dropout=1.0, consistency_pass=False)
    compute_losses(model, encoder, batch, drop_all, gen(4))
    keep_all = ObjectiveConfig(
        p_text_drop=0.0, p_camera_drop=0.0, event_dropout=0.0, event_field_shrink=0.0, consistency_pass=False
    )
    compute_losses(model, encoder, batch, keep_all, gen(4))
    assert seen == [["", ""], batch["text"]]
    (_, _, _, _, cam_off, field_off), (_, _, _, _, cam_on, field_on) = rec.calls
    assert torch.equal(cam_off, torch.full((2, 2), CAMERA_NULL))
    assert torch.equal(cam_on, torch.tensor([[10, 10], [CAMERA_NULL, CAMERA_NULL]]))  # row 1 has no camera
    assert torch.equal(field_off, torch.full_like(field_off, EVENT_NULL))
    assert torch.equal(field_on[0], batch["event_activity"][0])  # the pseudo-target itself (no shrink)
    assert torch.equal(field_on[1], torch.full_like(field_on[1], EVENT_NULL))  # row without pseudo-targets


def test_missing_optional_keys_switch_paths_off() -> None:
    model, encoder = make_model(randomized=True)
    batch = make_batch(with_events=False, with_camera=False, with_noise=False)
    rec = Recorder(model)
    total, logs = compute_losses(model, encoder, batch, ObjectiveConfig(), gen(7))
    assert math.isfinite(logs["loss"]) and logs["act"] == 0.0 and logs["real"] == 0.0 and logs["cons"] == 0.0
    assert rec.calls[0][4] is None and rec.calls[0][5] is None  # no camera, no event field
    assert len(rec.calls) == 1  # no rows for the EVD terms: no consistency pass either
    _, all_rows = compute_losses(model, encoder, batch, ObjectiveConfig(evd_rows="all"), gen(7))
    assert all_rows["real"] > 0 and all_rows["cons"] > 0 and all_rows["act"] == 0.0
    assert len(rec.calls) == 3


def test_loss_decreases_over_training() -> None:
    model, encoder = make_model(seed=1)
    batch = make_batch()
    cfg = ObjectiveConfig()
    params = [*model.parameters(), *encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)

    def held_out() -> tuple[float, float]:
        with torch.no_grad():
            _, logs = compute_losses(model.eval(), encoder.eval(), batch, cfg, gen(1234))
        model.train(), encoder.train()
        return logs["fm"], logs["act"]

    fm0, act0 = held_out()
    g = gen(42)
    for _ in range(30):
        total, logs = compute_losses(model, encoder, batch, cfg, g)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        assert all(math.isfinite(v) for v in logs.values())
    fm1, act1 = held_out()
    assert fm1 < 0.7 * fm0
    assert act1 < act0  # the head learns the pseudo-target
