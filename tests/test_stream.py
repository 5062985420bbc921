"""Streaming inference of causal checkpoints (training/stream.py) and its benchmark (bench/stream.py), CPU, tiny."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from annotators import qcm
from training.causal import rollout
from training.config import TrainConfig
from training.data import DataConfig
from training.model import ModelConfig, build_model
from training.stream import (
    STEP_TRANSLATION_STD,
    command_name,
    command_pose,
    load_camera_script,
    main,
    parse_args,
    parse_command,
    prepare,
    script_rays,
    stream,
)
from training.text import TextConfig
from training.train import UsageError

ROOT = Path(__file__).resolve().parents[1]
TEXT = TextConfig(dim=32, layers=1, heads=2, max_length=64)


def write_checkpoint(
    out: Path,
    *,
    causal: bool = True,
    window: int = 3,
    channels: int = 3,
    shape: tuple[int, int, int] = (4, 8, 8),
    camera_rays: bool = False,
    space: str = "pixel",
    vae_hash: str = "",
    lineage: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A training output dir with one checkpoint in train.py's format: a tiny model, every weight perturbed (so the
    zero-initialised output layer does not make every frame equal to its noise), EMA None."""
    model_cfg = ModelConfig(
        size="debug",
        causal=causal,
        window=window if causal else 0,
        camera_rays=camera_rays,
        in_channels=channels,
        event_head=False,
        event_injection=False,
        text=dataclasses.replace(TEXT, kind="byte"),
    )
    data_cfg = DataConfig(space=space, latent_channels=channels, vae_hash=vae_hash, text_embeddings=False)
    cfg = TrainConfig(model=model_cfg, data=data_cfg, device="cpu")
    torch.manual_seed(seed)
    model, text_encoder = build_model(model_cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    t, h, w = shape
    state = {
        "step": 1,
        "model": model.state_dict(),
        "text_encoder": text_encoder.state_dict(),
        "ema": None,
        "config": cfg.to_dict(),
        "latent_shape": [channels, t, h, w],
        "latent_shapes": {f"{t}x{h}x{w}": [channels, t, h, w]},
        "space": {"kind": space, "channels": channels, "vae": None, "text_encoder": None},
        "lineage": lineage,
    }
    path = out / "checkpoints" / "step_0000001.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return out


def write_image(path: Path, h: int = 24, w: int = 40) -> Path:
    import cv2

    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
    cv2.imwrite(str(path), img[..., ::-1])
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image(tmp_path_factory.mktemp("img") / "first.png")


# -- camera scripts ---------------------------------------------------------------------------------------------------


def test_commands_map_to_qcm_tokens() -> None:
    assert parse_command("none") == 0
    assert parse_command("W") == qcm.token_of("W", "none")
    assert parse_command("w+RIGHT") == parse_command("W/right") == qcm.token_of("W", "→")
    assert parse_command("a+w+up-left") == qcm.token_of("W+A", "↑←")
    assert parse_command("S+D+↓→") == parse_command("s+d+down+right") == qcm.token_of("S+D", "↓→")
    assert command_name(qcm.token_of("W+A", "↑→")) == "W+A+up-right"
    assert command_name(0) == "none" and command_name(qcm.token_of("none", "←")) == "left"
    for token in range(qcm.NUM_TOKENS):  # the canonical name parses back
        assert parse_command(command_name(token)) == token
    for bad in ("W+S", "left+right", "jump", "W++A", "up-down"):
        with pytest.raises(ValueError):
            parse_command(bad)


def test_command_poses_quantise_back_to_their_tokens() -> None:
    """The poses given to the ray embedding move the way the QCM quantiser reads the command."""
    tokens = list(range(qcm.NUM_TOKENS))
    c2w = [np.eye(4)]
    for t in tokens:
        c2w.append(c2w[-1] @ command_pose(t))
    got = qcm.quantize_steps(np.stack(c2w), None, None, 1, qcm.QCMConfig())
    assert got.tolist() == tokens


def test_text_script_comments_repeats_and_padding(tmp_path: Path) -> None:
    f = tmp_path / "cam.txt"
    f.write_text("# a walk\nW * 2\n\nw+right   # turn while walking\nNONE\n")
    script = load_camera_script(f)
    assert script.labels == ("W", "W", "W+right", "none")
    assert script.tokens == (9, 9, 10, 0)
    assert script.poses.shape == (4, 4, 4)
    longer = script.steps(6)
    assert longer.labels[-3:] == ("none", "none", "none") and longer.poses.shape == (6, 4, 4)
    assert script.steps(2).tokens == (9, 9)


def test_json_scripts(tmp_path: Path) -> None:
    f = tmp_path / "cam.json"
    f.write_text(json.dumps(["D", "left"]))
    assert load_camera_script(f).labels == ("D", "left")
    f.write_text(json.dumps({"commands": ["s"]}))
    assert load_camera_script(f).labels == ("S",)
    c2w = [np.eye(4)]
    for t in (qcm.token_of("W", "none"), qcm.token_of("none", "↑")):
        c2w.append(c2w[-1] @ command_pose(t))
    f.write_text(json.dumps([m.tolist() for m in c2w]))
    poses = load_camera_script(f)
    assert poses.tokens == (9, 3) and poses.labels == ("pose 0: W", "pose 1: up")
    np.testing.assert_allclose(poses.poses[1], command_pose(3), atol=1e-9)
    f.write_text(json.dumps({"c2w": [m.tolist() for m in c2w]}))
    assert load_camera_script(f).tokens == (9, 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("W\nW+S\n", "line 2"),
        ("W\n\n# x\nfly\n", "line 4"),
        ("W * two\n", "line 1: repeat count"),
        ("# nothing\n", "no camera command"),
        ('["W", "bad"]', "item 1"),
        ("[1, 2", "invalid JSON"),
        ("[[[1, 0], [0, 1]]]", "4x4"),
        ('{"c2w": [[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]], [[2,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]]}', "rigid"),
        ('{"nothing": 1}', "exactly one of"),
    ],
)
def test_bad_scripts_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / ("cam.json" if content.lstrip()[:1] in "[{" else "cam.txt")
    f.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_camera_script(f)
    with pytest.raises(UsageError, match="no such file"):
        load_camera_script(tmp_path / "missing.txt")


def test_script_rays_shape_scale_and_identity_for_none() -> None:
    rays = script_rays(load_script_of(["none", "W", "right"]), 4, 6)
    assert rays.shape == (1, 6, 3, 4, 6) and rays.dtype == torch.float32
    assert rays[0, :3, 0].abs().max() == 0  # no translation: origin 0
    # W moves along +z by the default step: STEP_TRANSLATION_STD in the loader's normalised units.
    torch.testing.assert_close(rays[0, 2, 1], torch.full((4, 6), STEP_TRANSLATION_STD))
    assert not torch.allclose(rays[0, 3:, 2], rays[0, 3:, 0])  # a turn changes the directions
    # A 4x video VAE: the step is in its latent-step scale, normalised alike.
    four = script_rays(load_script_of(["W"], temporal_factor=4), 4, 6, temporal_factor=4)
    torch.testing.assert_close(four[0, 2, 0], torch.full((4, 6), STEP_TRANSLATION_STD))


def load_script_of(commands: list[str], temporal_factor: int = 1) -> Any:
    from training.stream import _commands_script, step_translation

    items = [(str(i), c, 1) for i, c in enumerate(commands)]
    return _commands_script("test", items, step_translation(temporal_factor), 3.0)


# -- the CLI ----------------------------------------------------------------------------------------------------------


def test_cli_writes_video_and_timings(ckpt: Path, image: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam.txt"
    cam.write_text("W\nW+right\n")
    out = tmp_path / "s.mp4"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--frames", "6", "--image", str(image), "--camera", str(cam)]
    assert main([*args, "--warmup", "1"]) == 0
    assert out.stat().st_size > 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert len(rec["latency_s"]) == rec["frames"] == 6 and all(s > 0 for s in rec["latency_s"])
    assert rec["fps"] > 0 and rec["fps_video"] == rec["fps"]
    assert rec["window"] == 3 and rec["device"] == "cpu" and rec["video_frames"] == 7
    assert rec["camera"] == ["W", "W+right", "W+right", "W+right", "W+right", "W+right"]
    assert rec["camera_input"] == ["tokens"] and rec["first_frame"]["kind"] == "image"
    assert rec["checkpoint"].endswith("step_0000001.pt")

    import av

    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 7 and decoded[0].shape == (32, 32, 3)  # 8x8 frames, scale 4


def test_streamed_frames_equal_rollout(ckpt: Path, image: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam.txt"
    cam.write_text("D\nleft\n")
    saved = tmp_path / "latents.pt"
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "s.mp4"), "--frames", "7", "--image", str(image)]
    args += ["--camera", str(cam), "--seed", "5"]
    assert main([*args, "--save-latents", str(saved)]) == 0
    streamed = torch.load(saved)
    run = prepare(parse_args(args))
    with torch.no_grad():
        reference = rollout(
            run.model, run.first, run.text_emb, run.text_mask, run.noise, camera_tokens=run.camera_tokens
        )
    assert streamed.shape == (1, 3, 7, 8, 8)
    torch.testing.assert_close(streamed, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(streamed, run.noise, atol=1e-3)  # the network did change the noise
    # Another seed, another video; the window override streams too (a different cache, other frames).
    other, _ = stream(run.model, run.first, run.text_emb, run.text_mask, torch.randn_like(run.noise))
    assert not torch.allclose(other, streamed)
    full, lat = stream(run.model, run.first, run.text_emb, run.text_mask, run.noise, run.camera_tokens, window=0)
    assert len(lat) == 7 and not torch.allclose(full[:, :, -1], streamed[:, :, -1])
    torch.testing.assert_close(full[:, :, :3], streamed[:, :, :3], rtol=0, atol=1e-5)  # window 3: same start


def test_camera_rays_checkpoint_streams_rays(tmp_path: Path, image: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "rays", camera_rays=True, shape=(4, 4, 6))
    cam = tmp_path / "cam.txt"
    cam.write_text("W\nright\n")
    args = ["--checkpoint", str(ckpt), "--frames", "3", "--image", str(image), "--camera", str(cam)]
    run = prepare(parse_args([*args, "--out", str(tmp_path / "x.mp4")]))
    assert run.rays is not None and run.rays.shape == (1, 6, 3, 4, 6) and run.camera_tokens is not None
    out = tmp_path / "r.mp4"
    assert main([*args, "--out", str(out), "--warmup", "0"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["camera_input"] == ["tokens", "rays"]


def test_refusals_are_one_line_and_exit_2(ckpt: Path, image: Path, tmp_path: Path, capsys) -> None:
    bidirectional = write_checkpoint(tmp_path / "bi", causal=False)
    bad_script = tmp_path / "bad.txt"
    bad_script.write_text("W\nsideways\n")
    no_lineage = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "x.mp4"), "--frames", "2"]
    cases = [
        (["--checkpoint", str(bidirectional), "--out", str(tmp_path / "x.mp4"), "--frames", "2"], "bidirectional"),
        (["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.mp4"), "--frames", "2"], "checkpoint"),
        ([*no_lineage, "--image", str(image), "--camera", str(bad_script)], "line 2"),
        ([*no_lineage, "--image", str(tmp_path / "none.png")], "--image"),
        (no_lineage, "--image"),  # no lineage to take a first frame from
        ([*no_lineage[:-1], "0", "--image", str(image)], "--frames"),
        ([*no_lineage, "--image", str(image), "--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "cuda"),
    ]
    for argv, needle in cases:
        if needle == "cuda" and torch.cuda.is_available():
            continue
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (argv, err)
    assert not (tmp_path / "x.mp4").exists()


def test_latent_checkpoint_encodes_the_image_and_decodes(tmp_path: Path, image: Path, wan_dir: Path) -> None:
    """Latent space with the tests' tiny random Wan VAE: --image is encoded, the stream decoded (1 + 4N frames)."""
    from annotators.vae import LatentConfig, load_vae

    vae_hash = load_vae(LatentConfig(model_path=str(wan_dir), device="cpu")).spec.vae_hash
    ckpt = write_checkpoint(tmp_path / "lat", channels=4, shape=(3, 4, 4), space="latent", vae_hash=vae_hash)
    out = tmp_path / "l.mp4"
    base = ["--checkpoint", str(ckpt), "--out", str(out), "--frames", "2", "--image", str(image)]
    assert main(base) == 2  # needs --vae
    assert main([*base, "--vae", str(wan_dir), "--warmup", "0"]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["video_frames"] == 9 and rec["video_frames_per_latent_frame"] == 4
    assert rec["fps_video"] == pytest.approx(4 * rec["fps"], rel=1e-3) and rec["latent_shape"] == [4, 2, 4, 4]


# -- the benchmark ------------------------------------------------------------------------------------------------


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_stream", ROOT / "bench" / "stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stream.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    modes = result["modes"]
    assert set(modes) == {"cache_window", "cache_full", "recompute"}
    n = result["frames"]
    assert n == 4 * result["train_frames"]
    for m in modes.values():
        assert len(m["latency_s"]) == n and m["fps"] > 0 and m["last_over_first"] > 0
    assert result["recompute_max_abs_diff"] < 1e-4  # the same frames, with and without the cache
    assert "cache + window" in proc.stdout


def test_drift_statistics_on_synthetic_clips(ckpt: Path) -> None:
    from training.sample import find_checkpoint, load_trained

    bench = load_bench()
    model, text_encoder, state = load_trained(find_checkpoint(ckpt), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    clips = [
        {"latents": torch.randn(1, 3, 4, 8, 8, generator=g) * 0.5 + 0.1, "text": ["a"], "clip_id": [f"c{i}"]}
        for i in range(2)
    ]
    result = bench.drift(model, text_encoder, clips, factor=3, seed=0)
    assert result["clips"] == 2 and len(result["generated"]["mean"]) == 12 and len(result["real"]["mean"]) == 4
    assert result["real"]["std"][0] == pytest.approx(0.5, abs=0.1)
    assert result["generated"]["mean"][0] == pytest.approx(result["real"]["mean"][0], abs=1e-6)  # the real first
    assert set(result["summary"]) >= {"std_ratio_first", "std_ratio_last", "mean_shift_last"}


@pytest.mark.slow
def test_training_data_first_frame_run_clip_camera_and_drift(smoke_run: Path, tmp_path: Path) -> None:
    """On the smoke run: the fallback first frame is the first curated clip's, a camera script may name a run clip,
    and the drift bench rolls out from real clips."""
    from training.data import make_loader

    cfg = DataConfig(source=str(smoke_run), batch_size=1, shuffle_buffer=0, num_workers=0, space="pixel")
    with make_loader(dataclasses.replace(cfg, drop_last=False)) as loader:
        clip = next(iter(loader))  # the first curated clip, at the default (warped-noise) grid
    c, t, h, w = clip["latents"].shape[1:]
    lineage = {"kind": "run", "path": str(smoke_run)}
    ckpt = write_checkpoint(tmp_path / "c", shape=(t, h, w), window=2, lineage=lineage, camera_rays=True)
    cam = tmp_path / "cam.json"
    cid = clip["clip_id"][0]
    cam.write_text(json.dumps({"run": str(smoke_run), "clip_id": cid}))
    saved, out = tmp_path / "x.pt", tmp_path / "d.mp4"
    argv = ["--checkpoint", str(ckpt), "--out", str(out), "--frames", "3", "--camera", str(cam)]
    assert main([*argv, "--save-latents", str(saved)]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["first_frame"] == {"kind": "training data", "path": str(smoke_run), "clip_id": clip["clip_id"][0]}
    assert rec["text"] == clip["text"][0] and len(rec["camera"]) == 3 and rec["camera"][0].startswith("pose 0")
    run = prepare(parse_args(argv))
    torch.testing.assert_close(run.first, clip["latents"][:, :, :1].float())
    assert run.script.k is not None and run.rays.shape == (1, 6, 3, h, w)
    # The same rays the loader serves for that clip (its steps 1..3: entry 0 is frame 0's identity).
    from curation.shards import iter_clips
    from training.data import clip_rays

    row = next(r for r in iter_clips(smoke_run, ["clip_id", "camera_c2w", "camera_intrinsics"]) if r["clip_id"] == cid)
    served = clip_rays(row["camera_c2w"], row["camera_intrinsics"], t, (h, w))
    torch.testing.assert_close(run.rays[0], served[:, 1:4], rtol=1e-4, atol=1e-4)

    result = tmp_path / "drift.json"
    bench = [sys.executable, str(ROOT / "bench" / "stream.py"), "--drift", "--checkpoint", str(ckpt)]
    bench += ["--shards", str(smoke_run), "--clips", "2", "--factor", "2", "--json", str(result)]
    proc = subprocess.run(bench, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    drift = next(iter(json.loads(result.read_text())["checkpoints"].values()))
    assert drift["clips"] + drift["skipped_other_length"] == 2 and len(drift["generated"]["std"]) == 2 * t
