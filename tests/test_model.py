"""VideoDiT (training/model.py) and the text encoders (training/text.py), on tiny CPU sizes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch

from annotators.models import ModelLoadError
from tests.test_aesthetics import save_clip_folder
from training.model import (
    CAMERA_NULL,
    EVENT_NULL,
    MODEL_SIZES,
    ModelConfig,
    VideoDiT,
    build_model,
    count_parameters,
)
from training.text import ByteTextEncoder, OpenClipTextEncoder, TextConfig, build_text_encoder

TEXT_DIM = 32


def config(**kw: Any) -> ModelConfig:
    return ModelConfig(size="debug", text=TextConfig(dim=TEXT_DIM, layers=1, heads=2, max_length=32), **kw)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """'Trained' weights: every parameter perturbed (the zero-initialised ones too), except the event alpha."""
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "event_alpha":
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(b: int = 2, frames: int = 4, h: int = 8, w: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = gen(seed)
    return {
        "x": torch.randn(b, 3, frames, h, w, generator=g),
        "t": torch.rand(b, generator=g),
        "text_emb": torch.randn(b, 5, TEXT_DIM, generator=g),
        "text_mask": torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:b],
    }


@pytest.fixture(autouse=True)
def _offline(no_network: None) -> None:
    """Every test here runs with the network refused: weights come from local files only."""


@pytest.mark.parametrize(
    ("patch", "shape", "pos"),
    [
        ((1, 2, 2), (1, 8, 8), "sincos"),
        ((1, 2, 2), (4, 8, 12), "sincos"),
        ((2, 2, 2), (4, 6, 4), "sincos"),
        ((1, 2, 2), (3, 10, 6), "learned"),
    ],
)
def test_shapes_and_zero_init(patch: tuple[int, int, int], shape: tuple[int, int, int], pos: str) -> None:
    torch.manual_seed(0)
    model = VideoDiT(config(patch=patch, pos_embed=pos))
    x = torch.randn(2, 3, *shape, generator=gen(1))
    grid = model.token_grid(x.shape)
    field = torch.rand(2, *grid, generator=gen(2))
    cam = torch.randint(0, 81, (2, shape[0] - 1), generator=gen(3))
    emb, mask = inputs()["text_emb"], inputs()["text_mask"]
    out = model(x, torch.tensor([0.1, 0.9]), emb, mask, cam, field)
    assert out.velocity.shape == x.shape
    assert out.event_logits.shape == (2, *grid)
    assert torch.equal(out.velocity, torch.zeros_like(x))  # adaLN-Zero / zero output layer: exactly 0 at init
    assert float(out.event_logits.detach().abs().max()) < 1e-2  # N(0, 1e-5) last layer: activity ~0.5, no impact


def test_event_paths_off_equal_the_base_model() -> None:
    """EVD no-regression check: alpha = 0 and the head (which only adds an output) leave the velocity unchanged."""
    torch.manual_seed(0)
    evd = randomize(VideoDiT(config()))
    base = VideoDiT(config(event_head=False, event_injection=False)).eval()
    missing, unexpected = base.load_state_dict(evd.state_dict(), strict=False)
    assert missing == [] and sorted({k.split(".")[0] for k in unexpected}) == ["event_alpha", "event_head", "event_in"]
    i = inputs()
    field = torch.rand(2, 4, 4, 4, generator=gen(5))
    with torch.no_grad():
        ref = base(**i)
        assert ref.event_logits is None and float(ref.velocity.abs().max()) > 0
        torch.testing.assert_close(evd(**i, event_field=field).velocity, ref.velocity, atol=0, rtol=0)
        torch.testing.assert_close(evd(**i).velocity, ref.velocity, atol=0, rtol=0)
        evd.event_alpha.fill_(0.5)  # once alpha moves the field does act (the check above can fail)
        assert not torch.allclose(evd(**i, event_field=field).velocity, ref.velocity)
        # a null field (negative everywhere) injects exactly nothing; a zero-activity field would not ('present')
        null = torch.full_like(field, EVENT_NULL)
        torch.testing.assert_close(evd(**i, event_field=null).velocity, ref.velocity, atol=0, rtol=0)


def test_fixed_alpha_config() -> None:
    torch.manual_seed(0)
    off = VideoDiT(config(event_alpha=0.0))
    assert "event_alpha" not in dict(off.named_parameters()) and float(off.event_alpha) == 0.0
    assert torch.equal(off.event_in.weight, torch.zeros_like(off.event_in.weight))
    learn = VideoDiT(config())
    assert learn.event_alpha.requires_grad and float(learn.event_alpha.detach()) == 0.0
    assert float(learn.event_in.weight.detach().abs().sum()) > 0  # otherwise alpha and W_e could never leave 0


def test_injection_trains_from_zero_alpha() -> None:
    torch.manual_seed(0)
    model = randomize(VideoDiT(config())).train()
    out = model(**inputs(), event_field=torch.rand(2, 4, 4, 4, generator=gen(6)))
    out.velocity.square().mean().backward()
    assert model.event_alpha.grad is not None and float(model.event_alpha.grad.abs()) > 0


def test_camera_tokens_condition_the_output() -> None:
    torch.manual_seed(0)
    fresh = VideoDiT(config())
    i = inputs()
    a = torch.tensor([[1, 2, 3], [10, 20, 30]])
    b = torch.tensor([[4, 5, 6], [10, 20, 31]])
    with torch.no_grad():
        assert torch.equal(fresh(**i, camera_tokens=a).velocity, fresh(**i, camera_tokens=b).velocity)  # zero init
        model = randomize(fresh)
        va, vb = model(**i, camera_tokens=a).velocity, model(**i, camera_tokens=b).velocity
        assert float((va - vb).abs().max()) > 1e-4
        assert float((va[1] - vb[1]).abs().max()) > 1e-5  # the last step alone matters too
        null = torch.full_like(a, CAMERA_NULL)
        torch.testing.assert_close(model(**i, camera_tokens=null).velocity, model(**i).velocity, atol=0, rtol=0)
        # "no motion" (token 0) is information, unlike the null token
        still = torch.zeros_like(a)
        assert not torch.allclose(model(**i, camera_tokens=still).velocity, model(**i).velocity)
    with pytest.raises(ValueError, match="camera_tokens"):
        model(**i, camera_tokens=a[:, :2])


def test_padding_text_tokens_do_not_change_the_output() -> None:
    torch.manual_seed(0)
    model = randomize(VideoDiT(config()))
    i = inputs()
    padded = dict(i)
    garbage = torch.randn(2, 4, TEXT_DIM, generator=gen(7)) * 10
    padded["text_emb"] = torch.cat([i["text_emb"], garbage], dim=1)
    padded["text_mask"] = torch.cat([i["text_mask"], torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    scrambled = dict(i)
    scrambled["text_emb"] = i["text_emb"].clone()
    scrambled["text_emb"][1, 3:] = 99.0  # row 1's own padding positions
    with torch.no_grad():
        ref = model(**i)
        for other in (padded, scrambled):
            out = model(**other)
            torch.testing.assert_close(out.velocity, ref.velocity, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.event_logits, ref.event_logits, atol=1e-5, rtol=1e-5)
        changed = dict(i)
        changed["text_emb"] = i["text_emb"].clone()
        changed["text_emb"][1, 0] += 1.0  # a real token does matter
        assert not torch.allclose(model(**changed).velocity[1], ref.velocity[1])


def test_gradient_checkpointing_matches() -> None:
    torch.manual_seed(0)
    plain = randomize(VideoDiT(config())).train()
    ckpt = VideoDiT(config(grad_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    losses = []
    for m in (plain, ckpt):
        loss = m(**inputs()).velocity.square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(plain.blocks[0].attn.qkv.weight.grad, ckpt.blocks[0].attn.qkv.weight.grad)


def test_bad_inputs_are_refused() -> None:
    model = VideoDiT(config())
    i = inputs()
    with pytest.raises(ValueError, match="divisible"):
        model(torch.zeros(2, 3, 4, 7, 8), i["t"], i["text_emb"], i["text_mask"])
    with pytest.raises(ValueError, match="event_field"):
        model(**i, event_field=torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match="model.size"):
        ModelConfig(size="huge")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(size="debug", num_heads=5)
    assert ModelConfig(size="debug", patch=[1, 4, 4]).patch == (1, 4, 4)  # TOML lists become tuples


def expected_parameters(cfg: ModelConfig, text_dim: int) -> int:
    """Analytic count of the architecture described in training/model.py."""
    d, p, c = cfg.hidden_dim, math.prod(cfg.patch_size), cfg.in_channels
    hd, mlp, head = d // cfg.heads, int(d * cfg.mlp_ratio), min(256, d)
    qk = 2 * hd if cfg.qk_norm else 0
    block = (
        (3 * d * d + 3 * d) + qk + (d * d + d)  # self-attention
        + 2 * d  # affine norm before cross-attention
        + (d * d + d) + (2 * d * d + 2 * d) + qk + (d * d + d)  # cross-attention
        + (d * mlp + mlp) + (mlp * d + d)  # MLP
        + (d * 6 * d + 6 * d)  # adaLN
    )  # fmt: skip
    total = (c * p * d + d) + (256 * d + d + d * d + d) + (text_dim * d + d) + (d * d + d)
    total += 83 * d + 2 * d + 1  # camera table (81 + start + null), W_e, alpha
    total += cfg.blocks * block + (d * 2 * d + 2 * d) + (d * p * c + p * c)
    total += 2 * d + (d * head + head) + (head + 1)  # event head
    return total


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_parameter_counts(size: str) -> None:
    cfg = ModelConfig(size=size)
    n = count_parameters(cfg)  # meta device: nothing allocated, also for the large sizes
    assert n == expected_parameters(cfg, cfg.text.dim)
    if size in ("debug", "small"):
        assert n == sum(p.numel() for p in VideoDiT(cfg).parameters())


def test_registry_orders_and_dit_widths() -> None:
    counts = [count_parameters(ModelConfig(size=s)) for s in ("debug", "small", "base", "large", "xl")]
    assert counts == sorted(counts)
    assert counts[0] < 1_000_000  # debug runs on CPU in milliseconds
    assert [MODEL_SIZES[s].hidden_size for s in ("small", "base", "large", "xl")] == [384, 768, 1024, 1152]


def test_build_model_uses_the_encoder_width() -> None:
    model, encoder = build_model(config())
    assert isinstance(encoder, ByteTextEncoder) and encoder.dim == TEXT_DIM
    emb, mask = encoder(["a red ball rolls", ""])
    out = model(torch.zeros(2, 3, 2, 4, 4), torch.tensor([0.5, 0.5]), emb, mask)
    assert out.velocity.shape == (2, 3, 2, 4, 4)


# ------------------------------------------------------------------------------------------------- text encoders


def test_byte_text_encoder() -> None:
    torch.manual_seed(0)
    enc = ByteTextEncoder(dim=16, layers=1, heads=2, max_length=12)
    emb, mask = enc(["", "héllo", "a much longer caption than the limit"])
    assert enc.trainable and emb.dtype == torch.float32
    assert emb.shape == (3, 12, 16) and mask.shape == (3, 12)
    assert mask.sum(1).tolist() == [2, 8, 12]  # start + end for "", utf-8 bytes (é = 2), truncated to 12
    assert torch.equal(emb[0, 2:], torch.zeros(10, 16))
    alone, _ = enc(["héllo"])  # padding in a batch does not change a row
    torch.testing.assert_close(alone[0], emb[1, :8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc(["hellö"])[0], alone)  # same length, other bytes
    emb.sum().backward()
    assert enc.embed.weight.grad is not None
    with pytest.raises(TypeError):
        enc("not a list")


def tiny_clip_cfg() -> dict[str, Any]:
    # The real CLIP BPE tokenizer (bundled with open_clip) emits ids up to 49407, so the vocabulary stays full size.
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torch.manual_seed(0)
    model = open_clip.CLIP(**tiny_clip_cfg()).eval()
    folder = save_clip_folder(tmp_path_factory.mktemp("text") / "tiny-clip", model, tiny_clip_cfg(), preprocess=False)
    return folder, model


def test_open_clip_text_encoder_per_token_features(tiny_clip: tuple[Path, Any]) -> None:
    folder, model = tiny_clip
    enc = build_text_encoder(TextConfig(model_path=str(folder)))
    assert isinstance(enc, OpenClipTextEncoder) and not enc.trainable and enc.dim == 24
    texts = ["a cat jumps onto the table", "dog", ""]
    emb, mask = enc(texts)
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=16)(texts)
    lengths = (ids != 0).sum(1)
    assert mask.sum(1).tolist() == lengths.tolist() and emb.shape == (3, int(lengths.max()), 24)
    with torch.no_grad():  # the reference: token embedding -> causal transformer -> final LayerNorm, per token
        x = model.token_embedding(ids) + model.positional_embedding
        ref = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(emb[i, :n], ref[i, :n], atol=1e-5, rtol=1e-5)
        assert torch.equal(emb[i, n:], torch.zeros_like(emb[i, n:]))
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training  # the frozen tower never enters train mode


def test_open_clip_text_encoder_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"text\.model_path.*does not exist"):
        build_text_encoder(TextConfig(model_path=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"text\.model_path"):
        OpenClipTextEncoder(str(empty))


@pytest.mark.parametrize("pos", ["sincos", "learned"])
def test_one_model_takes_a_new_shape_every_call(pos: str) -> None:
    """Buckets: (T, h, w) changes from step to step. Each shape gives what a fresh model gives it, whatever came
    before (no position table sized or cached for another shape leaks in), and gradients flow for each."""
    torch.manual_seed(0)
    model = randomize(VideoDiT(config(pos_embed=pos, max_grid=(32, 32, 32))))
    torch.manual_seed(0)
    fresh = randomize(VideoDiT(config(pos_embed=pos, max_grid=(32, 32, 32))))
    shapes = [(5, 8, 14), (17, 14, 8), (9, 6, 16), (5, 8, 14)]
    first = {}
    for shape in shapes:
        x = inputs(frames=shape[0], h=shape[1], w=shape[2], seed=sum(shape))
        cam = torch.randint(0, 81, (2, shape[0] - 1), generator=gen(3))
        field = torch.rand(2, *model.token_grid(shape), generator=gen(4))
        out = model(**x, camera_tokens=cam, event_field=field)
        assert out.velocity.shape == x["x"].shape and out.event_logits.shape == (2, *model.token_grid(shape))
        assert torch.isfinite(out.velocity).all()
        first.setdefault(shape, out.velocity)
        torch.testing.assert_close(out.velocity, first[shape], rtol=0, atol=0)
        alone = VideoDiT.forward(fresh, **x, camera_tokens=cam, event_field=field)
        torch.testing.assert_close(out.velocity, alone.velocity, rtol=1e-5, atol=1e-6)
    model.train()
    model.zero_grad()
    x = inputs(frames=3, h=6, w=10)
    model(**x).velocity.square().mean().backward()
    assert model.x_embed.weight.grad is not None and torch.isfinite(model.x_embed.weight.grad).all()


def test_shapes_the_patch_or_tables_cannot_take_are_clear_errors() -> None:
    model = VideoDiT(config(patch=(1, 2, 2)))
    with pytest.raises(ValueError, match=r"\(T, h, w\) = \(5, 8, 15\) is not divisible by the patch \(1, 2, 2\)"):
        model.token_grid((3, 5, 8, 15))
    learned = VideoDiT(config(pos_embed="learned", max_grid=(4, 4, 4)))
    with pytest.raises(ValueError, match="exceeds model.max_grid"):
        learned.token_grid((5, 8, 8))
    assert learned.token_grid((4, 8, 8)) == (4, 4, 4)
