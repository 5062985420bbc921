import numpy as np
import pytest

from curation.sampling import FramesConfig, decode_size, fit_to_target, sample_indices


def test_stride_from_target_fps_and_centred():
    cfg = FramesConfig(num_frames=4, fps=10.0)
    indices, stride = sample_indices(100, 200, 30.0, cfg)
    assert stride == 3
    assert indices == [145, 148, 151, 154]  # 10-frame window centred in [100, 200)


def test_stride_shrinks_for_short_clips_and_too_short_is_none():
    cfg = FramesConfig(num_frames=8, fps=5.0)
    indices, stride = sample_indices(0, 20, 30.0, cfg)  # wants stride 6, only 20 frames
    assert stride == 2 and indices[-1] < 20
    assert sample_indices(0, 7, 30.0, cfg) is None


@pytest.mark.parametrize("mode", ["cover", "fit", "stretch"])
@pytest.mark.parametrize("w,h", [(640, 360), (270, 480), (333, 187), (64, 64)])
def test_resize_policies_give_exact_target_size(mode, w, h):
    cfg = FramesConfig(width=96, height=64, resize=mode)
    dw, dh = decode_size(w, h, cfg)
    frame = np.full((dh, dw, 3), 200, np.uint8)
    out = fit_to_target(frame, cfg)
    assert out.shape == (64, 96, 3)
    if mode == "fit" and (w / h) != 96 / 64:
        assert (out == 0).any()  # letterbox borders
    if mode == "cover":
        assert (out == 200).all()  # never borders
