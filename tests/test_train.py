"""The train command on the smoke run's shards: the debug model's loss falls, a resumed run repeats the
uninterrupted one step for step, two torchrun processes train data-parallel, the sampler writes a video, and bad
input is a one-line error (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from training.config import OptimConfig, load_train_config
from training.sample import camera_token
from training.sample import main as sample_main
from training.train import iter_metrics, list_checkpoints, load_checkpoint, lr_factor
from training.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
DEBUG = str(ROOT / "training" / "configs" / "debug.toml")


def _train(shards: Path, out: Path, *extra: str) -> int:
    return train_main(["--shards", str(shards), "--out", str(out), "--config", DEBUG, *extra])


@pytest.fixture(scope="module")
def trained(smoke_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "debug"
    assert _train(smoke_run, out, "--set=steps=60", "--set=checkpoint_every=30") == 0
    return out


def test_debug_model_loss_falls(trained):
    metrics = list(iter_metrics(trained))
    assert [m["step"] for m in metrics] == list(range(1, 61))
    losses = np.array([m["loss"] for m in metrics])
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.85 * losses[:10].mean(), losses
    terms = {"loss", "fm", "real", "cons", "ord", "act", "lr", "grad_norm", "data_wait_s", "step_s"}
    assert terms <= set(metrics[0])  # every loss term is logged at every step
    summary = json.loads((trained / "summary.json").read_text())
    assert 0.0 <= summary["data_wait_share"] < 1.0 and summary["loader"]["rows_skipped"] == 0
    lineage = json.loads((trained / "lineage.json").read_text())
    run_json = json.loads((Path(lineage["path"]) / "_run.json").read_text())
    assert lineage["kind"] == "run" and lineage["run_id"] == f"{run_json['config_hash']}-{run_json['inputs_hash']}"
    assert [p.name for p in list_checkpoints(trained)] == ["step_0000030.pt", "step_0000060.pt"]
    state = load_checkpoint(list_checkpoints(trained)[-1])
    assert {"model", "ema", "optimizer", "scheduler", "loader", "config", "step", "lineage"} <= set(state)


@pytest.mark.parametrize("source", ["smoke_run", "bucketed_run"])
def test_resume_repeats_the_uninterrupted_run(source, request, tmp_path):
    smoke_run = request.getfixturevalue(source)  # bucketed_run: the kill falls between batches of other shapes
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ("--set=steps=12", "--set=checkpoint_every=5", "--set=keep_checkpoints=5")
    assert _train(smoke_run, full, *args) == 0
    shutil.copytree(full, cut)
    # As if killed after step 7: the newest checkpoint is step 5, and the metrics went on to step 7.
    for ckpt in list_checkpoints(cut)[1:]:
        ckpt.unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()[:7]
    (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert _train(smoke_run, cut, *args, "--resume") == 0
    a, b = list(iter_metrics(full)), list(iter_metrics(cut))
    assert [m["step"] for m in b] == list(range(1, 13))
    assert [m["bucket"] for m in b] == [m["bucket"] for m in a]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "fm", "act", "lr"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["step"], key)
    final_a = load_checkpoint(list_checkpoints(full)[-1])
    final_b = load_checkpoint(list_checkpoints(cut)[-1])
    for name, tensor in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][name], tensor, rtol=1e-5, atol=1e-6)
    assert final_b["loader"] == final_a["loader"]


def test_sampler_writes_videos(trained, smoke_run, tmp_path):
    gif, mp4 = tmp_path / "drive.gif", tmp_path / "two.mp4"
    assert (
        sample_main(
            ["--checkpoint", str(trained), "--out", str(gif), "--driving", str(smoke_run), "--image", "--steps", "6"]
            + ["--solver", "heun"]
        )
        == 0
    )
    args = ["--checkpoint", str(trained), "--out", str(mp4), "--prompt", "a", "--prompt", "b", "--camera", "W/right"]
    assert sample_main([*args, "--steps", "4", "--scale", "2"]) == 0
    record = json.loads(gif.with_suffix(".json").read_text())
    assert record["driving"]["clip_id"] and record["image_condition"] and len(record["gate_mean"]) == 6
    assert all(0.0 <= g <= 1.0 for g in record["gate_mean"])
    frames = json.loads((trained / "config.json").read_text())  # the model's clip length comes from the data
    assert frames["model"]["size"] == "debug"
    with av.open(str(gif)) as c:
        n_gif = sum(1 for _ in c.decode(video=0))
    with av.open(str(mp4)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert n_gif == len(decoded) == 8  # the smoke preset's clip length
    assert decoded[0].shape[1] == 2 * decoded[0].shape[0]  # two samples side by side


def test_camera_token_spec():
    assert camera_token("none/none") == 0
    assert camera_token("W/right") == 1 * 9 + 1 == camera_token("W/→")
    assert camera_token("S+D/down-left") == 8 * 9 + 8
    with pytest.raises(ValueError, match="keys must be"):
        camera_token("Q/right")


def test_lr_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))


def test_bad_input_is_one_line_and_exit_2(smoke_run, trained, tmp_path, capsys):
    cases = [
        (["--shards", str(tmp_path / "nope"), "--out", str(tmp_path / "o1"), "--config", DEBUG], "neither a run"),
        (["--shards", str(smoke_run), "--out", str(trained), "--config", DEBUG], "--resume"),
        (["--shards", str(smoke_run), "--out", str(tmp_path / "o2"), "--config", DEBUG, "--set=model.nope=1"], "nope"),
        (["--shards", str(smoke_run), "--out", str(tmp_path / "o3"), "--config", DEBUG, "--set=steps=0"], "steps"),
        (
            ["--shards", str(smoke_run), "--out", str(trained), "--config", DEBUG, "--resume", "--set=optim.lr=0.5"],
            "different config",
        ),
    ]
    for argv, message in cases:
        assert train_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    assert sample_main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.mp4")]) == 2
    assert sample_main(["--checkpoint", str(trained), "--out", str(tmp_path / "x.avi"), "--steps", "1"]) == 2
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_presets_load():
    for name in ("default", "debug"):
        cfg = load_train_config(ROOT / "training" / "configs" / f"{name}.toml")
        assert cfg.steps > 0


def test_two_torchrun_processes_train_data_parallel(smoke_run, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "training.train", "--shards", str(smoke_run), "--out", str(out), "--config", DEBUG]
    cmd += ["--set=steps=6", "--set=checkpoint_every=3"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = list(iter_metrics(out))
    assert [m["step"] for m in metrics] == list(range(1, 7)) and all(np.isfinite(m["loss"]) for m in metrics)
    state = load_checkpoint(list_checkpoints(out)[-1])
    assert state["loader"]["world_size"] == 2


@pytest.mark.gpu
def test_trains_on_cuda_with_bf16_autocast(smoke_run, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "gpu"
    assert _train(smoke_run, out, "--set=steps=6", "--set=device=cuda", "--set=precision=bf16") == 0
    assert all(np.isfinite(m["loss"]) for m in iter_metrics(out))
    assert sample_main(["--checkpoint", str(out), "--out", str(tmp_path / "g.gif"), "--steps", "3"]) == 0


@pytest.fixture(scope="module")
def trained_on_buckets(bucketed_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "buckets"
    assert _train(bucketed_run, out, "--set=steps=60", "--set=checkpoint_every=60") == 0
    return out


def test_debug_model_loss_falls_over_mixed_buckets(trained_on_buckets):
    metrics = list(iter_metrics(trained_on_buckets))
    assert [m["step"] for m in metrics] == list(range(1, 61))
    shapes = {m["bucket"] for m in metrics}  # one bucket per step, several over the run
    assert len(shapes) >= 2 and len({tuple(map(int, s.split("x"))) for s in shapes}) == len(shapes)
    losses = np.array([m["loss"] for m in metrics])
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.9 * losses[:10].mean(), losses
    state = load_checkpoint(list_checkpoints(trained_on_buckets)[-1])
    assert shapes <= set(state["latent_shapes"]) and state["latent_shape"] == next(
        iter(state["latent_shapes"].values())
    )
    for name, (c, t, h, w) in state["latent_shapes"].items():
        frames, height, width = map(int, name.split("x"))
        assert (c, t, h, w) == (3, frames, height // 8, width // 8)  # pixel space on the warped-noise grid


def test_sampler_takes_any_trained_bucket(trained_on_buckets, bucketed_run, tmp_path):
    shapes = load_checkpoint(list_checkpoints(trained_on_buckets)[-1])["latent_shapes"]
    name, (_, frames, h, w) = list(shapes.items())[-1]  # not the default (the most frequent) one
    out = tmp_path / "b.mp4"
    base = ["--checkpoint", str(trained_on_buckets), "--steps", "2", "--scale", "1"]
    assert sample_main([*base, "--out", str(out), "--bucket", name, "--camera", "W/right"]) == 0
    with av.open(str(out)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == frames and decoded[0].shape[:2] == (h + h % 2, w + w % 2)  # mp4 pads odd sides
    drive = tmp_path / "d.gif"
    assert sample_main([*base, "--out", str(drive), "--driving", str(bucketed_run), "--image"]) == 0
    record = json.loads(drive.with_suffix(".json").read_text())
    assert record["driving"]["clip_id"]
    assert sample_main([*base, "--out", str(tmp_path / "x.mp4"), "--bucket", "3x16x16"]) == 2


def test_a_bucket_the_patch_cannot_divide_stops_before_training(bucketed_run, tmp_path, capsys):
    out = tmp_path / "bad"
    assert _train(bucketed_run, out, "--set=model.patch=[1,3,3]") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bucket " in err and "not divisible by the patch (1, 3, 3)" in err, err
    assert not list_checkpoints(out) and not (out / "metrics.jsonl").exists()
