"""The loader's configuration (`DataConfig`) and the constants shared by its modules."""

from __future__ import annotations

import dataclasses
import os

STATE_VERSION = 1
NOISE_KEY = "warped_noise"
SPACES = ("auto", "pixel", "latent")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What to read and how to batch it. Sizes are (h, w) and (T', H', W')."""

    source: str = ""  # a run directory or a snapshot directory
    batch_size: int = 2
    shuffle_buffer: int = 32  # samples; 0 = no shuffle (source order)
    seed: int = 0
    num_workers: int = 2  # background decode threads; 0 = decode in the consumer's thread
    prefetch_batches: int = 4
    # auto: latent space when every run stores VAE latents (`latents`), else pixel space (the frames area-pooled).
    space: str = "auto"  # auto | pixel | latent
    latent_size: tuple[int, int] | None = None  # pixel space: None = the warped-noise grid, else the frame size
    latent_channels: int | None = None  # None: the data's (3 in pixel space, the VAE's channels in latent space)
    vae_hash: str = ""  # latent space: the VAE the latents must come from ("" = whichever the shards hold)
    text_embeddings: bool | None = None  # serve the stored `text_embedding`; None = when every run has them
    text_encoder_hash: str = ""  # the encoder the text embeddings must come from ("" = whichever)
    token_grid: tuple[int, int, int] | None = None  # event maps pooled to one fixed grid; None: token_patch or stored
    # Event maps pooled to each bucket's latent grid divided by this (the model's patch: its token grid per bucket);
    # None with token_grid None: the stored (T, gh, gw) of each bucket.
    token_patch: tuple[int, int, int] | None = None
    drop_last: bool = True
    # Serve `rays` (B, 6, T, h, w): the clip's camera as AAPT's per-pixel ray origin + direction relative to the
    # previous latent frame (`training.camera_rays`), from the stored camera_c2w and camera_intrinsics.
    camera_rays: bool = False

    def __post_init__(self) -> None:
        # TOML and JSON give lists: store tuples so the config stays hashable and comparable.
        for name, length in (("latent_size", 2), ("token_grid", 3), ("token_patch", 3)):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(value)
            if len(value) != length or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"data.{name} must be None or {length} positive integers, got {value!r}")
            object.__setattr__(self, name, value)
        if self.token_grid is not None and self.token_patch is not None:
            raise ValueError("data.token_grid and data.token_patch exclude each other: give one")
        for name, low in (("batch_size", 1), ("shuffle_buffer", 0), ("seed", 0), ("num_workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.prefetch_batches, int) or self.prefetch_batches < 1:
            raise ValueError(f"data.prefetch_batches must be an integer >= 1, got {self.prefetch_batches!r}")
        if not isinstance(self.camera_rays, bool):
            raise ValueError(f"data.camera_rays must be true or false, got {self.camera_rays!r}")
        if self.space not in SPACES:
            raise ValueError(f"data.space must be one of {', '.join(SPACES)}, got {self.space!r}")
        channels = self.latent_channels
        if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
            raise ValueError(f"data.latent_channels must be None or an integer >= 1, got {channels!r}")
        if self.space == "pixel" and channels not in (None, 3):
            raise ValueError(f"data.latent_channels must be 3 in pixel space (the RGB frames), got {channels}")
        if self.space == "latent" and self.latent_size is not None:
            raise ValueError("data.latent_size is for pixel space: VAE latents are used at their stored size")
        for name in ("vae_hash", "text_encoder_hash"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"data.{name} must be a string, got {getattr(self, name)!r}")
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        if not isinstance(self.source, str):
            raise ValueError(f"data.source must be a path, got {self.source!r}")
