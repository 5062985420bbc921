"""AAPT's causal discriminator: the generator's architecture (block-causal `VideoDiT`) with one logit per frame.

Head (a proposal; AAPT gives no details): at each tap block a learnable query attends over the tokens of each token
frame *separately* (softmax pooling within the frame), the pooled vectors of all taps are concatenated, normalised
and mapped to a logit. Pooling never mixes frames, so with block-causal attention the logit of frame i depends only
on frames <= i ("multi-duration discrimination" in one parallel pass). The backbone's output layers (velocity
projection, event head) are dropped: they would get no gradient (and DDP would complain).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from training.model import ModelConfig, VideoDiT


class FrameDiscriminator(nn.Module):
    """Block-causal DiT backbone + per-frame query-pooling head -> logits (B, T')."""

    def __init__(self, backbone: VideoDiT, taps: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if not backbone.cfg.causal:
            raise ValueError("FrameDiscriminator needs a causal backbone (model.causal = true)")
        depth, d = len(backbone.blocks), backbone.hidden_size
        self.taps = tuple(sorted(set(taps))) if taps else (depth - 1,)
        if not all(0 <= i < depth for i in self.taps):
            raise ValueError(f"taps must be block indices in [0, {depth}), got {taps}")
        self.backbone = backbone
        for name in ("final_norm", "final_ada", "final_proj", "event_head"):
            setattr(self.backbone, name, None)
        self.query = nn.Parameter(torch.randn(len(self.taps), d) * 0.02)
        self.norm = nn.LayerNorm(len(self.taps) * d)
        self.head = nn.Linear(len(self.taps) * d, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, cfg: ModelConfig, text_dim: int | None = None, taps: tuple[int, ...] | None = None):
        return cls(VideoDiT(cfg, text_dim), taps)

    @classmethod
    def from_generator(cls, generator: VideoDiT, taps: tuple[int, ...] | None = None) -> FrameDiscriminator:
        """Initialised from (a copy of) generator weights, e.g. the stage-(a) diffusion-adaptation model."""
        return cls(copy.deepcopy(generator), taps)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        camera_tokens: torch.Tensor | None = None,
        recycled: torch.Tensor | None = None,
        rays: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T') of positions x (B, C, T, h, w) with the generator's inputs (see `VideoDiT.forward`)."""
        bb = self.backbone
        b = x.shape[0]
        grid = bb.token_grid(x.shape)
        gt, s = grid[0], grid[1] * grid[2]
        tokens = bb.embed(x, camera_tokens, None, recycled, rays)
        cond, text, m = bb.condition(t, text_emb, text_mask, b, tokens.dtype)
        _, tapped = bb.trunk(tokens, cond, text, m, grid, taps=self.taps)
        pooled = []
        for q, h in zip(self.query, tapped, strict=True):
            h = h.view(b, gt, s, -1)
            w = torch.softmax((h @ q.to(h.dtype)) / math.sqrt(h.shape[-1]), dim=2)  # within each frame
            pooled.append((w[..., None] * h).sum(dim=2))
        return self.head(self.norm(torch.cat(pooled, dim=-1))).squeeze(-1)
