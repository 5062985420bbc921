"""Aesthetic scorer on a tiny, randomly initialised open_clip model saved to a tmp folder and loaded back through
the same code users run (no hub, no network: socket connections fail the test)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
from safetensors.torch import save_file  # noqa: E402

from annotators.aesthetics import (  # noqa: E402
    AestheticHead,
    AestheticsConfig,
    AestheticScorer,
    load_aesthetic_head,
    load_clip_model,
    preprocess,
)
from annotators.base import spread_indices as pick_frames  # noqa: E402
from annotators.models import ModelLoadError  # noqa: E402

F = torch.nn.functional
EMBED_DIM = 16
IMAGE_SIZE = 32
MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


def tiny_model_cfg(width: int = 32) -> dict[str, Any]:
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": width, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }


def random_clip(seed: int, width: int = 32) -> Any:
    torch.manual_seed(seed)
    return open_clip.CLIP(**tiny_model_cfg(width)).eval()


def state_dict(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def save_clip_folder(folder: Path, model: Any, model_cfg: dict[str, Any], preprocess: bool = True) -> Path:
    """`model` saved in open_clip's hub layout (`open_clip_config.json` + safetensors weights) under `folder`."""
    folder.mkdir(parents=True)
    config: dict[str, Any] = {"model_cfg": model_cfg}
    if preprocess:
        config["preprocess_cfg"] = {"mean": list(MEAN), "std": list(STD)}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state_dict(model), str(folder / "open_clip_model.safetensors"))
    return folder


def random_head(seed: int, dim: int = EMBED_DIM) -> Any:
    torch.manual_seed(seed)
    head = AestheticHead(dim)
    with torch.no_grad():  # spread the (otherwise tiny) scores so that comparisons mean something
        head.layers[7].weight.mul_(50.0)
        head.layers[7].bias.fill_(5.0)
    return head.eval()


@pytest.fixture(autouse=True)
def _offline(no_network: None) -> None:
    """Every test here runs with the network refused: weights come from local files only."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference model and head in memory, and their saved copies: a hub-layout folder and a .pth head."""
    root = tmp_path_factory.mktemp("aesthetics")
    model, head = random_clip(0), random_head(1)
    folder = save_clip_folder(root / "tiny-clip", model, tiny_model_cfg())
    head_path = root / "tiny-head.pth"
    torch.save(state_dict(head), head_path)
    return {"root": root, "folder": folder, "head_path": head_path, "model": model, "head": head}


@pytest.fixture(scope="module")
def scorer(tiny: dict[str, Any]) -> AestheticScorer:
    cfg = AestheticsConfig(model_path=str(tiny["folder"]), head_path=str(tiny["head_path"]), device="cpu")
    return AestheticScorer(cfg)


def make_batch(clips: list[np.ndarray | None], ids: list[str] | None = None) -> dict[str, np.ndarray]:
    frames = np.empty(len(clips), dtype=object)
    for i, clip in enumerate(clips):
        frames[i] = clip
    ids = ids or [f"clip{i}" for i in range(len(clips))]
    return {"clip_id": np.array(ids, dtype=object), "frames": frames}


def random_clips(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(5, 40, 56, 3), (2, 32, 32, 3), (9, 70, 24, 3)]
    return [rng.integers(0, 256, size=s, dtype=np.uint8) for s in shapes]


def reference(model: Any, head: Any, frames: np.ndarray, num_frames: int = 4) -> tuple[np.ndarray, float]:
    """Direct computation: picked frames -> preprocess -> encoder -> L2 norm -> head; mean over frames."""
    x = preprocess(frames[pick_frames(len(frames), num_frames)], IMAGE_SIZE, MEAN, STD)
    with torch.no_grad():
        emb = F.normalize(model.encode_image(x), dim=-1)
        scores = head(emb).squeeze(-1)
    mean = emb.mean(0)
    return (mean / mean.norm()).numpy(), float(scores.mean())


def assert_same_results(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 1e-4) -> None:
    assert list(a["clip_id"]) == list(b["clip_id"])
    assert list(a["aesthetics_error"]) == list(b["aesthetics_error"])
    assert list(a["aesthetic_backend"]) == list(b["aesthetic_backend"])
    for ea, eb, sa, sb in zip(
        a["clip_embedding"], b["clip_embedding"], a["aesthetic_score"], b["aesthetic_score"], strict=True
    ):
        assert (ea is None) == (eb is None) and (sa is None) == (sb is None)
        if ea is not None:
            np.testing.assert_allclose(ea.astype(np.float32), eb.astype(np.float32), atol=2e-3)
        if sa is not None:
            assert sa == pytest.approx(sb, abs=atol)


# ------------------------------------------------------------------------------------------------------ outputs


def test_outputs_are_well_formed(scorer: AestheticScorer, tiny: dict[str, Any]) -> None:
    out = scorer(make_batch(random_clips()))
    assert set(out) == {"clip_id", *AestheticScorer.output_columns}
    assert list(out["clip_id"]) == ["clip0", "clip1", "clip2"]
    for column in AestheticScorer.output_columns:
        assert out[column].dtype == object and out[column].shape == (3,)
    for emb, score, backend, error in zip(
        out["clip_embedding"], out["aesthetic_score"], out["aesthetic_backend"], out["aesthetics_error"], strict=True
    ):
        assert error is None
        assert isinstance(emb, np.ndarray) and emb.shape == (EMBED_DIM,) and emb.dtype == np.float16
        assert np.linalg.norm(emb.astype(np.float32)) == pytest.approx(1.0, abs=2e-3)
        assert type(score) is float and np.isfinite(score)
        assert backend == "open_clip:tiny-clip+tiny-head"
    assert scorer.embedding_model == "open_clip:tiny-clip"
    assert scorer.embedding_dim == EMBED_DIM


def test_matches_direct_computation_per_clip(scorer: AestheticScorer, tiny: dict[str, Any]) -> None:
    clips = random_clips(3)
    order = [2, 0, 1]  # results must follow the batch's clip order, not the input sizes
    out = scorer(make_batch([clips[i] for i in order], ids=[f"c{i}" for i in order]))
    assert list(out["clip_id"]) == ["c2", "c0", "c1"]
    for row, i in enumerate(order):
        emb, score = reference(tiny["model"], tiny["head"], clips[i])
        np.testing.assert_allclose(out["clip_embedding"][row].astype(np.float32), emb, atol=2e-3)
        assert out["aesthetic_score"][row] == pytest.approx(score, abs=1e-4)
    scores = [s for s in out["aesthetic_score"]]
    assert len(set(np.round(scores, 3))) == 3  # the head really tells the clips apart


def test_num_frames_changes_which_frames_are_used(tiny: dict[str, Any]) -> None:
    cfg = AestheticsConfig(model_path=str(tiny["folder"]), head_path=str(tiny["head_path"]), device="cpu", num_frames=1)
    clip = random_clips(4)[2]
    out = AestheticScorer(cfg)(make_batch([clip]))
    emb, score = reference(tiny["model"], tiny["head"], clip, num_frames=1)
    assert out["aesthetic_score"][0] == pytest.approx(score, abs=1e-4)
    np.testing.assert_allclose(out["clip_embedding"][0].astype(np.float32), emb, atol=2e-3)


def test_batch_size_does_not_change_results(scorer: AestheticScorer, tiny: dict[str, Any]) -> None:
    one = AestheticScorer(
        AestheticsConfig(model_path=str(tiny["folder"]), head_path=str(tiny["head_path"]), device="cpu", batch_size=1)
    )
    batch = make_batch(random_clips(5))
    assert_same_results(one(batch), scorer(batch))


def test_low_precision_dtype_stays_close(scorer: AestheticScorer, tiny: dict[str, Any]) -> None:
    cfg = AestheticsConfig(
        model_path=str(tiny["folder"]), head_path=str(tiny["head_path"]), device="cpu", dtype="bfloat16"
    )
    low = AestheticScorer(cfg)
    assert low.clip.dtype == torch.bfloat16 and next(low.clip.model.parameters()).dtype == torch.bfloat16
    batch = make_batch(random_clips(13))
    got, want = low(batch), scorer(batch)
    for ea, eb in zip(got["clip_embedding"], want["clip_embedding"], strict=True):
        assert ea.dtype == np.float16 and float(ea.astype(np.float32) @ eb.astype(np.float32)) > 0.99
    assert np.allclose(list(got["aesthetic_score"]), list(want["aesthetic_score"]), atol=0.5)


def test_deterministic(scorer: AestheticScorer) -> None:
    batch = make_batch(random_clips(6))
    a, b = scorer(batch), scorer(batch)
    assert list(a["aesthetic_score"]) == list(b["aesthetic_score"])
    for ea, eb in zip(a["clip_embedding"], b["clip_embedding"], strict=True):
        assert np.array_equal(ea, eb)


def test_no_model_gives_nulls_without_importing_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from annotators.aesthetics import AestheticScorer, AestheticsConfig\n"
        "s = AestheticScorer(AestheticsConfig())\n"
        "out = s({'clip_id': np.array(['a', 'b'], dtype=object), 'frames': np.empty(2, dtype=object)})\n"
        "assert list(out['aesthetic_score']) == [None, None], out\n"
        "assert list(out['aesthetic_backend']) == ['none', 'none'], out\n"
        "assert list(out['clip_embedding']) == [None, None], out\n"
        "assert list(out['aesthetics_error']) == [None, None], out\n"
        "assert s.embedding_model is None and s.embedding_dim is None\n"
        "assert 'torch' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_model_without_head_gives_embedding_only(scorer: AestheticScorer, tiny: dict[str, Any]) -> None:
    plain = AestheticScorer(AestheticsConfig(model_path=str(tiny["folder"]), device="cpu"))
    batch = make_batch(random_clips(7))
    out, full = plain(batch), scorer(batch)
    assert list(out["aesthetic_score"]) == [None] * 3
    assert list(out["aesthetic_backend"]) == ["none"] * 3
    assert list(out["aesthetics_error"]) == [None] * 3
    for emb, ref in zip(out["clip_embedding"], full["clip_embedding"], strict=True):
        assert emb.shape == (EMBED_DIM,) and emb.dtype == np.float16
        np.testing.assert_array_equal(emb, ref)
    assert plain.embedding_model == "open_clip:tiny-clip" and plain.embedding_dim == EMBED_DIM


# ------------------------------------------------------------------------------------------------------ layouts


@pytest.fixture(scope="module")
def registered_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny architecture in open_clip's built-in registry under a unique name (what model_name refers to)."""
    name = f"Tiny-aesthetics-{uuid.uuid4().hex[:8]}"
    path = tmp_path_factory.mktemp("arch") / f"{name}.json"
    path.write_text(json.dumps(tiny_model_cfg()))
    open_clip.add_model_config(path)
    assert name in open_clip.list_models()
    return name


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_file_layout(tiny: dict[str, Any], registered_arch: str, suffix: str) -> None:
    path = tiny["root"] / f"tiny-checkpoint{suffix}"
    if suffix == ".pt":  # wrapped and DataParallel-prefixed, as training scripts write them
        torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict(tiny["model"]).items()}}, path)
    else:
        save_file(state_dict(tiny["model"]), str(path))
    cfg = AestheticsConfig(
        model_path=str(path), model_name=registered_arch, head_path=str(tiny["head_path"]), device="cpu"
    )
    scorer = AestheticScorer(cfg)
    assert scorer.embedding_model == f"open_clip:{registered_arch}"
    clip = random_clips(8)[0]
    out = scorer(make_batch([clip]))
    # a file carries no preprocess_cfg: open_clip's defaults (OpenAI mean/std) apply
    assert scorer.clip.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    x = preprocess(
        clip[pick_frames(len(clip), 4)], IMAGE_SIZE, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    )
    with torch.no_grad():
        emb = F.normalize(tiny["model"].encode_image(x), dim=-1)
        score = float(tiny["head"](emb).mean())
    assert out["aesthetic_score"][0] == pytest.approx(score, abs=1e-4)
    assert out["aesthetic_backend"][0] == f"open_clip:{registered_arch}+tiny-head"


def test_checkpoint_of_another_architecture_is_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    name = f"Tiny-aesthetics-wide-{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.json").write_text(json.dumps(tiny_model_cfg(width=48)))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    path = tmp_path / "narrow.safetensors"
    save_file(state_dict(tiny["model"]), str(path))
    with pytest.raises(ModelLoadError, match="aesthetics.model_path"):
        load_clip_model(str(path), name, "cpu", "float32")


def test_unknown_architecture_name_is_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(state_dict(tiny["model"]), str(path))
    with pytest.raises(ModelLoadError, match="aesthetics.model_name"):
        load_clip_model(str(path), "No-Such-Arch-xyz", "cpu", "float32")


def test_load_clip_model_reports_preprocessing(tiny: dict[str, Any]) -> None:
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    clip = load_clip_model(str(tiny["folder"]), "", "cpu", "auto")
    assert offline is constants.HF_HUB_OFFLINE  # forced offline while loading only
    assert (clip.image_size, clip.mean, clip.std) == (IMAGE_SIZE, MEAN, STD)
    assert (clip.interpolation, clip.resize_mode, clip.arch, clip.embed_dim) == ("bicubic", "shortest", "tiny-clip", 16)
    assert clip.dtype == torch.float32 and not clip.model.training


def test_hugging_face_cache_snapshot_label(tiny: dict[str, Any], tmp_path: Path) -> None:
    snapshot = tmp_path / "models--someorg--tiny-clip-v2" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for f in tiny["folder"].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    assert load_clip_model(str(snapshot), "", "cpu", "float32").arch == "someorg/tiny-clip-v2"


def test_head_variants_load(tiny: dict[str, Any], tmp_path: Path) -> None:
    weights = state_dict(tiny["head"])
    assert set(weights) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}  # LAION keys
    nested = tmp_path / "nested.pth"
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, nested)
    flat = tmp_path / "flat.safetensors"
    save_file(weights, str(flat))
    x = F.normalize(torch.randn(5, EMBED_DIM), dim=-1)
    with torch.no_grad():
        want = tiny["head"](x)
        for path in (nested, flat):
            head = load_aesthetic_head(str(path), EMBED_DIM, "cpu")
            assert not head.training
            torch.testing.assert_close(head(x), want)


# --------------------------------------------------------------------------------------------------- bad inputs


def test_missing_model_folder_fails_at_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"aesthetics\.model_path: .* does not exist"):
        AestheticsConfig(model_path=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"aesthetics\.head_path: .* does not exist"):
        AestheticsConfig(model_path=str(tmp_path), head_path=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_frames": 0}, "aesthetics.num_frames"),
        ({"batch_size": 0}, "aesthetics.batch_size"),
        ({"device": "gpu"}, "aesthetics.device"),
        ({"dtype": "float64"}, "aesthetics.dtype"),
        ({"head_path": "/some/head.pth"}, "aesthetics.head_path"),
        ({"model_name": "hf-hub:laion/x"}, "aesthetics.model_name"),
    ],
)
def test_bad_config_values(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        AestheticsConfig(**kwargs)


def copy_folder(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_garbage_weights_in_folder(tiny: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_folder(tiny["folder"], tmp_path / "m")
    (folder / "open_clip_model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="aesthetics.model_path"):
        AestheticScorer(AestheticsConfig(model_path=str(folder), device="cpu"))


def test_truncated_pytorch_bin_in_folder(tiny: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_folder(tiny["folder"], tmp_path / "m", skip=("open_clip_model.safetensors",))
    torch.save(state_dict(tiny["model"]), folder / "open_clip_pytorch_model.bin")
    data = (folder / "open_clip_pytorch_model.bin").read_bytes()
    assert load_clip_model(str(folder), "", "cpu", "float32").embed_dim == EMBED_DIM  # whole .bin loads
    (folder / "open_clip_pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="aesthetics.model_path"):
        load_clip_model(str(folder), "", "cpu", "float32")


def test_folder_missing_pieces(tiny: dict[str, Any], tmp_path: Path) -> None:
    no_weights = copy_folder(tiny["folder"], tmp_path / "a", skip=("open_clip_model.safetensors",))
    with pytest.raises(ModelLoadError, match="no weights"):
        load_clip_model(str(no_weights), "", "cpu", "float32")
    no_config = copy_folder(tiny["folder"], tmp_path / "b", skip=("open_clip_config.json",))
    with pytest.raises(ModelLoadError, match="open_clip_config.json is missing"):
        load_clip_model(str(no_config), "", "cpu", "float32")
    bad_json = copy_folder(tiny["folder"], tmp_path / "c")
    (bad_json / "open_clip_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="aesthetics.model_path"):
        load_clip_model(str(bad_json), "", "cpu", "float32")
    wrong_arch = copy_folder(tiny["folder"], tmp_path / "d")
    (wrong_arch / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_model_cfg(width=48)}))
    with pytest.raises(ModelLoadError, match="aesthetics.model_path"):
        load_clip_model(str(wrong_arch), "", "cpu", "float32")


def test_head_with_wrong_input_dim(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "head8.pth"
    torch.save(state_dict(random_head(2, dim=8)), path)
    with pytest.raises(ModelLoadError, match=r"aesthetics\.head_path: .*8-d .*16-d"):
        AestheticScorer(AestheticsConfig(model_path=str(tiny["folder"]), head_path=str(path), device="cpu"))


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors"])
def test_head_of_garbage_bytes(tiny: dict[str, Any], tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"definitely not weights" * 10)
    with pytest.raises(ModelLoadError, match="aesthetics.head_path"):
        load_aesthetic_head(str(path), EMBED_DIM, "cpu")


def test_head_with_other_keys(tiny: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1, EMBED_DIM), "fc.bias": torch.zeros(1)}, path)
    with pytest.raises(ModelLoadError, match="not a LAION aesthetic MLP head"):
        load_aesthetic_head(str(path), EMBED_DIM, "cpu")


def test_clips_without_usable_frames_fail_alone(scorer: AestheticScorer) -> None:
    good = random_clips(9)[0]
    clips = [None, good, np.zeros((0, 32, 32, 3), np.uint8), good.astype(np.float32)]
    out = scorer(make_batch(clips))
    errors = list(out["aesthetics_error"])
    assert errors[0].startswith("no_frames") and errors[2].startswith("no_frames")
    assert errors[3].startswith("bad_frames: ")
    assert errors[1] is None and out["clip_embedding"][1] is not None
    for i in (0, 2, 3):
        assert out["aesthetic_score"][i] is None and out["clip_embedding"][i] is None
        assert out["aesthetic_backend"][i] is None
    reference_out = scorer(make_batch([good]))
    assert out["aesthetic_score"][1] == reference_out["aesthetic_score"][0]
    no_column = scorer({"clip_id": np.array(["x"], dtype=object)})
    assert no_column["aesthetics_error"][0].startswith("no_frames")


def test_empty_batch(scorer: AestheticScorer) -> None:
    out = scorer(make_batch([]))
    assert all(len(out[c]) == 0 for c in ("clip_id", *AestheticScorer.output_columns))


# ------------------------------------------------------------------------------------------------ out of memory


def constant_clip(value: int = 200) -> np.ndarray:
    return np.full((3, 32, 32, 3), value, np.uint8)


def patch_encoder(monkeypatch: pytest.MonkeyPatch, scorer: AestheticScorer, fail: Any, result: Any = None) -> None:
    """Wrap the loaded model's image encoder: raise when `fail(x)`, else (optionally) post-process the output."""
    model = scorer.clip.model
    original = model.encode_image

    def encode_image(x: Any, *args: Any, **kwargs: Any) -> Any:
        if fail(x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        out = original(x, *args, **kwargs)
        return result(x, out) if result else out

    monkeypatch.setattr(model, "encode_image", encode_image)


def constant_images(x: Any) -> Any:
    """(N,) bool: which model inputs are flat images (each channel one value)."""
    flat = x.flatten(2)
    return (flat.amax(-1) == flat.amin(-1)).all(-1)


def has_constant_image(x: Any) -> bool:
    return bool(constant_images(x).any())


def test_out_of_memory_on_big_batches_is_recovered(scorer: AestheticScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_batch(random_clips(10))
    want = scorer(batch)
    sizes: list[int] = []
    patch_encoder(monkeypatch, scorer, lambda x: sizes.append(len(x)) or len(x) > 2)
    got = scorer(batch)
    assert max(sizes) > 2 and any(s <= 2 for s in sizes)  # it did fail, then ran smaller batches
    assert_same_results(got, want)


def test_out_of_memory_on_one_clip_fails_only_that_clip(
    scorer: AestheticScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = random_clips(11)
    want = scorer(make_batch(clips))
    patch_encoder(monkeypatch, scorer, has_constant_image)
    got = scorer(make_batch([clips[0], constant_clip(), clips[1], clips[2]], ids=["clip0", "flat", "clip1", "clip2"]))
    assert got["aesthetics_error"][1].startswith("out_of_memory: ")
    assert got["aesthetic_score"][1] is None and got["clip_embedding"][1] is None
    assert got["aesthetic_backend"][1] is None
    keep = [0, 2, 3]
    assert_same_results({k: v[keep] for k, v in got.items()}, want)


def test_non_finite_embedding_is_a_clip_error(scorer: AestheticScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    def poison(x: Any, out: Any) -> Any:
        out = out.clone()
        out[constant_images(x)] = float("nan")
        return out

    patch_encoder(monkeypatch, scorer, lambda x: False, poison)
    got = scorer(make_batch([random_clips(12)[0], constant_clip()]))
    assert got["aesthetics_error"][0] is None
    assert got["aesthetics_error"][1].startswith("not_finite: ")
    assert got["clip_embedding"][1] is None and got["aesthetic_score"][1] is None


# ----------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(("n", "k"), [(1, 1), (1, 4), (2, 4), (5, 4), (8, 4), (9, 4), (100, 4), (7, 7), (6, 5)])
def test_pick_frames(n: int, k: int) -> None:
    idx = pick_frames(n, k)
    assert len(idx) == min(n, k)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() <= n - 1
    if min(n, k) >= 2:
        assert idx[0] == 0 and idx[-1] == n - 1
    gaps = np.diff(idx)
    if len(gaps):
        assert gaps.max() - gaps.min() <= 1  # evenly spaced


def test_pick_frames_edges() -> None:
    assert pick_frames(9, 1).tolist() == [4]
    assert pick_frames(0, 4).tolist() == []
    assert pick_frames(9, 3).tolist() == [0, 4, 8]
    with pytest.raises(ValueError):
        pick_frames(5, 0)


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 17, 90, 3), (3, 100, 40, 3)])
def test_preprocess_shape(shape: tuple[int, ...]) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    x = preprocess(frames, 24, MEAN, STD)
    assert x.shape == (shape[0], 3, 24, 24) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_preprocess_constant_image_is_normalised_exactly() -> None:
    frames = np.empty((1, 50, 70, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 10, 128, 250
    x = preprocess(frames, IMAGE_SIZE, MEAN, STD)
    for c, v in enumerate((10, 128, 250)):
        torch.testing.assert_close(x[0, c], torch.full((IMAGE_SIZE, IMAGE_SIZE), (v / 255 - MEAN[c]) / STD[c]))


def test_preprocess_centre_crops() -> None:
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, size=(1, 32, 48, 3), dtype=np.uint8)  # short side already S: crop only
    want = (torch.from_numpy(wide[0, :, 8:40]).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(preprocess(wide, 32, (0.5,) * 3, (0.25,) * 3)[0], want)
    tall = rng.integers(0, 256, size=(1, 41, 32, 3), dtype=np.uint8)  # odd margin: top = round(4.5) = 4
    want = torch.from_numpy(tall[0, 4:36]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(preprocess(tall, 32, (0.0,) * 3, (1.0,) * 3)[0], want)


def test_preprocess_squash_keeps_everything() -> None:
    frames = np.zeros((1, 32, 64, 3), np.uint8)
    frames[:, :, :8] = 255  # a bar at the left edge: cropped away by `shortest`, kept by `squash`
    squash = preprocess(frames, 32, (0.0,) * 3, (1.0,) * 3, resize_mode="squash")
    crop = preprocess(frames, 32, (0.0,) * 3, (1.0,) * 3)
    assert squash[0, :, :, 0].min() > 0.9 and crop.max() == 0


def test_preprocess_matches_open_clip_transform() -> None:
    from PIL import Image

    ys, xs = np.mgrid[0:72, 0:120]
    smooth = np.stack([xs * 2, ys * 3, (xs + ys) % 256], axis=-1).clip(0, 255).astype(np.uint8)
    transform = open_clip.image_transform(IMAGE_SIZE, is_train=False, mean=MEAN, std=STD)
    want = transform(Image.fromarray(smooth))
    got = preprocess(smooth[None], IMAGE_SIZE, MEAN, STD)[0]
    assert got.shape == want.shape
    # PIL and torch bicubic kernels differ slightly; both round to uint8 before normalising
    assert (got - want).abs().mean() < 0.02 and (got - want).abs().max() < 0.2
