"""The annotator contract, the per-clip chain (flow -> motion, warped noise), and bad clips inside the clips step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotators import ANNOTATORS, annotator_class
from annotators.base import all_finite, object_array
from annotators.flow import FlowEstimator
from annotators.noise_warp import WARPER_VERSION
from annotators.warped_noise import clip_noise_seed
from curation.ids import uri_key
from curation.schema import CLIPS, SHARD_META, SHARD_TENSORS
from pipelines import clip_writer, steps
from pipelines.annotate import ClipAnnotators, ClipRejected
from pipelines.collect import collect
from pipelines.config import RunConfig, load_config
from tests.conftest import SMOKE


def clip_of(clip_id: str, frames: np.ndarray) -> dict:
    """The clip dict the clips step hands to the annotators (8 fps sampling, stride 3, 64x64 source)."""
    t = len(frames)
    return {
        "clip_id": clip_id,
        "frames": frames,
        "frame_pts": list(np.arange(t) / 8),
        "frame_indices": np.arange(t) * 3,
        "source_size": (64, 64),
        "decoded_size": (64, 64),
    }


def textured_clip(t: int = 5, size: int = 64, dx: int = 2, seed: int = 0) -> np.ndarray:
    """A smooth random texture panning `dx` px per frame to the right (content moves +x)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size + t * dx, 3)).astype(np.uint8), (5, 5), 1.5)
    return np.stack([base[:, (t - i) * dx : (t - i) * dx + size] for i in range(t)])


@pytest.fixture(scope="module")
def chain() -> ClipAnnotators:
    return ClipAnnotators(load_config(SMOKE))


NEEDS_WEIGHTS = ("latents", "text_encoder")  # off unless a model folder is configured


def tiny_models(name: str, folder) -> list[str]:
    """Overrides that point `name` at a tiny random model saved in `folder` (the others run without weights)."""
    import torch

    torch.manual_seed(0)
    if name == "latents":
        from tests.test_vae import tiny_wan

        tiny_wan().save_pretrained(folder)
        return [f"latents.model_path={folder}", "frames.num_frames=9"]
    from tests.test_text_encoder import save_tokenizer, tiny_encoder

    tiny_encoder("t5").save_pretrained(folder)
    save_tokenizer(folder)
    return [f"text_encoder.model_path={folder}"]


@pytest.mark.parametrize("name", sorted(ANNOTATORS))
def test_every_annotator_returns_exactly_its_declared_columns(name: str, tmp_path):
    cfg = load_config(SMOKE, tiny_models(name, tmp_path) if name in NEEDS_WEIGHTS else [])
    frames = textured_clip()
    short = 5 if name == "latents" else 3  # a video VAE needs 1 + 4k frames
    batch = {
        "clip_id": np.array(["c0", "c1"], dtype=object),
        "frames": object_array([frames, frames[:short]]),
        "frame_pts": object_array([np.arange(5) / 8, np.arange(short) / 8]),
        "frame_indices": object_array([np.arange(5) * 3, np.arange(short) * 3]),
        "source_size": object_array([(64, 64), (64, 64)]),
        "decoded_size": object_array([(64, 64), (64, 64)]),
    }
    for upstream in list(ANNOTATORS)[: list(ANNOTATORS).index(name)]:  # what the chain feeds it
        if upstream in NEEDS_WEIGHTS:
            continue
        batch.update(annotator_class(upstream)(getattr(cfg, ANNOTATORS[upstream][1]))(batch))
    cls = annotator_class(name)
    out = cls(getattr(cfg, ANNOTATORS[name][1]))(batch)
    assert set(out) == {"clip_id", *cls.output_columns}
    assert all(len(v) == 2 for v in out.values())
    declared = set(CLIPS.names) | set(SHARD_META.names) | set(SHARD_TENSORS)
    assert {c for c in cls.output_columns if not c.endswith("_error")} <= declared  # the schema knows them
    assert out[f"{name}_error"].tolist() == [None, None]


def test_chain_output_shapes_units_and_seeds(chain: ClipAnnotators):
    out = chain(clip_of("clip-a", textured_clip()))
    assert out["flow"].shape == (4, 2, 64, 64)
    interior = out["flow"][:, :, 8:-8, 8:-8]
    assert np.median(interior[:, 0]) == pytest.approx(2.0, abs=0.15) and abs(np.median(interior[:, 1])) < 0.15
    assert out["motion_mean"] == pytest.approx(2.0 / np.hypot(64, 64) * 8, rel=0.1)
    assert out["global_homography"].shape == (4, 3, 3)
    noise = out["warped_noise"]
    assert noise.shape == (5, 4, 8, 8) and noise.dtype == np.float16
    assert out["noise_seed"] == clip_noise_seed("clip-a", 0) and out["noise_warper_version"] == WARPER_VERSION
    again = chain(clip_of("clip-a", textured_clip()))
    other = chain(clip_of("clip-b", textured_clip()))
    assert np.array_equal(again["warped_noise"], noise)  # same clip, same flow -> the same noise
    assert not np.array_equal(other["warped_noise"][0], noise[0])  # seeds differ per clip


def test_a_static_clip_keeps_its_noise(chain: ClipAnnotators):
    frames = np.repeat(textured_clip(t=1), 4, axis=0)
    out = chain(clip_of("still", frames))
    assert np.abs(out["flow"]).max() < 0.05
    assert all(np.array_equal(out["warped_noise"][0], n) for n in out["warped_noise"][1:])


def test_non_finite_flow_rejects_the_clip(chain: ClipAnnotators, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(FlowEstimator, "_cv_pairs", lambda self, f: np.full((len(f) - 1, 64, 64, 2), np.nan, "f4"))
    with pytest.raises(ClipRejected) as e:
        chain(clip_of("nan", textured_clip()))
    assert (e.value.stage, e.value.reason) == ("flow", "flow_not_finite")


def _run_steps_directly(video: Path, run_dir: Path, cfg: RunConfig) -> dict:
    row = {"source_uri": str(video), "key": uri_key(str(video))}
    steps.make_ingest_fn(cfg, run_dir)(row)
    steps.make_scenes_fn(cfg, run_dir)(row)
    steps.make_clips_fn(cfg, run_dir)(row)
    return row


@pytest.mark.parametrize("bad_value", [np.nan, 1e6])  # NaN, and finite values that overflow float16
def test_clips_step_rejects_bad_flow_and_writes_no_shard_row(bad_value, corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(FlowEstimator, "_cv_pairs", lambda self, f: np.full((len(f) - 1, 64, 64, 2), bad_value, "f4"))
    cfg = load_config(SMOKE)
    row = _run_steps_directly(corpus_dir / "pan_right.mp4", tmp_path, cfg)
    data = collect(tmp_path, [row])
    assert not data.clips and data.rejected
    assert {(r["stage"], r["reason"]) for r in data.rejected} == {("flow", "flow_not_finite")}
    assert all(r["clip_id"] for r in data.rejected)  # each lost clip is named
    assert sum(s.rows for s in data.shards) == 0


def test_flow_off_stores_frames_only(corpus_dir, tmp_path):
    cfg = load_config(SMOKE, ["flow.backend=none"])
    row = _run_steps_directly(corpus_dir / "pan_right.mp4", tmp_path, cfg)
    data = collect(tmp_path, [row])
    assert data.clips and all(c.get("motion_mean") is None for c in data.clips)
    assert clip_writer.tensor_columns(cfg) == {}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_matches_isfinite(dtype: type) -> None:
    """all_finite (a bit test on float16) says what np.isfinite(x).all() says, for every special value, in
    non-contiguous views too."""
    base = np.random.default_rng(0).standard_normal((3, 40)).astype(dtype)
    base[0, :4] = [np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny, -0.0]
    assert all_finite(base) and all_finite(base[:, ::3])
    for bad in (np.inf, -np.inf, np.nan):
        x = base.copy()
        x[2, 7] = bad
        assert not all_finite(x) and not all_finite(x.T) and all_finite(x[:2])
