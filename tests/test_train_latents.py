"""Training in latent space on a run with a VAE and a text encoder (`latent_run`: tiny Wan VAE, tiny UMT5): the
loader serves the stored latents, latent-grid noise, aligned camera tokens and events and the padded text
embeddings; the debug model's loss falls; a resume is exact; another VAE or text encoder is refused; the sampler
decodes with the VAE to mp4."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from curation.shards import iter_clips, read_manifest
from training.data import DataConfig, make_loader, pool_event_maps
from training.data.space import (
    camera_tokens_to_latent,
    events_to_frames,
    frame_to_latent,
    resolve_space,
    text_encoder_id,
)
from training.model import ModelConfig, VideoDiT
from training.sample import main as sample_main
from training.sample import prompt_embeddings
from training.text import PrecomputedTextEncoder, TextConfig, build_text_encoder
from training.train import iter_metrics, list_checkpoints, load_checkpoint
from training.train import main as train_main

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent
DEBUG = str(ROOT / "training" / "configs" / "debug.toml")


def _train(shards: Path, out: Path, *extra: str) -> int:
    return train_main(["--shards", str(shards), "--out", str(out), "--config", DEBUG, *extra])


def _stored(run: Path) -> dict[str, dict]:
    return {c["clip_id"]: c for c in iter_clips(run)}


def _with_manifest(run: Path, dest: Path, block: str, **changes: object) -> Path:
    """A copy of `run` whose manifest says its `block` (latents / text_encoder) is another model."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("_work"))
    path = dest / "shards" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[block].update(changes)
    path.write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="module")
def latent_trained(latent_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "latent"
    assert _train(latent_run, out, "--set=steps=60", "--set=checkpoint_every=30") == 0
    return out


# -- the loader ---------------------------------------------------------------------------------------------------


def test_loader_serves_the_stored_latents_noise_camera_and_events(latent_run: Path) -> None:
    manifest = read_manifest(latent_run)
    stored = _stored(latent_run)
    factor = manifest["latents"]["temporal_factor"]
    with make_loader(DataConfig(source=str(latent_run), batch_size=2, shuffle_buffer=0, num_workers=0)) as loader:
        assert loader.geo.space.kind == "latent" and loader.geo.channels == manifest["latents"]["channels"] == 4
        batches = list(loader)
        bytes_read = loader.stats.bytes_read
    seen = 0
    for batch in batches:
        assert batch["latents"].shape[1:] == (4, 5, 8, 8) and batch["noise_source"] == "warped_noise"
        for i, clip_id in enumerate(batch["clip_id"]):
            clip = stored[clip_id]
            np.testing.assert_array_equal(batch["latents"][i].numpy(), clip["latents"].astype(np.float32))
            noise = clip["warped_noise"].astype(np.float32).transpose(1, 0, 2, 3)  # (T', C, h, w) -> (C, T', h, w)
            np.testing.assert_array_equal(batch["noise"][i].numpy(), noise)
            tokens = clip["camera_tokens"].astype(np.int64)
            assert batch["camera_tokens"][i].shape == (4,)
            np.testing.assert_array_equal(batch["camera_tokens"][i].numpy(), camera_tokens_to_latent(tokens, factor))
            events = torch.from_numpy(clip["event_activity"].astype(np.float32))[None]
            expected = pool_event_maps(events.clamp(0, 1), batch["event_activity"].shape[1:])[0]
            torch.testing.assert_close(batch["event_activity"][i], expected)
            seen += 1
    assert seen == 2 * len(batches) > 0
    # Latent space never reads the frames: a whole epoch reads less than one clip's frames would be.
    frames_bytes = int(np.prod(manifest["tensors"]["frames"]["shape"]))
    assert bytes_read < frames_bytes, (bytes_read, frames_bytes)


def test_loader_pads_text_embeddings_with_the_right_mask(latent_run: Path) -> None:
    stored = _stored(latent_run)
    length = read_manifest(latent_run)["text_encoder"]["max_length"]
    with make_loader(DataConfig(source=str(latent_run), batch_size=3, shuffle_buffer=0, num_workers=0)) as loader:
        batch = next(iter(loader))
    emb, mask, lengths = batch["text_embedding"], batch["text_mask"], batch["text_length"]
    assert emb.shape == (3, length, 32) and mask.shape == (3, length) and mask.dtype == torch.bool
    for i, clip_id in enumerate(batch["clip_id"]):
        real = stored[clip_id]["text_embedding"]
        n = real.shape[0]
        assert 0 < n < length and int(lengths[i]) == n
        np.testing.assert_array_equal(emb[i, :n].numpy(), real)
        assert not emb[i, n:].any()  # zeros past the real tokens (UMT5's own padded outputs are not zero)
        np.testing.assert_array_equal(mask[i].numpy(), np.arange(length) < n)


def test_pixel_space_on_a_latent_run_aligns_events_to_frames(latent_run: Path) -> None:
    stored = _stored(latent_run)
    cfg = DataConfig(source=str(latent_run), batch_size=2, shuffle_buffer=0, num_workers=0, space="pixel")
    with make_loader(cfg) as loader:
        batch = next(iter(loader))
    assert batch["latents"].shape[1:3] == (3, 17) and "noise" not in batch  # noise is on the latent frames only
    for i, clip_id in enumerate(batch["clip_id"]):
        maps = stored[clip_id]["event_activity"].astype(np.float32)  # (T', gh, gw)
        per_frame = torch.from_numpy(maps[frame_to_latent(17, 4)])[None]
        expected = pool_event_maps(per_frame.clamp(0, 1), batch["event_activity"].shape[1:])[0]
        torch.testing.assert_close(batch["event_activity"][i], expected)


def test_camera_tokens_take_the_majority_of_each_latent_step() -> None:
    tokens = np.array([3, 3, 3, 5, 3, 5, 5, 7, 1, 2, 3, 4, 9, 9, 9, 9], np.int16)
    # groups [3 3 3 5] [3 5 5 7] [1 2 3 4] [9 9 9 9]: majority, majority, a tie of four -> the last, uniform.
    assert camera_tokens_to_latent(tokens, 4).tolist() == [3, 5, 4, 9]
    assert camera_tokens_to_latent(np.array([2, 2, 6, 6], np.int16), 4).tolist() == [6]  # tie -> the later one
    assert camera_tokens_to_latent(tokens, 1) is tokens


def test_event_maps_move_between_frames_and_latent_frames() -> None:
    maps = np.random.default_rng(0).random((9, 2, 2)).astype(np.float32)
    latent = events_to_frames(maps, 3, 4)  # frame 0 alone, then frames 1-4 and 5-8: max over each group
    np.testing.assert_array_equal(latent[0], maps[0])
    np.testing.assert_array_equal(latent[1], maps[1:5].max(axis=0))
    np.testing.assert_array_equal(latent[2], maps[5:9].max(axis=0))
    back = events_to_frames(latent, 9, 4)
    assert frame_to_latent(9, 4).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    np.testing.assert_array_equal(back[3], latent[1])
    with pytest.raises(ValueError, match="event maps have 6 frames"):
        events_to_frames(maps[:6], 3, 4)


def _manifest(cls: str = "AutoencoderKLWan", weights: str = "w1", text: str | None = "t1") -> dict:
    m = {
        "latents": {"cls": cls, "channels": 4, "temporal_factor": 4, "config_sha256": "c", "weights_sha256": weights},
        "tensors": {"latents": {}, "frames": {}},
    }
    if text:
        m["text_encoder"] = {"cls": "UMT5EncoderModel", "dim": 32, "max_length": 512, "weights_sha256": text}
        m["tensors"]["text_embedding"] = {}
    return m


def test_space_refuses_mixed_or_unpinned_models() -> None:
    one = resolve_space([("a", _manifest()), ("b", _manifest())])
    assert one.kind == "latent" and one.channels == 4 and one.text_length == 512
    with pytest.raises(ValueError, match="mixes latents of 2 VAEs"):
        resolve_space([("a", _manifest()), ("b", _manifest(weights="w2"))])
    with pytest.raises(ValueError, match="mixes text embeddings of 2 encoders"):
        resolve_space([("a", _manifest()), ("b", _manifest(text="t2"))])
    with pytest.raises(ValueError, match="mixes runs with latents"):
        resolve_space([("a", _manifest()), ("b", {"tensors": {"frames": {}}})])
    assert resolve_space([("a", _manifest()), ("b", {"tensors": {}})], space="pixel").kind == "pixel"
    with pytest.raises(ValueError, match="started with VAE 0123"):
        resolve_space([("a", _manifest())], vae_hash="0123")
    with pytest.raises(ValueError, match="started with text encoder 0123"):
        resolve_space([("a", _manifest())], text_encoder_hash="0123")
    assert resolve_space([("a", _manifest(text=None)), ("b", _manifest())]).text is None  # not in every run


def test_precomputed_text_dropout_is_the_null_prompt() -> None:
    encoder = build_text_encoder(TextConfig(kind="precomputed", dim=8, max_length=6))
    assert isinstance(encoder, PrecomputedTextEncoder) and not list(encoder.parameters())
    emb = torch.randn(2, 6, 8)
    mask = torch.arange(6)[None] < torch.tensor([[3], [5]])
    got, got_mask = encoder.encode_batch({"text_embedding": emb, "text_mask": mask}, [False, True])
    torch.testing.assert_close(got[0], emb[0])
    assert not got[1].any() and not got_mask[1].any() and got_mask[0].tolist() == mask[0].tolist()
    # A dropped row gives the model exactly what the sampler's unconditional branch gives it.
    model = VideoDiT(ModelConfig(in_channels=4, text=TextConfig(kind="precomputed", dim=8, max_length=6)), text_dim=8)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(1, 4, 2, 4, 4), torch.tensor([0.3])
    a = model(x, t, got[1:], got_mask[1:]).velocity
    b = model(x, t, *encoder([""])).velocity
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="--text-encoder"):
        encoder(["a prompt"])


# -- training -----------------------------------------------------------------------------------------------------


def test_latent_training_loss_falls(latent_trained: Path, latent_run: Path) -> None:
    metrics = list(iter_metrics(latent_trained))
    assert [m["step"] for m in metrics] == list(range(1, 61))
    losses = np.array([m["loss"] for m in metrics])
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.7 * losses[:10].mean(), losses
    manifest = read_manifest(latent_run)
    cfg = json.loads((latent_trained / "config.json").read_text())
    assert cfg["model"]["in_channels"] == manifest["latents"]["channels"] == 4
    assert cfg["data"]["space"] == "latent" and cfg["data"]["vae_hash"] == manifest["latents"]["vae_hash"]
    assert cfg["model"]["text"]["kind"] == "precomputed" and cfg["model"]["text"]["dim"] == 32
    assert cfg["data"]["text_encoder_hash"] == text_encoder_id(manifest["text_encoder"])
    state = load_checkpoint(list_checkpoints(latent_trained)[-1])
    assert state["latent_shapes"] == {"17x64x64": [4, 5, 8, 8]} and state["space"]["kind"] == "latent"
    assert state["text_encoder"] == {}  # nothing of a text model is trained or stored
    summary = json.loads((latent_trained / "summary.json").read_text())
    assert 0.0 <= summary["data_wait_share"] < 1.0 and summary["loader"]["rows_skipped"] == 0


def test_resume_on_latents_repeats_the_uninterrupted_run(latent_run: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ("--set=steps=10", "--set=checkpoint_every=4", "--set=keep_checkpoints=5")
    assert _train(latent_run, full, *args) == 0
    shutil.copytree(full, cut)
    for ckpt in list_checkpoints(cut)[1:]:  # as if killed after step 6: the newest checkpoint is step 4
        ckpt.unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()[:6]
    (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert _train(latent_run, cut, *args, "--resume") == 0
    a, b = list(iter_metrics(full)), list(iter_metrics(cut))
    assert [m["step"] for m in b] == list(range(1, 11))
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "fm", "act", "lr"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["step"], key)
    final_a, final_b = (load_checkpoint(list_checkpoints(d)[-1]) for d in (full, cut))
    for name, tensor in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][name], tensor, rtol=1e-5, atol=1e-6)
    assert final_b["loader"] == final_a["loader"]


def test_another_vae_or_text_encoder_is_refused(
    latent_run: Path, latent_trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from curation.snapshot import create_snapshot

    other_vae = _with_manifest(latent_run, tmp_path / "vae2", "latents", vae_hash="0000000000000000")
    other_text = _with_manifest(latent_run, tmp_path / "t2", "text_encoder", weights_sha256="f" * 64)
    snapshot = tmp_path / "snap"
    create_snapshot([latent_run, other_vae], snapshot)
    resumed = tmp_path / "resumed"
    shutil.copytree(latent_trained, resumed)
    cases = [
        ((other_vae, resumed, "--resume"), "this training run was started with VAE"),
        ((other_text, resumed, "--resume"), "this training run was started with text encoder"),
        ((latent_run, tmp_path / "pinned", "--set=data.vae_hash=0123456789abcdef"), "started with VAE 0123456789"),
        ((snapshot, tmp_path / "mixed"), "mixes latents of 2 VAEs"),
    ]
    for (shards, out, *extra), message in cases:
        assert _train(shards, out, *extra) == 2, (shards, extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (out / "metrics.jsonl").exists() or out == resumed
    assert len(list(iter_metrics(resumed))) == 60  # the refused resumes trained nothing


# -- sampling -----------------------------------------------------------------------------------------------------


def test_sampler_decodes_latents_to_mp4(
    latent_trained: Path, latent_run: Path, wan_dir: Path, t5_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "drive.mp4"
    base = ["--checkpoint", str(latent_trained), "--steps", "3", "--vae", str(wan_dir)]
    assert sample_main([*base, "--out", str(out), "--driving", str(latent_run), "--image"]) == 0
    with av.open(str(out)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 17 and decoded[0].shape == (64, 64, 3)  # 5 latent frames -> 1 + 4*4 frames at 64x64
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["vae"]["vae_hash"] == read_manifest(latent_run)["latents"]["vae_hash"]
    two = tmp_path / "two.mp4"
    args = ["--prompt", "the camera", "--prompt", "a view", "--text-encoder", str(t5_dir), "--camera", "W/right"]
    assert sample_main([*base, "--out", str(two), *args]) == 0
    with av.open(str(two)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 17 and decoded[0].shape == (64, 128, 3)  # two samples side by side


def test_sampler_refuses_a_missing_or_other_vae(
    latent_trained: Path, wan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.test_vae import tiny_wan

    torch.manual_seed(1)  # other weights: another hash
    other = tmp_path / "wan2"
    tiny_wan().save_pretrained(other)
    base = ["--checkpoint", str(latent_trained), "--steps", "1", "--out", str(tmp_path / "x.mp4")]
    for extra, message in (([], "give --vae"), (["--vae", str(other)], "the checkpoint's latents come from VAE")):
        assert sample_main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert sample_main([*base, "--vae", str(wan_dir), "--prompt", "a"]) == 2  # a prompt needs its text encoder
    assert "--text-encoder" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_prompt_embeddings_match_the_stored_ones(latent_trained: Path, latent_run: Path, t5_dir: Path) -> None:
    state = load_checkpoint(list_checkpoints(latent_trained)[-1])
    clip = next(iter(_stored(latent_run).values()))
    text = clip["caption"] or clip["camera_text"]
    emb, mask = prompt_embeddings(str(t5_dir), [text], state)
    n = clip["text_embedding"].shape[0]
    assert emb.shape == (1, 512, 32) and int(mask.sum()) == n
    np.testing.assert_allclose(emb[0, :n].numpy(), clip["text_embedding"].astype(np.float32), atol=2e-3)
