"""Aesthetic score and clip embedding from an open_clip image tower (LAION "improved aesthetic predictor" style).

A few frames per clip (`num_frames`, evenly spaced) go through the open_clip image encoder; each frame embedding is
L2-normalised. The clip's `clip_embedding` is the re-normalised mean of those (D,) float16, kept for
near-duplicate detection. With a LAION-style MLP head (`head_path`), `aesthetic_score` is the mean of the head's
output over the frames (roughly 1-10 for the published LAION heads).

Weights come from local paths only, never from a hub. `model_path` is either
- a folder in the Hugging Face hub layout of open_clip models: `open_clip_config.json` (`model_cfg`, optional
  `preprocess_cfg`) plus `open_clip_model.safetensors` or `open_clip_pytorch_model.bin` (as in e.g. the
  `laion/CLIP-ViT-L-14-laion2B-s32B-b82K` or `timm/vit_large_patch14_clip_224.openai` repos); or
- a checkpoint file (state dict, .safetensors / .pt / .pth / .bin) of the built-in open_clip architecture
  `model_name`; preprocessing then uses open_clip's defaults for that architecture (OpenAI mean/std, bicubic).

The architecture label recorded in `aesthetic_backend` / `embedding_model` is the folder name (or "org/name" for a
Hugging Face cache snapshot), so that different weights of one architecture get different labels, or `model_name`
for a checkpoint file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from annotators.base import AnnotatorError, Batch, error_text, object_array, spread_indices
from annotators.models import (
    DTYPES,
    ModelLoadError,
    check_device,
    read_state_dict,
    require_path,
    resolve_device,
    run_in_chunks,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
# Weight file names of the open_clip hub layout, in the order open_clip itself prefers them.
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
HEAD_KEYS = frozenset(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AestheticsConfig:
    """Which open_clip model (and optional aesthetic head) to run, on how many frames, where."""

    model_path: str = ""  # open_clip folder or checkpoint file; "" = no model (score null, no embedding)
    model_name: str = "ViT-L-14"  # built-in open_clip architecture of a checkpoint FILE (a folder names its own)
    head_path: str = ""  # LAION-style MLP head (.pth state_dict or .safetensors); "" = embeddings only
    num_frames: int = 4  # frames per clip, evenly spaced over the stored frames
    batch_size: int = 32  # images per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float16 on cuda, float32 on cpu) | float32 | float16 | bfloat16

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"aesthetics.num_frames must be >= 1, got {self.num_frames}")
        if self.batch_size < 1:
            raise ValueError(f"aesthetics.batch_size must be >= 1, got {self.batch_size}")
        check_device(self.device, "aesthetics.device")
        if self.dtype not in DTYPES:
            raise ValueError(f"aesthetics.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.head_path and not self.model_path:
            raise ValueError("aesthetics.head_path needs aesthetics.model_path (the head scores CLIP embeddings)")
        if self.model_path:
            require_path(self.model_path, "aesthetics.model_path")  # ModelLoadError is a ValueError
            if not self.model_name and not Path(self.model_path).expanduser().is_dir():
                raise ValueError("aesthetics.model_name is required when aesthetics.model_path is a checkpoint file")
        if ":" in self.model_name:  # hf-hub:/local-dir: schemas would make open_clip fetch or bypass model_path
            raise ValueError(
                f"aesthetics.model_name must be a built-in open_clip architecture, got {self.model_name!r} "
                "(put a local open_clip folder in aesthetics.model_path instead)"
            )
        if self.head_path:
            require_path(self.head_path, "aesthetics.head_path", kind="file")


# ----------------------------------------------------------------------------------------------- pure functions


def _target_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(s) for s in image_size)
    return h, w


def preprocess(
    frames: np.ndarray,
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, S, S) float32 model input, as open_clip's eval transform does it.

    `shortest`: resize (antialiased) so the image covers S x S with the aspect kept (short side = S, long side
    truncated like torchvision's Resize), then centre-crop; `squash`: resize straight to S x S. Pixels are rounded
    back to 0..255 after resizing (open_clip resizes uint8 PIL images), scaled to [0, 1] and normalised.
    """
    import torch
    import torch.nn.functional as F

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    th, tw = _target_size(image_size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)
    h, w = x.shape[-2:]
    if resize_mode == "squash":
        nh, nw = th, tw
    elif th == tw:  # torchvision Resize(int): short side exact, long side truncated
        nh, nw = (th, int(th * w / h)) if h <= w else (int(tw * h / w), tw)
    else:  # cover the non-square target with the aspect kept
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=interpolation, align_corners=False, antialias=True)
        x = x.clamp_(0.0, 255.0).round_()
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    x = x[..., top : top + th, left : left + tw] / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


# ------------------------------------------------------------------------------------------------------ loading


@dataclasses.dataclass(frozen=True)
class ClipModel:
    """A loaded open_clip model with what it takes to feed it."""

    model: Any  # open_clip CLIP / CustomTextCLIP / CoCa, eval mode, on `device` in `dtype`
    arch: str  # label recorded in `aesthetic_backend` and the manifest
    embed_dim: int
    image_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    device: str
    dtype: Any  # torch.dtype


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Keep huggingface_hub (and transformers / timm, which ask it) offline while a model is built: an open_clip
    config may name a Hugging Face text tower whose config would otherwise be fetched. The environment variable
    would be too late (read at import), so the module flag is set for the duration only."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _folder_label(folder: Path) -> str:
    """The folder name, or "org/name" for a Hugging Face cache snapshot (models--org--name/snapshots/<hash>)."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    return folder.name


def _check_folder(folder: Path) -> None:
    """Clear errors for a folder that is not in the open_clip hub layout (open_clip's own read as hub failures)."""
    key = "aesthetics.model_path"
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError(f"{key}: {folder} is not an open_clip model folder: {CONFIG_FILE} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{key}: cannot read {config_path}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ModelLoadError(f"{key}: {config_path} has no 'model_cfg' object")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"{key}: no weights in {folder} (expected one of {', '.join(WEIGHT_FILES)})")


def load_clip_model(model_path: str, model_name: str = "", device: str = "cpu", dtype: str = "auto") -> ClipModel:
    """Load an open_clip model from a local folder or checkpoint file (see the module docstring), strictly.

    `device` / `dtype` take config values (auto resolved here). Any failure is a ModelLoadError naming the key.
    """
    import open_clip
    import torch

    key = "aesthetics.model_path"
    path = require_path(model_path, key).resolve()
    device = resolve_device(device)
    dt = torch_dtype(dtype, device)
    if path.is_dir():
        _check_folder(path)
        arch = _folder_label(path)
        spec: dict[str, Any] = {"model_name": f"local-dir:{path}"}
    else:
        if not model_name:
            raise ModelLoadError("aesthetics.model_name: required when aesthetics.model_path is a checkpoint file")
        if model_name not in open_clip.list_models():  # never get_model_config: it fetches hf-hub: names
            raise ModelLoadError(
                f"aesthetics.model_name: {model_name!r} is not a built-in open_clip architecture "
                f"(see open_clip.list_models()); or point aesthetics.model_path at an open_clip folder"
            )
        arch = model_name
        # An absolute path can never be mistaken for a pretrained tag (which open_clip would download).
        spec = {"model_name": model_name, "pretrained": str(path)}
    try:
        with _hub_offline():
            model = open_clip.create_model(
                **spec,
                device="cpu",
                pretrained_image=False,  # no default tower weights: everything comes from the local checkpoint
                pretrained_text=False,
                require_pretrained=True,
            )
    except Exception as e:  # torch / safetensors / open_clip raise many types for a bad or mismatched file
        raise ModelLoadError(f"{key}: cannot load open_clip model from {path} ({arch}): {e}") from e
    pre = open_clip.get_model_preprocess_cfg(model)
    interpolation, resize_mode = pre.get("interpolation", "bicubic"), pre.get("resize_mode", "shortest")
    if interpolation not in INTERPOLATIONS or resize_mode not in RESIZE_MODES:
        raise ModelLoadError(
            f"{key}: unsupported preprocessing in {path}: interpolation={interpolation!r}, "
            f"resize_mode={resize_mode!r} (supported: {INTERPOLATIONS}, {RESIZE_MODES})"
        )
    size = pre.get("size", 224)
    image_size = size if isinstance(size, int) else tuple(int(s) for s in size)
    if not isinstance(image_size, int) and image_size[0] == image_size[1]:
        image_size = image_size[0]
    try:
        model = model.to(device=device, dtype=dt).eval()
        # One blank image: the embedding size, and a model that cannot run fails here rather than on every clip.
        th, tw = _target_size(image_size)
        with torch.inference_mode():
            probe = model.encode_image(torch.zeros(1, 3, th, tw, device=device, dtype=dt))
    except Exception as e:
        raise ModelLoadError(
            f"{key}: {arch} does not run on {device} in {dt} (see aesthetics.device, aesthetics.dtype): {e}"
        ) from e
    return ClipModel(
        model=model,
        arch=arch,
        embed_dim=int(probe.shape[-1]),
        image_size=image_size,
        mean=tuple(float(v) for v in pre["mean"]),
        std=tuple(float(v) for v in pre["std"]),
        interpolation=interpolation,
        resize_mode=resize_mode,
        device=device,
        dtype=dt,
    )


@functools.cache
def _head_class() -> type:
    """Define `AestheticHead` on first use, so that importing this module (for its config) does not import torch."""
    from torch import nn

    class AestheticHead(nn.Module):
        """The LAION improved-aesthetic-predictor MLP; its published state dicts (e.g.
        `sac+logos+ava1-l14-linearMSE.pth`) load strictly. Input: L2-normalised image embeddings (N, D)."""

        def __init__(self, embed_dim: int) -> None:
            super().__init__()
            self.embed_dim = embed_dim
            self.layers = nn.Sequential(
                nn.Linear(embed_dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """(N, D) -> (N, 1) scores."""
            return self.layers(x)

    AestheticHead.__module__, AestheticHead.__qualname__ = __name__, "AestheticHead"  # picklable by name
    return AestheticHead


def __getattr__(name: str) -> Any:
    """Module attribute `AestheticHead(embed_dim)`: a torch.nn.Module, defined lazily (see `_head_class`)."""
    if name == "AestheticHead":
        return _head_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_aesthetic_head(path: str, embed_dim: int, device: str = "cpu") -> torch.nn.Module:
    """Load a LAION-style head (.pth / .pt / .bin via torch.load(weights_only=True), or .safetensors), strictly.

    Accepts a raw state dict or one nested under `state_dict` / `model`; a DataParallel `module.` prefix is
    stripped. ModelLoadError (naming `aesthetics.head_path`) when the file is unreadable, is not this MLP, or was
    trained on embeddings of another size than the CLIP model's `embed_dim`.
    """
    import torch

    key = "aesthetics.head_path"
    p = Path(path)
    state = read_state_dict(p, key)
    if set(state) != HEAD_KEYS:
        missing, unexpected = sorted(HEAD_KEYS - set(state)), sorted(set(state) - HEAD_KEYS)
        raise ModelLoadError(
            f"{key}: {p} is not a LAION aesthetic MLP head: missing keys {missing[:4]}, unexpected keys "
            f"{unexpected[:4]}"
        )
    first = state["layers.0.weight"]
    if first.ndim != 2:
        raise ModelLoadError(f"{key}: {p}: layers.0.weight has shape {tuple(first.shape)}, expected (1024, D)")
    head_dim = int(first.shape[1])
    if head_dim != embed_dim:
        raise ModelLoadError(
            f"{key}: {p} scores {head_dim}-d embeddings but the CLIP model gives {embed_dim}-d ones "
            "(the head was trained for another CLIP architecture)"
        )
    head = _head_class()(head_dim)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:  # shape mismatches inside the MLP
        raise ModelLoadError(f"{key}: {p} does not fit the LAION aesthetic MLP: {e}") from e
    # float32 whatever the CLIP dtype: the head is tiny and scores should not depend on the encoder's precision
    return head.to(device=device, dtype=torch.float32).eval()


# ---------------------------------------------------------------------------------------------------- annotator


class AestheticScorer:
    """Annotator: per clip `aesthetic_score`, `aesthetic_backend`, `clip_embedding` (see the module docstring)."""

    name: ClassVar[str] = "aesthetics"
    output_columns: ClassVar[tuple[str, ...]] = (
        "aesthetic_score",
        "aesthetic_backend",
        "clip_embedding",
        "aesthetics_error",
    )

    def __init__(self, cfg: AestheticsConfig) -> None:
        self.cfg = cfg
        self.clip: ClipModel | None = None
        self.head: torch.nn.Module | None = None  # an AestheticHead
        self.backend = "none"
        if not cfg.model_path:
            return  # nothing to load, and torch is never imported
        self.clip = load_clip_model(cfg.model_path, cfg.model_name, cfg.device, cfg.dtype)
        if cfg.head_path:
            self.head = load_aesthetic_head(cfg.head_path, self.clip.embed_dim, self.clip.device)
            self.backend = f"open_clip:{self.clip.arch}+{Path(cfg.head_path).stem}"
        logger.info(
            "aesthetics: open_clip %s (%d-d) on %s in %s, head %s",
            self.clip.arch,
            self.clip.embed_dim,
            self.clip.device,
            self.clip.dtype,
            cfg.head_path or "none",
        )

    @property
    def embedding_model(self) -> str | None:
        """Label of the embedding space of `clip_embedding` (None without a model), for the run manifest."""
        return f"open_clip:{self.clip.arch}" if self.clip else None

    @property
    def embedding_dim(self) -> int | None:
        return self.clip.embed_dim if self.clip else None

    def __call__(self, batch: Batch) -> Batch:
        ids = batch["clip_id"]
        n = len(ids)
        if self.clip is None:
            return {
                "clip_id": ids,
                "aesthetic_score": object_array([None] * n),
                "aesthetic_backend": object_array(["none"] * n),
                "clip_embedding": object_array([None] * n),
                "aesthetics_error": object_array([None] * n),
            }
        frames_col = batch.get("frames")
        errors: list[str | None] = [None] * n
        images: list[Any] = []  # every clip's preprocessed frames, flattened so batches span clips
        owners: list[int] = []
        for i in range(n):
            try:
                clip_images = self._clip_images(None if frames_col is None else frames_col[i])
            except AnnotatorError as e:
                errors[i] = error_text(e)
                continue
            images.extend(clip_images)
            owners.extend([i] * len(clip_images))
        results = run_in_chunks(self._encode, images, self.cfg.batch_size, "aesthetics image encoder")
        per_clip: list[list[Any]] = [[] for _ in range(n)]
        for owner, result in zip(owners, results, strict=True):
            per_clip[owner].append(result)

        scores: list[float | None] = [None] * n
        embeddings: list[np.ndarray | None] = [None] * n
        for i in range(n):
            if errors[i] is not None:
                continue
            try:
                embeddings[i], scores[i] = self._summarise(per_clip[i])
            except AnnotatorError as e:
                errors[i] = error_text(e)
        backends = [None if e else self.backend for e in errors]
        return {
            "clip_id": ids,
            "aesthetic_score": object_array(scores),
            "aesthetic_backend": object_array(backends),
            "clip_embedding": object_array(embeddings),
            "aesthetics_error": object_array(errors),
        }

    def _clip_images(self, frames: Any) -> list[Any]:
        """The clip's picked frames as model inputs (one (3, S, S) tensor each)."""
        if frames is None or not isinstance(frames, np.ndarray) or frames.size == 0:
            raise AnnotatorError("no_frames", "the clip has no stored frames")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise AnnotatorError("bad_frames", f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        clip = self.clip
        assert clip is not None
        picked = frames[spread_indices(frames.shape[0], self.cfg.num_frames)]
        x = preprocess(
            picked,
            clip.image_size,
            clip.mean,
            clip.std,
            interpolation=clip.interpolation,
            resize_mode=clip.resize_mode,
        )
        return list(x.unbind(0))

    def _encode(self, images: list[Any]) -> list[tuple[np.ndarray, float | None]]:
        """One forward pass: per image its normalised float32 embedding and (with a head) its score."""
        import torch
        import torch.nn.functional as F

        clip = self.clip
        assert clip is not None
        with torch.inference_mode():
            x = torch.stack(images).to(device=clip.device, dtype=clip.dtype)
            # normalise in float32: a float16 norm over ~1k dims loses precision the score would inherit
            emb = F.normalize(clip.model.encode_image(x).float(), dim=-1)
            score = self.head(emb).squeeze(-1).cpu().numpy() if self.head is not None else None
            emb_np = emb.cpu().numpy()
        return [(emb_np[j], None if score is None else float(score[j])) for j in range(len(images))]

    def _summarise(self, results: list[Any]) -> tuple[np.ndarray, float | None]:
        """A clip's frame results -> (unit-norm mean embedding float16, mean score or None)."""
        for result in results:
            if isinstance(result, AnnotatorError):  # one frame out of memory on its own: the clip has no mean
                raise result
        embs = np.stack([r[0] for r in results]).astype(np.float32)
        if not np.isfinite(embs).all():
            raise AnnotatorError("not_finite", "the image encoder returned a non-finite embedding")
        mean = embs.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if not np.isfinite(norm) or norm < 1e-6:
            raise AnnotatorError("not_finite", f"the mean frame embedding has norm {norm:g}")
        embedding = (mean / norm).astype(np.float16)
        if self.head is None:
            return embedding, None
        score = float(np.mean([r[1] for r in results]))
        if not np.isfinite(score):
            raise AnnotatorError("not_finite", f"the aesthetic head returned {score}")
        return embedding, score
