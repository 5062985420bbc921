"""Row decoding and collation: shard rows -> per-sample CPU tensors (frames to latents, warped noise, camera
tokens and rays, pooled event maps), bad rows flagged, samples stacked into a batch."""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from annotators.qcm import NUM_TOKENS
from curation import storage
from curation.video_store import decode_video, is_video_dtype
from training.camera_rays import RAY_CHANNELS, intrinsics_size, origin_std_for, ray_embedding, scale_intrinsics
from training.data.config import NOISE_KEY
from training.data.source import _Bucket, _Geometry, _Source, _Unit
from training.data.space import camera_tokens_to_latent, events_to_frames

if TYPE_CHECKING:  # annotation only: the loader module imports this one
    from training.data.loader import LoaderStats


# ---------------------------------------------------------------------------------------------------------------
# Camera rays


def clip_rays(c2w: np.ndarray, k: np.ndarray, num_frames: int, size: tuple[int, int], factor: int = 1) -> torch.Tensor:
    """(6, T', h, w) float32 ray embedding (`training.camera_rays.ray_embedding`, relative to the previous latent
    frame, scaled by `origin_std_for(factor)`) of a clip's stored (T, 4, 4) camera-to-world poses and K (3, 3) on the
    flow grid, at `num_frames` latent frames of an (h, w) grid. Latent frame j is stored frame `factor` * j (the
    1 + 4k rule of a video VAE; factor 1 in pixel space). ValueError when the poses do not give `num_frames` frames,
    RuntimeError (torch.linalg) for a singular pose."""
    poses = torch.from_numpy(np.asarray(c2w, dtype=np.float64))[:: max(1, factor)]
    if poses.dim() != 3 or poses.shape[0] != num_frames:
        raise ValueError(f"{tuple(c2w.shape)} poses give {poses.shape[0]} frames at factor {factor}, not {num_frames}")
    h, w = size
    k64 = torch.from_numpy(np.asarray(k, dtype=np.float64))
    on_grid = scale_intrinsics(k64, intrinsics_size(k64), (w, h))  # the flow grid -> the latent grid, same view
    emb = ray_embedding(poses, on_grid, h, w, origin_std=origin_std_for(max(1, factor)))
    return emb.permute(1, 0, 2, 3).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Event maps


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) resampling along one axis: exact area (box) weights when shrinking, nearest when growing."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    if n_out > n_in:
        w[torch.arange(n_out), (torch.arange(n_out) * n_in) // n_out] = 1.0
        return w
    # Output cell i covers [i, i + 1) * n_in / n_out of the input; weights are the overlaps, normalised, so every
    # input cell contributes n_out / n_in in total and the mean is preserved exactly, divisible or not.
    step = n_in / n_out
    for i in range(n_out):
        lo, hi = i * step, (i + 1) * step
        for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            w[i, j] = (min(hi, j + 1) - max(lo, j)) / step
    return w


def pool_event_maps(maps: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, T, gh, gw) event maps -> (B, T', H', W') on the model's token grid: area pooling per axis that shrinks
    (the mean is preserved), nearest upsampling per axis that grows, identity when the grid is equal."""
    if maps.dim() != 4:
        raise ValueError(f"pool_event_maps expects (B, T, gh, gw), got shape {tuple(maps.shape)}")
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"pool_event_maps: grid must be 3 positive sizes (T', H', W'), got {tuple(grid)}")
    out = maps
    for axis, size in zip((1, 2, 3), grid, strict=True):
        if out.shape[axis] != int(size):
            w = _axis_weights(out.shape[axis], int(size)).to(dtype=out.dtype, device=out.device)
            out = torch.movedim(torch.tensordot(out, w, dims=([axis], [1])), -1, axis)
    return out.contiguous()


class _BadRow:
    __slots__ = ("clip_id", "reason")

    def __init__(self, clip_id: str, reason: str) -> None:
        self.clip_id, self.reason = clip_id, reason


# ---------------------------------------------------------------------------------------------------------------
# Decoding one read (selected rows of one row group)


def _tensor(columns: dict[str, pa.Array], name: str, i: int) -> tuple[np.ndarray | None, str | None]:
    """(array, None), (None, None) when null, or (None, reason) when malformed. The array is read-only: a view of
    the Arrow buffer."""
    if name not in columns or not columns[name][i].is_valid:
        return None, None
    dtype_str, shape_list = columns[f"{name}_dtype"][i].as_py(), columns[f"{name}_shape"][i].as_py()
    if dtype_str is None or shape_list is None:
        return None, f"{name}: null dtype or shape"
    try:
        shape = tuple(int(s) for s in shape_list)
        buf = columns[name][i].as_buffer()
        if is_video_dtype(dtype_str):  # frames.store = video: decoded here, in the decode threads
            return decode_video(buf.to_pybytes(), shape), None
        dtype = np.dtype(dtype_str)
        if buf.size != dtype.itemsize * math.prod(shape):
            return None, f"{name}: {buf.size} bytes for shape {shape} {dtype}"
        return np.frombuffer(buf, dtype=dtype).reshape(shape), None
    except (TypeError, ValueError) as e:
        return None, f"{name}: {e}"


def _check(array: np.ndarray, name: str, layout: tuple[tuple[int | None, ...], np.dtype]) -> str | None:
    """A problem when the array is not the layout's dtype and shape (None: any size on that axis)."""
    shape, dtype = layout
    fits = len(array.shape) == len(shape) and all(e is None or a == e for a, e in zip(array.shape, shape, strict=True))
    if not fits or array.dtype != dtype:
        expected = tuple("*" if e is None else e for e in shape)
        return f"{name}: {array.shape} {array.dtype}, expected {expected} {dtype}"
    return None


class _Decoder:
    """Turns shard rows into per-sample tensors (CPU); thread-safe (no shared mutable state but the stats)."""

    def __init__(self, src: _Source, geo: _Geometry, stats: LoaderStats, lock: threading.Lock) -> None:
        self.src, self.geo, self.stats, self.lock = src, geo, stats, lock
        # Latent space reads the stored latents and never the frames (the bytes that make pixel space slow).
        self.source_key = "latents" if geo.latent else "frames"
        wanted = ["clip_id", self.source_key, "event_confidence", "caption", "camera_text"]
        wanted += [NOISE_KEY] * geo.noise + ["camera_tokens"] * geo.camera + ["event_activity"] * geo.events
        wanted += ["text_embedding"] * geo.text + ["camera_c2w", "camera_intrinsics"] * geo.rays
        tensors = (
            self.source_key,
            NOISE_KEY,
            "camera_tokens",
            "camera_c2w",
            "camera_intrinsics",
            "event_activity",
            "text_embedding",
        )
        self.tensors = [t for t in tensors if t in wanted]
        self.wanted = wanted + [f"{t}_{p}" for t in self.tensors for p in ("dtype", "shape")]
        # The expected layout of every (run, stored shape) that rows use: the manifest's symbols resolved.
        self.layouts = {
            (r, k): src.runs[r].expected(src.shapes[k]) if src.shapes else src.runs[r].layout for r, k in geo.bucket_of
        }

    def read(self, unit: _Unit, items: Sequence[int]) -> list[dict[str, Any] | _BadRow]:
        t0 = time.perf_counter()
        shard = self.src.shards[unit.shard]
        pf = storage.parquet_file(shard.path, metadata=shard.metadata, memory_map=True)  # a Path or a URL
        columns = [c for c in self.wanted if c in shard.columns]
        offsets = [unit.rows[i] for i in items]
        table = pf.read_row_group(unit.group, columns=columns, use_threads=False)
        if offsets != list(range(table.num_rows)):
            table = table.take(pa.array(offsets, pa.int64()))
        cols = {name: table.column(name).combine_chunks() for name in table.column_names}
        layout = self.layouts[(shard.run, unit.shape)]
        bucket = self.geo.buckets[self.geo.bucket_of[(shard.run, unit.shape)]]
        factor = self.src.runs[shard.run].temporal_factor
        out = [self._sample(cols, k, unit.clip_ids[i], layout, bucket, factor) for k, i in enumerate(items)]
        with self.lock:
            self.stats.decode_s += time.perf_counter() - t0
            self.stats.rows_decoded += len(out)
            self.stats.bytes_read += table.nbytes
        return out

    def _sample(
        self,
        cols: dict[str, pa.Array],
        i: int,
        clip_id: str,
        layout: dict[str, tuple[tuple[int | None, ...], np.dtype]],
        bucket: _Bucket,
        factor: int,
    ) -> dict[str, Any] | _BadRow:
        """One row as tensors; `factor` is the run's frames per latent frame (1 without a video VAE)."""
        geo, frames = self.geo, bucket.num_frames  # frames: of the latents (T' in latent space)
        found = cols["clip_id"][i].as_py()
        if found != clip_id:
            return _BadRow(clip_id, f"clip_id: the row holds {found}")
        arrays: dict[str, np.ndarray | None] = {}
        for name in self.tensors:
            array, problem = _tensor(cols, name, i)
            if problem is None and array is not None and name in layout:
                problem = _check(array, name, layout[name])
            if problem is None and array is None and name in (self.source_key, NOISE_KEY):
                problem = f"{name}: null"
            if problem:
                return _BadRow(clip_id, problem)
            arrays[name] = array
        sample: dict[str, Any] = {"clip_id": clip_id}
        if geo.latent:
            latents = torch.from_numpy(arrays["latents"].astype(np.float32))  # (C, T', h, w), already normalised
            if tuple(latents.shape) != (geo.channels, *bucket.latent_shape) or not bool(torch.isfinite(latents).all()):
                return _BadRow(clip_id, f"latents: shape {tuple(latents.shape)} or not finite")
            sample["latents"] = latents
        else:
            sample["latents"] = _frames_to_latents(arrays["frames"], bucket.latent_size)
        if geo.noise:
            noise = torch.from_numpy(arrays[NOISE_KEY][:, : geo.channels].astype(np.float32))  # (T, C, h, w)
            if not bool(torch.isfinite(noise).all()):
                return _BadRow(clip_id, "warped_noise: not finite")
            sample["noise"] = noise.permute(1, 0, 2, 3).contiguous()
        tokens = arrays.get("camera_tokens")
        if geo.camera:
            if tokens is not None and (tokens.min(initial=0) < 0 or tokens.max(initial=0) >= NUM_TOKENS):
                return _BadRow(clip_id, f"camera_tokens: outside 0..{NUM_TOKENS - 1}")
            if tokens is not None and geo.latent and factor > 1:  # per source step -> per latent step
                if tokens.ndim != 1 or (len(tokens) % factor) or len(tokens) // factor != frames - 1:
                    return _BadRow(clip_id, f"camera_tokens: shape {tokens.shape} for {frames} latent frames")
                tokens = camera_tokens_to_latent(tokens, factor)
            if tokens is not None and tokens.shape != (frames - 1,):
                return _BadRow(clip_id, f"camera_tokens: shape {tokens.shape}")
            sample["camera_tokens"] = (
                torch.from_numpy(tokens.astype(np.int64))
                if tokens is not None
                else torch.zeros(frames - 1, dtype=torch.int64)
            )
        sample["has_camera"] = tokens is not None
        if geo.rays:
            c2w, k = arrays.get("camera_c2w"), arrays.get("camera_intrinsics")
            if c2w is None or k is None:  # no camera estimate for this clip (or its run): no motion to encode
                sample["rays"] = torch.zeros(RAY_CHANNELS, frames, *bucket.latent_size, dtype=torch.float32)
            else:
                try:
                    rays = clip_rays(c2w, k, frames, bucket.latent_size, factor if geo.latent else 1)
                except (ValueError, RuntimeError) as e:
                    return _BadRow(clip_id, f"camera_c2w: {e}")
                if not bool(torch.isfinite(rays).all()):
                    return _BadRow(clip_id, "camera_c2w: rays not finite")
                sample["rays"] = rays
        maps = arrays.get("event_activity")
        if geo.events and bucket.token_grid is not None:
            if maps is not None:
                try:  # stored per frame (T) or per latent frame (T'): onto the latents' frames
                    aligned = events_to_frames(maps, frames, factor) if maps.ndim == 3 else maps
                except ValueError as e:
                    return _BadRow(clip_id, f"event_activity: {e}")
                events = torch.from_numpy(aligned.astype(np.float32))
                if events.dim() != 3 or events.shape[0] != frames or not bool(torch.isfinite(events).all()):
                    return _BadRow(clip_id, f"event_activity: shape {tuple(events.shape)} or not finite")
                sample["event_activity"] = pool_event_maps(events.clamp_(0.0, 1.0)[None], bucket.token_grid)[0]
            else:
                sample["event_activity"] = torch.zeros(bucket.token_grid, dtype=torch.float32)
        sample["has_events"] = maps is not None
        confidence = cols["event_confidence"][i].as_py() if "event_confidence" in cols else None
        sample["event_confidence"] = float(confidence) if confidence is not None and math.isfinite(confidence) else 0.0
        caption = cols["caption"][i].as_py() if "caption" in cols else None
        camera_text = cols["camera_text"][i].as_py() if "camera_text" in cols else None
        sample["text"] = caption or camera_text or ""
        if geo.text:
            embedding = arrays.get("text_embedding")
            if embedding is None:  # the encoder failed on this clip: the null prompt, as text dropout gives
                embedding = np.zeros((0, geo.space.text_dim), np.float16)
            if embedding.ndim != 2 or embedding.shape[0] > geo.space.text_length:
                return _BadRow(clip_id, f"text_embedding: shape {embedding.shape}, max {geo.space.text_length} tokens")
            emb = torch.from_numpy(embedding.astype(np.float16))
            if not bool(torch.isfinite(emb).all()):
                return _BadRow(clip_id, "text_embedding: not finite")
            sample["text_embedding"] = emb
        return sample


def _frames_to_latents(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, h, w) float32 in [-1, 1], area-resized.

    When the size divides, exact box sums in integers straight from the Arrow buffer (rows first, then columns, so
    both reductions run over contiguous memory: ~8x faster than a strided mean); otherwise torch's area resize."""
    t, fh, fw, c = frames.shape
    h, w = size
    if fh % h == 0 and fw % w == 0:
        kh, kw = fh // h, fw // w
        acc = np.uint16 if kh * kw * 255 < 2**16 else np.uint32
        rows = frames.reshape(t, h, kh, fw * c).sum(axis=2, dtype=acc)
        box = rows.reshape(t, h, w, kw, c).sum(axis=3, dtype=acc).astype(np.float32)
        box *= np.float32(2.0 / (255.0 * kh * kw))
        box -= np.float32(1.0)
        return torch.from_numpy(np.ascontiguousarray(box.transpose(3, 0, 1, 2)))
    x = torch.from_numpy(frames.transpose(0, 3, 1, 2).astype(np.float32))  # astype copies: writable for torch
    x = F.interpolate(x, size=(h, w), mode="area")
    return x.permute(1, 0, 2, 3).mul(2.0 / 255.0).sub_(1.0).contiguous()


def _collate(samples: list[dict[str, Any]], geo: _Geometry, bucket: _Bucket, pin: bool) -> dict[str, Any]:
    """One batch of one bucket's samples (equal shapes), stacked; in pinned memory for a CUDA device."""

    def stack(key: str) -> torch.Tensor:
        parts = [s[key] for s in samples]
        if not pin:
            return torch.stack(parts)
        out = torch.empty((len(parts), *parts[0].shape), dtype=parts[0].dtype, pin_memory=True)
        return torch.stack(parts, out=out)

    batch: dict[str, Any] = {"latents": stack("latents")}
    if geo.noise:
        batch["noise"] = stack("noise")
    batch["noise_source"] = geo.noise_source
    if geo.camera:
        batch["camera_tokens"] = stack("camera_tokens")
    batch["has_camera"] = torch.tensor([s["has_camera"] for s in samples], dtype=torch.bool)
    if geo.rays:
        batch["rays"] = stack("rays")
    if geo.events and bucket.token_grid is not None:
        batch["event_activity"] = stack("event_activity")
    batch["has_events"] = torch.tensor([s["has_events"] for s in samples], dtype=torch.bool)
    batch["event_confidence"] = torch.tensor([s["event_confidence"] for s in samples], dtype=torch.float32)
    batch["text"] = [s["text"] for s in samples]
    if geo.text:
        batch.update(_pad_text([s["text_embedding"] for s in samples], geo.space.text_length, geo.space.text_dim, pin))
    batch["clip_id"] = [s["clip_id"] for s in samples]
    batch["bucket"] = bucket.name
    return batch


def _pad_text(embeddings: list[torch.Tensor], length: int, dim: int, pin: bool) -> dict[str, torch.Tensor]:
    """Trimmed embeddings (L_i, D) -> `text_embedding` (B, length, D) float16 zero-padded to the encoder's maximum
    (what Wan's pipeline feeds its DiT), `text_mask` (B, length) bool (True = real token) and `text_length` (B,)."""
    out = torch.zeros((len(embeddings), length, dim), dtype=torch.float16, pin_memory=pin)
    lengths = torch.tensor([int(e.shape[0]) for e in embeddings], dtype=torch.int64)
    for i, e in enumerate(embeddings):
        out[i, : e.shape[0]] = e
    mask = torch.arange(length)[None] < lengths[:, None]
    return {"text_embedding": out, "text_mask": mask, "text_length": lengths}
