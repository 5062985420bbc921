"""AAPT causal VideoDiT (training/causal.py, training/discriminator.py) on debug sizes, CPU fp32."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training import causal
from training.causal import KVCache, dense_mask, frame_visible, rollout, teacher_forcing
from training.discriminator import FrameDiscriminator
from training.model import ModelConfig, VideoDiT
from training.text import TextConfig

TEXT_DIM = 16
C, H, W = 3, 4, 4  # debug patch (1, 2, 2): 4 tokens per frame


def config(**kw: Any) -> ModelConfig:
    base: dict[str, Any] = {"causal": True, "event_head": False, "event_injection": False}
    base.update(kw)
    return ModelConfig(size="debug", in_channels=C, text=TextConfig(dim=TEXT_DIM, layers=1, heads=2), **base)


def trained(cfg: ModelConfig, seed: int = 0) -> VideoDiT:
    """Random 'trained' weights: every parameter perturbed, so zero-initialised layers do not hide errors."""
    torch.manual_seed(seed)
    model = VideoDiT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def text(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(b, 3, TEXT_DIM, generator=g), torch.tensor([[True] * 3, [True, True, False]])[:b]


def test_frame_mask_rules() -> None:
    m = dense_mask(5, 1)
    assert torch.equal(m, torch.ones(5, 5, dtype=torch.bool).tril())
    w = dense_mask(6, 1, window=2, sink=1)
    assert w[5].tolist() == [True, False, False, False, True, True]  # sink 0 + frames 4, 5
    assert w[1].tolist() == [True, True, False, False, False, False]
    assert dense_mask(2, 3).shape == (6, 6) and dense_mask(2, 3)[0, 3].item() is False  # frame 0 cannot see 1
    assert bool(frame_visible(torch.tensor(9), torch.tensor(0), window=3, sink=1))
    assert not bool(frame_visible(torch.tensor(9), torch.tensor(1), window=3, sink=1))


@pytest.mark.skipif(not causal.HAS_FLEX, reason="torch without flex_attention")
@pytest.mark.parametrize(("window", "sink"), [(0, 1), (2, 1), (3, 2), (2, 0)])
def test_flex_create_mask_equals_dense_mask(window: int, sink: int) -> None:
    assert torch.equal(causal.flex_dense_mask(6, 4, window, sink), dense_mask(6, 4, window, sink))


@pytest.mark.skipif(not causal.HAS_FLEX, reason="torch without flex_attention")
def test_eager_flex_forward_equals_sdpa_forward_cpu() -> None:
    cfg = config(window=2, attention="flex")
    model = trained(cfg)
    sdpa = trained(config(window=2, attention="sdpa"))
    x, rec = torch.randn(2, C, 5, H, W), torch.randn(2, C, 5, H, W)
    te, tm = text()
    with torch.no_grad(), pytest.warns(UserWarning, match="flex_attention called without torch.compile"):
        a = model(x, torch.full((2,), 0.3), te, tm, recycled=rec).velocity
    with torch.no_grad():
        b = sdpa(x, torch.full((2,), 0.3), te, tm, recycled=rec).velocity
    assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.gpu
def test_flex_cuda_equals_sdpa() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = trained(config(window=3, sink=1)).cuda()
    x, rec = torch.randn(2, C, 8, 16, 16, device="cuda"), torch.randn(2, C, 8, 16, 16, device="cuda")
    te, tm = (y.cuda() for y in text())
    t = torch.full((2,), 0.4, device="cuda")
    with torch.no_grad():
        assert causal.use_flex("auto", torch.device("cuda"))
        flex = model(x, t, te, tm, recycled=rec).velocity
        object.__setattr__(model.cfg, "attention", "sdpa")
        sdpa = model(x, t, te, tm, recycled=rec).velocity
    assert (flex - sdpa).abs().max().item() <= 1e-4


@pytest.mark.parametrize(("window", "sink"), [(0, 1), (3, 1), (2, 0), (3, 2)])
def test_kv_cache_streaming_equals_masked_full_forward(window: int, sink: int) -> None:
    model = trained(config(window=window, sink=sink))
    te, tm = text()
    g = torch.Generator().manual_seed(1)
    first, noise = torch.randn(2, C, 1, H, W, generator=g), torch.randn(2, C, 7, H, W, generator=g)
    t = torch.zeros(2)
    with torch.no_grad():
        frames = rollout(model, first, te, tm, noise, t)
        # The full-sequence forward sees the same inputs: the noise, and the rollout's own frames recycled.
        recycled = torch.cat([first, frames[:, :, :-1]], dim=2)
        full = model(noise, t, te, tm, recycled=recycled).velocity
    assert frames.shape == noise.shape
    assert (causal.one_step(noise, full, t) - frames).abs().max().item() <= 1e-4


def test_multi_frame_prefill_then_steps_equals_full_forward() -> None:
    model = trained(config(window=3, sink=1))
    te, tm = text()
    x, rec = torch.randn(2, C, 6, H, W), torch.randn(2, C, 6, H, W)
    t = torch.full((2,), 0.5)
    cache = KVCache.for_model(model)
    with torch.no_grad():
        full = model(x, t, te, tm, recycled=rec).velocity
        parts = []
        for sl in (slice(0, 4), slice(4, 5), slice(5, 6)):  # a 4-frame prefill, then one frame per step
            parts.append(model(x[:, :, sl], t, te, tm, recycled=rec[:, :, sl], kv_cache=cache).velocity)
            cache.commit()
    assert (torch.cat(parts, dim=2) - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("window", [0, 2])
def test_perturbing_a_later_frame_leaves_earlier_outputs_unchanged(window: int) -> None:
    model = trained(config(window=window))
    te, tm = text()
    x, rec = torch.randn(1, C, 5, H, W), torch.randn(1, C, 5, H, W)
    k = 2
    x2, rec2 = x.clone(), rec.clone()
    x2[:, :, k + 1] += 3.0
    rec2[:, :, k + 1 :] -= 2.0
    with torch.no_grad():
        a = model(x, torch.tensor([0.3]), te[:1], tm[:1], recycled=rec).velocity
        b = model(x2, torch.tensor([0.3]), te[:1], tm[:1], recycled=rec2).velocity
    assert torch.equal(a[:, :, : k + 1], b[:, :, : k + 1])
    assert (a[:, :, k + 1] - b[:, :, k + 1]).abs().max() > 1e-3


def test_bidirectional_model_sees_the_future() -> None:
    """Sanity of the test above: without `causal` a later frame does change earlier outputs."""
    model = trained(config(causal=False))
    te, tm = text(1)
    x = torch.randn(1, C, 4, H, W)
    x2 = x.clone()
    x2[:, :, 3] += 3.0
    with torch.no_grad():
        a, b = (model(y, torch.tensor([0.3]), te, tm).velocity for y in (x, x2))
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4


def _fill(cache: KVCache, frames: int, tokens: int = 2) -> None:
    for _ in range(frames):
        cache.begin(1, tokens)
        for layer in range(cache.layers):
            q = torch.zeros(1, 1, tokens, 4)
            cache.core(layer)(q, torch.full_like(q, float(cache.length)), q)
        cache.commit()


def test_cache_eviction_order_window_and_sink() -> None:
    cache = KVCache(layers=2, window=3, sink=1)
    seen = []
    for _ in range(6):
        _fill(cache, 1)
        seen.append(list(cache.frame_ids))
    # After frame f: the sink (0) and the newest window - 1 = 2 frames, the oldest non-sink evicted first.
    assert seen == [[0], [0, 1], [0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5]]
    assert [k[0, 0, 0, 0].item() for k in cache._k[1]] == [0.0, 4.0, 5.0]  # keys follow their frames
    assert cache.length == 6


def test_cache_eviction_without_sink_and_unbounded() -> None:
    no_sink, full, two_sinks = KVCache(1, window=2, sink=0), KVCache(1, window=0), KVCache(1, window=2, sink=2)
    for c in (no_sink, full, two_sinks):
        _fill(c, 5)
    assert no_sink.frame_ids == [4]
    assert full.frame_ids == [0, 1, 2, 3, 4]
    assert two_sinks.frame_ids == [0, 1, 4]


def test_cache_misuse_raises() -> None:
    cache = KVCache(1)
    with pytest.raises(RuntimeError):
        cache.commit()
    cache.begin(1, 2)
    with pytest.raises(RuntimeError):
        cache.begin(1, 2)


def test_streaming_cost_constant_once_window_full() -> None:
    """The attended keys stop growing once the window is full: the sink plus window frames per query."""
    model = trained(config(window=3, sink=1))
    te, tm = text()
    sizes = []
    cache = KVCache.for_model(model)
    with torch.no_grad():
        rollout(
            model,
            torch.randn(2, C, 1, H, W),
            te,
            tm,
            torch.randn(2, C, 8, H, W),
            cache=cache,
            on_step=lambda j, f: sizes.append(len(cache.frame_ids)),
        )
    assert sizes == [1, 2, 3, 3, 3, 3, 3, 3]


def test_teacher_forcing_shift_by_one_and_zero_recycle() -> None:
    clip = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(2, C, 5, H, W)  # frame k holds the value k
    tf = teacher_forcing(clip)
    assert tf.target[0, 0, :, 0, 0].tolist() == [1, 2, 3, 4]
    assert tf.recycled[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3]  # position j recycles frame j = target j - 1
    assert torch.equal(tf.recycled[:, :, 1:], tf.target[:, :, :-1])
    image = torch.full((2, C, 1, H, W), -7.0)
    assert teacher_forcing(clip, first=image).recycled[0, 0, :, 0, 0].tolist() == [-7, 1, 2, 3]
    zero = teacher_forcing(clip, zero_recycle=True)
    assert zero.recycled[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0] and torch.equal(zero.target, tf.target)
    zero_img = teacher_forcing(clip, zero_recycle=True, first=image).recycled
    assert zero_img[0, 0, :, 0, 0].tolist() == [-7, 0, 0, 0]
    two = teacher_forcing(torch.arange(6.0).view(1, 1, 6, 1, 1), shift=2)
    assert two.target.flatten().tolist() == [2, 3, 4, 5] and two.recycled.flatten().tolist() == [0, 1, 2, 3]
    assert causal.positions(torch.arange(5.0).view(1, 1, 5), dim=2).flatten().tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        teacher_forcing(clip[:, :, :1])


def test_recycled_channels_reach_the_output() -> None:
    model = trained(config())
    te, tm = text()
    x, rec = torch.randn(2, C, 3, H, W), torch.randn(2, C, 3, H, W)
    with torch.no_grad():
        a = model(x, torch.zeros(2), te, tm, recycled=rec).velocity
        b = model(x, torch.zeros(2), te, tm, recycled=torch.zeros_like(rec)).velocity
    assert model.x_embed.in_channels == 2 * C and (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="recycled"):
        model(x, torch.zeros(2), te, tm)
    no_rec = trained(config(recycle=False))
    assert no_rec.x_embed.in_channels == C


def test_rollout_longer_than_any_table() -> None:
    """Fixed-interval time positions: a rollout of 40 token frames needs no table (window keeps it cheap)."""
    model = trained(config(window=4))
    te, tm = text()
    with torch.no_grad():
        out = rollout(model, torch.randn(2, C, 1, H, W), te, tm, torch.randn(2, C, 40, H, W))
    assert out.shape == (2, C, 40, H, W) and torch.isfinite(out).all()


def test_rollout_gradients_truncated_by_default() -> None:
    model = trained(config()).train()
    te, tm = text()
    first = torch.randn(2, C, 1, H, W)
    out = rollout(model, first, te, tm, torch.randn(2, C, 3, H, W))
    assert out.requires_grad
    out[:, :, 2].sum().backward()  # the last frame's graph holds only its own evaluation
    assert model.x_embed.weight.grad is not None
    model.zero_grad()
    deep = rollout(
        model,
        first,
        te,
        tm,
        torch.randn(2, C, 3, H, W),
        cache=KVCache.for_model(model, detach=False),
        detach_recycled=False,
    )
    deep[:, :, 2].sum().backward()
    assert model.x_embed.weight.grad is not None


def test_camera_inputs_causal() -> None:
    model = trained(config(camera_rays=True))
    te, tm = text()
    x, rec = torch.randn(2, C, 3, H, W), torch.randn(2, C, 3, H, W)
    rays = torch.randn(2, 6, 3, H, W)
    tokens = torch.tensor([[0, 5, -1], [3, 3, 3]])  # one QCM token per position (causal convention)
    with torch.no_grad():
        a = model(x, torch.zeros(2), te, tm, recycled=rec, rays=rays, camera_tokens=tokens).velocity
        b = model(x, torch.zeros(2), te, tm, recycled=rec, camera_tokens=tokens).velocity
        frames = rollout(model, rec[:, :, :1], te, tm, x, rays=rays, camera_tokens=tokens)
        full = model(
            x,
            torch.zeros(2),
            te,
            tm,
            recycled=torch.cat([rec[:, :, :1], frames[:, :, :-1]], 2),
            rays=rays,
            camera_tokens=tokens,
        ).velocity
    assert (a - b).abs().max() > 1e-3  # the ray projection is random-initialised, not zero
    assert (causal.one_step(x, full, 0.0) - frames).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="causal camera_tokens"):
        model(x, torch.zeros(2), te, tm, recycled=rec, camera_tokens=tokens[:, :2])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="causal"):
        config(causal=False, window=3)
    with pytest.raises(ValueError, match="sincos"):
        config(pos_embed="learned")
    with pytest.raises(ValueError, match="attention"):
        config(attention="fa3")
    with pytest.raises(ValueError, match="window"):
        config(window=-1)


def test_discriminator_per_frame_causal_logits() -> None:
    gen = trained(config(window=0))
    disc = FrameDiscriminator.from_generator(gen, taps=(0, 1)).eval()
    assert disc.backbone is not gen and torch.equal(disc.backbone.x_embed.weight, gen.x_embed.weight)
    assert gen.final_proj is not None  # the generator keeps its head
    te, tm = text()
    x, rec = torch.randn(2, C, 4, H, W), torch.randn(2, C, 4, H, W)
    x2 = x.clone()
    x2[:, :, 3] += 2.0
    with torch.no_grad():
        a = disc(x, torch.full((2,), 0.5), te, tm, recycled=rec)
        b = disc(x2, torch.full((2,), 0.5), te, tm, recycled=rec)
    assert a.shape == (2, 4)
    assert torch.equal(a[:, :3], b[:, :3]) and (a[:, 3] - b[:, 3]).abs().max() > 0
    with pytest.raises(ValueError):
        FrameDiscriminator(trained(config(causal=False)))
