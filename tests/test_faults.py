"""Fault isolation: an annotator that raises, or kills its worker process, on one clip costs that clip a `rejected`
row, never the video or the run; retries and errors are recorded in _run.json and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipelines.config import ConfigError, load_config
from pipelines.faults import CrashGuard, FaultConfig, InjectedFault
from tests.conftest import SMOKE, run_pipeline
from tests.test_resume import clip_ids

# --- the crash guard's decisions, step by step --------------------------------------------------------------------


def test_crash_guard_narrows_a_death_down_to_one_clip_then_rejects_it(tmp_path: Path):
    root, batch = tmp_path / "_work", ["a", "b", "x", "c"]
    (root / "clips").mkdir(parents=True)
    fresh = CrashGuard.open(root, "k", "s1")
    assert not fresh.alone and not fresh.is_culprit("x")
    fresh.before(batch)  # ... and the worker dies annotating the batch

    second = CrashGuard.open(root, "k", "s1")  # Ray's retry: every clip of that batch now goes alone
    assert second.alone == set(batch) and not second.is_culprit("x")
    second.before(["a"])
    second.before(["x"])  # ... dies on x alone

    third = CrashGuard.open(root, "k", "s1")  # one solo death: x gets one more solo try (a lost node is not x's fault)
    assert third.alone == {"x"} and third.deaths == 1 and not third.is_culprit("x")
    third.before(["x"])  # ... dies again

    fourth = CrashGuard.open(root, "k", "s1")
    assert fourth.is_culprit("x") and not fourth.is_culprit("a")
    assert "died 2 times" in fourth.died_detail()
    fourth.clear()
    assert not CrashGuard.open(root, "k", "s1").alone


def test_crash_guard_does_not_blame_a_clip_for_a_killed_run(tmp_path: Path):
    root = tmp_path / "_work"
    (root / "clips").mkdir(parents=True)
    for _ in range(3):  # the whole pipeline killed three times while x was in flight alone
        guard = CrashGuard.open(root, "k", session=f"run{_}")
        assert not guard.is_culprit("x")
        guard.before(["x"])
    guard = CrashGuard.open(root, "k", "run-next")
    assert guard.alone == {"x"} and not guard.is_culprit("x")


def test_crash_guard_ignores_a_torn_marker(tmp_path: Path):
    root = tmp_path / "_work"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "k.inflight").write_text('{"session": "s", "cli')
    guard = CrashGuard.open(root, "k", "s")
    assert not guard.alone and guard.suspect is None


# --- the fault-injection setting ----------------------------------------------------------------------------------


def test_fault_setting_is_validated():
    assert not load_config(SMOKE).runtime.fault.active
    with pytest.raises(ConfigError, match="runtime.fault"):
        load_config(SMOKE, ["runtime.fault.mode=segfault"])
    with pytest.raises(ConfigError, match="both annotator and clip_id"):
        load_config(SMOKE, ["runtime.fault.annotator=motion"])
    fault = FaultConfig(annotator="motion", clip_id="x", mode="raise")
    fault.trigger("flow", ["x"])  # another annotator: nothing
    fault.trigger("motion", ["y"])  # another clip: nothing
    with pytest.raises(InjectedFault):
        fault.trigger("motion", ["y", "x"])


def synthetic_clip(clip_id: str, seed: int, cfg) -> dict:
    rng = np.random.default_rng(seed)
    fc = cfg.frames
    base = rng.integers(0, 255, size=(fc.height + 8, fc.width + 8, 3), dtype=np.uint8)
    frames = np.stack([base[t % 8 : t % 8 + fc.height, : fc.width] for t in range(fc.num_frames)])
    return {
        "clip_id": clip_id,
        "frames": frames,
        "frame_pts": [t / fc.fps for t in range(fc.num_frames)],
        "frame_indices": np.arange(fc.num_frames),
        "source_size": (fc.width, fc.height),
        "decoded_size": (fc.width, fc.height),
    }


def test_an_annotator_raising_on_one_clip_of_a_batch_rejects_only_that_clip():
    from pipelines.annotate import ClipAnnotators, ClipRejected

    cfg = load_config(SMOKE, ["runtime.fault.annotator=motion", "runtime.fault.clip_id=c1"])
    clips = [synthetic_clip(f"c{i}", i, cfg) for i in range(3)]
    results = ClipAnnotators(cfg).annotate(clips)
    assert isinstance(results[1], ClipRejected)
    assert (results[1].stage, results[1].reason) == ("motion", "annotator_error")
    assert results[1].detail.startswith("InjectedFault: injected fault in motion on c1")
    reference = ClipAnnotators(load_config(SMOKE)).annotate(clips)
    for i in (0, 2):  # the others are annotated exactly as without the fault
        assert not isinstance(results[i], ClipRejected)
        assert results[i]["motion_p90"] == reference[i]["motion_p90"]
        np.testing.assert_array_equal(results[i]["warped_noise"], reference[i]["warped_noise"])


# --- through the pipeline -----------------------------------------------------------------------------------------


def unshared_clip(smoke_run: Path) -> str:
    """A clip of the smoke run that no dedup decision names, so removing it changes nothing else."""
    con = duckdb.connect()
    kept = {r[0] for r in con.sql(f"SELECT clip_id FROM '{smoke_run}/clips/*.parquet'").fetchall()}
    details = [r[0] for r in con.sql(f"SELECT detail FROM '{smoke_run}/rejected/*.parquet'").fetchall()]
    return sorted(c for c in kept if not any(c in (d or "") for d in details))[0]


def rejected_rows(run_dir: Path, clip: str) -> list[tuple]:
    return duckdb.sql(
        f"SELECT stage, reason, detail FROM '{run_dir}/rejected/*.parquet' WHERE clip_id = '{clip}'"
    ).fetchall()


@pytest.mark.parametrize(
    ("mode", "stage", "reason", "detail"),
    [
        ("raise", "motion", "annotator_error", "InjectedFault: injected fault in motion"),
        ("exit", "clips", "worker_died", "the worker process died 2 times while annotating this clip alone"),
    ],
)
def test_a_clip_that_fails_its_annotator_costs_only_that_clip(
    mode, stage, reason, detail, smoke_run: Path, corpus_dir: Path, tmp_path: Path, capsys
):
    victim = unshared_clip(smoke_run)
    run_dir = tmp_path / mode
    fault = ["runtime.fault.annotator=motion", f"runtime.fault.clip_id={victim}", f"runtime.fault.mode={mode}"]
    args = ["--input", str(corpus_dir), "--output", str(run_dir)] + [a for s in fault for a in ("--set", s)]
    assert run_pipeline(*args) == 0
    assert clip_ids(run_dir) == clip_ids(smoke_run) - {victim}
    ((got_stage, got_reason, got_detail),) = rejected_rows(run_dir, victim)
    assert (got_stage, got_reason) == (stage, reason) and got_detail.startswith(detail), got_detail
    run = json.loads((run_dir / "_run.json").read_text())
    assert run["status"] == "complete"
    assert run["faults"]["errors"] == {f"{stage}/{reason}": 1}
    summary = capsys.readouterr().out
    assert f"errors: {stage}/{reason}" in summary
    if mode == "exit":  # its batch died (unless the clip was alone in it), then the clip alone twice
        assert run["faults"]["by_step"] == {"clips": {"retried": 1, "retries": run["faults"]["retries"]}}
        assert run["faults"]["retries"] in (2, 3)
        assert not list((run_dir / "_work" / "clips").glob("*.inflight"))
        assert not list((run_dir / "_work").rglob("*.attempts"))
    else:
        assert run["faults"]["retries"] == 0


def test_a_model_actor_that_dies_on_one_clip_is_restarted_and_only_that_clip_is_lost(
    corpus_dir: Path, tmp_path: Path, ray_local
):
    """The clips step of a run with a model is a pool of Ray actors (the model loads once per actor). The actor
    dying on a clip is restarted by Ray, the video retried, and the clip narrowed down and rejected."""
    pytest.importorskip("open_clip")
    from tests.test_aesthetics import random_clip, save_clip_folder, tiny_model_cfg

    clip_dir = save_clip_folder(tmp_path / "tiny-clip", random_clip(0), tiny_model_cfg())
    videos = [str(corpus_dir / name) for name in ("objects.mp4", "pan_right.mp4", "cuts.mp4")]
    sets = [f"aesthetics.model_path={clip_dir}", "aesthetics.device=cpu", "dedup.embedding_similarity=1.0"]
    base = ["--input", *videos] + [a for s in sets for a in ("--set", s)]
    assert run_pipeline(*base, "--output", str(tmp_path / "reference")) == 0
    reference = clip_ids(tmp_path / "reference")
    victim = sorted(reference)[len(reference) // 2]
    fault = ["runtime.fault.annotator=aesthetics", f"runtime.fault.clip_id={victim}", "runtime.fault.mode=exit"]
    run_dir = tmp_path / "actor_died"
    assert run_pipeline(*base, *[a for s in fault for a in ("--set", s)], "--output", str(run_dir)) == 0
    assert clip_ids(run_dir) == reference - {victim}
    ((stage, reason, _),) = rejected_rows(run_dir, victim)
    assert (stage, reason) == ("clips", "worker_died")
    run = json.loads((run_dir / "_run.json").read_text())
    assert run["throughput"]["clips"]["kind"] == "actors"
    assert run["faults"]["by_step"]["clips"]["retries"] >= 2 and run["faults"]["errors"] == {"clips/worker_died": 1}
    # One actor (the pool size for 2 CPUs), restarted by Ray under the same actor id, returned every video.
    ((actor),) = run["actors"]
    assert actor["rows"] == len(videos) and actor["devices"] == {"aesthetics": "cpu"}


@pytest.mark.parametrize(("step", "max_deaths"), [("scenes", 2), ("clips", 4)])
def test_a_video_that_keeps_killing_its_worker_is_recorded_not_retried_forever(tmp_path: Path, step, max_deaths):
    """Deaths are counted from the attempt log, per driver session: a decoder that segfaults on a file costs a few
    attempts, then a `worker_died` record, instead of every retry Ray and the retry round allow."""
    from pipelines import steps

    cfg, work = load_config(SMOKE), steps.WorkDir(tmp_path)
    make = {"scenes": steps.make_scenes_fn, "clips": steps.make_clips_fn}[step]
    row = {"source_uri": "/videos/segfaults.mp4", "key": "k" * 16}
    path = work.attempts_path(step, row["key"])
    path.parent.mkdir(parents=True)
    died = [{"at": 0, "node": "n", "pid": 1, "session": "s1"}] * max_deaths
    earlier_run = [{"at": 0, "node": "n", "pid": 1, "session": "s0"}] * 5  # a killed earlier run: not counted
    path.write_text(json.dumps({"attempts": earlier_run + died}))
    assert make(cfg, tmp_path, "s1")(row)[f"{step}_done"]
    record = work.load(step, row["key"])
    assert record["reason"] == "worker_died" and record["attempts"] == 5 + max_deaths + 1
    assert record["rejected"][0]["detail"].startswith(f"the {step} worker process died {max_deaths} times")
    assert not path.exists()
    if max_deaths > 1:  # one death fewer: the step runs (and here fails on the missing ingest record instead)
        work.record_path(step, row["key"]).unlink()
        path.write_text(json.dumps({"attempts": died[1:]}))
        make(cfg, tmp_path, "s1")(row)
        assert work.load(step, row["key"])["reason"] == f"{step}_error"
