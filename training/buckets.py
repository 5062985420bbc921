"""The loader's buckets against the model: every bucket's latent grid must patch into whole tokens (checked before
the first step, with the bucket named), and the event maps of each bucket are pooled to its own token grid."""

from __future__ import annotations

import dataclasses

import torch

from training.data import DataConfig, Loader, make_loader
from training.model import VideoDiT


def bucket_token_grids(model: VideoDiT, loader: Loader) -> dict[str, tuple[int, int, int]]:
    """bucket name -> the model's token grid (T', H', W') for it. ValueError listing every bucket whose latent
    (T, h, w) the patch does not divide (or whose grid exceeds learned position tables)."""
    grids, bad = {}, []
    for bucket in loader.geo.buckets:
        try:
            grids[bucket.name] = model.token_grid(bucket.latent_shape)
        except ValueError as e:
            bad.append(f"bucket {bucket.name} (latent T, h, w = {bucket.latent_shape}): {e}")
    if bad:
        raise ValueError(
            f"the model (patch {tuple(model.patch)}) cannot take {len(bad)} of the data's {len(grids) + len(bad)} "
            "batch shapes: " + "; ".join(bad) + ". Set model.patch to divide every bucket, or data.latent_size"
        )
    return grids


def fit_loader(
    cfg: DataConfig, model: VideoDiT, rank: int, world_size: int, device: str | torch.device
) -> tuple[Loader, dict[str, tuple[int, int, int]]]:
    """A loader whose batches the model takes: shapes checked, event maps on each bucket's token grid."""
    loader = make_loader(cfg, rank, world_size, device)
    grids = bucket_token_grids(model, loader)
    if loader.geo.events and any(b.token_grid != grids[b.name] for b in loader.geo.buckets):
        loader.close()
        fitted = dataclasses.replace(cfg, token_grid=None, token_patch=tuple(model.patch))
        loader = make_loader(fitted, rank, world_size, device)
    return loader, grids


def latent_shapes(loader: Loader) -> dict[str, list[int]]:
    """bucket name -> [C, T, h, w] of the buckets that are trained on (at least one batch per epoch), the most
    frequent first (the sampler's default shape)."""
    trained = [b for b in loader.geo.buckets if loader.bucket_batches[b.name] > 0]
    buckets = sorted(trained, key=lambda b: -loader.bucket_samples[b.name])
    return {b.name: [loader.geo.channels, *b.latent_shape] for b in buckets}
