"""Bucket math (curation.buckets): generated shapes, assignment by aspect ratio, the cover crop, and windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curation.buckets import (
    DEFAULT_ASPECTS,
    Bucket,
    BucketConfig,
    available_frames,
    cover_plan,
    generated_shape,
    is_latent_aligned,
    nearest_shape,
    parse_aspect,
    plan_windows,
)

CFG = BucketConfig(aspect_ratios=DEFAULT_ASPECTS)
SOURCES = [(640, 272), (640, 360), (1280, 544), (1280, 720), (1080, 1920), (720, 720), (480, 640), (333, 187)]


def test_generated_buckets_keep_the_area_snap_sides_and_use_1_plus_4k_frames():
    buckets = CFG.buckets()
    assert len(buckets) == len(DEFAULT_ASPECTS) * len(CFG.frames)
    for b in buckets:
        assert b.height % 16 == 0 and b.width % 16 == 0
        assert is_latent_aligned(b.num_frames)
        assert abs(b.height * b.width / CFG.area - 1) < 0.12  # snapping moves the area a little
    # each aspect ratio is kept to within what snapping to 16 px allows
    for text in DEFAULT_ASPECTS:
        h, w = generated_shape(parse_aspect(text), CFG.area, 16)
        assert abs(math.log((w / h) / parse_aspect(text))) < math.log(1 + 16 / min(h, w))
    assert (256, 448) in CFG.shapes() and (448, 256) in CFG.shapes() and (336, 336) in CFG.shapes()


def test_every_source_goes_to_the_nearest_aspect_and_loses_at_most_the_gap_to_it():
    shapes = CFG.shapes()
    rng = np.random.default_rng(0)
    sources = SOURCES + [(int(w), int(h)) for w, h in rng.integers(100, 4000, size=(300, 2))]
    for w, h in sources:
        shape = nearest_shape(w, h, shapes)
        gap = abs(math.log((shape[1] / shape[0]) / (w / h)))
        assert gap == pytest.approx(min(abs(math.log((s[1] / s[0]) / (w / h))) for s in shapes), abs=1e-9)
        plan = cover_plan(w, h, *shape)
        assert plan.crop_fraction == pytest.approx(1 - math.exp(-gap), abs=1e-9)
        # the decode covers the bucket and keeps the source's aspect ratio (to a pixel of rounding)
        assert plan.decode_width >= shape[1] and plan.decode_height >= shape[0]
        assert min(plan.decode_width - shape[1], plan.decode_height - shape[0]) <= 1
        assert abs(plan.decode_width / plan.decode_height - w / h) < 2 / min(plan.decode_width, plan.decode_height)


def test_real_aspect_ratios_land_in_matching_buckets_with_little_crop():
    expected = {
        (640, 272): (224, 528),  # 2.35:1 film -> 2.39:1
        (1280, 544): (224, 528),
        (640, 360): (256, 448),  # 16:9
        (1280, 720): (256, 448),
        (1080, 1920): (448, 256),  # portrait phone video
        (720, 720): (336, 336),
    }
    for (w, h), shape in expected.items():
        assert nearest_shape(w, h, CFG.shapes()) == shape, (w, h)
        assert cover_plan(w, h, *shape).crop_fraction <= 0.1


def test_the_old_square_crop_is_what_buckets_fix():
    # a 2.35:1 film into 256x256 loses 57% of its picture; into its bucket, about 2%
    assert cover_plan(640, 272, 256, 256).crop_fraction == pytest.approx(0.575, abs=0.001)
    assert cover_plan(640, 272, 224, 528).crop_fraction < 0.01


def test_upscale_is_measured_so_a_run_can_refuse_it():
    assert cover_plan(320, 180, 256, 448).scale == pytest.approx(256 / 180)  # the height binds: 16:9 < 1.75
    assert cover_plan(1920, 1080, 256, 448).scale == pytest.approx(256 / 1080)


def test_windows_cover_the_clip_consecutively_and_frame_exact():
    counts = [17, 33, 49]
    rng = np.random.default_rng(1)
    for _ in range(500):
        start = int(rng.integers(0, 1000))
        length = int(rng.integers(1, 600))
        stride = int(rng.integers(1, 6))
        most = int(rng.integers(1, 5))
        windows = plan_windows(start, start + length, stride, counts, most)
        positions = available_frames(length, stride)
        assert len(windows) <= most
        if positions < 17:
            assert windows == []
            continue
        assert windows
        flat = [i for w in windows for i in w]
        assert all(start <= i < start + length for i in flat)
        assert np.all(np.diff(flat) == stride)  # consecutive, no gap, no overlap
        assert all(len(w) in counts for w in windows)
        left = positions - len(flat)
        assert len(windows) == most or left < 17  # stops only when full or nothing more fits
        first, last = flat[0] - start, start + length - 1 - flat[-1]
        assert abs(first - last) <= 1  # centred


def test_a_ten_second_shot_gives_windows_covering_it():
    # 10 s at 24 fps, sampled at 8 fps (stride 3): 80 positions -> 49 + 17, 8.25 s of the 10
    windows = plan_windows(0, 240, 3, [17, 33, 49], 4)
    assert [len(w) for w in windows] == [49, 17]
    covered = (windows[-1][-1] - windows[0][0] + 3) / 24
    assert covered == pytest.approx(8.25)
    assert plan_windows(0, 240, 3, [17, 33, 49], 1) == [list(range(47, 47 + 49 * 3, 3))]  # one, centred


def test_config_is_validated_up_front():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        BucketConfig(aspect_ratios=("16:9",), frames=(16,))
    with pytest.raises(ValueError, match="either explicit"):
        BucketConfig(aspect_ratios=("16:9",), explicit=((256, 448, 33),))
    with pytest.raises(ValueError, match="multiples of"):
        BucketConfig(explicit=((250, 448, 33),))
    with pytest.raises(ValueError, match="width:height"):
        BucketConfig(aspect_ratios=("wide",))
    with pytest.raises(ValueError, match="max_upscale"):
        BucketConfig(aspect_ratios=("1:1",), max_upscale=0.5)
    assert not BucketConfig().enabled
    explicit = BucketConfig(explicit=((256, 448, 33), (256, 448, 17), (448, 256, 33)))
    assert explicit.buckets()[0] == Bucket(num_frames=17, height=256, width=448)
    assert explicit.frame_counts((256, 448)) == [17, 33]
    assert Bucket.parse("33x256x448") == Bucket(33, 256, 448) and Bucket(33, 256, 448).name == "33x256x448"


def test_bucket_shapes_must_suit_the_noise_and_event_grids():
    from pipelines.config import ConfigError, load_config
    from tests.conftest import SMOKE

    with pytest.raises(ConfigError, match="72 of a bucket must be multiples of events.cell=16"):
        load_config(SMOKE, ["buckets.explicit=[[72, 128, 17]]", "buckets.multiple=8"])
    with pytest.raises(ConfigError, match="frame counts must be 1 \\+ 4k"):
        load_config(SMOKE, ["buckets.explicit=[[64, 128, 16]]"])
    cfg = load_config(SMOKE, ['buckets.aspect_ratios=["1:1", "16:9"]', "buckets.area=4096"])
    assert cfg.stored_shapes() == [(t, h, w) for t in (17, 33, 49) for h, w in ((48, 80), (64, 64))]
