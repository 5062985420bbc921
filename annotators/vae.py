"""VAE latents of stored clips: one small adapter per diffusers VAE family, loaded from a local folder.

Nothing is downloaded: `latents.model_path` is a folder written by `save_pretrained` (config.json plus weights).
The class is read from the folder's config (`_class_name`), and each adapter knows its family's frame rule and
normalisation, applied exactly once here and recorded (`VaeSpec`), so a trainer never has to guess:

| class | input | latent frames | normalisation |
|---|---|---|---|
| AutoencoderKL (image) | frame by frame | T | (z - shift_factor) * scaling_factor |
| AutoencoderKLWan (causal video) | 1 + 4k frames | 1 + k | (z - latents_mean) / latents_std, per channel |
| AutoencoderKLCogVideoX (causal video) | 1 + 4k frames | 1 + k | z * scaling_factor |

Frames go in as uint8 (B, T, H, W, 3) and come out of `decode` the same way; the VAEs see [-1, 1].
Latents are the posterior mean unless `sample` is set (then a seeded draw).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from annotators.base import AnnotatorError
from annotators.models import ModelLoadError, resolve_device, run_in_chunks

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names; torch itself loads only where a VAE is built
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class VaeError(ModelLoadError):
    """A VAE folder that cannot be used: missing, another class, unreadable or mismatched weights."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatentConfig:
    """The `[latents]` section: which VAE encodes the stored clips, and how."""

    model_path: str = ""  # a local diffusers VAE folder; empty = no latents (pixel space)
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    sample: bool = False  # False: the posterior mean (what musubi-tuner and Wan's I2V use); True: a seeded draw
    seed: int = 0
    tiling: bool = False  # spatial tiles: bounded memory on large frames
    slicing: bool = False  # one batch item at a time
    batch_size: int = 4
    store_dtype: str = "float16"  # float16 | float32 (normalised latents are about N(0, 1): float16 is ample)

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"latents.dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"latents.device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.batch_size < 1:
            raise ValueError("latents.batch_size must be >= 1")
        if self.store_dtype not in ("float16", "float32"):
            raise ValueError(f"latents.store_dtype must be float16 or float32, got {self.store_dtype!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.model_path)


@dataclasses.dataclass(frozen=True)
class VaeSpec:
    """What identifies the latents: recorded in the manifest, and checked by training."""

    cls: str
    channels: int
    spatial_factor: int
    temporal_factor: int  # 1 for an image VAE
    frame_rule: str
    normalization: dict[str, Any]
    config_sha256: str
    weights_sha256: str

    @property
    def vae_hash(self) -> str:
        """One id for "the same VAE": class, config and weights."""
        return hashlib.sha256(f"{self.cls}:{self.config_sha256}:{self.weights_sha256}".encode()).hexdigest()[:16]

    def latent_frames(self, num_frames: int) -> int:
        return num_frames if self.temporal_factor == 1 else 1 + (num_frames - 1) // self.temporal_factor

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "vae_hash": self.vae_hash}


def folder_hashes(path: Path) -> tuple[str, str]:
    """sha256 of config.json, and of the weight files (names and bytes, sorted by name)."""
    config = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    weights = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    for f in files:
        weights.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                weights.update(block)
    return config, weights.hexdigest()


def to_model_input(frames: np.ndarray | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> (B, 3, T, H, W) in [-1, 1]."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return (x.to(device).permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0).contiguous()


def to_frames(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3)."""
    import torch

    x = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


class VaeAdapter(abc.ABC):
    """A loaded VAE with its family's frame rule and normalisation. Subclasses name the diffusers class."""

    class_name: ClassVar[str]
    temporal_factor: ClassVar[int] = 1

    def __init__(
        self,
        config: dict[str, Any],
        cfg: LatentConfig,
        model: Any = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        hashes: tuple[str, str] = ("", ""),
    ) -> None:
        """`model` None: an adapter that only describes the VAE from its config (no weights loaded, no hashes)."""
        self.model, self.cfg, self.dtype, self.device = model, cfg, dtype, device
        self.config = dict(config)
        self.spec = VaeSpec(
            cls=self.class_name,
            channels=self.channels(),
            spatial_factor=self.spatial_factor(),
            temporal_factor=self.temporal_factor,
            frame_rule=self.frame_rule(),
            normalization=self.normalization(),
            config_sha256=hashes[0],
            weights_sha256=hashes[1],
        )

    # What each family defines -------------------------------------------------------------------------------
    def channels(self) -> int:
        return int(self.config["latent_channels"])

    def spatial_factor(self) -> int:
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    def frame_rule(self) -> str:
        return "every frame on its own: T latent frames"

    def normalization(self) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def _encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Raw latents (B, C, T', h, w) of model input (B, 3, T, H, W) in [-1, 1]."""

    @abc.abstractmethod
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model output (B, 3, T, H, W) of raw latents."""

    @abc.abstractmethod
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the normalised latents the shards store and the DiT learns (about N(0, 1))."""

    @abc.abstractmethod
    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize`."""

    # The shared path -----------------------------------------------------------------------------------------
    def check_frames(self, num_frames: int) -> None:
        """Raise unless the VAE maps `num_frames` to whole latent frames (a causal video VAE silently drops the
        frames of a last, partial group)."""
        if self.temporal_factor > 1 and (num_frames - 1) % self.temporal_factor:
            raise ValueError(
                f"{self.class_name} encodes 1 + {self.temporal_factor}k frames, got {num_frames}: use bucket frame "
                f"counts of that form"
            )

    def _draw(self, dist: Any, generator: torch.Generator | None) -> torch.Tensor:
        return dist.sample(generator=generator) if self.cfg.sample else dist.mode()

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, T', h, w) float32 of uint8 frames (B, T, H, W, 3)."""
        import torch

        self.check_frames(int(frames.shape[1]))
        with torch.no_grad():
            x = to_model_input(frames, self.dtype, self.device)
            generator = None
            if self.cfg.sample:
                generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
            return self.normalize(self._encode(x, generator).float())

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 frames (B, T, H, W, 3) of normalised latents (B, C, T', h, w)."""
        import torch

        with torch.no_grad():
            z = self.denormalize(latents.to(self.device, torch.float32)).to(self.dtype)
            return to_frames(self._decode(z))

    def _stat(self, key: str, z: torch.Tensor) -> torch.Tensor:
        values = self.config.get(key)
        if values is None or len(values) != z.shape[1]:
            raise VaeError(f"{self.class_name}: its config needs a {z.shape[1]}-element {key} list")
        return z.new_tensor(values).view(1, -1, 1, 1, 1)


class ImageVae(VaeAdapter):
    """AutoencoderKL: an image VAE, applied frame by frame."""

    class_name = "AutoencoderKL"

    def normalization(self) -> dict[str, Any]:
        return {
            "rule": "(z - shift_factor) * scaling_factor",
            "scaling_factor": float(self.config.get("scaling_factor") or 1.0),
            "shift_factor": float(self.config.get("shift_factor") or 0.0),
        }

    def _encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        images = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        z = self._draw(self.model.encode(images).latent_dist, generator)
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = z.shape
        images = self.model.decode(z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).sample
        return images.reshape(b, t, *images.shape[1:]).permute(0, 2, 1, 3, 4)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        n = self.normalization()
        return (z - n["shift_factor"]) * n["scaling_factor"]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        n = self.normalization()
        return z / n["scaling_factor"] + n["shift_factor"]


class WanVae(VaeAdapter):
    """AutoencoderKLWan: causal video VAE, 1 + 4k frames -> 1 + k latent frames, per-channel mean/std."""

    class_name = "AutoencoderKLWan"
    temporal_factor = 4

    def channels(self) -> int:
        return int(self.config["z_dim"])

    def spatial_factor(self) -> int:
        # diffusers >= 0.35 records it; older configs imply it from the down-sampling stages.
        return int(self.config.get("scale_factor_spatial") or 2 ** len(self.config["temperal_downsample"]))

    def frame_rule(self) -> str:
        return "1 + 4k frames -> 1 + k latent frames (frame 0 alone, then groups of 4)"

    def normalization(self) -> dict[str, Any]:
        return {
            "rule": "(z - latents_mean) / latents_std, per channel",
            "latents_mean": [float(v) for v in self.config.get("latents_mean") or []],
            "latents_std": [float(v) for v in self.config.get("latents_std") or []],
        }

    def _encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._draw(self.model.encode(x).latent_dist, generator)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._stat("latents_mean", z)) / self._stat("latents_std", z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self._stat("latents_std", z) + self._stat("latents_mean", z)


class CogVideoXVae(VaeAdapter):
    """AutoencoderKLCogVideoX: causal video VAE, 1 + 4k frames -> 1 + k latent frames, scaled by scaling_factor.
    Its decoder works in groups of 8 frames: an exact round trip needs 1 + 8k frames."""

    class_name = "AutoencoderKLCogVideoX"
    temporal_factor = 4

    def frame_rule(self) -> str:
        return "1 + 4k frames -> 1 + k latent frames; decoding returns 1 + 8j frames exactly (the decoder's groups)"

    def normalization(self) -> dict[str, Any]:
        return {"rule": "z * scaling_factor", "scaling_factor": float(self.config.get("scaling_factor") or 1.0)}

    def _encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._draw(self.model.encode(x).latent_dist, generator)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.normalization()["scaling_factor"]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.normalization()["scaling_factor"]


ADAPTERS: dict[str, type[VaeAdapter]] = {a.class_name: a for a in (ImageVae, WanVae, CogVideoXVae)}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def read_class_name(path: Path) -> str:
    """The diffusers class a VAE folder was saved from; VaeError when it is not a supported VAE folder."""
    if not path.is_dir():
        raise VaeError(f"latents.model_path {path} is not a directory (a local diffusers VAE folder)")
    config_file = path / "config.json"
    if not config_file.exists():
        raise VaeError(f"{path} has no config.json: save the VAE with save_pretrained(DIR)")
    try:
        name = json.loads(config_file.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as e:
        raise VaeError(f"{config_file} is not a diffusers config: {e}") from e
    if name not in ADAPTERS:
        raise VaeError(f"{path} holds a {name or 'model without _class_name'}; latents support {', '.join(ADAPTERS)}")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise VaeError(f"{path} has no weights (*.safetensors or *.bin)")
    return name


def load_vae(cfg: LatentConfig) -> VaeAdapter:
    """The adapter of the VAE in `cfg.model_path`, on its device and dtype, in eval mode. VaeError (one line) for a
    folder that is missing, holds another class, or has weights that do not load into its config."""
    import diffusers
    import torch

    path = Path(cfg.model_path).expanduser()
    name = read_class_name(path)
    device = torch.device(resolve_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    try:
        # low_cpu_mem_usage needs `accelerate`; without it diffusers warns on every load and does the same work
        model = getattr(diffusers, name).from_pretrained(
            str(path), torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
        )
    except Exception as e:  # diffusers raises many types for bad weights; the user needs one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VaeError(f"cannot load the {name} in {path}: {first[:300]}") from e
    model = model.to(device).eval().requires_grad_(False)
    if cfg.tiling and hasattr(model, "enable_tiling"):
        model.enable_tiling()
    if cfg.slicing and hasattr(model, "enable_slicing"):
        model.enable_slicing()
    return ADAPTERS[name](dict(model.config), cfg, model, device, dtype, folder_hashes(path))


def describe_vae(model_path: str) -> VaeSpec:
    """The spec of the VAE in `model_path` from its config.json alone (no weights read; hashes empty): what config
    validation needs to put the warped noise on its latent grid."""
    path = Path(model_path).expanduser()
    name = read_class_name(path)
    config = json.loads((path / "config.json").read_text())
    try:
        return ADAPTERS[name](config, LatentConfig(model_path=model_path)).spec
    except (KeyError, TypeError) as e:
        raise VaeError(f"{path}/config.json lacks what a {name} needs: {e}") from e


def encode_batches(vae: VaeAdapter, clips: Sequence[np.ndarray]) -> list[np.ndarray | AnnotatorError]:
    """Latents (C, T', h, w) in `store_dtype` of each clip (T, H, W, 3) uint8, in order. Clips of one shape are
    encoded together, `batch_size` at a time; a batch that runs out of memory is split (`run_in_chunks`), and a
    clip that does alone gets an `out_of_memory` AnnotatorError in its place."""
    out: list[np.ndarray | AnnotatorError | None] = [None] * len(clips)
    by_shape: dict[tuple, list[int]] = {}
    for i, c in enumerate(clips):
        by_shape.setdefault(tuple(c.shape), []).append(i)
    store = np.dtype(vae.cfg.store_dtype)

    def encode(indices: list[int]) -> list[np.ndarray]:
        z = vae.encode(np.stack([clips[i] for i in indices])).cpu().numpy()
        return [z[j].astype(store) for j in range(len(indices))]

    for indices in by_shape.values():
        for i, result in zip(indices, run_in_chunks(encode, indices, vae.cfg.batch_size, vae.class_name), strict=True):
            out[i] = result
    return [o for o in out if o is not None]
