"""Text conditioning: list[str] -> (per-token embeddings (B, L, D) float32, mask (B, L) bool, True = real token).

Three encoders share one interface:

* `ByteTextEncoder`: a small trainable encoder over UTF-8 bytes (no vocabulary file, no weights), used when no text
  model is configured, e.g. on a fresh machine or in tests. It trains together with the DiT.
* `OpenClipTextEncoder`: a frozen open_clip text tower loaded from a local folder or checkpoint (never from a hub).
  It returns the per-token features of the text transformer after its final LayerNorm, not only the pooled vector,
  so that the DiT's cross-attention sees every token.
* `PrecomputedTextEncoder`: no model at all; the batch carries the shards' stored `text_embedding` (a frozen
  T5/UMT5/CLIP run by the pipeline), zero-padded by the loader to the encoder's maximum length, with `text_mask`.
  Its null prompt (text dropout, the unconditional branch of CFG) is an all-masked row: no key to attend to, so the
  cross-attention adds exactly 0 and the pooled text is 0.

`encode_batch(batch, drop)` is what the objective calls: strings for the first two, the stored tensors for the
third.

Both always produce at least one valid token per row (a start token), also for the empty string that condition
dropout uses as the null prompt, so attention over the text never has an empty key set. L is the longest sequence in
the batch, not the configured maximum, which keeps cross-attention cheap for short captions.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from annotators.models import ModelLoadError, require_path, resolve_device


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """Which text encoder to build. kind auto: open_clip when `model_path` is set, else (training resolves it from the
    data) precomputed when the shards store text embeddings, else the byte encoder."""

    kind: str = "auto"  # auto | byte | open_clip | precomputed
    model_path: str = ""  # open_clip folder (hub layout) or checkpoint file; "" = ByteTextEncoder
    model_name: str = ""  # built-in open_clip architecture of a checkpoint FILE (a folder names its own)
    device: str = "cpu"  # where the encoder runs (auto | cpu | cuda | cuda:N)
    dtype: str = "auto"  # open_clip weights: auto (float16 on cuda, float32 on cpu) | float32 | float16 | bfloat16
    dim: int = 256  # ByteTextEncoder width
    layers: int = 2  # ByteTextEncoder transformer layers
    heads: int = 4  # ByteTextEncoder attention heads
    max_length: int = 256  # bytes (including start/end) for the byte encoder; a token cap for open_clip (0 = model's)
    # precomputed: the stored embeddings' width (`dim`) and padded length (`max_length`) come from the manifest's
    # text_encoder block (training sets them; data.text_encoder_hash pins the encoder they come from).

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"model.text.kind must be one of {', '.join(TEXT_KINDS)}, got {self.kind!r}")
        if self.kind == "open_clip" and not self.model_path:
            raise ValueError("model.text.kind=open_clip needs model.text.model_path")
        if self.kind in ("byte", "precomputed") and self.model_path:
            raise ValueError(f"model.text.kind={self.kind} takes no model.text.model_path")
        if self.dim < 1 or self.layers < 0 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"text encoder: dim {self.dim} must be a positive multiple of heads {self.heads}")
        if self.max_length < 0 or (self.resolved == "byte" and self.max_length < 2):
            raise ValueError(f"text.max_length must be >= 2 for the byte encoder, got {self.max_length}")

    @property
    def resolved(self) -> str:
        """The kind without data to look at: auto is open_clip with a model path, else byte."""
        if self.kind != "auto":
            return self.kind
        return "open_clip" if self.model_path else "byte"


TEXT_KINDS = ("auto", "byte", "open_clip", "precomputed")


class TextEncoder(nn.Module, abc.ABC):
    """Interface: `encoder(texts)` -> (embeddings (B, L, dim) float32, mask (B, L) bool) on the encoder's device."""

    dim: int  # width D of the embeddings
    trainable: bool  # whether its parameters belong in the optimizer (and the checkpoint)

    @abc.abstractmethod
    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def encode_batch(self, batch: Mapping[str, Any], drop: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's text (caption, else camera text), with the empty prompt where `drop` is set."""
        texts = [""] * len(drop) if batch.get("text") is None else [str(s) for s in batch["text"]]
        return self(["" if d else s for s, d in zip(texts, drop, strict=True)])


class ByteTextEncoder(TextEncoder):
    """UTF-8 bytes + start/end/pad tokens -> embedding + learned positions -> pre-norm transformer -> LayerNorm."""

    PAD, BOS, EOS = 256, 257, 258
    VOCAB = 259

    def __init__(self, dim: int = 256, layers: int = 2, heads: int = 4, max_length: int = 256) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (start and end tokens), got {max_length}")
        self.dim, self.trainable, self.max_length = dim, True, max_length
        self.embed = nn.Embedding(self.VOCAB, dim, padding_idx=self.PAD)
        self.pos = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor=False: the nested fast path changes numerics between train and eval mode.
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else nn.Identity()
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L) int64, mask (B, L) bool) with L the longest row; bytes beyond max_length - 2 are cut."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        rows = [[self.BOS, *s.encode("utf-8")[: self.max_length - 2], self.EOS] for s in texts]
        length = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids.to(self.device), (ids != self.PAD).to(self.device)

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        if isinstance(self.blocks, nn.TransformerEncoder):
            x = self.blocks(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask.unsqueeze(-1)  # padded positions are zero; consumers must still use the mask
        return x.float(), mask


def _pad_id(tokenizer: Any) -> int:
    """The padding id of an open_clip tokenizer (SimpleTokenizer pads with 0; HF tokenizers say so)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return 0 if pad is None else int(pad)


class OpenClipTextEncoder(TextEncoder):
    """Frozen open_clip text tower from a local path: per-token features after the final LayerNorm (B, L, width)."""

    def __init__(
        self, model_path: str, model_name: str = "", device: str = "cpu", dtype: str = "auto", max_length: int = 0
    ) -> None:
        super().__init__()
        import open_clip

        from annotators.aesthetics import _hub_offline, load_clip_model

        key = "text.model_path"
        path = require_path(model_path, key).resolve()
        try:
            clip = load_clip_model(str(path), model_name, device, dtype)
        except ModelLoadError as e:  # its messages name the aesthetics keys; say which setting it is here
            raise ModelLoadError(f"{key}: cannot load the open_clip text encoder from {path}: {e}") from e
        spec = f"local-dir:{path}" if path.is_dir() else model_name
        try:
            with _hub_offline():
                self.tokenizer = open_clip.get_tokenizer(spec)
        except Exception as e:  # open_clip / HF raise many types for a missing tokenizer
            raise ModelLoadError(f"{key}: no usable tokenizer for {path}: {e}") from e
        self.model = clip.model.requires_grad_(False).eval()
        self.arch, self.trainable, self.max_length = clip.arch, False, max_length
        self.pad_id = _pad_id(self.tokenizer)
        self.dim = int(self._features(self.tokenizer([""]).to(clip.device)).shape[-1])

    def train(self, mode: bool = True) -> OpenClipTextEncoder:
        """Always stays in eval mode: the tower is frozen (no dropout, fixed norms)."""
        super().train(mode)
        self.model.eval()
        return self

    def _features(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(
            text=ids, text_indices=1, normalize_intermediates=True, intermediates_only=True
        )
        return out["text_intermediates"][-1]

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        ids = self.tokenizer(list(texts)).to(self.device)
        mask = ids != self.pad_id
        mask[:, 0] = True  # the start token is never padding; keeps at least one key per row
        # The tower needs its full context (fixed positional table), so the trailing padding columns are only cut
        # from its output: the DiT then attends over the longest real row instead of the whole context.
        length = int(mask.sum(1).max())
        if self.max_length:
            length = min(length, self.max_length)
        x = self._features(ids)[:, :length].float()
        mask = mask[:, :length]
        return x * mask.unsqueeze(-1), mask


class PrecomputedTextEncoder(TextEncoder):
    """The shards' stored embeddings (`text_embedding`, `text_mask` from the loader); no parameters, nothing run."""

    def __init__(self, dim: int, max_length: int) -> None:
        super().__init__()
        if dim < 1 or max_length < 1:
            raise ValueError(
                f"precomputed text: dim {dim} and max_length {max_length} must be >= 1 (the shards' text_encoder block)"
            )
        self.dim, self.max_length, self.trainable = dim, max_length, False

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the null prompt: strings need the encoder the shards were embedded with (see training.sample)."""
        if isinstance(texts, str) or any(texts):
            raise ValueError("precomputed text embeddings: a prompt string needs its text encoder (--text-encoder DIR)")
        return self.null(len(texts))

    def null(self, b: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, D) zeros, mask all False: no text at all."""
        return torch.zeros((b, 1, self.dim), device=device), torch.zeros((b, 1), dtype=torch.bool, device=device)

    def encode_batch(self, batch: Mapping[str, Any], drop: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        emb, mask = batch.get("text_embedding"), batch.get("text_mask")
        if emb is None or mask is None:
            raise ValueError("precomputed text: the batch has no text_embedding (do the shards store them?)")
        if emb.shape[-1] != self.dim:
            raise ValueError(f"precomputed text: embeddings of width {emb.shape[-1]}, the model takes {self.dim}")
        keep = ~torch.as_tensor(list(drop), dtype=torch.bool, device=mask.device)
        return emb.float() * keep[:, None, None], mask & keep[:, None]


def build_text_encoder(cfg: TextConfig) -> TextEncoder:
    """By `cfg.kind` (auto: open_clip with a `model_path`, errors naming `text.model_path`, else byte); precomputed
    takes the width and length of the stored embeddings from `cfg.dim` / `cfg.max_length`."""
    if cfg.kind == "precomputed":
        return PrecomputedTextEncoder(cfg.dim, cfg.max_length)
    if cfg.resolved == "open_clip":
        return OpenClipTextEncoder(cfg.model_path, cfg.model_name, cfg.device, cfg.dtype, cfg.max_length)
    return ByteTextEncoder(cfg.dim, cfg.layers, cfg.heads, cfg.max_length).to(resolve_device(cfg.device))
