"""Fitting a training config to its data: pixel or latent space, the VAE's channels, the text encoder; and the
checks that keep one training run on one VAE and one text encoder.

`fit_to_data` reads the source's manifests (never the VAE or the text encoder themselves) and returns the config
the run actually trains with, which is what `config.json` and every checkpoint record:

* `data.space`: latent when every run stores VAE latents (`auto`), and `model.in_channels` = the VAE's channels;
* `data.vae_hash`: the VAE the latents come from. It pins the run: a resume, or a new source, whose latents come
  from another VAE is refused (ValueError, one line), as is a snapshot whose runs mix VAEs;
* `model.text.kind`: auto is open_clip with a `model_path`, else precomputed when every run stores text embeddings
  (width and padded length from the manifest; `data.text_encoder_hash` pins the encoder), else the byte encoder.

The sampler decodes with the VAE from a local folder: `load_checked_vae` refuses one whose hash is not the
checkpoint's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.config import TrainConfig
from training.data.space import DataSpace, read_space

if TYPE_CHECKING:
    from annotators.vae import VaeAdapter


def fit_to_data(
    cfg: TrainConfig, source: str | Path, started: dict[str, Any] | None = None
) -> tuple[TrainConfig, DataSpace]:
    """(the config fitted to the source's space, the space). `started`: the saved config of the run being resumed,
    whose VAE and text encoder the source must match."""
    data = cfg.data
    before = (started or {}).get("data", {})
    vae_hash = data.vae_hash or before.get("vae_hash") or ""
    text_hash = data.text_encoder_hash or before.get("text_encoder_hash") or ""
    # A latent run stays latent: a pixel-only source is refused, not silently switched to.
    space_name = "latent" if before.get("space") == "latent" and data.space == "auto" else data.space
    space = read_space(source, space_name, vae_hash, text_hash)

    text = cfg.model.text
    kind = text.kind
    if kind == "auto":
        kind = "open_clip" if text.model_path else "precomputed" if space.text else "byte"
    if kind == "precomputed" and space.text is None:
        raise ValueError("model.text.kind=precomputed, but not every run of the source stores text embeddings")
    if kind == "precomputed":
        text = dataclasses.replace(text, kind=kind, dim=space.text_dim, max_length=space.text_length)
    else:
        text = dataclasses.replace(text, kind=kind)
    precomputed = kind == "precomputed"
    data = dataclasses.replace(
        data,
        space=space.kind,
        latent_channels=space.channels,
        vae_hash=space.vae_hash,
        text_embeddings=precomputed,
        text_encoder_hash=space.text_hash if precomputed else "",
    )
    model = dataclasses.replace(cfg.model, in_channels=space.channels, text=text)
    return dataclasses.replace(cfg, data=data, model=model), space


def space_record(space: DataSpace) -> dict[str, Any]:
    """What a checkpoint records of the data's space (the sampler needs the VAE's identity and factors)."""
    return {"kind": space.kind, "channels": space.channels, "vae": space.vae, "text_encoder": space.text}


def load_checked_vae(folder: str | Path, state: dict[str, Any], device: str = "auto") -> VaeAdapter:
    """The VAE in `folder` (a local diffusers folder) after checking it is the one the checkpoint's latents came
    from; ValueError (one line) otherwise."""
    from annotators.vae import LatentConfig, load_vae

    expected = state["config"]["data"].get("vae_hash", "")
    if not expected:
        raise ValueError("--vae: the checkpoint was trained in pixel space; it has no latents to decode")
    vae = load_vae(LatentConfig(model_path=str(folder), device=device))
    if vae.spec.vae_hash != expected:
        raise ValueError(
            f"--vae {folder}: VAE {vae.spec.vae_hash} ({vae.spec.cls}), but the checkpoint's latents come from VAE "
            f"{expected}: give the VAE the shards were encoded with"
        )
    return vae
