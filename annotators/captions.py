"""Clip captions from a local `transformers` vision-language model (AutoProcessor + AutoModelForImageTextToText).

Each clip contributes `num_frames` evenly spaced frames (fewer when it stores fewer) as separate images of one
chat turn, followed by the text prompt. Clips are batched through `generate` (greedy, left padding), and a batch
that runs out of memory is split in half (`run_in_chunks`).

Columns: `caption` (str), `caption_model` (the model id, also for the run manifest), `caption_prompt_version`
(the configured version, or "p-" + 8 hex chars of sha256(prompt), so captions written with different prompts can
be told apart) and `caption_truncated` (generation hit `max_new_tokens` before end-of-sequence).

Per-clip errors (`captions_error`): `no_frames`, `bad_frames` (not (T, H, W, 3) uint8, or the processor rejects
the frame size), `caption_context_overflow` (prompt incl. image tokens + max_new_tokens exceeds the model's
context), `empty_caption`, `caption_truncated` (only with on_truncated="reject"), `out_of_memory` (a single clip
does not fit).

Weights are read from a local folder only: a `save_pretrained` folder, a Hugging Face cache snapshot folder, or a
cache repo folder (`models--org--name`, resolved to its snapshot). Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from annotators.base import AnnotatorError, Batch, error_text, object_array, spread_indices
from annotators.models import (
    DTYPES,
    ModelLoadError,
    check_device,
    is_out_of_memory,
    require_path,
    resolve_device,
    run_in_chunks,
    torch_dtype,
)

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "These images are frames of one video clip, in temporal order. Describe the clip in 2-3 sentences: "
    "the main subjects, what they are doing, the setting, and how the camera moves. "
    "Describe only what is visible."
)
ON_TRUNCATED = ("keep", "reject")
MODEL_KEY = "captions.model_path"
# Where text configs keep their context length, most common first.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# A hub repo id ("org/name" or "name"); anything else in `_name_or_path` is a local path of whoever saved it.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaptionConfig:
    """Which captioning model to run, with what prompt, on how many frames per clip (the `captions` section)."""

    model_path: str = ""  # local folder: save_pretrained layout or a Hugging Face cache folder; "" = no captions
    prompt: str = DEFAULT_PROMPT
    prompt_version: str = ""  # recorded in caption_prompt_version; "" = "p-" + first 8 hex chars of sha256(prompt)
    num_frames: int = 4  # frames per clip, evenly spaced over the stored frames
    max_new_tokens: int = 96
    batch_size: int = 4  # clips per generate() call (halved automatically on out-of-memory)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16
    on_truncated: str = "keep"  # keep | reject: a caption that hit max_new_tokens before end-of-sequence

    def __post_init__(self) -> None:
        for name in ("num_frames", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"captions.{name} must be an int >= 1, got {value!r}")
        check_device(self.device, "captions.device")
        if self.dtype not in DTYPES:
            raise ValueError(f"captions.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.on_truncated not in ON_TRUNCATED:
            raise ValueError(f"captions.on_truncated must be one of {ON_TRUNCATED}, got {self.on_truncated!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("captions.prompt must be non-empty text")
        if not isinstance(self.prompt_version, str):
            raise ValueError(f"captions.prompt_version must be a string, got {self.prompt_version!r}")
        if not isinstance(self.model_path, str):
            raise ValueError(f"captions.model_path must be a string, got {self.model_path!r}")
        if self.model_path:
            require_path(self.model_path, MODEL_KEY, kind="dir")  # a ModelLoadError, i.e. a ValueError

    @property
    def resolved_prompt_version(self) -> str:
        """The `caption_prompt_version` value: the configured one, else derived from the prompt text."""
        return self.prompt_version or "p-" + hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:8]


def resolve_model_folder(model_path: str) -> Path:
    """The folder that holds config.json: `model_path` itself, or for a Hugging Face cache repo folder
    (`models--org--name`), the snapshot `refs/main` names, else the newest snapshot."""
    folder = require_path(model_path, MODEL_KEY, kind="dir")
    snapshots = folder / "snapshots"
    if (folder / "config.json").exists() or not snapshots.is_dir():
        return folder
    complete = [s for s in snapshots.iterdir() if s.is_dir() and (s / "config.json").exists()]
    if not complete:
        raise ModelLoadError(
            f"{MODEL_KEY}: {folder} is a Hugging Face cache folder without a snapshot holding config.json"
        )
    ref = folder / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
        if revision and (snapshots / revision / "config.json").exists():
            return snapshots / revision
    return max(complete, key=lambda s: s.stat().st_mtime)


def model_id_of(folder: Path, config: dict[str, Any]) -> str:
    """A short, stable name for the model: the cache repo name, the hub id in `_name_or_path`, or the folder."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        # models--org--name/snapshots/<rev>: the revision hash says nothing, the repo name does.
        return folder.parent.parent.name.split("--")[-1]
    name = config.get("_name_or_path")
    if isinstance(name, str) and _HUB_ID_RE.match(name.strip()):
        return name.strip().rsplit("/", 1)[-1]
    return folder.name


def _dtype_kwarg() -> str:
    """`from_pretrained` takes `dtype` since transformers 4.56 (`torch_dtype` before, deprecated after)."""
    import transformers

    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_captioner(model_path: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """(processor, model, model_id) from a local folder; ModelLoadError naming `captions.model_path` on failure.

    The model is in eval mode on `device`; the tokenizer pads on the left, as batched decoder-only generation
    needs (right padding would put pad tokens between the prompt and the generated text).
    """
    folder = resolve_model_folder(model_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{MODEL_KEY}: {folder} has no config.json (expected a save_pretrained folder or a Hugging Face cache "
            "snapshot)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{MODEL_KEY}: {config_file} is not a readable JSON model config: {e}") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{MODEL_KEY}: {config_file} is not a JSON object")

    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(device)
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, **{_dtype_kwarg(): torch_dtype(dtype, device)}
        )
    except Exception as e:  # unknown architecture, missing or corrupt weights, ...: all mean "not loadable"
        raise ModelLoadError(
            f"{MODEL_KEY}: cannot load {folder} as an image-text-to-text model: {type(e).__name__}: {e}"
        ) from e
    # transformers only warns about weights absent from the checkpoint and initialises them randomly, which would
    # silently produce garbage captions.
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    problems = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in ((missing, "missing"), (mismatched, "mismatched")) if v]
    if problems:
        raise ModelLoadError(f"{MODEL_KEY}: weights in {folder} do not fit the model: {', '.join(problems)}")
    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{MODEL_KEY}: cannot load the processor of {folder}: {type(e).__name__}: {e}") from e
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(
            f"{MODEL_KEY}: {folder} has no multimodal processor (need an image processor and a tokenizer, got "
            f"{type(processor).__name__})"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # padding=True needs one; masked out anyway
    try:
        model = model.to(device).eval()
    except Exception as e:
        raise ModelLoadError(f"captions.device: cannot move the captioning model to {device}: {e}") from e
    return processor, model, model_id_of(folder, config)


def context_length(model: Any) -> int | None:
    """The text model's context length in tokens, when its config states one."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _CONTEXT_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def build_prompt(processor: Any, prompt: str, num_images: int) -> str:
    """The model input text for `num_images` images followed by `prompt`: one user turn through the processor's
    chat template, or plain image tokens + prompt for a processor without one."""
    if getattr(processor, "chat_template", None):
        content = [*({"type": "image"} for _ in range(num_images)), {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text[0] if isinstance(text, list) else text
    image_token = getattr(processor, "image_token", None) or getattr(processor.tokenizer, "image_token", None)
    if not image_token:
        raise ModelLoadError(f"{MODEL_KEY}: the processor has neither a chat template nor an image token")
    return "\n".join([image_token] * num_images + [prompt])


def clip_images(frames: Any, num_frames: int) -> list[Any]:
    """The clip's chosen frames as PIL images; AnnotatorError for missing or malformed frames."""
    from PIL import Image

    if frames is None:
        raise AnnotatorError("no_frames", "the clip has no decoded frames")
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape, dtype = getattr(frames, "shape", None), getattr(frames, "dtype", type(frames).__name__)
        raise AnnotatorError("bad_frames", f"expected a (T, H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}")
    if frames.shape[0] == 0:
        raise AnnotatorError("no_frames", "the clip has 0 stored frames")
    if min(frames.shape[1:3]) < 1:
        raise AnnotatorError("bad_frames", f"empty frames of shape {frames.shape[1:3]}")
    # PIL rather than raw arrays: image processors guess the channel axis of arrays, and guess wrong for 3-px rows.
    return [Image.fromarray(np.ascontiguousarray(frames[i])) for i in spread_indices(frames.shape[0], num_frames)]


class Captioner:
    """Per-clip captions from a local vision-language model; without `model_path` every caption is None."""

    name: ClassVar[str] = "captions"
    output_columns: ClassVar[tuple[str, ...]] = (
        "caption",
        "caption_model",
        "caption_prompt_version",
        "caption_truncated",
        "captions_error",
    )

    def __init__(self, cfg: CaptionConfig) -> None:
        self.cfg = cfg
        self.processor: Any = None
        self.model: Any = None
        self._model_id = "none"
        self._context: int | None = None
        self._prompts: dict[int, str] = {}
        self._lengths: dict[tuple[int, int, int], int | AnnotatorError] = {}
        if not cfg.model_path:
            return
        self.processor, self.model, self._model_id = load_captioner(cfg.model_path, cfg.device, cfg.dtype)
        self._context = context_length(self.model)
        try:  # a template that cannot render the prompt is a configuration problem: fail now, not per clip
            self._prompt(cfg.num_frames)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{MODEL_KEY}: the chat template cannot render the prompt: {e}") from e

    @property
    def model_id(self) -> str:
        """The `caption_model` value ("none" without a model), for the run manifest."""
        return self._model_id

    @property
    def prompt_version(self) -> str | None:
        """The `caption_prompt_version` value (None without a model)."""
        return self.cfg.resolved_prompt_version if self.model is not None else None

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["clip_id"])
        if self.model is None:
            return {
                "clip_id": batch["clip_id"],
                "caption": object_array([None] * n),
                "caption_model": object_array(["none"] * n),
                "caption_prompt_version": object_array([None] * n),
                "caption_truncated": object_array([None] * n),
                "captions_error": object_array([None] * n),
            }
        results: list[dict[str, Any] | AnnotatorError | None] = [None] * n
        todo: list[int] = []
        items: list[tuple[str, list[Any]]] = []
        for i, frames in enumerate(batch["frames"]):
            try:
                images = clip_images(frames, self.cfg.num_frames)
                self._check_fits(len(images), images[0].height, images[0].width)
            except AnnotatorError as e:
                results[i] = e
                continue
            todo.append(i)
            items.append((self._prompt(len(images)), images))
        captioned = run_in_chunks(self._caption_chunk, items, self.cfg.batch_size, "captions")
        for i, result in zip(todo, captioned, strict=True):
            results[i] = result if isinstance(result, AnnotatorError) else self._row(*result)
        columns: dict[str, list[Any]] = {c: [] for c in self.output_columns}
        for result in results:
            values = {"captions_error": error_text(result)} if isinstance(result, AnnotatorError) else result
            for column in self.output_columns:
                columns[column].append(values.get(column))
        return {"clip_id": batch["clip_id"], **{c: object_array(v) for c, v in columns.items()}}

    def _row(self, caption: str, truncated: bool) -> dict[str, Any] | AnnotatorError:
        """The output values of one generated caption, or the per-clip error it amounts to."""
        if not caption:
            return AnnotatorError("empty_caption", "the model produced no text")
        if truncated and self.cfg.on_truncated == "reject":
            return AnnotatorError(
                "caption_truncated",
                f"generation hit captions.max_new_tokens={self.cfg.max_new_tokens} before end-of-sequence",
            )
        return {
            "caption": caption,
            "caption_model": self._model_id,
            "caption_prompt_version": self.cfg.resolved_prompt_version,
            "caption_truncated": bool(truncated),
            "captions_error": None,
        }

    def _prompt(self, num_images: int) -> str:
        if num_images not in self._prompts:
            self._prompts[num_images] = build_prompt(self.processor, self.cfg.prompt, num_images)
        return self._prompts[num_images]

    def _encode(self, items: list[tuple[str, list[Any]]]) -> Any:
        texts = [text for text, _ in items]
        bos = getattr(self.processor.tokenizer, "bos_token", None)
        # A chat template that writes BOS itself must not get a second one from the tokenizer.
        add_special = not (bos and texts[0].startswith(bos))
        return self.processor(
            text=texts,
            images=[images for _, images in items],
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special,
        )

    def _check_fits(self, num_images: int, height: int, width: int) -> None:
        """Raise AnnotatorError when the processor rejects this frame count and size, or when the prompt plus
        `max_new_tokens` exceeds the context. Cached: the token count depends only on these three numbers."""
        key = (num_images, height, width)
        if key not in self._lengths:
            from PIL import Image

            probe = [Image.new("RGB", (width, height))] * num_images
            try:
                self._lengths[key] = int(self._encode([(self._prompt(num_images), probe)])["input_ids"].shape[1])
            except Exception as e:
                if is_out_of_memory(e):
                    raise
                self._lengths[key] = AnnotatorError(
                    "bad_frames", f"the processor rejects {num_images} frame(s) of {width}x{height}: {e}"
                )
        length = self._lengths[key]
        if isinstance(length, AnnotatorError):
            raise length
        if self._context is not None and length + self.cfg.max_new_tokens > self._context:
            raise AnnotatorError(
                "caption_context_overflow",
                f"prompt of {length} tokens ({num_images} frame(s) of {width}x{height}) + captions.max_new_tokens="
                f"{self.cfg.max_new_tokens} exceeds the model context of {self._context} tokens",
            )

    def _special_ids(self) -> tuple[set[int], int | None]:
        """(end-of-sequence ids, pad id) as generate() uses them: the generation config first, else the tokenizer."""
        tokenizer = self.processor.tokenizer
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = {int(t) for t in (eos if isinstance(eos, list | tuple) else [eos]) if t is not None}
        pad = getattr(gen, "pad_token_id", None)
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=None)
        return eos_ids, pad

    def _caption_chunk(self, items: list[tuple[str, list[Any]]]) -> list[tuple[str, bool]]:
        """(caption, truncated) for each (prompt, images) item, in one generate() call."""
        import torch

        inputs = self._encode(items)
        device, dtype = self.model.device, self.model.dtype
        # Only floating tensors (pixel values) take the model dtype; token ids and masks must stay integers.
        inputs = {
            k: (v.to(device, dtype=dtype) if torch.is_floating_point(v) else v.to(device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }
        eos_ids, pad_id = self._special_ids()
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.cfg.max_new_tokens,
                eos_token_id=sorted(eos_ids) or None,
                pad_token_id=pad_id,
            )
        # Decoder-only models return prompt + new tokens; encoder-decoders return the decoder start token + new.
        start = 1 if getattr(self.model.config, "is_encoder_decoder", False) else inputs["input_ids"].shape[1]
        new = out[:, start:].cpu()
        decode = getattr(self.processor, "batch_decode", None) or self.processor.tokenizer.batch_decode
        texts = decode(new, skip_special_tokens=True)
        results = []
        for row, text in zip(new.tolist(), texts, strict=True):
            truncated = len(row) >= self.cfg.max_new_tokens and not eos_ids.intersection(row)
            results.append((text.strip(), truncated))
        return results
