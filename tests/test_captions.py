"""Captions: a tiny randomly initialised LLaVA (CLIP vision tower + Llama text model, tokenizer built in memory) is
saved with save_pretrained and loaded back through `Captioner`, the path users run; nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from annotators.captions import (
    DEFAULT_PROMPT,
    CaptionConfig,
    Captioner,
    build_prompt,
    resolve_model_folder,
)
from annotators.models import ModelLoadError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPECIALS = ["</s>", "<pad>", "<s>", "<unk>", "<image>"]  # EOS is id 0: an all-zero logit vector picks it
WORDS = "a the clip shows person dog walks runs in on street park camera pans slowly describe video user assistant :"
PROMPT = "describe the clip"  # in-vocabulary words, so the prompt is not a run of <unk>
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} :{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %} <image>{% else %} {{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
IMAGE_SIZE, PATCH = 32, 8  # 16 patches + CLS; "default" feature selection drops CLS -> 16 tokens per image


def tiny_processor():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIALS + WORDS.split()))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
    )


def save_tiny_llava(folder: Path, *, max_positions: int = 512, zero_norm: bool = False, seed: int = 0) -> Path:
    """Save a tiny random LLaVA + processor to `folder`. `zero_norm` zeroes the final text norm, so every logit is
    0 and greedy decoding picks id 0 (EOS) at once."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    processor = tiny_processor()
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if zero_norm:
        with torch.no_grad():
            model.model.language_model.norm.weight.zero_()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="module")
def captioner(model_dir: Path) -> Captioner:
    return Captioner(CaptionConfig(model_path=str(model_dir), device="cpu", prompt=PROMPT, max_new_tokens=6))


def frames(num: int, height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num, height, width, 3), dtype=np.uint8)


def make_batch(*clips: np.ndarray | None) -> dict[str, np.ndarray]:
    ids = np.array([f"clip-{i}" for i in range(len(clips))], dtype=object)
    stored = np.empty(len(clips), dtype=object)
    for i, clip in enumerate(clips):
        stored[i] = clip
    return {"clip_id": ids, "frames": stored}


def captions_of(captioner: Captioner, batch: dict[str, np.ndarray]) -> list:
    return list(captioner(batch)["caption"])


# --- pure helpers and config --------------------------------------------------------------------------------------


def test_prompt_version() -> None:
    default = CaptionConfig()
    assert default.resolved_prompt_version == "p-" + hashlib.sha256(DEFAULT_PROMPT.encode()).hexdigest()[:8]
    assert CaptionConfig(prompt="other").resolved_prompt_version != default.resolved_prompt_version
    assert CaptionConfig(prompt_version="v3").resolved_prompt_version == "v3"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"num_frames": 0}, "captions.num_frames"),
        ({"max_new_tokens": 0}, "captions.max_new_tokens"),
        ({"batch_size": -1}, "captions.batch_size"),
        ({"batch_size": 2.0}, "captions.batch_size"),
        ({"device": "gpu"}, "captions.device"),
        ({"dtype": "int8"}, "captions.dtype"),
        ({"on_truncated": "drop"}, "captions.on_truncated"),
        ({"prompt": "  "}, "captions.prompt"),
        ({"model_path": "/nonexistent/captioner"}, "captions.model_path"),
    ],
)
def test_bad_config_values(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        CaptionConfig(**overrides)


def test_no_model_gives_nulls() -> None:
    annotator = Captioner(CaptionConfig())
    out = annotator(make_batch(frames(3), None))
    assert set(out) == {"clip_id", *Captioner.output_columns}
    assert list(out["caption"]) == [None, None]
    assert list(out["caption_model"]) == ["none", "none"]
    assert list(out["caption_prompt_version"]) == [None, None]
    assert list(out["caption_truncated"]) == [None, None]
    assert list(out["captions_error"]) == [None, None]
    assert annotator.model_id == "none" and annotator.prompt_version is None
    assert all(isinstance(v, np.ndarray) and v.dtype == object for v in out.values() if v is not out["clip_id"])


def test_no_model_does_not_import_transformers(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys, numpy as np\n"
        "from annotators.captions import CaptionConfig, Captioner\n"
        "b = {'clip_id': np.array(['a'], dtype=object), 'frames': np.array([None], dtype=object)}\n"
        "Captioner(CaptionConfig())(b)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


# --- the tiny model, end to end -------------------------------------------------------------------------------------


def test_well_formed_outputs(captioner: Captioner, model_dir: Path) -> None:
    batch = make_batch(frames(1, seed=1), frames(3, 30, 20, seed=2), frames(10, seed=3))
    out = captioner(batch)
    assert set(out) == {"clip_id", *Captioner.output_columns}
    assert list(out["clip_id"]) == list(batch["clip_id"])
    assert all(len(v) == 3 and v.dtype == object for v in out.values())
    assert list(out["captions_error"]) == [None, None, None]
    assert all(isinstance(c, str) and c and c == c.strip() for c in out["caption"])
    assert list(out["caption_model"]) == ["tiny-llava"] * 3 == [captioner.model_id] * 3
    assert list(out["caption_prompt_version"]) == [CaptionConfig(prompt=PROMPT).resolved_prompt_version] * 3
    assert all(type(t) is bool for t in out["caption_truncated"])
    # Alignment: the same clips in reverse order (same padding per row) get the same captions, reversed.
    flipped = captioner({"clip_id": batch["clip_id"][::-1], "frames": batch["frames"][::-1]})
    assert list(flipped["clip_id"]) == list(batch["clip_id"][::-1])
    assert list(flipped["caption"]) == list(out["caption"][::-1])
    assert len(set(out["caption"])) > 1


def test_batch_size_does_not_change_captions(model_dir: Path) -> None:
    batch = make_batch(*(frames(6, seed=s) for s in range(5)))
    results = []
    for batch_size in (1, 4):
        cfg = CaptionConfig(
            model_path=str(model_dir), device="cpu", prompt=PROMPT, max_new_tokens=6, batch_size=batch_size
        )
        results.append(captions_of(Captioner(cfg), batch))
    assert results[0] == results[1]
    assert len(set(results[0])) > 1  # different frames, different captions: the images reach the model


def test_deterministic(captioner: Captioner, model_dir: Path) -> None:
    batch = make_batch(frames(4, seed=7), frames(8, seed=8))
    first = captioner(batch)
    again = captioner(batch)
    other = Captioner(CaptionConfig(model_path=str(model_dir), device="cpu", prompt=PROMPT, max_new_tokens=6))(batch)
    for column in Captioner.output_columns:
        assert list(first[column]) == list(again[column]) == list(other[column])


def test_truncated_keep_and_reject(model_dir: Path) -> None:
    batch = make_batch(frames(4, seed=1), frames(2, seed=2))
    base = {"model_path": str(model_dir), "device": "cpu", "prompt": PROMPT, "max_new_tokens": 3}
    kept = Captioner(CaptionConfig(**base))(batch)
    # A random model practically never picks EOS, so 3 new tokens always run out.
    assert list(kept["caption_truncated"]) == [True, True]
    assert all(len(c.split()) == 3 for c in kept["caption"])
    rejected = Captioner(CaptionConfig(**base, on_truncated="reject"))(batch)
    assert list(rejected["caption"]) == [None, None]
    assert list(rejected["caption_truncated"]) == [None, None]
    assert all(e.startswith("caption_truncated: ") for e in rejected["captions_error"])


def test_stops_at_end_of_sequence_is_not_truncated(model_dir: Path) -> None:
    annotator = Captioner(CaptionConfig(model_path=str(model_dir), device="cpu", prompt=PROMPT, max_new_tokens=6))
    batch = make_batch(frames(4, seed=5))
    words = annotator(batch)["caption"][0].split()
    # Declare the second generated word an end-of-sequence token: generation now stops at its first occurrence.
    stop_id = annotator.processor.tokenizer.convert_tokens_to_ids(words[1])
    annotator.model.generation_config.eos_token_id = [annotator.processor.tokenizer.eos_token_id, stop_id]
    out = annotator(batch)
    assert out["caption_truncated"][0] is False
    assert out["caption"][0].split() == words[: words.index(words[1]) + 1]


def test_immediate_eos_is_empty_caption(tmp_path: Path) -> None:
    folder = save_tiny_llava(tmp_path / "eos-model", zero_norm=True)
    out = Captioner(CaptionConfig(model_path=str(folder), device="cpu", prompt=PROMPT))(make_batch(frames(4)))
    assert out["caption"][0] is None
    assert out["captions_error"][0].startswith("empty_caption")


def test_context_overflow_is_per_clip(tmp_path: Path) -> None:
    # 40 positions: 1 frame (16 image tokens + ~10 text tokens) + 4 new tokens fits, 4 frames (64+) do not.
    folder = save_tiny_llava(tmp_path / "short-context", max_positions=40)
    annotator = Captioner(CaptionConfig(model_path=str(folder), device="cpu", prompt=PROMPT, max_new_tokens=4))
    out = annotator(make_batch(frames(1), frames(8), frames(1, seed=3)))
    assert isinstance(out["caption"][0], str) and isinstance(out["caption"][2], str)
    assert out["caption"][1] is None and out["caption_truncated"][1] is None
    assert out["captions_error"][1].startswith("caption_context_overflow: ")
    assert out["captions_error"][0] is None and out["captions_error"][2] is None


def test_bad_frames_are_per_clip(captioner: Captioner) -> None:
    good = frames(4)
    batch = make_batch(None, frames(0), good.astype(np.float32), good[..., :2], good)
    out = captioner(batch)
    errors = list(out["captions_error"])
    assert errors[0].startswith("no_frames") and errors[1].startswith("no_frames")
    assert errors[2].startswith("bad_frames: ") and errors[3].startswith("bad_frames: ")
    assert errors[4] is None and isinstance(out["caption"][4], str)
    assert list(out["caption"][:4]) == [None] * 4


def test_fallback_prompt_without_chat_template(captioner: Captioner) -> None:
    processor = captioner.processor
    saved, processor.chat_template = processor.chat_template, None
    try:
        assert build_prompt(processor, "describe", 2) == "<image>\n<image>\ndescribe"
    finally:
        processor.chat_template = saved
    assert build_prompt(processor, "describe", 2) == "user : <image> <image> describe assistant :"


# --- out of memory --------------------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CaptionConfig(model_path=str(model_dir), device="cpu", prompt=PROMPT, max_new_tokens=5, batch_size=4)
    batch = make_batch(*(frames(5, seed=s) for s in range(5)))
    expected = Captioner(cfg)(batch)
    annotator = Captioner(cfg)
    real, sizes = annotator.model.generate, []

    def generate_small_batches_only(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(**kwargs)

    monkeypatch.setattr(annotator.model, "generate", generate_small_batches_only)
    out = annotator(batch)
    for column in Captioner.output_columns:
        assert list(out[column]) == list(expected[column])
    assert sizes[0] == 4 and sizes.count(1) == 5


def test_out_of_memory_on_single_clips(captioner: Captioner, monkeypatch: pytest.MonkeyPatch) -> None:
    def always_oom(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(captioner.model, "generate", always_oom)
    out = captioner(make_batch(frames(4), frames(2), None))
    assert all(e.startswith("out_of_memory: ") for e in out["captions_error"][:2])
    assert out["captions_error"][2].startswith("no_frames")
    assert list(out["caption"]) == [None, None, None]


def test_other_generate_errors_propagate(captioner: Captioner, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs):
        raise RuntimeError("shape mismatch in attention")

    monkeypatch.setattr(captioner.model, "generate", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        captioner(make_batch(frames(4)))


# --- loading ------------------------------------------------------------------------------------------------------


def test_missing_folder_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"captions\.model_path"):
        CaptionConfig(model_path="/nonexistent/captioner")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_garbage_config_json(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path / "garbage")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"captions\.model_path.*config\.json"):
        Captioner(CaptionConfig(model_path=str(folder), device="cpu"))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"captions\.model_path.*no config\.json"):
        Captioner(CaptionConfig(model_path=str(tmp_path), device="cpu"))


def test_unknown_architecture(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path / "unknown")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no_such_architecture"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"captions\.model_path"):
        Captioner(CaptionConfig(model_path=str(folder), device="cpu"))


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "missing_tensors", "no_weights"])
def test_corrupt_weights(model_dir: Path, tmp_path: Path, damage: str) -> None:
    folder = copy_model(model_dir, tmp_path / damage)
    weights = folder / "model.safetensors"
    if damage == "random_bytes":
        weights.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "missing_tensors":  # a valid file that lacks tensors: transformers alone would init them randomly
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        del state[next(k for k in sorted(state) if "embed_tokens" in k)]
        save_file(state, weights, metadata={"format": "pt"})
    else:
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"captions\.model_path"):
        Captioner(CaptionConfig(model_path=str(folder), device="cpu"))


def test_text_only_model_is_rejected(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelLoadError, match=r"captions\.model_path"):
        Captioner(CaptionConfig(model_path=str(tmp_path / "llama"), device="cpu"))


def make_hf_cache_repo(model_dir: Path, root: Path, revisions: list[str]) -> Path:
    """A `models--org--name` folder as huggingface_hub lays it out: blobs named by hash, snapshots of symlinks."""
    repo = root / "models--test-org--tiny-captioner"
    (repo / "blobs").mkdir(parents=True)
    for revision in revisions:
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for file in model_dir.iterdir():
            blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            if not blob.exists():
                shutil.copyfile(file, blob)
            (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return repo


def test_hf_cache_repo_layout(model_dir: Path, tmp_path: Path) -> None:
    repo = make_hf_cache_repo(model_dir, tmp_path, ["0123abcd"])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    annotator = Captioner(CaptionConfig(model_path=str(repo), device="cpu", prompt=PROMPT, max_new_tokens=6))
    assert annotator.model_id == "tiny-captioner"
    batch = make_batch(frames(4, seed=9))
    direct = Captioner(CaptionConfig(model_path=str(model_dir), device="cpu", prompt=PROMPT, max_new_tokens=6))
    assert annotator(batch)["caption"][0] == direct(batch)["caption"][0]
    # A snapshot folder given directly is named after its repo too.
    snapshot = Captioner(CaptionConfig(model_path=str(repo / "snapshots" / "0123abcd"), device="cpu"))
    assert snapshot.model_id == "tiny-captioner"


def test_hf_cache_newest_snapshot_without_refs(model_dir: Path, tmp_path: Path) -> None:
    repo = make_hf_cache_repo(model_dir, tmp_path, ["old", "new"])
    os.utime(repo / "snapshots" / "old", (1_000_000, 1_000_000))
    (repo / "snapshots" / "partial").mkdir()  # an interrupted download: no config.json, never chosen
    assert resolve_model_folder(str(repo)) == repo / "snapshots" / "new"
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("old\n")
    assert resolve_model_folder(str(repo)) == repo / "snapshots" / "old"


def test_hf_cache_without_snapshots(tmp_path: Path) -> None:
    (tmp_path / "models--org--empty" / "snapshots" / "abc").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"captions\.model_path.*snapshot"):
        resolve_model_folder(str(tmp_path / "models--org--empty"))


def test_model_id_from_name_or_path(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path / "checkpoint-final")
    config = json.loads((folder / "config.json").read_text())
    config["_name_or_path"] = "some-org/tiny-vlm-v2"
    (folder / "config.json").write_text(json.dumps(config))
    assert Captioner(CaptionConfig(model_path=str(folder), device="cpu")).model_id == "tiny-vlm-v2"
    config["_name_or_path"] = "/home/someone/tmp/run3"  # a local path of whoever saved it: not a name
    (folder / "config.json").write_text(json.dumps(config))
    assert Captioner(CaptionConfig(model_path=str(folder), device="cpu")).model_id == "checkpoint-final"
