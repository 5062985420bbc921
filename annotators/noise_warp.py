"""Distribution-preserving noise warping along optical flow (Go-with-the-Flow, index-tracking form).

A clip's noise video keeps every frame i.i.d. N(0, 1) per element while each frame is the previous frame's noise
transported along the flow. Per step (research/flow_noise.md §1.4, GWTF Alg. 1):

* the flow is rounded to whole pixels of the warp grid; every source whose target lands in the frame sends one
  contraction edge to it; every target that receives none pulls one expansion edge from `t - flow(t)` (the cheap
  backward-flow approximation GWTF uses); targets with neither get fresh N(0, 1);
* a source with `d` out-edges is split into `d` uncorrelated unit-variance children `x/sqrt(d) + (z - mean z)`;
* each target merges its children with weights `a = density/d` as `sum(a*piece)/sqrt(sum a^2)` (unit variance for
  any weights) and its density becomes `sum a`.

Sub-pixel motion only survives through the warp grid (`warp_scale`): the state is kept `warp_scale` times finer than
the output and area-pooled at the end, so a 0.3 px/frame pan accumulates instead of rounding to zero every frame.
Everything is vectorised scatter/gather (`bincount`, `index_add_`, `nonzero`): O(pixels) per frame, no sorting, no
Python loop over pixels, and all randomness comes from the caller's generator in a fixed order (deterministic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from annotators.base import all_finite
from annotators.noise_warp_version import WARPER_VERSION as WARPER_VERSION  # re-exported: its users import it here

# Densities are floored so that a^2 (a = density/deg) stays a normal float32: sqrt(a*a) == a exactly then, which is
# what makes single-edge targets exact copies (zero flow / integer shifts) without a special case.
_MIN_DENSITY = 1e-6


class _Grid(NamedTuple):
    ys: torch.Tensor  # (n,) int32 row of every pixel
    xs: torch.Tensor  # (n,) int32 column of every pixel
    inside: torch.Tensor  # (n_pad,) float 1 inside the frame, 0 on the 1-pixel border of the padded canvas
    border: torch.Tensor  # (n_border,) int64 padded indices of the border cells
    unpad: torch.Tensor  # (n_pad,) int64 padded index -> flat index of the nearest in-frame pixel


_GRIDS: dict[tuple[int, int, str], _Grid] = {}


def _grid(h: int, w: int, device: torch.device) -> _Grid:
    """Index tables for an (h, w) grid, cached per size and device (building them costs as much as a warp step)."""
    key = (h, w, str(device))
    if key not in _GRIDS:
        ys = torch.arange(h, dtype=torch.int32, device=device).repeat_interleave(w)
        xs = torch.arange(w, dtype=torch.int32, device=device).repeat(h)
        inside = torch.zeros((h + 2, w + 2), device=device)
        inside[1:-1, 1:-1] = 1.0
        inside = inside.reshape(-1)
        py = torch.arange(-1, h + 1, device=device).clamp(0, h - 1)
        px = torch.arange(-1, w + 1, device=device).clamp(0, w - 1)
        unpad = (py[:, None] * w + px[None, :]).reshape(-1)
        if len(_GRIDS) > 16:
            _GRIDS.clear()
        _GRIDS[key] = _Grid(ys, xs, inside, (inside == 0).nonzero().squeeze(1), unpad)
    return _GRIDS[key]


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Flat int64 indices of the non-zero entries (row-major). On CPU numpy's flatnonzero is ~4x faster than
    torch.nonzero at these sizes (zero-copy both ways)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy().astype(bool, copy=False)))  # bool: 4x faster than int
    return mask.reshape(-1).nonzero().squeeze(1)


def _bincount(index: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """Sum of weights per index. CPU bincount is sequential (deterministic); on CUDA weighted bincount uses float
    atomics, so there the sort-based (deterministic) accumulating index_put_ is used instead."""
    if index.device.type == "cpu":
        return torch.bincount(index, weights=weights, minlength=size)
    acc = torch.zeros(size, dtype=weights.dtype, device=weights.device)
    return acc.index_put_((index.long(),), weights, accumulate=True)


def _add_at(acc: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """acc[:, index[e]] += values[:, e] in place (index_add_ along dim 1), deterministic on CPU and CUDA alike."""
    if acc.device.type == "cpu":
        return acc.index_add_(1, index, values)
    acc.t().index_put_((index.long(),), values.t(), accumulate=True)  # index_add_ on CUDA would use atomics
    return acc


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def warp_step(
    noise: torch.Tensor, density: torch.Tensor, flow: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transport one frame of noise along a forward flow, keeping it i.i.d. N(0, 1).

    noise (C,H,W) float32 i.i.d. N(0,1); density (H,W) float32 (>0); flow (2,H,W) forward flow from the previous
    frame to the next in pixels of this grid (flow[0] = dx along columns, flow[1] = dy along rows).
    Returns (next_noise (C,H,W), next_density (H,W)). The returned density is renormalised to mean 1 (and floored at
    1e-6): only density ratios matter to the merge, and renormalising stops it drifting towards 0/inf over long clips.
    Random draws, in this order: split noise of expansion edges, split noise of contraction edges whose source is
    also pulled, fresh noise of empty targets; none when every source has one edge (e.g. integer pans).
    """
    if noise.ndim != 3 or density.shape != noise.shape[1:] or flow.shape != (2, *noise.shape[1:]):
        raise ValueError(
            f"expected noise (C,H,W), density (H,W), flow (2,H,W); got {tuple(noise.shape)}, "
            f"{tuple(density.shape)}, {tuple(flow.shape)}"
        )
    c, h, w = noise.shape
    n, wp = h * w, w + 2
    n_pad = (h + 2) * wp
    ys, xs, inside_pad, border, unpad = _grid(h, w, noise.device)
    q = noise.reshape(c, n)
    dens = density.reshape(n)
    # |f| beyond the frame size means "leaves the frame" either way; bounding it keeps int32 index math exact
    f = flow.round().clamp_(-(h + w), h + w).to(torch.int32).reshape(2, n)
    fx, fy = f[0], f[1]

    # Contraction: every source sends one edge to its rounded target. Targets are indexed on a canvas padded by one
    # pixel, with coordinates clamped onto that border, so every edge has a valid index without masking or
    # compaction; edges that leave the frame land on the border, whose den is set to inf below so that their merge
    # coefficient is exactly 0.
    dst = (ys + fy).clamp_(-1, h).mul_(wp).add_((xs + fx).clamp_(-1, w)).add_(wp + 1)
    den = _bincount(dst, dens * dens, n_pad)  # sum a^2 per target while every deg is 1

    # Expansion: a target nobody moved onto pulls from t - flow(t) (backward flow ~ minus forward at the target);
    # when that is outside the frame too it gets fresh noise. Only the (usually few) empty targets are visited.
    empty = _nonzero(den.view(h + 2, wp)[1:-1, 1:-1].logical_not())
    sx = xs.index_select(0, empty) - fx.index_select(0, empty)
    sy = ys.index_select(0, empty) - fy.index_select(0, empty)
    e_ok = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    e_at, fresh_at = _nonzero(e_ok), _nonzero(e_ok.logical_not_())
    e_dst, fresh = empty.index_select(0, e_at), empty.index_select(0, fresh_at)
    e_src = (sy * w + sx).index_select(0, e_at).long()
    n_e = e_dst.numel()

    weight = dens  # a = density/deg; deg is 1 for every source that is not pulled
    if n_e:
        # Conditional split x/sqrt(d) + (z - mean z) of every pulled source over its d edges (its pulls plus its
        # contraction edge if that stays in the frame: split jointly, so all its children are uncorrelated). Sources
        # with d = 1 need no z at all (the split is exactly x), so only pulled sources are touched, in a compact
        # index space of size P.
        pulls = torch.bincount(e_src, minlength=n)
        pulled = _nonzero(pulls)
        p_of = torch.empty(n, dtype=torch.long, device=q.device)
        p_of.index_copy_(0, pulled, torch.arange(pulled.numel(), device=q.device))
        e_p = p_of.index_select(0, e_src)  # compact source id of every expansion edge
        dst_p = dst.index_select(0, pulled)
        c_p = inside_pad.index_select(0, dst_p)  # 1.0 where the pulled source's own move stays in the frame
        d_p = pulls.index_select(0, pulled) + c_p
        z_e = _randn((c, n_e), generator, noise)
        z_c = _randn((c, pulled.numel()), generator, noise).mul_(c_p)  # 0 where there is no contraction edge
        z_mean = _add_at(z_c.clone(), e_p, z_e).div_(d_p)
        x_p = q.index_select(1, pulled).div_(d_p.sqrt())
        piece_c = (z_c - z_mean).add_(x_p)
        out_e = (z_e - z_mean.index_select(1, e_p)).add_(x_p.index_select(1, e_p))
        a_p = dens.index_select(0, pulled).div_(d_p)
        weight = dens.index_copy(0, pulled, a_p)
        den = _bincount(dst, weight * weight, n_pad)

    # Merge sum(a*piece)/sqrt(sum a^2) per target as one scatter of a/sqrt(den[target]) * piece. For a single edge
    # a/sqrt(a*a) is exactly 1 (the sqrt of a rounded square is exact in binary floating point), so one-to-one
    # moves are bit-exact copies; the density floor keeps a*a a normal float for this. The coefficients ride along
    # as an extra row of the same scatter: sum(coef) * sqrt(den) = sum(a) is the new density. The scatter goes
    # straight into the (unpadded) output, leaving edges onto their clamped in-frame neighbour with coefficient 0.
    den.index_fill_(0, border, math.inf).sqrt_()
    vals = torch.empty((c + 1, n), dtype=q.dtype, device=q.device)
    coef = torch.div(weight, den.index_select(0, dst), out=vals[c])
    torch.mul(q, coef, out=vals[:c])
    dst_u = unpad.index_select(0, dst)
    if n_e:
        vals[:c].index_fill_(1, pulled, 0.0)  # pulled sources send their split piece instead of x (below)
    acc = _add_at(torch.zeros((c + 1, n), dtype=q.dtype, device=q.device), dst_u, vals)
    if n_e:
        _add_at(acc[:c], dst_u.index_select(0, pulled), piece_c.mul_(coef.index_select(0, pulled)))
    out = acc[:c]
    new_dens = acc[c].view(h, w).mul_(den.view(h + 2, wp)[1:-1, 1:-1]).view(n)

    # Expansion targets have exactly one in-edge: merged value = the piece itself, density = its a.
    if n_e:
        out.index_copy_(1, e_dst, out_e)
        new_dens.index_copy_(0, e_dst, a_p.index_select(0, e_p))
    # Targets with no edge at all (disoccluded / entering the frame): fresh noise, density 1.
    if fresh.numel():
        out.index_copy_(1, fresh, _randn((c, fresh.numel()), generator, noise))
        new_dens.index_fill_(0, fresh, 1.0)
    new_dens = (new_dens / new_dens.mean()).clamp_min_(_MIN_DENSITY)
    return out.reshape(c, h, w), new_dens.reshape(h, w)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """flow (..., 2, h, w) -> (..., 2, H, W): bilinear resample (align_corners=False), dx scaled by W/w, dy by H/h."""
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"flow must be (..., 2, h, w), got {tuple(flow.shape)}")
    h, w = flow.shape[-2:]
    big_h, big_w = int(size[0]), int(size[1])
    if (h, w) == (big_h, big_w):
        return flow
    lead = flow.shape[:-3]
    x = F.interpolate(flow.reshape(-1, 2, h, w), size=(big_h, big_w), mode="bilinear", align_corners=False)
    scale = torch.tensor([big_w / w, big_h / h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1)
    return (x * scale).reshape(*lead, 2, big_h, big_w)


def area_pool(noise: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., H, W) -> (..., H/f, W/f): block sum / f (= block mean * f), which keeps i.i.d. N(0,1) at unit variance."""
    h, w = noise.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"size {h}x{w} is not divisible by pooling factor {factor}")
    if factor == 1:
        return noise
    # Rows first (whole contiguous rows added), then the column groups, each added one after the other: element-wise
    # adds round the same on every CPU and GPU, where a reduction's summation order is the kernel's choice (torch's
    # CPU sum of a block's 16 columns matches no fixed order), so the fused backend's pooling kernel
    # (`noise_warp_grid.area_pool`) reproduces this bit for bit with no check.
    lead = noise.shape[:-2]
    blocks = noise.reshape(*lead, h // factor, factor, w)
    rows = blocks[..., 0, :] + blocks[..., 1, :]
    for k in range(2, factor):
        rows += blocks[..., k, :]
    cols = rows.reshape(*lead, h // factor, w // factor, factor)
    pooled = cols[..., 0] + cols[..., 1]
    for k in range(2, factor):
        pooled += cols[..., k]
    return pooled / factor


class NonFiniteFlowError(ValueError):
    """Flows with NaN or inf values (`check_video_args`): the annotator records it as the clip's reason."""


def check_video_args(flows: Any, channels: int, noise_size: tuple[int, int], warp_scale: int) -> torch.Tensor:
    """`warped_noise_video`'s argument checks (shared with the fused backend): flows as a tensor, or ValueError."""
    if isinstance(flows, np.ndarray):
        flows = torch.from_numpy(flows)
    if not isinstance(flows, torch.Tensor):
        raise ValueError(f"flows must be a numpy array or torch tensor, got {type(flows).__name__}")
    if flows.ndim != 4 or flows.shape[1] != 2 or min(flows.shape[2:], default=0) < 1:
        raise ValueError(f"flows must be (T-1, 2, h, w), got {tuple(flows.shape)}")
    if not flows.is_floating_point():
        raise ValueError(f"flows must be floating point, got {flows.dtype}")
    # numpy's check on CPU: torch's allocates a bool tensor as big as the flows, whose page faults cost more than
    # a whole warp step on long clips
    numpy_ok = flows.device.type == "cpu" and flows.dtype in (torch.float16, torch.float32, torch.float64)
    finite = all_finite(flows.detach().numpy()) if numpy_ok else torch.isfinite(flows).all()
    if not bool(finite):
        raise NonFiniteFlowError("flows contain NaN or inf")
    if int(channels) != channels or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels}")
    if int(warp_scale) != warp_scale or warp_scale < 1:
        raise ValueError(f"warp_scale must be a positive int, got {warp_scale}")
    if len(noise_size) != 2 or min(noise_size) < 1:
        raise ValueError(f"noise_size must be (nh, nw) positive, got {noise_size}")
    return flows


def warped_noise_video(
    flows: Any,
    *,
    channels: int,
    noise_size: tuple[int, int],
    warp_scale: int,
    seed: int,
    device: str | torch.device = "cpu",
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """A (T, C, nh, nw) float32 noise video transported along `flows` ((T-1, 2, h, w), pixels of the (h, w) grid).

    The state lives on the warp grid (nh*warp_scale, nw*warp_scale); each flow is resized to it, frame 0 is
    i.i.d. N(0,1) from torch.Generator(device).manual_seed(seed), and every output frame is the state area-pooled by
    warp_scale. Same seed and flows give bit-identical output on the same device. `step` replaces `warp_step`
    (same signature and draws: the fused backend passes its kernel here); None = this module's `warp_step`.
    """
    flows = check_video_args(flows, channels, noise_size, warp_scale)
    device = torch.device(device)
    nh, nw = int(noise_size[0]), int(noise_size[1])
    big = (nh * warp_scale, nw * warp_scale)
    generator = torch.Generator(device).manual_seed(int(seed))
    state = torch.randn((channels, *big), generator=generator, device=device, dtype=torch.float32)
    density = torch.ones(big, device=device, dtype=torch.float32)
    out = torch.empty((flows.shape[0] + 1, channels, nh, nw), dtype=torch.float32, device=device)
    out[0] = area_pool(state, warp_scale)
    for i in range(flows.shape[0]):  # frame-sequential by nature; each step is fully vectorised
        flow = resize_flow(flows[i].to(device=device, dtype=torch.float32), big)
        state, density = (step or warp_step)(state, density, flow, generator)
        out[i + 1] = area_pool(state, warp_scale)
    return out


def mix_noise(warped: torch.Tensor, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """EquiVDM training mix `beta*warped + sqrt(1-beta^2)*fresh`: unit variance, temporal correlation beta^2."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta * warped + math.sqrt(1.0 - beta * beta) * _randn(tuple(warped.shape), generator, warped)


def degrade_noise(noise: torch.Tensor, gamma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """GWTF degradation `((1-g)*noise + g*fresh)/sqrt((1-g)^2+g^2)`: unit variance, corr with input (1-g)/norm."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    norm = math.sqrt((1.0 - gamma) ** 2 + gamma**2)
    return ((1.0 - gamma) * noise + gamma * _randn(tuple(noise.shape), generator, noise)) / norm


TEMPORAL_MODES = ("nearest", "blend")


def latent_frame_groups(num_frames: int, factor: int) -> list[range]:
    """The source frames behind each latent frame of a causal video VAE with temporal factor `factor`: frame 0
    alone, then consecutive groups of `factor` (Wan, CogVideoX: [0], [1..4], [5..8], ...). ValueError unless
    num_frames = 1 + factor * k."""
    if factor < 1 or num_frames < 1 or (num_frames - 1) % factor:
        raise ValueError(f"{num_frames} frames do not make whole latent frames at temporal factor {factor}")
    return [range(0, 1)] + [range(1 + factor * j, 1 + factor * (j + 1)) for j in range((num_frames - 1) // factor)]


def reduce_noise_frames(noise: torch.Tensor, factor: int, mode: str = "nearest") -> torch.Tensor:
    """Warped noise (T, C, h, w) at the VAE's latent frames (1 + (T - 1) / factor, C, h, w).

    `nearest` keeps source frames 0, f, 2f, ...: the last frame of each group, so latent frame k is source frame
    f*k, exactly the warped noise of that frame (still N(0, 1) and white; GWTF's default). `blend` averages each
    group and renormalises every pixel to unit variance over the channels (GWTF's `blend_norm`), which keeps the
    motion inside a group at the cost of exact Gaussianity per pixel."""
    groups = latent_frame_groups(noise.shape[0], factor)
    if factor == 1:
        return noise
    if mode == "nearest":
        return noise[[g[-1] for g in groups]]
    if mode == "blend":
        means = torch.stack([noise[g.start : g.stop].mean(0) for g in groups])
        centred = means - means.mean(1, keepdim=True)
        return centred / centred.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6)
    raise ValueError(f"noise.temporal must be one of {', '.join(TEMPORAL_MODES)}, got {mode!r}")


def bilinear_warp(noise: torch.Tensor, flow: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Negative control: backward bilinear warp of (C,H,W) noise, sampling at p - flow(p) (grid_sample).

    Interpolation averages neighbouring values, so variance collapses and neighbours correlate: this is what the
    distribution-preserving warp avoids. `padding` is grid_sample's padding_mode ("zeros" or "border").
    """
    c, h, w = noise.shape
    ys, xs = _grid(h, w, noise.device)[:2]
    gx = (xs.to(noise.dtype) - flow[0].reshape(-1)) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys.to(noise.dtype) - flow[1].reshape(-1)) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).view(1, h, w, 2)
    return F.grid_sample(noise[None], grid, mode="bilinear", padding_mode=padding, align_corners=True)[0]


def morans_i(x: torch.Tensor) -> float:
    """Moran's I with rook (4-neighbour) adjacency of a 2-D map (H,W); for (..., H, W) the maps are pooled as one
    graph of disjoint grids (each centred on its own mean). ~0 for white noise (sd ~ 1/sqrt(2N)), -> 1 when smooth."""
    x = x.detach().to(torch.float64)
    if x.ndim < 2:
        raise ValueError("morans_i needs (..., H, W)")
    maps = x.reshape(-1, *x.shape[-2:])
    z = maps - maps.mean(dim=(-2, -1), keepdim=True)
    h, w = z.shape[-2:]
    cross = (z[:, :, 1:] * z[:, :, :-1]).sum() + (z[:, 1:, :] * z[:, :-1, :]).sum()
    pairs = maps.shape[0] * (h * (w - 1) + (h - 1) * w)  # each unordered neighbour pair once (weights symmetric)
    return float(z.numel() * cross / (pairs * (z * z).sum()))


def ks_normal(x: torch.Tensor) -> tuple[float, float]:
    """One-sample Kolmogorov-Smirnov test of all values of x against N(0,1): (D, asymptotic p-value).

    p uses the Kolmogorov series with Stephens' small-sample correction, lambda = (sqrt(n)+0.12+0.11/sqrt(n))*D.
    """
    v = x.detach().reshape(-1).to(torch.float64).sort().values
    n = v.numel()
    if n == 0:
        raise ValueError("ks_normal needs at least one value")
    cdf = torch.special.ndtr(v)
    i = torch.arange(1, n + 1, dtype=torch.float64, device=v.device)
    d = float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.2:  # the series converges badly here and the p-value is 1 to many digits
        return d, 1.0
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))
