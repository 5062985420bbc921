"""Classical quality scores and perceptual hashes: properties of the math, and the ranking of the sample corpus's
blurry and dark clips against their sharp / normally exposed counterparts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from annotators.base import object_array, spread_indices
from annotators.quality import (
    QualityConfig,
    QualityScorer,
    clip_quality,
    colorfulness,
    frame_scores,
    perceptual_hash,
    sharpness,
)
from pipelines.annotate import annotate_file
from pipelines.config import load_config
from pipelines.samples import SPECS


def texture(seed: int, size: tuple[int, int] = (96, 128), sigma: float = 2.0) -> np.ndarray:
    """A smooth random RGB texture (structure at several scales)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((*size, 3)).astype(np.float32), (0, 0), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@pytest.mark.parametrize(
    ("total", "k", "expected"),
    [(16, 4, [0, 5, 10, 15]), (3, 8, [0, 1, 2]), (9, 1, [4]), (0, 3, []), (1, 4, [0]), (10, 4, [0, 3, 6, 9])],
)
def test_spread_indices(total: int, k: int, expected: list[int]):
    assert spread_indices(total, k).tolist() == expected


def test_spread_indices_unique_and_spanning():
    for n in range(1, 40):
        for k in range(1, 12):
            idx = spread_indices(n, k).tolist()
            assert idx == sorted(set(idx)) and len(idx) == min(n, k) and all(0 <= i < n for i in idx)
            if k > 1:
                assert idx[0] == 0 and idx[-1] == n - 1


def test_sharpness_falls_with_blur():
    img = cv2.cvtColor(texture(0, sigma=1.0), cv2.COLOR_RGB2GRAY).astype(np.float32)
    values = [sharpness(cv2.GaussianBlur(img, (0, 0), s) if s else img) for s in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert sharpness(np.full((32, 32), 90.0)) == 0.0


def test_exposure_and_contrast():
    flat = np.full((20, 30, 3), 128, np.uint8)
    s = frame_scores(flat)
    assert s["brightness"] == pytest.approx(128 / 255, abs=1e-6)
    assert s["contrast"] == pytest.approx(0.0, abs=1e-6) and s["colorfulness"] == pytest.approx(0.0)
    assert s["clipped_dark"] == 0.0 and s["clipped_bright"] == 0.0
    half = np.zeros((20, 30, 3), np.uint8)
    half[:, 15:] = 255
    s = frame_scores(half)
    assert s["clipped_dark"] == pytest.approx(0.5) and s["clipped_bright"] == pytest.approx(0.5)
    assert s["contrast"] == pytest.approx(0.5, abs=1e-3)  # std of a 0/1 half-half image
    img = texture(1)
    dim = (img.astype(np.float32) * 0.3).astype(np.uint8)
    assert frame_scores(dim)["brightness"] < 0.35 * frame_scores(img)["brightness"] + 0.01
    assert frame_scores(dim)["contrast"] < frame_scores(img)["contrast"]


def test_colorfulness_orders_grey_muted_vivid():
    grey = np.repeat(texture(2)[..., :1], 3, axis=-1)
    vivid = texture(2)
    muted = (0.3 * vivid.astype(np.float32) + 0.7 * grey.astype(np.float32)).astype(np.uint8)
    assert colorfulness(grey) == pytest.approx(0.0)
    assert 0 < colorfulness(muted) < colorfulness(vivid)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    # rg = 200, yb = 100, no spread: 0.3 * hypot(200, 100)
    assert colorfulness(red) == pytest.approx(0.3 * np.hypot(200, 100))


def test_perceptual_hash_is_robust_to_copies_and_separates_images():
    img = texture(3, (180, 320))
    h = perceptual_hash(img)
    assert h is not None and perceptual_hash(img) == h
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    copies = {
        "jpeg": cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED),
        "resized": cv2.resize(img, (160, 90), interpolation=cv2.INTER_AREA),
        "cropped": cv2.resize(img[5:-5, 10:-10], (320, 180)),
        "brighter": np.clip(img.astype(np.int16) + 30, 0, 255).astype(np.uint8),
    }
    for name, copy in copies.items():
        assert hamming(h, perceptual_hash(copy)) <= 8, name
    others = [hamming(h, perceptual_hash(texture(s, (180, 320)))) for s in range(10, 20)]
    assert min(others) > 16 and 24 < np.mean(others) < 40  # unrelated images: about half of the 64 bits


def test_flat_frames_have_no_hash():
    assert perceptual_hash(np.full((40, 40, 3), 17, np.uint8)) is None
    noise = np.random.default_rng(0).integers(16, 18, (40, 40, 3)).astype(np.uint8)
    assert perceptual_hash(noise) is None


def test_clip_quality_and_scorer_batch():
    frames = np.stack([texture(i) for i in range(6)])
    out = clip_quality(frames, QualityConfig(num_frames=3, hash_frames=3))
    expected = np.mean([frame_scores(frames[i])["sharpness"] for i in (0, 3, 5)])  # 2.5 rounds half up
    assert out["sharpness"] == pytest.approx(expected)
    assert len(out["key_frame_hashes"]) == 3 and all(len(h) == 16 for h in out["key_frame_hashes"])
    scorer = QualityScorer(QualityConfig())
    batch = {"clip_id": object_array(["a", "b", "c"]), "frames": object_array([frames, None, frames[:, :, :, :2]])}
    result = scorer(batch)
    assert set(result) == {"clip_id", *QualityScorer.output_columns}
    assert result["quality_error"][0] is None and isinstance(result["sharpness"][0], float)
    assert result["quality_error"][1].startswith("no_frames") and result["sharpness"][1] is None
    assert result["quality_error"][2].startswith("bad_frames")
    with pytest.raises(ValueError, match="quality.num_frames"):
        QualityConfig(num_frames=0)


# --- golden: the sample corpus -------------------------------------------------------------------------------------


def corpus_scores(corpus_dir: Path, name: str) -> dict:
    spec = next(s for s in SPECS if s.name == name)
    cfg = load_config(None, ["flow.backend=none", "buckets.aspect_ratios=[]"])  # quality only: no flow, no models
    return annotate_file(str(spec.video_path(corpus_dir)), cfg)


def test_blurry_clip_ranks_below_its_sharp_twin(corpus_dir: Path):
    blurry, sharp = corpus_scores(corpus_dir, "blurry"), corpus_scores(corpus_dir, "sharp_twin")
    assert blurry["sharpness"] < 0.2 * sharp["sharpness"]
    # Same scene: exposure and colour barely move, so sharpness alone tells them apart.
    assert blurry["brightness"] == pytest.approx(sharp["brightness"], abs=0.03)


def test_dark_clip_ranks_below_normal_exposure(corpus_dir: Path):
    dark = corpus_scores(corpus_dir, "dark")
    others = [
        corpus_scores(corpus_dir, s.name)["brightness"]
        for s in SPECS
        if s.kind == "rotation" and s.name != "dark" and "camera" in s.tags
    ]
    assert dark["brightness"] < 0.6 * min(others)
    assert dark["contrast"] < min(corpus_scores(corpus_dir, n)["contrast"] for n in ("pan_right", "odd_size", "static"))
