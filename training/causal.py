"""AAPT block-causal machinery for `VideoDiT` with `model.causal = true`: masks, attention cores, KV cache, rollout.

Positions and frames. A clip of latent frames 0..T-1 is seen as T-1 *positions* (teacher forcing, AAPT "shifted
by one frame"): position j holds the noisy frame j+1 in its input channels and the clean frame j in its recycled
channels, and predicts frame j+1. Position 0 therefore carries the first frame (the conditioning image) and is the
attention sink. At inference one network evaluation per position: step j recycles the frame step j-1 produced (the
first frame for j = 0), writes its own K/V into the cache and outputs frame j+1. No clean re-run is needed, because
the next step gets the frame through the recycled channels. With a temporal patch pt > 1 a position is a token
frame of pt latent frames and the shift is pt.

Mask (one function for every path, `frame_visible`): query token frame i sees key frame j iff j <= i and, with a
window N > 0, i - j < N or j < sink. Text is cross-attention and so always visible. The same mask feeds
FlexAttention's block mask (CUDA), a dense bool mask for SDPA (elsewhere) and the KV cache's chunk masks.

Gradients of a rollout (student forcing, `rollout`): by default (detach_cache, detach_recycled) a generated frame's
gradient comes only from the network evaluation that produced it; earlier frames enter as constants through the
recycled channels and the cached K/V (as in Self-Forcing's truncation), so memory stays one step deep. Either
switch can be turned off to backpropagate through the history.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from training.model import ModelConfig, VideoDiT

ATTENTION_KERNELS = ("auto", "sdpa", "flex")
Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

try:  # FlexAttention (torch >= 2.5); eager on CPU, compiled on CUDA
    from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

    HAS_FLEX = True
except ImportError:  # pragma: no cover - older torch
    HAS_FLEX = False


def validate(causal: bool, window: int, sink: int, attention: str, pos_embed: str, camera_rays: bool) -> None:
    """ModelConfig checks of the causal keys (raises ValueError naming the key)."""
    if window < 0 or sink < 0:
        raise ValueError(f"model.window and model.sink must be >= 0, got {window}, {sink}")
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"model.attention must be one of {ATTENTION_KERNELS}, got {attention!r}")
    if not causal and (window or camera_rays):
        raise ValueError("model.window and model.camera_rays need model.causal = true")
    if causal and pos_embed != "sincos":
        # A learned time table would end at max_grid; streaming needs positions without an end.
        raise ValueError("model.causal needs model.pos_embed = sincos (fixed-interval time positions)")


def frame_visible(q_frame: torch.Tensor, kv_frame: torch.Tensor, window: int = 0, sink: int = 1) -> torch.Tensor:
    """Bool: may a query in token frame `q_frame` attend to a key in `kv_frame` (broadcasting, absolute indices)."""
    ok = kv_frame <= q_frame
    if window > 0:
        ok = ok & ((q_frame - kv_frame < window) | (kv_frame < sink))
    return ok


def mask_mod(tokens_per_frame: int, window: int = 0, sink: int = 1) -> Callable[..., torch.Tensor]:
    """FlexAttention mask_mod(b, h, q_idx, kv_idx) over tokens in (frame, row, column) order."""

    def mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return frame_visible(q_idx // tokens_per_frame, kv_idx // tokens_per_frame, window, sink)

    return mod


def dense_mask(
    frames: int, tokens_per_frame: int, window: int = 0, sink: int = 1, device: torch.device | str | None = None
) -> torch.Tensor:
    """(N, N) bool self-attention mask (True = attend) for N = frames * tokens_per_frame tokens."""
    f = torch.arange(frames * tokens_per_frame, device=device) // tokens_per_frame
    return frame_visible(f[:, None], f[None, :], window, sink)


def flex_dense_mask(
    frames: int, tokens_per_frame: int, window: int = 0, sink: int = 1, device: str = "cpu"
) -> torch.Tensor:
    """The same mask materialised by FlexAttention's `create_mask` from `mask_mod` (for tests and debugging)."""
    n = frames * tokens_per_frame
    return create_mask(mask_mod(tokens_per_frame, window, sink), None, None, n, n, device=device)[0, 0]


_BLOCK_MASKS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _block_mask(frames: int, tokens_per_frame: int, window: int, sink: int, device: torch.device) -> Any:
    key = (frames, tokens_per_frame, window, sink, str(device))
    if key not in _BLOCK_MASKS:
        n = frames * tokens_per_frame
        _BLOCK_MASKS[key] = create_block_mask(
            mask_mod(tokens_per_frame, window, sink), None, None, n, n, device=str(device)
        )
        if len(_BLOCK_MASKS) > 32:  # one per bucket shape
            _BLOCK_MASKS.popitem(last=False)
    _BLOCK_MASKS.move_to_end(key)
    return _BLOCK_MASKS[key]


def _flex(device: torch.device) -> Callable[..., torch.Tensor]:
    """Compiled flex_attention on CUDA (the fused kernel); eager elsewhere (unfused, O(N^2), for tests only)."""
    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _COMPILED:
        _COMPILED["cuda"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["cuda"]


def use_flex(kernel: str, device: torch.device) -> bool:
    """auto: FlexAttention on CUDA when importable; flex: always (eager off CUDA); sdpa: never."""
    if kernel == "flex" and not HAS_FLEX:
        raise RuntimeError("model.attention = flex, but torch.nn.attention.flex_attention is not available")
    return kernel == "flex" or (kernel == "auto" and HAS_FLEX and device.type == "cuda")


def masked_core(
    cfg: ModelConfig, grid: tuple[int, int, int], device: torch.device, kernel: str | None = None
) -> Callable[[int], Core]:
    """Per-layer attention core of a full-sequence causal forward: FlexAttention or SDPA with the dense mask."""
    frames, s = grid[0], grid[1] * grid[2]
    kernel = kernel or cfg.attention
    if use_flex(kernel, device):
        bm, fn = _block_mask(frames, s, cfg.window, cfg.sink, device), _flex(device)

        def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return fn(q, k, v, block_mask=bm)

    else:
        mask = dense_mask(frames, s, cfg.window, cfg.sink, device)

        def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return lambda _layer: core


class KVCache:
    """Per-layer self-attention keys/values of the token frames streamed so far, evicted by window with a sink.

    Use: `model(x, t, ..., recycled=prev, kv_cache=cache)` for the next token frame(s) (the forward calls `begin`
    and each layer's `core`), then `cache.commit()`. Kept after a commit: frames < sink and the newest window - 1
    (those the next query frame may see); window 0 keeps all. `frame_ids` lists the frames held, oldest first.
    Stored K/V are detached unless `detach=False` (backprop through the history, memory grows with it).
    """

    def __init__(self, layers: int, window: int = 0, sink: int = 1, detach: bool = True) -> None:
        if window < 0 or sink < 0:
            raise ValueError("window and sink must be >= 0")
        self.layers, self.window, self.sink, self.detach = layers, window, sink, detach
        self.frame_ids: list[int] = []
        self.length = 0  # token frames committed (the absolute index of the next one)
        self._k: list[list[torch.Tensor]] = [[] for _ in range(layers)]  # per layer, per held frame (B, H, S, hd)
        self._v: list[list[torch.Tensor]] = [[] for _ in range(layers)]
        self._pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self._step: tuple[int, int] | None = None  # (frames, tokens per frame) of the open step

    @classmethod
    def for_model(cls, model: VideoDiT, detach: bool = True, **overrides: int) -> KVCache:
        """A cache with the model's depth and `model.window` / `model.sink` (overridable)."""
        cfg = model.cfg
        return cls(len(model.blocks), overrides.get("window", cfg.window), overrides.get("sink", cfg.sink), detach)

    def begin(self, frames: int, tokens_per_frame: int) -> int:
        """Open a step of `frames` token frames; returns their first absolute index (the time position)."""
        if self._step is not None:
            raise RuntimeError("KVCache: commit() the previous step before the next forward")
        self._step = (frames, tokens_per_frame)
        return self.length

    def core(self, layer: int) -> Core:
        """Attention of the open step's queries over the held frames plus the step's own (masked by frame)."""

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if self._step is None:
                raise RuntimeError("KVCache: forward without begin()")
            frames, s = self._step
            self._pending[layer] = (k, v)  # overwritten, not appended: safe to call twice
            keys = torch.cat([*self._k[layer], k], dim=2)
            values = torch.cat([*self._v[layer], v], dim=2)
            if frames == 1:  # eviction keeps exactly what the next frame may see: no mask (the streaming case)
                return F.scaled_dot_product_attention(q, keys, values)
            q_f = torch.arange(self.length, self.length + frames, device=q.device).repeat_interleave(s)
            held = torch.tensor(self.frame_ids, dtype=torch.long, device=q.device)
            kv_f = torch.cat([held, q_f.unique_consecutive()]).repeat_interleave(s)
            mask = frame_visible(q_f[:, None], kv_f[None, :], self.window, self.sink)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

        return attend

    def commit(self) -> None:
        """Store the open step's K/V per token frame and evict what no later frame can see."""
        if self._step is None or any(p is None for p in self._pending):
            raise RuntimeError("KVCache: commit() without a complete forward")
        frames, s = self._step
        for layer, pending in enumerate(self._pending):
            k, v = pending  # type: ignore[misc]
            if self.detach:
                k, v = k.detach(), v.detach()
            self._k[layer].extend(k.split(s, dim=2))
            self._v[layer].extend(v.split(s, dim=2))
        self.frame_ids.extend(range(self.length, self.length + frames))
        self.length += frames
        self._pending, self._step = [None] * self.layers, None
        if self.window > 0:
            keep = [i for i, f in enumerate(self.frame_ids) if f < self.sink or f >= self.length - (self.window - 1)]
            if len(keep) < len(self.frame_ids):
                self.frame_ids = [self.frame_ids[i] for i in keep]
                self._k = [[ks[i] for i in keep] for ks in self._k]
                self._v = [[vs[i] for i in keep] for vs in self._v]

    def reset(self) -> None:
        self.__init__(self.layers, self.window, self.sink, self.detach)  # type: ignore[misc]


@dataclass(frozen=True)
class TeacherForcing:
    """Inputs of a teacher-forced causal step: positions j = 0..P-1 predict frame j + shift from frame j."""

    target: torch.Tensor  # (B, C, T - shift, h, w): clean frames shift..T-1 (noised into x_t, and the FM target)
    recycled: torch.Tensor  # (B, C, T - shift, h, w): clean frames 0..T-1-shift (frame 0 = the conditioning image)


def teacher_forcing(
    latents: torch.Tensor, shift: int = 1, zero_recycle: bool = False, first: torch.Tensor | None = None
) -> TeacherForcing:
    """Shift-by-one (AAPT) inputs of a clip (B, C, T, h, w); `shift` = the temporal patch pt.

    `first` (B, C, shift, h, w) replaces the first frame(s) in the recycled channels (an I2V image that is not the
    clip's own frame 0). zero_recycle (AAPT App. G ablation): recycled channels zero except the first frame."""
    if latents.shape[2] <= shift:
        raise ValueError(f"teacher forcing needs more than {shift} frames, got {latents.shape[2]}")
    recycled = latents[:, :, :-shift]
    if first is not None:
        recycled = torch.cat([first.to(recycled.dtype), recycled[:, :, shift:]], dim=2)
    if zero_recycle:
        recycled = torch.cat([recycled[:, :, :shift], torch.zeros_like(recycled[:, :, shift:])], dim=2)
    return TeacherForcing(target=latents[:, :, shift:], recycled=recycled)


def positions(per_frame: torch.Tensor, shift: int = 1, dim: int = 2) -> torch.Tensor:
    """A per-frame condition of the clip (rays (B, 6, T, h, w), fields, ...) at the positions: frames shift..T-1.

    For per-step QCM tokens (B, T-1) (step i moves frame i to i+1) use `per_frame[:, shift - 1:]`."""
    return per_frame.narrow(dim, shift, per_frame.shape[dim] - shift)


def one_step(x: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Data estimate x1 = x_t + (1 - t) * v (t = 0 noise, 1 data): a 1-NFE generator's frame at t = 0 is x0 + v."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 1:
        t = t.view(-1, *([1] * (x.ndim - 1)))
    return x + (1.0 - t) * velocity


def rollout(
    model: VideoDiT,
    first: torch.Tensor,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor | float = 0.0,
    cache: KVCache | None = None,
    detach_recycled: bool = True,
    camera_tokens: torch.Tensor | None = None,
    rays: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Student-forcing / streaming rollout: one network evaluation per position, recycling its own output.

    first (B, C, pt, h, w) = the conditioning frame(s); noise (B, C, P*pt, h, w) = the input of each step; t = the
    timestep of every step (0 = the 1-NFE generator's pure noise). camera_tokens (B, P*pt) and rays
    (B, 6, P*pt, h, w) are per position. Returns the generated frames (B, C, P*pt, h, w), without `first`.
    `on_step(j, frame)` is called after step j (latency probes, decoding). The cache is the model's window/sink
    unless given (a used cache continues from where it stopped)."""
    pt = model.patch[0]
    if first.shape[2] != pt or noise.shape[2] % pt:
        raise ValueError(f"first must hold pt={pt} frames and noise a multiple of pt, got {first.shape}, {noise.shape}")
    cache = cache if cache is not None else KVCache.for_model(model)
    prev, frames = first, []
    for j in range(noise.shape[2] // pt):
        sl = slice(j * pt, (j + 1) * pt)
        x = noise[:, :, sl]
        cam = camera_tokens[:, sl] if camera_tokens is not None else None
        ray = rays[:, :, sl] if rays is not None else None
        v = model(x, t, text_emb, text_mask, camera_tokens=cam, recycled=prev, rays=ray, kv_cache=cache).velocity
        cache.commit()
        frame = one_step(x, v, t)
        frames.append(frame)
        prev = frame.detach() if detach_recycled else frame
        if on_step is not None:
            on_step(j, frame)
    return torch.cat(frames, dim=2)
