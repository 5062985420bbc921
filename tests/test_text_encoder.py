"""Text embeddings with tiny, randomly initialised real encoders (T5, UMT5, CLIP) and a tokenizer built offline,
saved to a folder and loaded back: trimmed to the real length, the same as encoding alone, deterministic, and
clear errors for a bad folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from annotators.models import ModelLoadError  # noqa: E402
from annotators.text_encoder import TextEncoder, TextEncoderConfig, load_text_encoder, text_of  # noqa: E402

WORDS = [
    "the",
    "a",
    "camera",
    "pans",
    "left",
    "right",
    "tilts",
    "up",
    "down",
    "moves",
    "forward",
    "backward",
    "red",
    "square",
    "on",
    "grey",
    "ground",
]


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def tiny_encoder(kind: str):
    size = len(WORDS) + 3
    if kind == "t5":
        cfg = transformers.T5Config(vocab_size=size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        return transformers.T5EncoderModel(cfg)
    if kind == "umt5":
        cfg = transformers.UMT5Config(vocab_size=size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        return transformers.UMT5EncoderModel(cfg)
    cfg = transformers.CLIPTextConfig(
        vocab_size=size,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=24,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=2,
    )
    return transformers.CLIPTextModel(cfg)


@pytest.fixture(scope="module", params=["t5", "umt5", "clip"])
def encoder_dir(request, tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    tiny_encoder(request.param).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def batch(captions, camera):
    n = len(captions)
    obj = lambda v: np.array(v, dtype=object)  # noqa: E731
    return {"clip_id": obj([f"c{i}" for i in range(n)]), "caption": obj(captions), "camera_text": obj(camera)}


def test_embeddings_are_trimmed_and_match_encoding_alone(encoder_dir):
    enc = TextEncoder(TextEncoderConfig(model_path=str(encoder_dir), batch_size=4))
    captions = ["a red square moves left", None, "", "the camera pans right on grey ground"]
    camera = ["the camera tilts up", "the camera pans left", None, "camera moves forward"]
    out = enc(batch(captions, camera))
    assert list(out["text_encoder_error"]) == [None] * 4
    embeddings = list(out["text_embedding"])
    # caption, else camera text, else the empty prompt; each word is one token, plus </s>
    assert [e.shape for e in embeddings] == [(6, 32), (5, 32), (1, 32), (8, 32)]
    assert all(e.dtype == np.float16 and np.isfinite(e).all() for e in embeddings)
    for text, e in zip(["a red square moves left", "the camera pans left", "", captions[3]], embeddings, strict=True):
        (alone,) = enc.encode([text])  # padding inside a batch changes nothing
        np.testing.assert_allclose(e.astype(np.float32), alone.astype(np.float32), atol=2e-3)
    again = enc(batch(captions, camera))["text_embedding"]
    assert all(np.array_equal(a, b) for a, b in zip(embeddings, again, strict=True))


def test_text_choice():
    assert text_of("a caption", "camera") == "a caption"
    assert text_of("  ", "the camera pans left") == "the camera pans left"
    assert text_of(None, None) == ""


def test_bad_folders_are_one_line_errors(tmp_path, encoder_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_text_encoder(TextEncoderConfig(model_path=str(tmp_path / "missing")))
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in encoder_dir.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            (no_tok / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_text_encoder(TextEncoderConfig(model_path=str(no_tok)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ModelLoadError, match="BertModel; text embeddings need"):
        load_text_encoder(TextEncoderConfig(model_path=str(other)))
