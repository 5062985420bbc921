"""Text embeddings per clip from a frozen local `transformers` text encoder, so training never runs it.

The input is the clip's caption when it has one, else its camera text (QCM's "the camera pans left ..."), else
the empty prompt. Text is tokenised with the model's tokenizer (truncated to `max_length`), encoded with the
attention mask, and the last hidden state is trimmed to the real token count: `text_embedding` (L, D) float16.
The loader zero-pads it back to the model's maximum (padded positions of UMT5 are not zero even with a mask,
and Wan expects zeros there).

Supported: `T5EncoderModel`, `UMT5EncoderModel` (Wan, CogVideoX, LTX, Cosmos) and `CLIPTextModel` /
`CLIPTextModelWithProjection`. Weights and tokenizer are read from a local `save_pretrained` folder only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from annotators.base import AnnotatorError, Batch, error_text, object_array
from annotators.models import (
    DTYPES,
    ModelLoadError,
    check_device,
    require_path,
    resolve_device,
    run_in_chunks,
    torch_dtype,
)

MODEL_KEY = "text_encoder.model_path"
# A folder needs one of these: transformers 5 otherwise builds a default, empty vocabulary without a word.
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.json", "vocab.txt")
ENCODERS = ("T5EncoderModel", "UMT5EncoderModel", "CLIPTextModel", "CLIPTextModelWithProjection")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """The `[text_encoder]` section: a frozen encoder whose embeddings the shards store."""

    model_path: str = ""  # a local transformers folder with the encoder and its tokenizer; empty = off
    device: str = "auto"
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16
    max_length: int = 512  # tokens; Wan's UMT5 uses 512, CLIP 77 (the smaller of this and the model's wins)
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_device(self.device, "text_encoder.device")
        if self.dtype not in DTYPES:
            raise ValueError(f"text_encoder.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError("text_encoder.max_length and text_encoder.batch_size must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.model_path)


def encoder_class(folder: Path) -> str:
    """The encoder class a folder was saved from (config.json `architectures`); ModelLoadError otherwise."""
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{MODEL_KEY}: {folder} has no config.json (save the encoder with save_pretrained)")
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (json.JSONDecodeError, AttributeError) as e:
        raise ModelLoadError(f"{MODEL_KEY}: {config_file} is not a transformers config: {e}") from e
    found = [a for a in architectures if a in ENCODERS]
    if not found:
        raise ModelLoadError(
            f"{MODEL_KEY}: {folder} holds {', '.join(architectures) or 'no architecture'}; text embeddings need one "
            f"of {', '.join(ENCODERS)}"
        )
    return found[0]


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer; ModelLoadError when it has none, or one that does not load."""
    import transformers

    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{MODEL_KEY}: {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, TypeError... for a missing/broken tokenizer
        raise ModelLoadError(f"{MODEL_KEY}: {folder} has no usable tokenizer: {_first_line(e)}") from e


def check_text_encoder(cfg: TextEncoderConfig) -> dict[str, Any]:
    """The driver's check before any work, without loading the (possibly many-GB) weights: the class, a tokenizer
    that loads, weight headers. Returns what the manifest records; ModelLoadError naming the key otherwise."""

    from annotators.models import check_weight_files

    folder = require_path(cfg.model_path, MODEL_KEY, kind="dir")
    cls = encoder_class(folder)
    tokenizer = load_tokenizer(folder)
    check_weight_files(folder, MODEL_KEY)
    config = json.loads((folder / "config.json").read_text())
    if config.get("text_config"):  # a CLIP config saved from the full model nests the text tower
        config = config["text_config"]
    dim = int(config.get("d_model") or config.get("hidden_size") or 0)
    limit = int(config.get("max_position_embeddings") or cfg.max_length)
    return {
        "cls": cls,
        "dim": dim,
        "max_length": min(cfg.max_length, limit),
        "vocab": len(tokenizer),
        "weights_sha256": weights_hash(folder),
        "input": "caption, else camera_text, else the empty prompt",
        "layout": "last hidden state, attention-masked, trimmed to the real tokens: (L, D); pad with zeros",
    }


def text_of(caption: Any, camera_text: Any) -> str:
    """What a clip's embedding encodes: its caption, else its camera text, else the empty prompt."""
    for text in (caption, camera_text):
        if isinstance(text, str) and text.strip():
            return text.strip()
    return ""


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
    """A loaded encoder, its tokenizer and what identifies them (for the manifest)."""

    model: Any
    tokenizer: Any
    cls: str
    dim: int
    max_length: int
    device: str
    weights_sha256: str


def load_text_encoder(cfg: TextEncoderConfig) -> LoadedEncoder:
    """The encoder and tokenizer in `cfg.model_path`, frozen, in eval mode; ModelLoadError (one line) for a
    missing folder or tokenizer, another class, or weights that do not load."""
    import transformers

    folder = require_path(cfg.model_path, MODEL_KEY, kind="dir")
    cls = encoder_class(folder)
    tokenizer = load_tokenizer(folder)
    tokenizer.padding_side = "right"  # the trim below keeps each row's first `length` positions
    device = resolve_device(cfg.device)
    try:
        model = getattr(transformers, cls).from_pretrained(
            str(folder), torch_dtype=torch_dtype(cfg.dtype, device), local_files_only=True
        )
    except Exception as e:
        raise ModelLoadError(f"{MODEL_KEY}: cannot load the {cls} in {folder}: {_first_line(e)}") from e
    model = model.to(device).eval().requires_grad_(False)
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise ModelLoadError(
            f"{MODEL_KEY}: the tokenizer in {folder} has {len(tokenizer)} tokens, the {cls} embeds {config.vocab_size}"
        )
    dim = int(getattr(config, "d_model", None) or config.hidden_size)
    limit = getattr(config, "max_position_embeddings", None) or cfg.max_length  # T5: relative positions, no limit
    return LoadedEncoder(model, tokenizer, cls, dim, min(cfg.max_length, int(limit)), device, weights_hash(folder))


def weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".model")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


class TextEncoder:
    """`text_embedding` (L, D) float16 per clip from its `caption` / `camera_text` columns."""

    name: ClassVar[str] = "text_encoder"
    output_columns: ClassVar[tuple[str, ...]] = ("text_embedding", "text_encoder_error")

    def __init__(self, cfg: TextEncoderConfig) -> None:
        self.cfg = cfg
        self.encoder = load_text_encoder(cfg)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["clip_id"])
        captions = batch.get("caption", [None] * n)
        camera = batch.get("camera_text", [None] * n)
        texts = [text_of(c, k) for c, k in zip(captions, camera, strict=True)]
        results = run_in_chunks(self.encode, texts, self.cfg.batch_size, self.encoder.cls)
        embeddings = [None if isinstance(r, AnnotatorError) else r for r in results]
        errors = [error_text(r) if isinstance(r, AnnotatorError) else None for r in results]
        return {
            "clip_id": batch["clip_id"],
            "text_embedding": object_array(embeddings),
            "text_encoder_error": object_array(errors),
        }

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Trimmed embeddings (L_i, D) float16 of `texts`, one batch through the encoder."""
        import torch

        enc = self.encoder
        tokens = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt").to(
            enc.device
        )
        with torch.no_grad():
            hidden = enc.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        states = hidden.last_hidden_state.float().cpu()
        lengths = tokens["attention_mask"].sum(1).cpu().tolist()
        # Right padding: a row's real tokens come first; trim each to its own length.
        return [states[i, : max(1, int(n))].numpy().astype(np.float16) for i, n in enumerate(lengths)]
