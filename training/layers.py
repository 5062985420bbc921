"""The DiT's building blocks: fixed sin-cos embeddings, multi-head attention, the adaLN-Zero block, the EVD event head.

`training.model.VideoDiT` assembles them; they hold no conditioning logic of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (q, k, v) -> out, (B, H, N, hd)


def _sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim // 2))
    angles = pos.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(grid: tuple[int, int, int], dim: int, device: torch.device | None = None, t0: int = 0) -> torch.Tensor:
    """(T'*H'*W', dim) fixed position embedding: the width is split into time/row/column parts (each even).

    Token frame i gets time position t0 + i: a fixed interval of 1, so a streamed frame equals the same frame of a
    full-sequence call."""
    d_s = 2 * (dim // 6)
    d_t = dim - 2 * d_s
    gt, gh, gw = grid
    et = _sincos_1d(torch.arange(t0, t0 + gt, device=device), d_t)[:, None, None].expand(gt, gh, gw, d_t)
    eh = _sincos_1d(torch.arange(gh, device=device), d_s)[None, :, None].expand(gt, gh, gw, d_s)
    ew = _sincos_1d(torch.arange(gw, device=device), d_s)[None, None, :].expand(gt, gh, gw, d_s)
    return torch.cat([et, eh, ew], dim=-1).reshape(gt * gh * gw, dim).float()


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal features of 1000*t: t in [0, 1] spans the frequencies the way DiT's integer timesteps do."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention (self when `context` is None) through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, cross: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.cross = cross
        if cross:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        core: Core | None = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        if self.cross:
            q = self._split(self.q(x))
            k, v = (self._split(y) for y in self.kv(context).chunk(2, dim=-1))
        else:
            q, k, v = (self._split(y) for y in self.qkv(x).chunk(3, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask, valid = None, None
        if mask is not None:
            # A row whose keys are all masked would give NaN; it attends to everything and is zeroed instead.
            valid = mask.any(dim=1)
            attn_mask = (mask | ~valid[:, None])[:, None, None, :]
        # `core` replaces plain attention (causal masks, KV cache); it is only ever given for self-attention.
        out = core(q, k, v) if core is not None else F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return out if valid is None else out * valid[:, None, None].to(out.dtype)


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated, modulated self-attention and MLP with plain cross-attention to text in between."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross = Attention(dim, heads, qk_norm, cross=True)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, core: Core | None = None
    ) -> torch.Tensor:
        sh1, sc1, g1, sh3, sc3, g3 = self.ada(c)[:, None].chunk(6, dim=-1)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1), core=core)
        x = x + self.cross(self.norm2(x), text, text_mask)
        return x + g3 * self.mlp(modulate(self.norm3(x), sh3, sc3))


class EventHead(nn.Module):
    """EVD token head: LayerNorm -> Linear(D, min(256, D)) -> SiLU -> Linear(., 1), last layer ~N(0, 1e-5), bias 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = min(256, dim)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def reset_last(self) -> None:
        nn.init.normal_(self.net[-1].weight, std=1e-5)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens).squeeze(-1)
