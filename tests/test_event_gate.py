"""EVD event math (training/events.py): smoothing, gate, hysteresis, schedule and the event losses."""

from __future__ import annotations

import pytest
import torch

from training.events import (
    activity_loss,
    consistency_loss,
    event_gate,
    expand_to_pixels,
    gate_schedule,
    hysteresis,
    ordering_loss,
    realization_loss,
    scheduled_gate,
    smooth_activity,
    soft_gate,
    time_weight,
)

PATCH = (1, 2, 2)


def test_soft_gate_reference_table() -> None:
    """papers/000 §3.4: beta = 12, centre (0.62 + 0.38)/2 = 0.5."""
    a = torch.tensor([0.0, 0.38, 0.5, 0.62, 1.0])
    expected = torch.tensor([0.00247, 0.19155, 0.5, 0.80845, 0.99753])
    torch.testing.assert_close(soft_gate(a), expected, atol=1e-5, rtol=0)


def test_smoothing_is_spatial_3x3_with_replicate_padding() -> None:
    a = torch.full((1, 2, 5, 5), 0.7)
    torch.testing.assert_close(smooth_activity(a), a)  # constant stays constant up to the border (replicate)
    spike = torch.zeros(1, 2, 5, 5)
    spike[0, 0, 2, 2] = 9.0
    out = smooth_activity(spike)
    assert torch.equal(out[0, 1], torch.zeros(5, 5))  # no temporal smoothing
    torch.testing.assert_close(out[0, 0, 1:4, 1:4], torch.ones(3, 3))
    assert float(out[0, 0].sum()) == pytest.approx(9.0)
    corner = torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 0] = 9.0  # replicated 4 times into the padded 3x3 window of (0, 0)
    assert float(smooth_activity(corner)[0, 0, 0, 0]) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        smooth_activity(torch.zeros(2, 5, 5))


def test_hysteresis_sequence() -> None:
    seq = [0.5, 0.7, 0.5, 0.4, 0.3, 0.5, 0.62, 0.38, 0.39]
    expected = [0, 1, 1, 1, 0, 0, 1, 0, 0]  # starts off; the band (0.38, 0.62) keeps the previous state
    state, got = None, []
    for a in seq:
        state = hysteresis(torch.tensor([a]), state)
        got.append(int(state.item()))
    assert got == expected
    # a band value keeps an on-state
    assert hysteresis(torch.tensor([0.5]), torch.tensor([1.0])).item() == 1.0
    with pytest.raises(ValueError):
        hysteresis(torch.tensor([0.5]), None, on=0.3, off=0.6)


def test_gate_schedule_and_scheduled_gate() -> None:
    t = torch.tensor([0.0, 0.3, 0.6, 0.8, 1.0])
    torch.testing.assert_close(gate_schedule(t), torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0]))
    g = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(scheduled_gate(g, 1.0), g)  # full gating early (t <= t*, noise side)
    assert torch.equal(scheduled_gate(g, 0.0), torch.ones_like(g))  # base model at the end
    per_row = scheduled_gate(g, torch.tensor([1.0, 0.0]))
    assert torch.equal(per_row[0], g[0]) and torch.equal(per_row[1], torch.ones_like(g[1]))
    mid = scheduled_gate(g, 0.5)
    assert bool(((mid >= 0) & (mid <= 1)).all()) and bool((mid >= g).all())


def test_event_gate_step() -> None:
    gate, state = event_gate(torch.ones(1, 1, 4, 4), None, 0.1)
    assert torch.equal(state, torch.ones_like(state))
    torch.testing.assert_close(gate, torch.full_like(gate, 0.99753), atol=1e-5, rtol=0)
    gate, state = event_gate(torch.zeros(1, 1, 4, 4), state, 0.1)
    assert torch.equal(state, torch.zeros_like(state)) and torch.equal(gate, torch.zeros_like(gate))
    gate, _ = event_gate(torch.zeros(1, 1, 4, 4), state, 1.0)  # annealed to no gating at the data end
    assert torch.equal(gate, torch.ones_like(gate))


def test_expand_to_pixels() -> None:
    a = torch.arange(8.0).view(1, 2, 2, 2)
    out = expand_to_pixels(a, (2, 3, 1))
    assert out.shape == (1, 1, 4, 6, 2)
    assert float(out[0, 0, 3, 5, 1]) == 7.0 and float(out[0, 0, 0, 2, 0]) == 0.0 and float(out[0, 0, 2, 3, 0]) == 6.0


def velocity(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_realization_loss() -> None:
    v = velocity()
    ones, zeros = torch.ones(2, 2, 4, 4), torch.zeros(2, 2, 4, 4)
    assert torch.equal(realization_loss(v, ones, PATCH), torch.zeros(2))  # fully active: no penalty
    torch.testing.assert_close(realization_loss(v, zeros, PATCH), v.square().flatten(1).mean(1))
    mask = torch.ones(2, 1, 2, 1, 1)
    mask[:, :, 0] = 0
    torch.testing.assert_close(realization_loss(v, zeros, PATCH, mask), v[:, :, 1].square().flatten(1).mean(1))


def test_consistency_loss() -> None:
    v, a = velocity(1), torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(consistency_loss(v, a, v, a, PATCH), torch.zeros(2))  # identical pair
    assert bool((consistency_loss(v, a, velocity(3), a, PATCH) > 0).all())
    v2 = v.clone().requires_grad_()
    consistency_loss(v2, a, velocity(3), a, PATCH).sum().backward()
    assert v2.grad is not None and bool(torch.isfinite(v2.grad).all())


def test_ordering_loss() -> None:
    v = velocity(4)
    assert torch.equal(ordering_loss(v, torch.full((2, 2, 4, 4), 0.62), PATCH), torch.zeros(2))  # initiated
    mid = ordering_loss(v, torch.full((2, 2, 4, 4), 0.5), PATCH)
    low = ordering_loss(v, torch.full((2, 2, 4, 4), 0.1), PATCH)
    torch.testing.assert_close(mid, v.square().flatten(1).mean(1))
    torch.testing.assert_close(low, 2 * mid)  # below both thresholds: counted twice
    a = torch.full((2, 2, 4, 4), 0.1, requires_grad=True)
    vg = v.clone().requires_grad_()
    ordering_loss(vg, a, PATCH).sum().backward()
    assert a.grad is None and vg.grad is not None  # the indicators only select tokens: no gradient to the activity


def test_time_weight() -> None:
    t = torch.tensor([0.0, 0.6, 0.8, 1.0])
    torch.testing.assert_close(time_weight(t), torch.exp(-6.0 * torch.tensor([0.0, 0.0, 0.2, 0.4])))
    assert float(time_weight(0.3)) == 1.0


def test_activity_loss() -> None:
    targets = torch.zeros(3, 2, 4, 4)
    targets[:, :, 1:3, 1:3] = 1.0
    good = (targets * 2 - 1) * 20.0  # confident, correct logits
    conf, rows = torch.tensor([1.0, 0.5, 1.0]), torch.tensor([True, True, False])
    assert float(activity_loss(good, targets, conf, rows)) < 1e-6
    zero = activity_loss(torch.zeros_like(targets), targets, conf, rows)  # BCE(0.5) = ln 2 per element
    assert float(zero) == pytest.approx((1.0 + 0.5) * 0.693147 / 3, rel=1e-5)
    nothing = activity_loss(torch.zeros_like(targets), targets, conf, torch.zeros(3, dtype=torch.bool))
    assert float(nothing) == 0.0
    # rows without events may carry garbage targets/confidence without poisoning the loss
    bad_t, bad_c = targets.clone(), conf.clone()
    bad_t[2], bad_c[2] = float("nan"), float("nan")
    assert float(activity_loss(torch.zeros_like(targets), bad_t, bad_c, rows)) == pytest.approx(float(zero))
    logits = torch.zeros_like(targets, requires_grad=True)
    activity_loss(logits, targets, conf, rows).backward()
    assert float(logits.grad[0, 0, 1, 1]) < 0 < float(logits.grad[0, 0, 0, 0])  # pushes towards the targets
    assert torch.equal(logits.grad[2], torch.zeros_like(logits.grad[2]))
    with pytest.raises(ValueError):
        activity_loss(logits[:, :1], targets, conf, rows)
