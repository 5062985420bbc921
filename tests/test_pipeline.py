"""End-to-end: the sample corpus through `pipelines.run`, checked against the corpus's ground truth."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest

from curation.decode import iter_frames, probe_video
from curation.metrics import match_frames
from curation.sampling import FramesConfig, decode_size, fit_to_target
from curation.scenes import detection_size
from curation.shards import iter_clips, read_manifest
from pipelines.config import load_config
from pipelines.samples import load_truth
from tests.conftest import SMOKE, run_pipeline


def table(run_dir: Path, name: str) -> list[dict]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{run_dir}/{name}/*.parquet')").to_arrow_table().to_pylist()


def videos_in(corpus_dir: Path) -> list[Path]:
    return sorted(p for p in corpus_dir.iterdir() if p.suffix in (".mp4", ".avi", ".webm", ".mkv", ".mov"))


def test_every_input_is_accounted_for(smoke_run, corpus_dir):
    videos = table(smoke_run, "videos")
    assert sorted(v["source_uri"] for v in videos) == sorted(str(p) for p in videos_in(corpus_dir))
    assert all(v["error"] is None for v in videos), [v for v in videos if v["error"]]
    clips, rejected = table(smoke_run, "clips"), table(smoke_run, "rejected")
    with_output = {c["video_id"] for c in clips} | {r["video_id"] for r in rejected}
    assert {v["video_id"] for v in videos} <= with_output
    assert len({c["clip_id"] for c in clips}) == len(clips) >= 15


def test_av1_falls_back_to_pyav(smoke_run):
    for video in table(smoke_run, "videos"):
        codec = load_truth(video["source_uri"])["codec"]
        if codec == "av1":  # decord has no AV1 decoder
            assert video["decoder"] == "pyav"
        elif codec == "h264":
            assert video["decoder"] == "decord"


def test_scene_cuts_match_truth(smoke_run, corpus_dir):
    scenes = table(smoke_run, "scenes")
    predicted_all, truth_all = 0, 0
    for video in videos_in(corpus_dir):
        truth = load_truth(video)
        rows = sorted((s for s in scenes if s["source_uri"] == str(video)), key=lambda s: s["start_frame"])
        cuts = [s["start_frame"] for s in rows if s["transition"] == "cut"]
        match = match_frames(cuts, truth["cuts"], tolerance=1)
        assert match.precision == 1.0 and match.recall == 1.0, (video.name, cuts, truth["cuts"])
        predicted_all += len(cuts)
        truth_all += len(truth["cuts"])
    assert truth_all >= 3 and predicted_all == truth_all


def test_shots_match_truth_to_the_frame(smoke_run, corpus_dir):
    """Every shot of the corpus, with the exact frames where fades, black stretches and dissolves end it and begin
    the next one; a video of flat frames only has no shot."""
    scenes = table(smoke_run, "scenes")
    exact = 0
    for video in videos_in(corpus_dir):
        truth = load_truth(video)
        rows = sorted((s for s in scenes if s["source_uri"] == str(video)), key=lambda s: s["start_frame"])
        found = [(s["start_frame"], s["end_frame"]) for s in rows]
        expected = [(s["start"], s["end"]) for s in truth["shots"]]
        assert found == expected, (video.name, found, expected)
        kinds = {g["end"]: "fade" for g in truth["fades"]} | {g["end"]: "dissolve" for g in truth.get("dissolves", [])}
        for row in rows[1:]:
            assert row["transition"] == kinds.get(row["start_frame"], "cut"), (video.name, row)
        exact += len(expected)
    assert exact >= 40


def test_clips_never_cross_a_cut(smoke_run, corpus_dir):
    for clip in table(smoke_run, "clips"):
        truth = load_truth(clip["source_uri"])
        for cut in truth["cuts"]:
            assert not clip["start_frame"] < cut < clip["end_frame"], (clip, cut)
        for gradual in truth["fades"] + truth.get("dissolves", []):
            assert clip["end_frame"] <= gradual["start"] or clip["start_frame"] >= gradual["end"], (clip, gradual)


def test_shards_hold_frame_exact_clips(smoke_run):
    cfg = load_config(SMOKE).frames
    manifest = read_manifest(smoke_run)
    clips = {c["clip_id"]: c for c in table(smoke_run, "clips")}
    seen = 0
    for row in iter_clips(smoke_run):
        assert row["frames"].shape == (cfg.num_frames, cfg.height, cfg.width, 3) and row["frames"].dtype == np.uint8
        clip = clips[row["clip_id"]]
        assert clip["start_frame"] <= row["frame_indices"].min() and row["frame_indices"].max() < clip["end_frame"]
        assert np.all(np.diff(row["frame_indices"]) == clip["frame_stride"])
        seen += 1
    assert seen == len(clips) == manifest["curation"]["clips_after"]
    # Clips a global stage dropped (dedup of the corpus's copies) keep their shard rows but are not streamed.
    assert manifest["rows"] == manifest["curation"]["clips_before"] > seen
    # Decode one clip again independently and compare pixel for pixel.
    row = next(r for r in iter_clips(smoke_run) if r["source_uri"].endswith(".mp4"))
    assert np.array_equal(row["frames"], _decode(row["source_uri"], row["frame_indices"], cfg))


def _decode(uri: str, indices: np.ndarray, cfg: FramesConfig) -> np.ndarray:
    """The clip's frames decoded again on their own: at the scenes step's scan size (here the detection size, 256
    px wide, larger than the 64 px clips), area-averaged to the clips' decode size, then cropped to the target."""
    info = probe_video(uri)
    scan = detection_size(info.width, info.height, load_config(SMOKE).scenes.detect_width)
    size = decode_size(info.width, info.height, cfg)
    assert scan[0] > size[0]
    frames = iter_frames(uri, info, size=scan, indices=list(indices))
    return np.stack([fit_to_target(cv2.resize(f, size, interpolation=cv2.INTER_AREA), cfg) for _, _, f in frames])


def test_run_json_and_manifest_record_provenance(smoke_run):
    run = json.loads((smoke_run / "_run.json").read_text())
    curated = read_manifest(smoke_run)["curation"]["clips_after"]
    assert run["status"] == "complete" and run["counts"]["clips"] == curated
    assert run["config"]["frames"]["width"] == 64 and run["versions"]["pyarrow"]
    annotators = {f"clips/{name}" for name in ("flow", "motion", "warped_noise", "camera", "events", "quality")}
    annotators |= {"clips/aesthetics", "clips/captions"}  # they run and record backend "none" without weights
    assert set(run["worker_seconds"]) == {"ingest", "scenes", "clips", *annotators}
    assert read_manifest(smoke_run)["config_hash"] == run["config_hash"]


def test_rerun_of_finished_run_is_a_noop(smoke_run, corpus_dir, caplog):
    before = {p: p.stat().st_mtime_ns for p in smoke_run.rglob("*.parquet")}
    with caplog.at_level(logging.INFO):
        assert run_pipeline("--input", str(corpus_dir), "--output", str(smoke_run)) == 0
    assert "nothing to do" in caplog.text
    assert before == {p: p.stat().st_mtime_ns for p in smoke_run.rglob("*.parquet")}


def test_changed_config_on_existing_run_is_refused(smoke_run, corpus_dir, capsys):
    assert run_pipeline("--input", str(corpus_dir), "--output", str(smoke_run), "--set", "frames.width=32") == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/nonexistent/videos"], "no such file"),
        (["--output", "/proc/forbidden/run"], "not writable"),
        (["--set", "scenes.bogus=1"], "unknown config key scenes.bogus"),
        (["--set", "frames.fps=-1"], "fps > 0"),
        (["--set", "flow.backend=raft_small", "--set", "flow.weights=/nonexistent/raft.pth"], "weights file not found"),
        (["--set", "flow.backend=raft_small"], "flow.weights"),
        (["--set", "frames.num_frames=1"], "frames.num_frames >= 2"),
        (["--set", "frames.width=60"], "multiples of noise.factor=8"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    full = ["--input", str(tmp_path), "--output", str(tmp_path / "run"), *args]
    assert run_pipeline(*full) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_stage_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        run_pipeline("--stage", "nope")
    assert exc.value.code == 2


def test_single_stages_give_the_same_clips_as_all(smoke_run, corpus_dir, tmp_path, ray_local, caplog):
    # Dedup is global: keep the corpus's near-duplicate families (copies and their sources) out of the subset.
    truths = {str(p): load_truth(p) for p in videos_in(corpus_dir)}
    families = {t["duplicate_of"] for t in truths.values() if "duplicate_of" in t}
    subset = [uri for uri, t in truths.items() if "duplicate_of" not in t and t["name"] not in families][:4]
    run_dir = tmp_path / "staged"
    for stage in ("ingest", "scenes", "clips"):
        # finalize reads the records in 2 processes here (spawned from the Ray driver): the same clips
        workers = ("--set", "runtime.collect_workers=2")
        with caplog.at_level(logging.INFO, logger="pipelines.collect"):
            assert run_pipeline("--stage", stage, "--input", *subset, "--output", str(run_dir), *workers) == 0
    assert "collect: 4 inputs in 4 segments, 2 processes" in caplog.text
    staged = {c["clip_id"] for c in table(run_dir, "clips")}
    expected = {c["clip_id"] for c in table(smoke_run, "clips") if c["source_uri"] in subset}
    assert staged == expected and staged


def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(20):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_bad_inputs_are_rejected_with_reasons_and_the_run_goes_on(corpus_dir, tmp_path, ray_local):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = corpus_dir / "cuts.mp4"
    (bad / "good.mp4").write_bytes(good.read_bytes())
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "noise.mkv").write_bytes(np.random.default_rng(0).bytes(50_000))
    (bad / "text.avi").write_text("this is not a video\n" * 100)
    (bad / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _audio_only(bad / "audio_only.mp4")
    run_dir = tmp_path / "run"
    assert run_pipeline("--input", str(bad), "--output", str(run_dir)) == 0
    videos = {Path(v["source_uri"]).name: v for v in table(run_dir, "videos")}
    assert set(videos) == {"good.mp4", "empty.mp4", "noise.mkv", "text.avi", "truncated.mp4", "audio_only.mp4"}
    reasons = {Path(r["source_uri"]).name: r["reason"] for r in table(run_dir, "rejected") if r["stage"] == "ingest"}
    assert reasons["empty.mp4"] == "empty_file"
    assert reasons["audio_only.mp4"] == "no_video_stream"
    assert {"noise.mkv", "text.avi"} <= set(reasons)
    clips = table(run_dir, "clips")
    assert {Path(c["source_uri"]).name for c in clips} >= {"good.mp4"}
    truncated = [c for c in clips if c["source_uri"].endswith("truncated.mp4")]
    assert "truncated.mp4" in reasons or truncated  # either rejected with a reason or cut from the frames it has
    for name in videos:
        assert name in reasons or any(c["source_uri"].endswith(name) for c in clips), name
