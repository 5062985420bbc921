"""VAE adapters with tiny, randomly initialised real diffusers architectures, saved to a folder and loaded back
through the same code a run uses: shapes for 1 + 4k frames, the normalisation round trip, determinism, the spec
the manifest records, and clear errors for bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from annotators.vae import LatentConfig, VaeError, encode_batches, load_vae, to_model_input  # noqa: E402

MEAN, STD = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]


def tiny_wan() -> torch.nn.Module:
    return diffusers.AutoencoderKLWan(
        base_dim=3,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=MEAN,
        latents_std=STD,
    )


def tiny_cogvideox() -> torch.nn.Module:
    return diffusers.AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
    )


def tiny_image_vae() -> torch.nn.Module:
    return diffusers.AutoencoderKL(
        block_out_channels=[8, 16],
        norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        scaling_factor=0.5,
        shift_factor=0.25,
    )


BUILDERS = {"AutoencoderKLWan": tiny_wan, "AutoencoderKLCogVideoX": tiny_cogvideox, "AutoencoderKL": tiny_image_vae}
# class -> (spatial factor, latent frames of 9 input frames)
EXPECTED = {"AutoencoderKLWan": (8, 3), "AutoencoderKLCogVideoX": (8, 3), "AutoencoderKL": (2, 9)}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def vae_dir(request, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    BUILDERS[request.param]().save_pretrained(path)
    return path


def clip(t: int = 9, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth moving gradient: something a VAE can represent, not noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [
        np.stack([(xx + 2 * i) % w * 255 // w, yy * 255 // h, np.full_like(xx, 40 + 10 * i + seed)], -1)
        for i in range(t)
    ]
    return np.asarray(frames, dtype=np.uint8)


def test_shapes_spec_and_determinism(vae_dir):
    vae = load_vae(LatentConfig(model_path=str(vae_dir)))
    name = json.loads((vae_dir / "config.json").read_text())["_class_name"]
    spatial, frames9 = EXPECTED[name]
    assert vae.spec.cls == name and vae.spec.channels == 4 and vae.spec.spatial_factor == spatial
    assert vae.spec.latent_frames(9) == frames9
    z = vae.encode(np.stack([clip(), clip(seed=5)]))
    assert z.shape == (2, 4, frames9, 32 // spatial, 48 // spatial) and z.dtype == torch.float32
    assert torch.isfinite(z).all()
    assert torch.equal(z, vae.encode(np.stack([clip(), clip(seed=5)])))  # posterior mean: deterministic
    # The same folder loaded again is the same VAE: same hash; weights changed: another hash.
    assert load_vae(LatentConfig(model_path=str(vae_dir))).spec.vae_hash == vae.spec.vae_hash
    frames = vae.decode(z)
    assert frames.dtype == np.uint8 and frames.shape[0] == 2 and frames.shape[2:] == (32, 48, 3)
    assert frames.shape[1] == 9  # 9 = 1 + 8: an exact round trip for CogVideoX too


def test_normalisation_is_applied_once_and_inverts(vae_dir):
    vae = load_vae(LatentConfig(model_path=str(vae_dir)))
    x = torch.randn(1, 4, 2, 3, 5)
    torch.testing.assert_close(vae.denormalize(vae.normalize(x)), x)
    raw = vae._encode(to_model_input(clip()[None], vae.dtype, vae.device), None)
    torch.testing.assert_close(vae.encode(np.stack([clip()])), vae.normalize(raw.float()))
    n = vae.spec.normalization
    if vae.spec.cls == "AutoencoderKLWan":  # (z - mean) / std per channel, from the config
        mean, std = torch.tensor(MEAN).view(1, -1, 1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1, 1)
        torch.testing.assert_close(vae.normalize(x), (x - mean) / std)
        assert n["latents_mean"] == MEAN and n["latents_std"] == STD
    elif vae.spec.cls == "AutoencoderKL":
        torch.testing.assert_close(vae.normalize(x), (x - 0.25) * 0.5)
    else:
        torch.testing.assert_close(vae.normalize(x), x * n["scaling_factor"])


def test_sampled_latents_are_seeded(vae_dir):
    a = load_vae(LatentConfig(model_path=str(vae_dir), sample=True, seed=3)).encode(clip()[None])
    b = load_vae(LatentConfig(model_path=str(vae_dir), sample=True, seed=3)).encode(clip()[None])
    c = load_vae(LatentConfig(model_path=str(vae_dir), sample=True, seed=4)).encode(clip()[None])
    mean = load_vae(LatentConfig(model_path=str(vae_dir))).encode(clip()[None])
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, mean)


def test_causal_video_vaes_refuse_frame_counts_they_would_truncate(vae_dir):
    vae = load_vae(LatentConfig(model_path=str(vae_dir)))
    if vae.spec.temporal_factor == 1:
        assert vae.encode(clip(t=6)[None]).shape[2] == 6
        return
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(clip(t=8)[None])


def test_encode_batches_groups_by_shape_and_keeps_order(vae_dir):
    vae = load_vae(LatentConfig(model_path=str(vae_dir), batch_size=2))
    clips = [clip(seed=1), clip(t=5, h=16, w=16), clip(seed=2), clip(seed=3)]
    out = encode_batches(vae, clips)
    assert [o.dtype for o in out] == [np.float16] * 4
    for c, o in zip(clips, out, strict=True):  # each equals its own single-clip encode
        np.testing.assert_allclose(o, vae.encode(c[None])[0].numpy().astype(np.float16), atol=2e-3)


def test_bad_folders_are_one_line_errors(tmp_path, vae_dir):
    with pytest.raises(VaeError, match="not a directory"):
        load_vae(LatentConfig(model_path=str(tmp_path / "missing")))
    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (other / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    with pytest.raises(VaeError, match="UNet2DModel; latents support"):
        load_vae(LatentConfig(model_path=str(other)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((vae_dir / "config.json").read_text())
    with pytest.raises(VaeError, match="no weights"):
        load_vae(LatentConfig(model_path=str(broken)))
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(VaeError, match="cannot load") as info:
        load_vae(LatentConfig(model_path=str(broken)))
    assert "\n" not in str(info.value)


def test_config_is_validated():
    with pytest.raises(ValueError, match="latents.dtype"):
        LatentConfig(dtype="int8")
    with pytest.raises(ValueError, match="store_dtype"):
        LatentConfig(store_dtype="bfloat16")
    assert not LatentConfig().enabled


@pytest.mark.gpu
def test_cuda_bfloat16_encode_matches_cpu(vae_dir):
    """On a GPU the default dtype is bfloat16: the latents stay within bfloat16's precision of the CPU float32 ones,
    and a batch too large for the GPU is split rather than failing the clips."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = load_vae(LatentConfig(model_path=str(vae_dir), device="cpu"))
    gpu = load_vae(LatentConfig(model_path=str(vae_dir), device="cuda"))
    assert gpu.dtype == torch.bfloat16
    frames = np.stack([clip(), clip(seed=5)])
    torch.testing.assert_close(gpu.encode(frames).cpu(), cpu.encode(frames), atol=0.1, rtol=0.05)
    out = encode_batches(gpu, [clip(seed=i) for i in range(8)])
    assert len(out) == 8 and all(isinstance(o, np.ndarray) for o in out)
