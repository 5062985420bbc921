"""The loader's configuration (`DataConfig`) and the constants shared by its modules."""

from __future__ import annotations

import dataclasses
import os

STATE_VERSION = 1
NOISE_KEY = "warped_noise"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What to read and how to batch it. Sizes are (h, w) and (T', H', W')."""

    source: str = ""  # a run directory or a snapshot directory
    batch_size: int = 2
    shuffle_buffer: int = 32  # samples; 0 = no shuffle (source order)
    seed: int = 0
    num_workers: int = 2  # background decode threads; 0 = decode in the consumer's thread
    prefetch_batches: int = 4
    latent_size: tuple[int, int] | None = None  # None: the warped-noise grid, else the frame size
    latent_channels: int = 3  # pixel space: RGB
    token_grid: tuple[int, int, int] | None = None  # event maps pooled to the model's token grid; None: (T, gh, gw)
    drop_last: bool = True

    def __post_init__(self) -> None:
        # TOML and JSON give lists: store tuples so the config stays hashable and comparable.
        for name, length in (("latent_size", 2), ("token_grid", 3)):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(value)
            if len(value) != length or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"data.{name} must be None or {length} positive integers, got {value!r}")
            object.__setattr__(self, name, value)
        for name, low in (("batch_size", 1), ("shuffle_buffer", 0), ("seed", 0), ("num_workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.prefetch_batches, int) or self.prefetch_batches < 1:
            raise ValueError(f"data.prefetch_batches must be an integer >= 1, got {self.prefetch_batches!r}")
        if self.latent_channels != 3:
            raise ValueError(
                "data.latent_channels must be 3: without a VAE the latent is the RGB frames "
                f"(got {self.latent_channels})"
            )
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        if not isinstance(self.source, str):
            raise ValueError(f"data.source must be a path, got {self.source!r}")
