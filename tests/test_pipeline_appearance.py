"""Appearance end to end: classical quality and key-frame hashes on every clip, honest nulls without weights, the
corpus's near-duplicates removed against its truth, score filters re-selected from recorded scores, and tiny random
open_clip / LLaVA models loaded through the pipeline's own loading code."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from curation.duck import connect
from curation.shards import iter_clips, read_manifest
from pipelines.samples import load_truth
from tests.conftest import run_pipeline


def table(run_dir: Path, name: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / name / f"{name}.parquet").to_pylist()


def family(uri: str) -> str:
    """The corpus video a file copies (itself when it is no copy)."""
    truth = load_truth(uri)
    return truth.get("duplicate_of", truth["name"])


def test_quality_columns_and_null_model_columns(smoke_run: Path):
    clips = table(smoke_run, "clips")
    assert clips
    for clip in clips:
        for column in ("sharpness", "brightness", "contrast", "colorfulness", "clipped_dark", "clipped_bright"):
            assert isinstance(clip[column], float) and np.isfinite(clip[column]), column
        assert 0 <= clip["brightness"] <= 1 and 0 <= clip["contrast"] <= 1
        assert len(clip["key_frame_hashes"]) == 3
        # No weights configured: the stage says "none" and leaves the scores null (never a made-up value).
        assert clip["aesthetic_score"] is None and clip["aesthetic_backend"] == "none"
        assert clip["caption"] is None and clip["caption_model"] == "none"
    appearance = read_manifest(smoke_run)["appearance"]
    assert appearance["aesthetics"]["model_path"] == "none" and appearance["captions"]["model_path"] == "none"
    assert "clip_embedding" not in read_manifest(smoke_run)["tensors"]


def test_dedup_removes_the_corpus_copies(smoke_run: Path):
    """Every dropped clip duplicates a kept clip of its own family (precision), and no two clips of one family
    that overlap in time both survive (recall); the better copy is the one kept."""
    clips = {c["clip_id"]: c for c in table(smoke_run, "clips")}
    dropped = [r for r in table(smoke_run, "rejected") if r["stage"] == "dedup"]
    assert dropped and all(r["reason"] == "duplicate" for r in dropped)
    kept_of = {}
    for row in dropped:
        kept_id = row["detail"].split(" ", 1)[0]
        assert kept_id in clips, row["detail"]  # the keeper is curated
        kept = clips[kept_id]
        assert family(row["source_uri"]) == family(kept["source_uri"]), row["detail"]
        # Copies keep the source's timing: a true pair overlaps in time (different shots of `cuts` never pair).
        start = max(kept["start_frame"], row["start_frame"])
        assert start < min(kept["end_frame"], row["end_frame"]), row["detail"]
        kept_of[Path(row["source_uri"]).stem] = Path(clips[kept_id]["source_uri"]).stem
    by_family = defaultdict(list)
    for clip in clips.values():
        by_family[family(clip["source_uri"])].append(clip)
    for name, members in by_family.items():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if a["source_uri"] != b["source_uri"]:
                    overlap = min(a["end_s"], b["end_s"]) - max(a["start_s"], b["start_s"])
                    assert overlap <= 0, f"{name}: {a['source_uri']} and {b['source_uri']} both kept"
    # Copies the truth knows about are all caught; the keeper is the larger / sharper / full-length one.
    assert {"pan_right_small", "blurry", "cuts_cropped"} <= set(kept_of)
    assert kept_of["pan_right_small"] == "pan_right" and kept_of["blurry"] == "sharp_twin"
    assert kept_of["cuts_cropped"] == "cuts"
    curation = read_manifest(smoke_run)["curation"]
    assert curation["dedup"]["excluded"] == len(dropped)
    assert curation["clips_before"] - curation["clips_after"] == len(dropped)


def test_dropped_clips_leave_every_reader(smoke_run: Path):
    dropped = {r["clip_id"] for r in table(smoke_run, "rejected") if r["stage"] == "dedup"}
    streamed = {r["clip_id"] for r in iter_clips(smoke_run, columns=["clip_id"])}
    in_view = {r[0] for r in connect(smoke_run).sql("SELECT clip_id FROM shards").fetchall()}
    assert dropped and not dropped & streamed and not dropped & in_view
    assert streamed == in_view == {c["clip_id"] for c in table(smoke_run, "clips")}


@pytest.fixture
def run_copy(smoke_run: Path, tmp_path: Path) -> Path:
    """A private copy of the smoke run (tests here rerun it with other finalize-only settings)."""
    target = tmp_path / "smoke_copy"
    shutil.copytree(smoke_run, target)
    return target


def test_filters_reselect_from_recorded_scores(run_copy: Path, corpus_dir: Path, ray_local):
    clips = table(run_copy, "clips")
    cutoff = float(np.median([c["sharpness"] for c in clips]))
    args = ["--input", str(corpus_dir), "--output", str(run_copy)]
    assert run_pipeline(*args, "--set", f"filters.min.sharpness={cutoff}", "--set", "dedup.enabled=false") == 0
    low = [r for r in table(run_copy, "rejected") if r["stage"] == "filters"]
    kept = table(run_copy, "clips")
    assert low and all(r["reason"] == "low_sharpness" and "filters.min.sharpness" in r["detail"] for r in low)
    assert all(c["sharpness"] >= cutoff for c in kept)
    assert not [r for r in table(run_copy, "rejected") if r["stage"] == "dedup"]  # dedup off this time
    assert {r["clip_id"] for r in low} | {c["clip_id"] for c in kept} >= {c["clip_id"] for c in clips}
    assert {r["clip_id"] for r in iter_clips(run_copy, columns=["clip_id"])} == {c["clip_id"] for c in kept}
    manifest = read_manifest(run_copy)
    assert manifest["curation"]["filters"]["excluded"] == len(low) and "dedup" not in manifest["curation"]
    # Back to the original settings: the same clips as the first run, nothing recomputed.
    before = {p: p.stat().st_mtime_ns for p in (run_copy / "shards").glob("*.parquet")}
    assert run_pipeline(*args) == 0
    assert {c["clip_id"] for c in table(run_copy, "clips")} == {c["clip_id"] for c in clips}
    assert before == {p: p.stat().st_mtime_ns for p in (run_copy / "shards").glob("*.parquet")}


def test_filter_on_a_score_that_is_never_computed_is_refused(tmp_path: Path, capsys):
    args = ["--input", str(tmp_path), "--output", str(tmp_path / "run"), "--set", "filters.min.aesthetic_score=5"]
    assert run_pipeline(*args) == 2
    assert "aesthetics.head_path" in capsys.readouterr().err


# --- tiny random models through the pipeline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random open_clip folder + LAION-layout head, and a tiny random LLaVA, saved like real weights."""
    torch = pytest.importorskip("torch")

    from tests.test_aesthetics import random_clip, random_head, save_clip_folder, state_dict, tiny_model_cfg
    from tests.test_captions import save_tiny_llava

    root = tmp_path_factory.mktemp("models")
    clip_dir = save_clip_folder(root / "tiny-clip", random_clip(0), tiny_model_cfg())
    head = root / "tiny-head.pth"
    torch.save(state_dict(random_head(1)), head)
    llava = save_tiny_llava(root / "tiny-llava")
    return {"clip": clip_dir, "head": head, "llava": llava}


def test_tiny_models_run_through_the_pipeline(tiny_models: dict[str, Path], corpus_dir: Path, tmp_path, ray_local):
    videos = [str(corpus_dir / "objects.mp4"), str(corpus_dir / "pan_right.mp4")]
    run_dir = tmp_path / "models"
    settings = [
        f"aesthetics.model_path={tiny_models['clip']}",
        f"aesthetics.head_path={tiny_models['head']}",
        "aesthetics.device=cpu",
        f"captions.model_path={tiny_models['llava']}",
        "captions.device=cpu",
        "captions.max_new_tokens=6",
        "captions.prompt_version=test-v1",
        "dedup.embedding_similarity=1.0",  # a random model's embeddings say nothing about content
    ]
    overrides = [a for s in settings for a in ("--set", s)]
    assert run_pipeline("--input", *videos, "--output", str(run_dir), *overrides) == 0
    clips = table(run_dir, "clips")
    assert len(clips) >= 2 and not [r for r in table(run_dir, "rejected") if r["clip_id"]]
    for clip in clips:
        assert isinstance(clip["aesthetic_score"], float) and np.isfinite(clip["aesthetic_score"])
        assert clip["aesthetic_backend"] == "open_clip:tiny-clip+tiny-head"
        assert isinstance(clip["caption"], str) and clip["caption"]
        assert clip["caption_model"] == "tiny-llava" and clip["caption_prompt_version"] == "test-v1"
        assert clip["caption_truncated"] is True  # 6 tokens of a random model never reach end-of-sequence
    rows = list(iter_clips(run_dir, columns=["clip_id", "clip_embedding", "caption", "aesthetic_score"]))
    assert len(rows) == len(clips)
    for row in rows:
        emb = row["clip_embedding"]
        assert emb.shape == (16,) and emb.dtype == np.float16
        assert np.linalg.norm(emb.astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
    manifest = read_manifest(run_dir)
    assert manifest["tensors"]["clip_embedding"]["shape"] == [16]
    assert manifest["curation"]["dedup"]["embedding_dim"] == 16
    assert manifest["appearance"]["captions"]["prompt_version"] == "test-v1"


def test_corrupt_weights_stop_the_run_up_front(tiny_models: dict[str, Path], corpus_dir: Path, tmp_path, capsys):
    folder = tmp_path / "clip"
    shutil.copytree(tiny_models["clip"], folder)
    (folder / "open_clip_model.safetensors").write_bytes(b"not a safetensors file" * 10)
    args = ["--input", str(corpus_dir / "objects.mp4"), "--output", str(tmp_path / "run")]
    assert run_pipeline(*args, "--set", f"aesthetics.model_path={folder}") == 2
    err = capsys.readouterr().err.strip()
    assert "aesthetics.model_path" in err and "unreadable" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "_work" / "ingest").exists()  # nothing was started


def test_weights_that_fail_in_the_workers_stop_the_run_and_resume(
    tiny_models: dict[str, Path], corpus_dir: Path, tmp_path, capsys, ray_local
):
    """Readable files of the wrong model: the preflight passes, loading fails in the actor; the run stops with the
    loader's message and records no video as done, so the rerun after the fix processes everything."""
    from safetensors.numpy import save_file

    folder = tmp_path / "clip"
    shutil.copytree(tiny_models["clip"], folder)
    save_file({"unrelated": np.zeros(3, np.float32)}, str(folder / "open_clip_model.safetensors"))
    args = ["--input", str(corpus_dir / "objects.mp4"), "--output", str(tmp_path / "run")]
    args += ["--set", f"aesthetics.model_path={folder}", "--set", "aesthetics.device=cpu"]
    assert run_pipeline(*args) == 2
    err = capsys.readouterr().err
    assert "aesthetics.model_path: cannot load open_clip model" in err and "rerun" in err
    assert not list((tmp_path / "run" / "_work").glob("clips/*.json"))
    shutil.copy(tiny_models["clip"] / "open_clip_model.safetensors", folder / "open_clip_model.safetensors")
    assert run_pipeline(*args) == 0
    clips = table(tmp_path / "run", "clips")
    assert clips and all(c["aesthetic_backend"] == "none" for c in clips)  # no head: embeddings only
    rows = list(iter_clips(tmp_path / "run", columns=["clip_embedding"]))
    assert len(rows) == len(clips) and all(r["clip_embedding"].shape == (16,) for r in rows)
