"""VideoDiT: a small video diffusion transformer predicting the flow-matching velocity (see `flow_matching`).

Layout of one forward pass (x (B, C, T, h, w), t (B,) with t = 0 noise and t = 1 data):

1. 3D patchify (Conv3d, kernel = stride = patch (pt, ph, pw)) -> N = T'*H'*W' tokens of width D, flattened in
   (t, h, w) order, plus a fixed 3D sin-cos (or learned, factorised) position embedding. Both are built for the
   input's own grid, so (T, h, w) may change from one call to the next (aspect-ratio/duration buckets).
2. QCM camera conditioning: one embedding per latent frame (81 QCM tokens, a learned "start" for frame 0, a null
   for "unknown / dropped"), averaged over the pt frames of a token frame and added to every token of that frame.
   Step i of `camera_tokens` (B, T-1) moves frame i to frame i+1, so its embedding goes to frame i+1.
3. EVD input-level event injection h += alpha * W_e [e, present] (paper Eq. 46) from an event field on the token grid
   (pseudo-target at train time, the head's previous prediction at sampling; negative entries = no field).
4. adaLN-Zero blocks: conditioning c = MLP(timestep) + MLP(masked mean of the text tokens) modulates self-attention
   over all tokens and the MLP; cross-attention to the text tokens (key padding mask) sits between them.
5. Final adaLN + zero-initialised linear unpatchify -> velocity; the EVD event head on the final block's tokens ->
   activity logits (B, T', H', W').

`model.causal = true` (AAPT, machinery in `training.causal`): self-attention is block-causal over token frames
(optionally a sliding `window` with `sink` frames kept), the previous frame is concatenated on the channel axis
(`recycled`, x_embed takes 2*C channels), QCM tokens are one per position (the step that leads to its target frame),
optional per-pixel camera rays (`camera_rays`) enter through their own randomly initialised patch projection, and
`kv_cache` streams one token frame per call. The sin-cos time axis is the absolute token-frame index (no table), so
rollouts may outgrow the training clips. With causal = false (the default) nothing of this exists.

At initialisation the velocity is exactly 0 (zero final layer), the event head outputs ~0 logits (weights N(0, 1e-5))
and the event injection adds exactly 0 (alpha = 0), so enabling the event modules does not change the base model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from annotators.qcm import NUM_TOKENS
from training import causal
from training.camera_rays import RAY_CHANNELS
from training.layers import Core, DiTBlock, EventHead, modulate, sincos_3d, timestep_embedding
from training.text import TextConfig, TextEncoder, build_text_encoder

if TYPE_CHECKING:
    from training.causal import KVCache


CAMERA_START = NUM_TOKENS  # embedding row of frame 0 (no step leads to it)
CAMERA_NULL_ROW = NUM_TOKENS + 1  # embedding row of "no camera information"
CAMERA_NULL = -1  # value of a step in `camera_tokens` without a token (condition dropout / has_camera False)
EVENT_NULL = -1.0  # value of an event-field entry without a field (event dropout / no pseudo-target)
POS_EMBEDS = ("sincos", "learned")
POS_CACHE_SIZE = 64  # sin-cos tables kept (one per token grid and device)


@dataclass(frozen=True)
class ModelSize:
    """Width, depth, heads and default patch of a registry size."""

    hidden_size: int
    depth: int
    num_heads: int
    patch: tuple[int, int, int]


# Widths/depths/heads of DiT-S/B/L/XL for the production sizes. Pixel-space training (no VAE) has 3 channels, so
# the production sizes default to 4x4 spatial patches (48 values per token); latent training overrides `patch`.
MODEL_SIZES: dict[str, ModelSize] = {
    "debug": ModelSize(64, 2, 4, (1, 2, 2)),
    "small": ModelSize(384, 12, 6, (1, 4, 4)),
    "base": ModelSize(768, 12, 12, (1, 4, 4)),
    "large": ModelSize(1024, 24, 16, (1, 4, 4)),
    "xl": ModelSize(1152, 28, 16, (1, 4, 4)),
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A registry size plus overrides, the text encoder settings and the EVD switches."""

    size: str = "debug"
    patch: tuple[int, int, int] | None = None  # None = the size's default
    hidden_size: int | None = None  # overrides of the size
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    in_channels: int = 3  # RGB in pixel space (no VAE); a VAE's latent channels otherwise
    pos_embed: str = "sincos"  # sincos (fixed, any grid) | learned (factorised t/h/w tables up to max_grid)
    max_grid: tuple[int, int, int] = (64, 64, 64)  # learned position tables: token frames, rows, columns
    qk_norm: bool = True  # RMSNorm on queries/keys: keeps attention logits bounded in long runs
    camera: bool = True  # QCM camera embeddings
    event_head: bool = True  # EVD activity head on the final tokens
    event_injection: bool = True  # EVD input-level injection of an event field
    event_alpha: float | None = None  # None = learnable alpha initialised 0; a number = fixed alpha (0 = off)
    grad_checkpointing: bool = False  # recompute block activations in backward (memory for compute)
    causal: bool = False  # AAPT block-causal self-attention over token frames + recycled input (training.causal)
    window: int = 0  # causal: token frames a query frame attends to, itself included (0 = every earlier frame)
    sink: int = 1  # causal with a window: first token frames always attended to (frame 0 holds the first frame)
    recycle: bool = True  # causal: previous frame concatenated on the channel axis (x_embed takes 2*in_channels)
    camera_rays: bool = False  # causal: 6-channel ray origin/direction input (training.camera_rays), random init
    attention: str = "auto"  # causal kernel: auto (flex on CUDA, SDPA + bool mask elsewhere) | sdpa | flex
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:
            raise ValueError(f"model.size must be one of {sorted(MODEL_SIZES)}, got {self.size!r}")
        if self.patch is not None:
            object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))  # TOML gives lists
            if len(self.patch) != 3 or min(self.patch) < 1:
                raise ValueError(f"model.patch must be three positive ints (pt, ph, pw), got {self.patch}")
        object.__setattr__(self, "max_grid", tuple(int(g) for g in self.max_grid))
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"model.pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.hidden_dim % self.heads or self.hidden_dim % 2:
            raise ValueError(f"model: hidden size {self.hidden_dim} must be even and divisible by {self.heads} heads")
        if self.in_channels < 1 or self.blocks < 1 or self.mlp_ratio <= 0:
            raise ValueError("model: in_channels and depth must be >= 1 and mlp_ratio > 0")
        causal.validate(self.causal, self.window, self.sink, self.attention, self.pos_embed, self.camera_rays)

    @property
    def hidden_dim(self) -> int:
        return self.hidden_size or MODEL_SIZES[self.size].hidden_size

    @property
    def blocks(self) -> int:
        return self.depth or MODEL_SIZES[self.size].depth

    @property
    def heads(self) -> int:
        return self.num_heads or MODEL_SIZES[self.size].num_heads

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.patch or MODEL_SIZES[self.size].patch


class ModelOutput(NamedTuple):
    """Velocity (B, C, T, h, w) and EVD activity logits on the token grid (B, T', H', W'), None without a head."""

    velocity: torch.Tensor
    event_logits: torch.Tensor | None


class VideoDiT(nn.Module):
    """Video DiT for flow matching with text cross-attention, QCM camera embeddings and EVD event modules."""

    def __init__(self, cfg: ModelConfig, text_dim: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, self.patch = cfg.hidden_dim, cfg.patch_size
        self.hidden_size, self.in_channels = d, cfg.in_channels
        if text_dim is None and cfg.text.model_path:
            raise ValueError("VideoDiT: pass text_dim=encoder.dim for an open_clip text encoder (or use build_model)")
        self.text_dim = text_dim or cfg.text.dim  # the byte encoder's width is in the config
        self.recycles = cfg.causal and cfg.recycle
        in_ch = cfg.in_channels * (2 if self.recycles else 1)  # noisy frame + recycled previous frame
        self.x_embed = nn.Conv3d(in_ch, d, kernel_size=self.patch, stride=self.patch)
        self.ray_embed = nn.Conv3d(RAY_CHANNELS, d, self.patch, self.patch) if cfg.camera_rays else None
        if cfg.pos_embed == "learned":
            self.pos_t, self.pos_h, self.pos_w = (nn.Parameter(torch.zeros(n, d)) for n in cfg.max_grid)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_proj = nn.Linear(self.text_dim, d)
        self.text_pool = nn.Sequential(nn.SiLU(), nn.Linear(d, d))
        self.camera_embed = nn.Embedding(NUM_TOKENS + 2, d) if cfg.camera else None
        self.event_in = nn.Linear(2, d, bias=False) if cfg.event_injection else None
        if cfg.event_injection and cfg.event_alpha is None:
            self.event_alpha = nn.Parameter(torch.zeros(()))
        elif cfg.event_injection:
            self.register_buffer("event_alpha", torch.tensor(float(cfg.event_alpha)))
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.blocks))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final_proj = nn.Linear(d, math.prod(self.patch) * cfg.in_channels)
        self.event_head = EventHead(d) if cfg.event_head else None
        # Fixed sin-cos tables per (token grid, device): one per bucket shape, computed on first use.
        self._pos_cache: OrderedDict[tuple[tuple[int, int, int], str], torch.Tensor] = OrderedDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: xavier linears, zero adaLN and output layers (velocity exactly 0 at init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The ray projection is random, not zero (AAPT: faster adaptation of the new condition).
        for conv in (self.x_embed, self.ray_embed):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                nn.init.zeros_(conv.bias)
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.cfg.pos_embed == "learned":
            for p in (self.pos_t, self.pos_h, self.pos_w):
                nn.init.normal_(p, std=0.02)
        if self.camera_embed is not None:
            nn.init.normal_(self.camera_embed.weight, std=0.02)
            with torch.no_grad():
                self.camera_embed.weight[CAMERA_NULL_ROW].zero_()  # "unknown camera" starts as no signal at all
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for lin in (self.final_ada[-1], self.final_proj):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if self.event_in is not None and self.cfg.event_alpha is not None:
            nn.init.zeros_(self.event_in.weight)  # fixed alpha: the zero W_e is what makes the start impact-free
        # With a learnable alpha (initialised 0) W_e keeps its random init: with both at 0 neither would get a
        # gradient (d/dalpha = W_e e = 0, d/dW_e = alpha e = 0) and the injection could never switch on.
        if self.event_head is not None:
            self.event_head.reset_last()

    def token_grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(T', H', W') of a (..., T, h, w) shape; raises when a size is not a multiple of the patch or (learned
        position tables) the grid exceeds `max_grid`. Any shape that passes can follow any other, step to step."""
        t, h, w = shape[-3:]
        pt, ph, pw = self.patch
        if t % pt or h % ph or w % pw:
            raise ValueError(f"input (T, h, w) = {(t, h, w)} is not divisible by the patch {self.patch}")
        grid = (t // pt, h // ph, w // pw)
        if self.cfg.pos_embed == "learned" and any(g > m for g, m in zip(grid, self.cfg.max_grid, strict=True)):
            raise ValueError(
                f"token grid {grid} of input (T, h, w) = {(t, h, w)} exceeds model.max_grid {self.cfg.max_grid}"
            )
        return grid

    def _pos(self, grid: tuple[int, int, int], device: torch.device, t0: int = 0) -> torch.Tensor:
        if self.cfg.pos_embed == "learned":
            gt, gh, gw = grid
            if gt > self.pos_t.shape[0] or gh > self.pos_h.shape[0] or gw > self.pos_w.shape[0]:
                raise ValueError(f"token grid {grid} exceeds model.max_grid {self.cfg.max_grid}")
            pos = self.pos_t[:gt, None, None] + self.pos_h[None, :gh, None] + self.pos_w[None, None, :gw]
            return pos.reshape(gt * gh * gw, -1)
        if t0:  # a streamed step: one small table per frame, not worth caching
            return sincos_3d(grid, self.hidden_size, device, t0)
        key = (grid, str(device))
        if key in self._pos_cache:
            self._pos_cache.move_to_end(key)
        else:
            self._pos_cache[key] = sincos_3d(grid, self.hidden_size, device)
            if len(self._pos_cache) > POS_CACHE_SIZE:  # least recently used first: a few dozen buckets fit
                self._pos_cache.popitem(last=False)
        return self._pos_cache[key]

    def _camera(self, tokens: torch.Tensor | None, b: int, frames: int, device: torch.device) -> torch.Tensor:
        """(B, T, D) per-frame camera embeddings (frame 0: start, or null for a row without any token).

        Causal: `tokens` is (B, T), one per position: the step leading to that position's target frame."""
        if tokens is None:
            idx = torch.full((b, frames), CAMERA_NULL_ROW, dtype=torch.long, device=device)
        elif self.cfg.causal:
            if tuple(tokens.shape) != (b, frames):
                raise ValueError(f"causal camera_tokens must be (B, T) = {(b, frames)}, got {tuple(tokens.shape)}")
            tok = tokens.to(device=device, dtype=torch.long)
            idx = torch.where(tok >= 0, tok, CAMERA_NULL_ROW)
        else:
            if tuple(tokens.shape) != (b, frames - 1):
                raise ValueError(f"camera_tokens must be (B, T-1) = {(b, frames - 1)}, got {tuple(tokens.shape)}")
            tok = tokens.to(device=device, dtype=torch.long)
            valid = tok >= 0
            null = torch.full((b, 1), CAMERA_NULL_ROW, dtype=torch.long, device=device)
            first = torch.where(valid.any(dim=1, keepdim=True), torch.full_like(null, CAMERA_START), null)
            idx = torch.cat([first, torch.where(valid, tok, CAMERA_NULL_ROW)], dim=1)
        return self.camera_embed(idx)

    def embed(
        self,
        x: torch.Tensor,
        camera_tokens: torch.Tensor | None = None,
        event_field: torch.Tensor | None = None,
        recycled: torch.Tensor | None = None,
        rays: torch.Tensor | None = None,
        t0: int = 0,
    ) -> torch.Tensor:
        """(B, N, D) input tokens of x (B, C, T, h, w) whose first token frame is frame t0 of the sequence."""
        b, _, frames, h, w = x.shape
        gt, gh, gw = grid = self.token_grid(x.shape)
        pt, d = self.patch[0], self.hidden_size
        if self.recycles:
            if recycled is None or recycled.shape != x.shape:
                raise ValueError(f"model.causal with recycle needs `recycled` of shape {tuple(x.shape)}")
            x = torch.cat([x, recycled.to(x.dtype)], dim=1)
        tokens = self.x_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), N in (t, h, w) order
        tokens = tokens + self._pos(grid, x.device, t0).to(tokens.dtype)
        if self.ray_embed is not None and rays is not None:
            if tuple(rays.shape) != (b, RAY_CHANNELS, frames, h, w):
                raise ValueError(f"rays must be (B, 6, T, h, w) = {(b, RAY_CHANNELS, frames, h, w)}")
            tokens = tokens + self.ray_embed(rays.to(tokens.dtype)).flatten(2).transpose(1, 2)
        if self.camera_embed is not None:
            cam = self._camera(camera_tokens, b, frames, x.device).view(b, gt, pt, d).mean(dim=2)
            tokens = (tokens.view(b, gt, gh * gw, d) + cam[:, :, None].to(tokens.dtype)).view(b, -1, d)
        if self.event_in is not None and event_field is not None:
            if tuple(event_field.shape) != (b, *grid):
                raise ValueError(f"event_field must be (B, T', H', W') = {(b, *grid)}, got {tuple(event_field.shape)}")
            present = event_field >= 0  # False for negative (null) and NaN entries
            e = torch.where(present, event_field.clamp(0.0, 1.0), torch.zeros_like(event_field))
            feats = torch.stack([e, present.to(e.dtype)], dim=-1).view(b, -1, 2).to(tokens.dtype)
            tokens = tokens + self.event_alpha * self.event_in(feats)
        return tokens

    def condition(
        self, t: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor, b: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(adaLN conditioning (B, D), projected text (B, L, D), text mask (B, L) bool)."""
        device = text_emb.device
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        t = t.expand(b) if t.ndim == 0 else t
        text = self.text_proj(text_emb.to(dtype))
        m = text_mask.to(device=device, dtype=torch.bool)
        mf = m[..., None].to(text.dtype)
        pooled = (text * mf).sum(dim=1) / mf.sum(dim=1).clamp_min(1.0)
        return self.t_embed(timestep_embedding(t).to(dtype)) + self.text_pool(pooled), text, m

    def trunk(
        self,
        tokens: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        m: torch.Tensor,
        grid: tuple[int, int, int],
        kv_cache: KVCache | None = None,
        taps: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens after every block, and those after the blocks in `taps` (indices) for discriminator heads."""
        core: Callable[[int], Core | None] = lambda _i: None  # noqa: E731
        if kv_cache is not None:
            core = kv_cache.core
        elif self.cfg.causal:
            core = causal.masked_core(self.cfg, grid, tokens.device)
        # A cache core records K/V on call: a checkpoint recompute would record them twice.
        ckpt = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        tapped = []
        for i, blk in enumerate(self.blocks):
            if ckpt:
                tokens = checkpoint(blk, tokens, cond, text, m, core(i), use_reentrant=False)
            else:
                tokens = blk(tokens, cond, text, m, core(i))
            if i in taps:
                tapped.append(tokens)
        return tokens, tapped

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        camera_tokens: torch.Tensor | None = None,
        event_field: torch.Tensor | None = None,
        recycled: torch.Tensor | None = None,
        rays: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """Velocity and event logits for x_t (B, C, T, h, w) at t (B,) (0 = noise, 1 = data).

        text_emb (B, L, text_dim) with text_mask (B, L) bool (True = real token); camera_tokens (B, T-1) int in
        0..80 or CAMERA_NULL (-1), None = no camera (causal: (B, T), see `_camera`); event_field (B, T', H', W') in
        [0, 1], negative = no field. Causal only: recycled (B, C, T, h, w) previous frames (`causal.teacher_forcing`),
        rays (B, 6, T, h, w) (`camera_rays.ray_embedding`), kv_cache = stream the next token frames through the cache
        (`causal.KVCache`: x holds the frames after those cached; call `kv_cache.commit()` afterwards).
        """
        b, c, frames, h, w = x.shape
        if kv_cache is not None and not self.cfg.causal:
            raise ValueError("kv_cache needs model.causal = true")
        grid = self.token_grid(x.shape)
        gt, gh, gw = grid
        pt, ph, pw = self.patch
        t0 = kv_cache.begin(gt, gh * gw) if kv_cache is not None else 0
        tokens = self.embed(x, camera_tokens, event_field, recycled, rays, t0)
        cond, text, m = self.condition(t, text_emb, text_mask, b, tokens.dtype)
        tokens, _ = self.trunk(tokens, cond, text, m, grid, kv_cache)
        logits = self.event_head(tokens).view(b, *grid) if self.event_head is not None else None
        shift, scale = self.final_ada(cond)[:, None].chunk(2, dim=-1)
        out = self.final_proj(modulate(self.final_norm(tokens), shift, scale))
        out = out.view(b, gt, gh, gw, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return ModelOutput(out.reshape(b, c, frames, h, w), logits)


def build_model(cfg: ModelConfig) -> tuple[VideoDiT, TextEncoder]:
    """The text encoder of `cfg.text` and a DiT sized for its width, on the encoder's device."""
    encoder = build_text_encoder(cfg.text)
    return VideoDiT(cfg, text_dim=encoder.dim).to(encoder.device), encoder


def count_parameters(cfg: ModelConfig, text_dim: int | None = None) -> int:
    """Parameter count of a configuration without allocating it (built on the meta device)."""
    with torch.device("meta"):
        model = VideoDiT(cfg, text_dim)
    return sum(p.numel() for p in model.parameters())
