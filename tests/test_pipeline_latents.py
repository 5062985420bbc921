"""The pipeline with a VAE: `latents` (C, T', h, w) in the shards, warped noise on the VAE's latent grid, the VAE
recorded in the manifest, and a bad VAE folder refused before any work."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from curation.shards import iter_clips, read_manifest
from tests.conftest import LATENT_SETS, run_pipeline

diffusers = pytest.importorskip("diffusers")

# wan_dir, t5_dir and latent_run are in tests/conftest.py (session scope: the training tests use them too).


def test_latents_and_latent_grid_noise_are_stored(latent_run, wan_dir):
    from annotators.vae import LatentConfig, load_vae

    clips = list(iter_clips(latent_run))
    assert clips
    vae = load_vae(LatentConfig(model_path=str(wan_dir)))
    for clip in clips[:3]:
        t, h, w, _ = clip["frames"].shape
        assert t == 17
        assert clip["latents"].shape == (4, 5, h // 8, w // 8) and clip["latents"].dtype == np.float16
        assert clip["warped_noise"].shape == (5, 4, h // 8, w // 8)
        # What the pipeline stored is the VAE's normalised posterior mean of the stored frames.
        again = vae.encode(clip["frames"][None])[0].numpy()
        np.testing.assert_allclose(clip["latents"].astype(np.float32), again, atol=5e-3, rtol=1e-2)


def test_text_embeddings_encode_the_camera_text(latent_run, t5_dir):
    from annotators.text_encoder import TextEncoder, TextEncoderConfig, text_of

    encoder = TextEncoder(TextEncoderConfig(model_path=str(t5_dir)))
    clips = list(iter_clips(latent_run, columns=["clip_id", "camera_text", "caption", "text_embedding"]))
    assert clips and all(c["text_embedding"] is not None for c in clips)
    for clip in clips[:3]:
        (expected,) = encoder.encode([text_of(clip["caption"], clip["camera_text"])])
        assert clip["text_embedding"].shape == expected.shape and expected.shape[1] == 32
        np.testing.assert_allclose(clip["text_embedding"].astype(np.float32), expected.astype(np.float32), atol=2e-3)
    block = read_manifest(latent_run)["text_encoder"]
    assert block["cls"] == "UMT5EncoderModel" and block["dim"] == 32
    assert read_manifest(latent_run)["tensors"]["text_embedding"]["shape"] == ["L", 32]


def test_the_manifest_names_the_vae_and_the_latent_grid(latent_run, wan_dir):
    from annotators.vae import folder_hashes

    manifest = read_manifest(latent_run)
    block = manifest["latents"]
    assert block["cls"] == "AutoencoderKLWan" and block["channels"] == 4 and block["temporal_factor"] == 4
    assert (block["config_sha256"], block["weights_sha256"]) == folder_hashes(wan_dir)
    assert block["normalization"]["latents_mean"] == [0.1, -0.2, 0.3, 0.0] and block["posterior"] == "mean"
    assert manifest["tensors"]["latents"]["shape"] == [4, 5, 8, 8]
    assert manifest["tensors"]["warped_noise"]["shape"] == [5, 4, 8, 8]
    assert manifest["noise"]["temporal_factor"] == 4 and manifest["noise"]["temporal"] == "nearest"
    run = json.loads((latent_run / "_run.json").read_text())
    assert run["config"]["noise"]["channels"] == 4 and run["config"]["noise"]["factor"] == 8


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "is not a directory"),
        ("other_class", "latents support"),
        ("garbage_weights", "unreadable"),
        ("frames", "1 \\+ 4k frames"),
        ("no_tokenizer", "has no tokenizer"),
    ],
)
def test_a_bad_model_exits_2_with_one_line_before_any_work(
    breakage, message, wan_dir, t5_dir, corpus_dir, tmp_path, capsys
):
    folder = tmp_path / "vae"
    sets = list(LATENT_SETS)
    if breakage == "missing":
        pass
    elif breakage == "other_class":
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    elif breakage == "garbage_weights":
        folder.mkdir()
        (folder / "config.json").write_text((wan_dir / "config.json").read_text())
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 100)
    elif breakage == "frames":
        folder = wan_dir
        sets = ["frames.num_frames=16"]
    else:
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            (folder / name).write_bytes((t5_dir / name).read_bytes())
    key = "text_encoder" if breakage == "no_tokenizer" else "latents"
    sets.append(f"{key}.model_path={folder}")
    run_dir = tmp_path / "run"
    video = next(p for p in sorted(corpus_dir.iterdir()) if p.suffix == ".mp4")
    code = run_pipeline(
        "--stage=all", "--input", str(video), "--output", str(run_dir), *(a for s in sets for a in ("--set", s))
    )
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (run_dir / "_work" / "ingest").exists()


def test_event_maps_sit_on_the_latent_frames(latent_run):
    manifest = read_manifest(latent_run)
    assert manifest["tensors"]["event_activity"]["shape"][0] == 5 and manifest["events"]["temporal_factor"] == 4
    for clip in list(iter_clips(latent_run, columns=["event_activity", "event_active", "event_phase"]))[:3]:
        assert clip["event_activity"].shape[0] == clip["event_active"].shape[0] == clip["event_phase"].shape[0] == 5
        assert np.all(np.diff(clip["event_phase"].astype(np.float32)) >= 0)


def test_latent_frame_maps_take_each_groups_maximum():
    from annotators.activity import latent_frame_maps

    rng = np.random.default_rng(0)
    activity = rng.random((9, 2, 3)).astype(np.float32)
    active = (activity > 0.7).astype(np.uint8)
    phase = np.linspace(0, 1, 9).astype(np.float32)
    a, b, p = latent_frame_maps(activity, active, phase, 4)
    np.testing.assert_array_equal(a, np.stack([activity[0], activity[1:5].max(0), activity[5:9].max(0)]))
    np.testing.assert_array_equal(b, np.stack([active[0], active[1:5].max(0), active[5:9].max(0)]))
    np.testing.assert_array_equal(p, phase[[0, 4, 8]])
    with pytest.raises(ValueError, match="whole latent frames"):
        latent_frame_maps(activity[:8], active[:8], phase[:8], 4)
