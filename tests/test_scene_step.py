"""The scenes step on real files without Ray: one decode per video (kept frames equal decoded ones), the buffer's
bounds, the hybrid detector frame-exact on the corpus's boundary videos, and a video with no shot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import curation.decode
import pipelines.clip_writer
from curation.frame_cache import FrameBuffer, write_frames
from curation.ids import uri_key
from pipelines import steps
from pipelines.config import load_config
from pipelines.samples import load_truth
from tests.conftest import SMOKE

BOUNDARY_VIDEOS = [
    "cuts.mp4",
    "dissolve.avi",
    "cut_from_black.webm",
    "fade_exact.avi",
    "whip_pan.mp4",
    "fast_object.webm",
]


def run_video(path: Path, out: Path, sets: list[str], keep_frames: bool = True) -> tuple[dict, dict]:
    """Ingest, scenes and clips of one video, as the DAG runs them; (scenes record, clips record)."""
    cfg = load_config(SMOKE, sets)
    row = {"source_uri": str(path), "key": uri_key(str(path))}
    steps.make_ingest_fn(cfg, out)(row)
    steps.make_scenes_fn(cfg, out, keep_frames=keep_frames)(row)
    steps.make_clips_fn(cfg, out)(row)
    work = steps.WorkDir(out)
    return work.load("scenes", row["key"]), work.load("clips", row["key"])


@pytest.fixture
def decoder_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call that opens a decoder over a video, wherever the steps make it."""
    opened: list[str] = []
    real = curation.decode.iter_frames

    def counting(path: str, *args, **kwargs):  # noqa: ANN002, ANN003
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(steps, "iter_frames", counting)
    monkeypatch.setattr(pipelines.clip_writer, "iter_frames", counting)
    return opened


def shard_frames(run_dir: Path) -> list[bytes]:
    frames: list[bytes] = []
    for f in sorted((run_dir / "shards").rglob("*.parquet")):
        frames += [bytes(b) for b in pq.read_table(f, columns=["frames"]).column("frames").to_pylist()]
    return frames


@pytest.mark.parametrize("sets", [[], ["frames.width=320", "frames.height=176"]], ids=["detect-larger", "clip-larger"])
def test_one_decode_per_video_and_the_same_pixels(corpus_dir: Path, tmp_path: Path, decoder_opens: list, sets) -> None:
    video = corpus_dir / "cuts.mp4"
    scenes, clips = run_video(video, tmp_path / "one", sets)
    assert decoder_opens == [str(video)]  # opened once, by the scenes step
    assert clips["frames_from"] == "scenes" and len(clips["clips"]) == 4
    assert not steps.WorkDir(tmp_path / "one").frames_path(uri_key(str(video))).exists()  # used, then removed
    decoder_opens.clear()
    _, again = run_video(video, tmp_path / "two", sets, keep_frames=False)
    assert decoder_opens == [str(video), str(video)] and again["frames_from"] == "decoder"
    kept, decoded = shard_frames(tmp_path / "one"), shard_frames(tmp_path / "two")
    assert len(kept) == 4 and kept == decoded  # bit for bit: the clips do not depend on which path served them


def test_a_full_buffer_falls_back_to_decoding(corpus_dir: Path, tmp_path: Path, decoder_opens: list) -> None:
    video = corpus_dir / "fade.avi"
    sets = ["scenes.frame_buffer_mb=0", "scenes.frame_spill_mb=0"]
    scenes, clips = run_video(video, tmp_path / "run", sets)
    assert scenes["frames_cache"] is None and clips["frames_from"] == "decoder"
    assert len(decoder_opens) == 2 and len(clips["clips"]) == 2  # nothing lost, only decoded twice


def test_frame_buffer_spills_to_disk_and_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = {i: rng.integers(0, 255, (16, 24, 3), dtype=np.uint8) for i in range(40)}
    frame_mb = 16 * 24 * 3 / (1 << 20)
    buffer = FrameBuffer(ram_mb=0, spill_mb=1, spill_dir=str(tmp_path))
    for i, f in frames.items():
        buffer.add(i, f)
    assert not buffer.memory and len(buffer.spilled) == 40 and list(tmp_path.glob("*.spill"))
    assert write_frames(buffer, [3, 17, 39], tmp_path / "out.npy")
    assert np.array_equal(np.load(tmp_path / "out.npy"), np.stack([frames[3], frames[17], frames[39]]))
    buffer.close()
    assert not list(tmp_path.glob("*.spill"))  # the spill file goes with the buffer
    small = FrameBuffer(ram_mb=0, spill_mb=0)
    small.add(0, frames[0])
    assert small.overflowed and not write_frames(small, [0], tmp_path / "none.npy") and frame_mb > 0


def test_hybrid_shots_are_frame_exact_on_the_boundary_videos(corpus_dir: Path, tmp_path: Path) -> None:
    """TransNetV2 (the real weights) for the cuts, our detectors for black stretches, fades and the dissolve; fast
    motion (a whip pan, objects crossing the frame) is no cut."""
    cfg = load_config(SMOKE, ["scenes.detector=hybrid"])
    for name in BOUNDARY_VIDEOS:
        path = corpus_dir / name
        row = {"source_uri": str(path), "key": uri_key(str(path))}
        steps.make_ingest_fn(cfg, tmp_path)(row)
        steps.make_scenes_fn(cfg, tmp_path)(row)
        record = steps.WorkDir(tmp_path).load("scenes", row["key"])
        truth = load_truth(path)
        found = [(s["start_frame"], s["end_frame"]) for s in record["scenes"]]
        assert found == [(s["start"], s["end"]) for s in truth["shots"]], (name, found)
        ends = {g["end"]: "fade" for g in truth["fades"]} | {g["end"]: "dissolve" for g in truth.get("dissolves", [])}
        assert [s["transition"] for s in record["scenes"][1:]] == [ends.get(a, "cut") for a, _ in found[1:]], name


def test_a_video_of_flat_frames_gives_no_clips_and_says_why(corpus_dir: Path, tmp_path: Path) -> None:
    scenes, clips = run_video(corpus_dir / "flat.webm", tmp_path, [])
    assert scenes["scenes"] == [] and scenes["spans"] == [] and clips["clips"] == []
    assert [r["reason"] for r in scenes["rejected"]] == ["no_shots"]
    assert "flat" in scenes["rejected"][0]["detail"]


def test_hybrid_reproduces_a_hand_labelled_real_clip(tmp_path: Path) -> None:
    """nasa_13013.mp4 (torchcodec's test media), labelled by hand in tests/data/shot_labels.json: a 29-frame
    cross-dissolve [150, 179) and a hard cut at 240. The real TransNetV2 weights find the cut on its exact frame."""
    import json

    from curation.metrics import match_boundaries, shot_boundaries, truth_boundaries
    from tests.conftest import SHARED_MEDIA

    labels = {
        v["path"]: v for v in json.loads((Path(__file__).parent / "data" / "shot_labels.json").read_text())["videos"]
    }
    label = labels["videos/torchcodec_resources/nasa_13013.mp4"]
    path = SHARED_MEDIA / label["path"]
    if not path.exists():
        pytest.skip("../shared/media is absent")
    cfg = load_config(SMOKE, ["scenes.detector=hybrid"])
    row = {"source_uri": str(path), "key": uri_key(str(path))}
    steps.make_ingest_fn(cfg, tmp_path)(row)
    steps.make_scenes_fn(cfg, tmp_path)(row)
    record = steps.WorkDir(tmp_path).load("scenes", row["key"])
    shots = [(s["start_frame"], s["end_frame"]) for s in record["scenes"]]
    truth = truth_boundaries(label["n_frames"], label["cuts"], [(g["start"], g["end"]) for g in label["gradual"]])
    match = match_boundaries(shot_boundaries(record["n_decoded"], shots), truth, tolerance=1)
    assert match.f1 == 1.0 and match.exact == len(truth) == 2, (shots, truth)
    assert [s["transition"] for s in record["scenes"]] == ["start", "dissolve", "cut"]


def test_finalize_removes_kept_frames_of_finished_clips_only(tmp_path: Path) -> None:
    from pipelines.finalize import remove_used_frames

    work = steps.WorkDir(tmp_path)
    done, waiting = work.frames_path("a" * 16), work.frames_path("b" * 16)
    done.parent.mkdir(parents=True)
    np.save(done, np.zeros((1, 2, 2, 3), np.uint8))
    np.save(waiting, np.zeros((1, 2, 2, 3), np.uint8))
    work.save("clips", "a" * 16, {"clips": []})  # a clips step that committed but did not get to delete its frames
    assert remove_used_frames(tmp_path) == 1
    assert not done.exists() and waiting.exists()
