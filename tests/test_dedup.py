"""Near-duplicate detection (pure functions against brute force) and score filters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation.dedup import (
    DedupConfig,
    connected_groups,
    embedding_pairs,
    find_duplicates,
    hash_pairs,
    parse_hashes,
    quality_rank,
)
from curation.filters import FILTERABLE, FilterConfig, filter_columns, violation


def random_hashes(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.integers(0, 2**63, (n, k), dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)


def flip(value: np.uint64, bits: list[int]) -> np.uint64:
    for b in bits:
        value ^= np.uint64(1) << np.uint64(b)
    return value


def test_parse_hashes_masks_missing():
    values, valid = parse_hashes([["00000000000000ff", None], None, ["ffffffffffffffff"]])
    assert values.shape == (3, 2) and values[0, 0] == 255 and values[2, 0] == np.uint64(2**64 - 1)
    assert valid.tolist() == [[True, False], [False, False], [True, False]]


@pytest.mark.parametrize("block_rows", [1, 3, 1024])
def test_hash_pairs_match_brute_force(block_rows: int):
    rng = np.random.default_rng(0)
    values = random_hashes(rng, 12, 3)
    values[5] = [flip(v, [1, 7]) for v in values[2]]  # 2 bits from clip 2 in every frame
    values[9] = [flip(v, list(range(9))) for v in values[2]]  # 9 bits
    valid = np.ones_like(values, dtype=bool)
    valid[7, 1] = False
    got = hash_pairs(values, valid, max_distance=10, min_frames=2, block_rows=block_rows)
    expected = []
    for i, j in itertools.combinations(range(12), 2):
        both = valid[i] & valid[j]
        d = [int(np.bitwise_count(values[i, f] ^ values[j, f])) for f in range(3) if both[f]]
        if len(d) >= 2 and np.mean(d) <= 10:
            expected.append((i, j, float(np.mean(d))))
    assert got == expected
    assert [(i, j) for i, j, _ in got] == [(2, 5), (2, 9), (5, 9)]


def test_hash_pairs_need_enough_common_frames():
    values = np.zeros((2, 3), dtype=np.uint64)
    valid = np.array([[True, False, False], [True, True, True]])
    assert hash_pairs(values, valid, 5, min_frames=2) == []
    assert hash_pairs(values, valid, 5, min_frames=1) == [(0, 1, 0.0)]


def test_embedding_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    x[4] = x[11] * 3 + 0.01 * rng.normal(size=8)  # same direction, other scale
    x[6] = np.nan  # no embedding
    got = embedding_pairs(x, 0.95, block_rows=7)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = [
        (i, j) for i, j in itertools.combinations(range(20), 2) if 6 not in (i, j) and unit[i] @ unit[j] >= 0.95
    ]
    assert [(i, j) for i, j, _ in got] == expected and (4, 11) in expected


def test_connected_groups():
    assert connected_groups(6, [(0, 3), (3, 5), (1, 2)]) == [[0, 3, 5], [1, 2]]
    assert connected_groups(3, []) == []


def test_quality_rank_prefers_aesthetic_then_resolution_then_duration_then_sharpness():
    a = {"clip_id": "a", "aesthetic_score": 5.0, "width": 320, "height": 180, "sharpness": 1.0}
    b = {"clip_id": "b", "aesthetic_score": 6.0, "width": 160, "height": 90, "sharpness": 0.5}
    assert min([a, b], key=quality_rank)["clip_id"] == "b"
    a2, b2 = {**a, "aesthetic_score": None}, {**b, "aesthetic_score": None}
    assert min([a2, b2], key=quality_rank)["clip_id"] == "a"  # larger source wins
    long = {**a2, "clip_id": "long", "start_s": 0.0, "end_s": 4.0, "sharpness": 0.1}
    assert min([{**a2, "start_s": 0.0, "end_s": 2.0}, long], key=quality_rank)["clip_id"] == "long"
    c = {**a2, "clip_id": "c", "sharpness": 9.0}
    assert min([a2, c], key=quality_rank)["clip_id"] == "c"  # same size: sharper wins
    assert min([a2, {**a2, "clip_id": "0"}], key=quality_rank)["clip_id"] == "0"  # full tie: by id


def hexes(values: np.ndarray) -> list[str]:
    return [f"{int(v):016x}" for v in values]


def test_find_duplicates_keeps_best_of_each_group():
    rng = np.random.default_rng(2)
    base = random_hashes(rng, 4, 3)
    clips = [
        {"clip_id": "orig", "width": 480, "height": 270, "sharpness": 50.0, "key_frame_hashes": hexes(base[0])},
        {"clip_id": "small", "width": 320, "height": 180, "sharpness": 80.0, "key_frame_hashes": hexes(base[0])},
        {"clip_id": "other", "width": 480, "height": 270, "sharpness": 60.0, "key_frame_hashes": hexes(base[1])},
        {"clip_id": "flat", "width": 480, "height": 270, "sharpness": 0.0, "key_frame_hashes": [None, None, None]},
        {"clip_id": "twin", "width": 480, "height": 270, "sharpness": 1.0, "key_frame_hashes": hexes(base[2])},
    ]
    found = find_duplicates(clips, None, DedupConfig())
    assert [(clips[d.dropped]["clip_id"], clips[d.kept]["clip_id"]) for d in found] == [("small", "orig")]
    assert "hash distance 0.0/64" in found[0].evidence
    # An embedding links "twin" to "other"; sharper "other" is kept. Hashes alone never link them.
    emb = np.full((5, 4), np.nan, np.float32)
    emb[2], emb[4] = [1, 0, 0, 0], [0.99, 0.1, 0, 0]
    found = find_duplicates(clips, emb, DedupConfig())
    pairs = {(clips[d.dropped]["clip_id"], clips[d.kept]["clip_id"]) for d in found}
    assert pairs == {("small", "orig"), ("twin", "other")}
    assert len(find_duplicates(clips, emb, DedupConfig(use_embeddings=False))) == 1  # the hash pair only
    assert find_duplicates(clips, emb, DedupConfig(enabled=False)) == []


def test_dedup_config_validation():
    for bad in ({"hash_distance": 40}, {"embedding_similarity": 0}, {"min_hashed_frames": 0}, {"block_rows": 0}):
        with pytest.raises(ValueError, match="dedup"):
            DedupConfig(**bad)


# --- filters -------------------------------------------------------------------------------------------------------


def test_filterable_columns_are_scores():
    for column in ("sharpness", "brightness", "aesthetic_score", "motion_mean", "event_score", "camera_confidence"):
        assert column in FILTERABLE
    for column in ("clip_id", "start_frame", "shard_row", "caption", "event_start_frame"):
        assert column not in FILTERABLE


def test_filters_drop_with_reason_and_keep_nulls():
    cfg = FilterConfig(min={"sharpness": 10.0}, max={"brightness": 0.9})
    clips = [
        {"clip_id": "ok", "sharpness": 12.0, "brightness": 0.5},
        {"clip_id": "soft", "sharpness": 3.0, "brightness": 0.5},
        {"clip_id": "bright", "sharpness": 30.0, "brightness": 0.95},
        {"clip_id": "unscored", "sharpness": None, "brightness": None},
    ]
    columns = {c: np.array([np.nan if x[c] is None else x[c] for x in clips]) for c in ("sharpness", "brightness")}
    dropped, reasons, _ = filter_columns(columns, cfg)
    assert dropped.tolist() == [1, 2] and reasons == ["low_sharpness", "high_brightness"]  # the unscored clip stays
    assert violation(clips[1], cfg)[1] == "sharpness 3 < filters.min.sharpness=10"


def test_filter_config_validation():
    with pytest.raises(ValueError, match="filters.min.caption"):
        FilterConfig(min={"caption": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        FilterConfig(max={"sharpness": float("nan")})
    with pytest.raises(ValueError, match="exceeds"):
        FilterConfig(min={"sharpness": 5.0}, max={"sharpness": 1.0})
