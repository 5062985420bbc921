"""Warped noise at a video VAE's latent grid: 16 channels at 1/8 of the frames, 1 + 4k frames reduced to 1 + k.
The statistical checks of test_noise_warp hold there too, and latent frame k is source frame 4k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotators.noise_warp import latent_frame_groups, reduce_noise_frames, warped_noise_video
from annotators.warped_noise import NoiseConfig, WarpedNoiser
from tests.test_noise_warp import assert_white, best_shift, motion_flow


def test_groups_follow_the_causal_vae():
    assert [list(g) for g in latent_frame_groups(9, 4)] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert len(latent_frame_groups(49, 4)) == 13
    with pytest.raises(ValueError, match="whole latent frames"):
        latent_frame_groups(16, 4)


def latent_video(frames: int = 17, motion: str = "translate") -> torch.Tensor:
    """Warped noise of a Wan-shaped latent grid: 16 channels at 1/8 of 128x192 frames, warped 16x finer."""
    flow = motion_flow(motion, 128, 192)
    return warped_noise_video(
        flow.expand(frames - 1, 2, 128, 192).numpy(), channels=16, noise_size=(16, 24), warp_scale=16, seed=3
    )


@pytest.mark.parametrize("motion", ["translate", "zoom_in", "rotate"])
def test_nearest_latent_frames_are_white_and_are_frames_0_4_8(motion):
    full = latent_video(motion=motion)
    latent = reduce_noise_frames(full, 4, "nearest")
    assert latent.shape == (5, 16, 16, 24)
    for k in range(5):
        assert torch.equal(latent[k], full[4 * k])  # latent frame k is source frame 4k, bit for bit
        assert_white(latent[k], f"{motion} latent frame {k}")


def test_nearest_latent_frames_follow_the_motion_across_a_group():
    """A pan of (3.4, -1.7) frame px per frame is (0.425, -0.2125) latent px: 4 frames later about (2, -1)."""
    latent = reduce_noise_frames(latent_video(frames=9), 4, "nearest")
    dx, dy, r = best_shift(latent[1], latent[2], radius=3)
    assert (dx, dy) == (2, -1) and r > 0.3


def test_blend_keeps_unit_variance_per_pixel():
    full = latent_video()
    blended = reduce_noise_frames(full, 4, "blend")
    assert blended.shape == (5, 16, 16, 24)
    per_pixel = blended.pow(2).mean(1)
    torch.testing.assert_close(per_pixel, torch.ones_like(per_pixel), atol=1e-4, rtol=0)
    assert abs(float(blended.mean())) < 0.05
    with pytest.raises(ValueError, match="noise.temporal"):
        reduce_noise_frames(full, 4, "cubic")


def test_the_annotator_stores_latent_frames_and_refuses_partial_groups():
    flow = motion_flow("translate", 64, 64).expand(8, 2, 64, 64).numpy().astype(np.float16)
    frames = np.zeros((9, 64, 64, 3), np.uint8)
    noiser = WarpedNoiser(NoiseConfig(channels=16, factor=8, temporal_factor=4, device="cpu"))
    out = noiser.annotate("clip", flow, frames)
    assert out["warped_noise"].shape == (3, 16, 8, 8) and out["warped_noise"].dtype == np.float16
    pixel = WarpedNoiser(NoiseConfig(channels=16, factor=8, device="cpu")).annotate("clip", flow, frames)
    np.testing.assert_array_equal(out["warped_noise"], pixel["warped_noise"][[0, 4, 8]])  # same seed, same noise
    from annotators.base import AnnotatorError

    with pytest.raises(AnnotatorError, match="whole latent frames"):
        noiser.annotate("clip", flow[:7], frames[:8])
