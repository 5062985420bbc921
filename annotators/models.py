"""What every model-backed annotator shares: device choice, local-weights checks, and batched inference that
survives running out of memory.

There is no model hub at run time: weights always come from a local path (or a pre-populated cache). A missing
or unreadable path is a `ModelLoadError` whose message names the config key, raised before any clip is touched.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from annotators.base import AnnotatorError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ModelLoadError(ValueError):
    """Model weights are missing, unreadable or do not fit the configured architecture (message names the key)."""


_WARNED_CPU_FALLBACK: set[str] = set()


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`. A CUDA device asked for explicitly, or a GPU that Ray
    assigned to this process (CUDA_VISIBLE_DEVICES), on a machine where torch has no CUDA falls back to `cpu` with
    one warning per process: the work still gets done, just slower."""
    if device == "cpu":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    assigned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if (device != "auto" or assigned) and device not in _WARNED_CPU_FALLBACK:
        _WARNED_CPU_FALLBACK.add(device)
        given = f"; this process was assigned GPU {assigned}" if assigned else ""
        logger.warning(
            "device %s requested%s, but CUDA is not available to torch %s here: running on CPU",
            device,
            given,
            torch.__version__,
        )
    return "cpu"


def check_device(device: str, key: str) -> None:
    """Config validation of a `device` setting."""
    if not DEVICE_RE.match(device):
        raise ValueError(f"{key} must be auto, cpu, cuda or cuda:N, got {device!r}")


def require_path(path: str, key: str, *, kind: str = "any") -> Path:
    """`path` as a Path, or ModelLoadError naming `key` when it does not exist (kind: any | file | dir)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{key}: {p} does not exist (weights are read from local paths only, never downloaded)")
    if kind == "file" and not p.is_file():
        raise ModelLoadError(f"{key}: {p} is not a file")
    if kind == "dir" and not p.is_dir():
        raise ModelLoadError(f"{key}: {p} is not a folder")
    return p


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA/host out-of-memory failure (recoverable by running a smaller batch)."""
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _release_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run_in_chunks(
    fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], batch_size: int, what: str
) -> list[R | AnnotatorError]:
    """`fn` over `items` in chunks of at most `batch_size`, one result per item, in order.

    When a chunk runs out of memory it is split in half and retried (the GPU cache emptied first), so one
    oversized batch slows the run down instead of failing it. An item that runs out of memory on its own gets an
    `AnnotatorError("out_of_memory", ...)` in its place; other exceptions propagate.
    """
    results: list[R | AnnotatorError] = []
    pending = [list(items[i : i + batch_size]) for i in range(0, len(items), max(1, batch_size))]
    while pending:
        chunk = pending.pop(0)
        try:
            out = list(fn(chunk))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            _release_memory()
            if len(chunk) == 1:
                results.append(AnnotatorError("out_of_memory", f"{what} ran out of memory on a single clip: {e}"))
                continue
            half = len(chunk) // 2
            logger.warning("%s: out of memory on a batch of %d, retrying in halves", what, len(chunk))
            pending[:0] = [chunk[:half], chunk[half:]]
            continue
        if len(out) != len(chunk):
            raise RuntimeError(f"{what} returned {len(out)} results for {len(chunk)} inputs")
        results.extend(out)
    return results


def torch_dtype(name: str, device: str) -> Any:
    """`auto` -> float16 on CUDA, float32 on CPU; else the named torch dtype (float32 | float16 | bfloat16)."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


DTYPES = ("auto", "float32", "float16", "bfloat16")


def check_weight_files(path: Path, key: str) -> list[Path]:
    """Read the headers of every weights and JSON file at `path` (a file or a folder, not recursive) without
    loading tensors: a cheap check, run once on the driver before any work, that catches missing, truncated and
    garbage files with a message naming `key`. Returns the weights files found."""
    import json
    import zipfile

    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    weights = []
    for file in files:
        try:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="numpy") as handle:
                    handle.keys()
                weights.append(file)
            elif file.suffix in (".bin", ".pt", ".pth"):
                # torch.save writes zip archives since torch 1.6; opening one reads only its central directory at
                # the end of the file, which a truncated or garbage file lacks (no pass over the tensor data).
                with zipfile.ZipFile(file) as archive:
                    archive.namelist()
                weights.append(file)
            elif file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
        except Exception as e:  # any parse failure of any kind is the same finding: this file is unusable
            raise ModelLoadError(f"{key}: {file} is unreadable ({type(e).__name__}: {e})") from e
    if not weights:
        raise ModelLoadError(f"{key}: no weights file (.safetensors, .bin, .pt, .pth) in {path}")
    return weights


def read_state_dict(path: str | Path, key: str) -> dict[str, Any]:
    """A local weights file as a dict of tensors on the CPU: `.safetensors`, or a torch checkpoint read with
    `weights_only=True` (never arbitrary pickles). A dict nested under `state_dict` / `model` is unwrapped and a
    DataParallel `module.` prefix stripped. ModelLoadError naming `key` when the file is missing or unreadable, or
    holds something other than tensors."""
    import torch

    p = require_path(str(path), key, kind="file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / safetensors header errors: not a weights file at all
        raise ModelLoadError(f"{key}: cannot read {p} as a state dict: {e}") from e
    if isinstance(state, dict):
        for nested in ("state_dict", "model"):
            if isinstance(state.get(nested), dict):
                state = state[nested]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{key}: {p} does not hold a state dict (a dict of tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
