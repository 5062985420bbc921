"""AAPT's training stages: the loss pieces against truth, and every stage (a)-(d) through `training.train --stage`
on the smoke run at debug size: runs, reports its losses, and resumes exactly after a kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training import aapt
from training.causal import teacher_forcing
from training.config import load_train_config
from training.discriminator import FrameDiscriminator
from training.model import ModelConfig, VideoDiT
from training.text import TextConfig
from training.train import iter_metrics, list_checkpoints, load_checkpoint
from training.train import main as train_main
from training.trainers import convert_weights

ROOT = Path(__file__).resolve().parent.parent
DEBUG = str(ROOT / "training" / "configs" / "debug.toml")
TEXT = TextConfig(dim=32, layers=1, heads=2, max_length=16)


def _train(shards: Path, out: Path, stage: str | None, *extra: str) -> int:
    args = ["--shards", str(shards), "--out", str(out), "--config", DEBUG, *extra]
    return train_main([*args, "--stage", stage] if stage else args)


def _tiny(causal: bool = True, **kw) -> VideoDiT:
    torch.manual_seed(0)
    return VideoDiT(ModelConfig(size="debug", causal=causal, text=TEXT, **kw))


# -- pure pieces --------------------------------------------------------------------------------------------------


def test_pseudo_huber_and_grid_weights():
    d = torch.zeros(2, 3, 4)
    d[1] = 3.0
    c = 0.5
    h = aapt.pseudo_huber(d, c)
    assert h[0] == 0.0 and h[1] == pytest.approx((12 * 9 + c * c) ** 0.5 - c)
    assert aapt.pseudo_huber(d)[1] > 0  # the default c (iCT's) is positive and small
    from training.flow_matching import sampling_grid

    grid = sampling_grid(32, 24.0)
    w = aapt.grid_weights(grid)
    assert w.shape == (32,) and w.mean().item() == pytest.approx(1.0, rel=1e-5)
    dt = grid[1:] - grid[:-1]
    assert torch.all((w[1:] / w[:-1] - dt[:-1] / dt[1:]).abs() < 1e-3)  # weight proportional to 1 / dt


def test_window_starts_and_rollout_length():
    cfg = aapt.AAPTConfig(extensions=2, overlap=1)
    length = aapt.rollout_length(8, cfg, pt=1)
    assert length == 8 + 2 * 7 == 22
    assert aapt.window_starts(length, 8, 1) == [0, 7, 14]  # each window starts on the last frame of the previous
    with pytest.raises(ValueError, match="windows"):
        aapt.window_starts(21, 8, 1)
    with pytest.raises(ValueError, match="overlap"):
        aapt.rollout_length(8, aapt.AAPTConfig(extensions=1, overlap=1), pt=2)


def test_bidirectional_weights_convert_to_causal_with_zero_recycled_channels():
    bi, ca = _tiny(causal=False), _tiny(causal=True, camera_rays=True)
    report = convert_weights(bi.state_dict(), ca)
    assert "ray_embed.weight" in report["new"] and not report["dropped"]
    w = ca.x_embed.weight
    torch.testing.assert_close(w[:, :3], bi.x_embed.weight)
    assert torch.count_nonzero(w[:, 3:]) == 0
    # With zero recycled weights, the causal model's first position computes what the bidirectional model computes
    # on frame 1 alone (frame-0 keys are masked out only beyond the first position).
    with torch.no_grad():
        for p in (*ca.final_proj.parameters(), *bi.final_proj.parameters()):
            p.normal_(0, 0.1)
        ca.final_proj.load_state_dict(bi.final_proj.state_dict())
    x = torch.randn(1, 3, 1, 8, 8)
    text, mask = torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
    t = torch.tensor([0.3])
    a = bi(x, t, text, mask).velocity
    b = ca(x, t, text, mask, recycled=torch.randn_like(x)).velocity
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="architecture"):
        convert_weights(_tiny(causal=False, hidden_size=32, num_heads=2).state_dict(), ca)


def _batch(b: int = 2, frames: int = 5) -> dict:
    return {
        "latents": torch.randn(b, 3, frames, 8, 8),
        "text": ["a", "b"][:b],
        "camera_tokens": torch.randint(0, 81, (b, frames - 1)),
        "has_camera": torch.ones(b, dtype=torch.bool),
    }


def test_adapt_loss_is_teacher_forced_flow_matching():
    from training.objective import ObjectiveConfig
    from training.text import build_text_encoder

    model, enc = _tiny(), build_text_encoder(TEXT)
    cfg = ObjectiveConfig(time_shift=24.0, p_text_drop=0.0, p_camera_drop=0.0)
    batch = _batch()
    gen = torch.Generator().manual_seed(3)
    loss, terms = aapt.adapt_losses(model, enc, batch, cfg, aapt.AAPTConfig(), gen)
    # The zero-initialised output layer predicts v = 0: the loss is E|x1 - x0|^2 over the target frames only.
    gen = torch.Generator().manual_seed(3)
    from training.flow_matching import make_noise, sample_t

    sample_t(2, gen, 24.0)
    x0 = make_noise(batch, cfg, gen)
    target = batch["latents"][:, :, 1:] - x0[:, :, 1:]
    assert loss.item() == pytest.approx(target.square().mean().item(), rel=1e-5)
    assert terms["loss"] == terms["fm"] == pytest.approx(loss.item())
    loss.backward()
    assert model.final_proj.weight.grad.abs().sum() > 0


def test_distill_target_is_the_data_at_the_last_interval():
    """On the last interval t_(n+1) = 1, f(x, 1) = x: the student's target is the teacher's Euler step itself."""
    from training.flow_matching import sampling_grid

    grid = sampling_grid(32, 24.0)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and torch.all(grid[1:] > grid[:-1])
    # Shift s = 24 crowds the grid towards noise: half the steps lie below t = 0.05.
    assert (grid < 0.05).sum() >= 16
    from training.causal import one_step

    x, v = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(one_step(x, v, torch.ones(2)), x)


def test_adversarial_step_updates_each_player_from_its_own_loss():
    """The D step changes only the discriminator, the G step only the generator; the rollout's gradient reaches
    the generator through every frame's own evaluation (detached history)."""
    from training.trainers import AdversarialTrainer, StepContext

    cfg = load_train_config(DEBUG, ["model.text.max_length=16"], stage="adversarial")
    model = _tiny(camera=True)
    from training.text import build_text_encoder

    enc = build_text_encoder(TEXT)
    disc = FrameDiscriminator.from_generator(model)
    trainer = AdversarialTrainer(model, enc, StepContext(cfg, torch.device("cpu")), disc)
    g0 = {k: v.clone() for k, v in model.state_dict().items()}
    d0 = {k: v.clone() for k, v in disc.state_dict().items()}
    e0 = {k: v.clone() for k, v in enc.state_dict().items()}
    terms = trainer.train_step(_batch(), torch.Generator().manual_seed(0), 0)
    for key in ("g_loss", "d_loss", "rpgan_d", "r1", "r2", "d_real", "d_fake"):
        assert torch.isfinite(torch.tensor(terms[key])), key
    assert terms["r1"] > 0 and terms["r2"] > 0 and terms["windows"] == 1 and terms["rollout_frames"] == 5
    assert any(not torch.equal(g0[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(d0[k], v) for k, v in disc.state_dict().items())
    assert all(torch.equal(e0[k], v) for k, v in enc.state_dict().items())  # the text encoder is frozen


def test_long_rollout_is_judged_on_overlapping_windows():
    from training.text import build_text_encoder
    from training.trainers import AdversarialTrainer, StepContext

    cfg = load_train_config(DEBUG, ["aapt.extensions=2"], stage="long")
    model, enc = _tiny(), build_text_encoder(TEXT)
    trainer = AdversarialTrainer(
        model, enc, StepContext(cfg, torch.device("cpu")), FrameDiscriminator.from_generator(model)
    )
    terms = trainer.train_step(_batch(frames=5), torch.Generator().manual_seed(0), 0)
    assert terms["rollout_frames"] == 5 + 2 * 4 and terms["windows"] == 3


def test_discriminator_score_pairs_real_and_fake_positions():
    model = _tiny()
    disc = FrameDiscriminator.from_generator(model)
    clip = torch.randn(2, 3, 5, 8, 8)
    cond = aapt.Conditions(torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.bool), None, None)
    t, eps = torch.rand(2), torch.randn(2, 3, 4, 8, 8)
    logits = aapt.score(disc, clip, t, eps, cond, pt=1)
    assert logits.shape == (2, 4)
    later = clip.clone()
    later[:, :, 4] += 1.0
    same = aapt.score(disc, later, t, eps, cond, pt=1)
    torch.testing.assert_close(same[:, :3], logits[:, :3])  # a later frame leaves earlier logits unchanged
    tf = teacher_forcing(clip)
    assert torch.equal(tf.recycled[:, :, 0], clip[:, :, 0])


# -- the stages through the CLI -----------------------------------------------------------------------------------

STEPS = ("--set=steps=6", "--set=checkpoint_every=3", "--set=keep_checkpoints=3", "--set=log_every=3")


@pytest.fixture(scope="module")
def stages(smoke_run, tmp_path_factory) -> dict[str, Path]:
    """adapt -> distill -> adversarial -> long on the smoke run, each from the previous one's output."""
    root = tmp_path_factory.mktemp("aapt")
    outs = {s: root / s for s in aapt.STAGES}
    assert _train(smoke_run, outs["adapt"], "adapt", *STEPS) == 0
    assert _train(smoke_run, outs["distill"], "distill", *STEPS, "--init", str(outs["adapt"])) == 0
    assert _train(smoke_run, outs["adversarial"], "adversarial", *STEPS, "--init", str(outs["distill"])) == 0
    assert _train(smoke_run, outs["long"], "long", *STEPS, "--init", str(outs["adversarial"])) == 0
    return outs


TERMS = {
    "adapt": ("loss", "fm"),
    "distill": ("loss", "cd"),
    "adversarial": ("loss", "g_loss", "d_loss", "rpgan_d", "r1", "r2", "d_real", "d_fake"),
    "long": ("loss", "g_loss", "d_loss", "r1", "r2"),
}


@pytest.mark.parametrize("stage", aapt.STAGES)
def test_every_stage_runs_and_reports_its_losses(stages, stage):
    metrics = list(iter_metrics(stages[stage]))
    assert [m["step"] for m in metrics] == list(range(1, 7))
    for m in metrics:
        for key in TERMS[stage]:
            assert key in m and m[key] == m[key], (stage, key)  # present and not NaN
    state = load_checkpoint(list_checkpoints(stages[stage])[-1])
    assert state["stage"] == stage and state["config"]["model"]["causal"] is True
    lineage = json.loads((stages[stage] / "lineage.json").read_text())
    if stage == "adapt":
        assert lineage["init"] is None
    else:
        previous = aapt.STAGES[aapt.STAGES.index(stage) - 1]
        assert lineage["init"]["stage"] == previous and lineage["init"]["step"] == 6
    if stage in ("adversarial", "long"):
        assert {"discriminator", "d_optimizer"} <= set(state)
        assert state["config"]["optim"]["kind"] == "rmsprop"
    if stage == "long":
        m = metrics[0]
        assert m["rollout_frames"] > m["windows"] >= 2
        # The smoke run has camera tokens: the extended frames' camera comes from the corpus bank.
        assert m["camera_bank_steps"] == m["rollout_frames"] - state["latent_shape"][1] > 0


def test_distill_teacher_is_the_adapt_model(stages):
    adapt_state = load_checkpoint(list_checkpoints(stages["adapt"])[-1])
    distill_state = load_checkpoint(list_checkpoints(stages["distill"])[-1])
    from training.trainers import sampling_weights

    weights, _ = sampling_weights(adapt_state)
    for key, value in distill_state["teacher"].items():
        torch.testing.assert_close(value, weights[key])


@pytest.mark.parametrize("stage", aapt.STAGES)
def test_every_stage_resumes_exactly(stages, smoke_run, stage, tmp_path):
    """Killed after step 4 (newest checkpoint: step 3): the resumed run repeats steps 4-6 exactly."""
    full = stages[stage]
    cut = tmp_path / stage
    shutil.copytree(full, cut)
    for ckpt in list_checkpoints(cut)[1:]:
        ckpt.unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()[:4]
    (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    init = [] if stage == "adapt" else ["--init", str(stages[aapt.STAGES[aapt.STAGES.index(stage) - 1]])]
    assert _train(smoke_run, cut, stage, *STEPS, *init, "--resume") == 0
    a, b = list(iter_metrics(full)), list(iter_metrics(cut))
    assert [m["step"] for m in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        for key in TERMS[stage]:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (stage, x["step"], key)
    final_a = load_checkpoint(list_checkpoints(full)[-1])
    final_b = load_checkpoint(list_checkpoints(cut)[-1])
    for name, tensor in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][name], tensor, rtol=1e-5, atol=1e-6)


def test_stage_errors_are_one_line_exit_2(smoke_run, stages, tmp_path, capsys):
    assert _train(smoke_run, tmp_path / "d", "distill", *STEPS) == 2
    assert "needs --init" in capsys.readouterr().err
    assert _train(smoke_run, tmp_path / "e", "adapt", *STEPS, "--init", str(tmp_path / "nothing")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    wide = ["--set=model.hidden_size=32", "--set=model.num_heads=2"]
    assert _train(smoke_run, tmp_path / "f", "distill", *STEPS, *wide, "--init", str(stages["adapt"])) == 2
    assert "architecture" in capsys.readouterr().err


def test_extended_rays_come_from_the_bank_poses():
    from training.camera_rays import origin_std_for

    rays = torch.randn(2, 6, 4, 6, 8)
    step = torch.eye(4, dtype=torch.float64).repeat(2, 3, 1, 1)
    step[..., 2, 3] = origin_std_for(4)  # one corpus std forward per latent step
    out = aapt.extend_rays(rays, 7, step, temporal_factor=4)
    assert out.shape == (2, 6, 7, 6, 8)
    torch.testing.assert_close(out[:, :, :4], rays)
    torch.testing.assert_close(out[:, 2, 4:], torch.ones(2, 3, 6, 8))  # normalised origin z = 1 everywhere
    assert torch.count_nonzero(out[:, :2, 4:]) == 0
    centre = out[0, 3:, 4, 2:4, 3:5]  # directions near the principal point look down +z
    assert torch.all(centre[2] > 0.99 / 0.5)
    assert torch.count_nonzero(aapt.extend_rays(rays, 7, None)[:, :, 4:]) == 0


def test_stages_and_streaming_in_latent_space(latent_run, wan_dir, tmp_path):
    """The AAPT chain on latent shards (tiny Wan VAE, stored UMT5 embeddings), then a stream decoded by the VAE."""
    import av

    from training.stream import main as stream_main

    short = ("--set=steps=2", "--set=checkpoint_every=2")
    outs = {s: tmp_path / s for s in aapt.STAGES}
    previous: list[str] = []
    for stage in aapt.STAGES:
        assert _train(latent_run, outs[stage], stage, *short, *previous) == 0, stage
        previous = ["--init", str(outs[stage])]
        state = load_checkpoint(list_checkpoints(outs[stage])[-1])
        assert state["space"]["kind"] == "latent" and state["stage"] == stage
    video = tmp_path / "walk.mp4"
    args = ["--checkpoint", str(outs["long"]), "--out", str(video), "--frames", "3", "--vae", str(wan_dir)]
    assert stream_main([*args, "--warmup", "0"]) == 0
    record = json.loads(video.with_suffix(".json").read_text())
    assert len(record["latency_s"]) == 3 and record["stage"] == "long"
    with av.open(str(video)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 1 + 4 * 3  # the first latent frame, then 4 per latent frame


def test_adapt_starts_from_a_bidirectional_checkpoint(smoke_run, tmp_path):
    short = ("--set=steps=2", "--set=checkpoint_every=2")
    assert _train(smoke_run, tmp_path / "bi", None, *short) == 0
    assert _train(smoke_run, tmp_path / "adapt", "adapt", *short, "--init", str(tmp_path / "bi")) == 0
    lineage = json.loads((tmp_path / "adapt" / "lineage.json").read_text())
    assert lineage["init"]["stage"] == "diffusion" and lineage["init"]["step"] == 2  # the bidirectional run
    state = load_checkpoint(list_checkpoints(tmp_path / "adapt")[-1])
    assert state["model"]["x_embed.weight"].shape[1] == 6  # 3 channels + 3 recycled
