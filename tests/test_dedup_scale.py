"""Near-duplicate removal at scale: the candidate search (curation/dedup_index.py) against the exact all-pairs path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation import dedup_index
from curation.dedup import (
    DedupConfig,
    embedding_pairs,
    find_duplicates,
    find_hash_pairs,
    hash_pairs,
)


def flip_random(rng: np.random.Generator, value: np.uint64, bits: int) -> np.uint64:
    for b in rng.choice(64, bits, replace=False):
        value ^= np.uint64(1) << np.uint64(b)
    return value


def synthetic(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes (n, 3), valid, embeddings (n, dim)): groups of 2-4 near-duplicates (hash flips 0-9 per frame, cosine
    0.93-0.999 to the group's first clip), the rest unrelated; a few missing hashes and embeddings."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, np.iinfo(np.uint64).max, (n, 3), dtype=np.uint64, endpoint=True)
    topic = np.linalg.qr(rng.normal(size=(dim, 6)))[0]
    emb = rng.normal(size=(n, 6)) @ topic.T + 0.5 * rng.normal(size=(n, dim)) + 0.5  # a cone, as CLIP
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    start = 0
    while start < n:
        size = int(rng.integers(2, 5)) if rng.random() < 0.3 else 1
        for m in range(start + 1, min(n, start + size)):
            values[m] = [flip_random(rng, v, int(rng.integers(0, 10))) for v in values[start]]
            c = rng.uniform(0.93, 0.999)
            u = rng.normal(size=dim)
            u -= (u @ emb[start]) * emb[start]
            emb[m] = c * emb[start] + np.sqrt(1 - c * c) * u / np.linalg.norm(u)
        start += size
    valid = rng.random((n, 3)) >= 0.05
    values[~valid] = 0
    emb[rng.random(n) < 0.02] = np.nan
    return values, valid, emb.astype(np.float32)


def clips_of(values: np.ndarray, valid: np.ndarray, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "clip_id": f"c{i:05d}",
            "aesthetic_score": float(rng.uniform(3, 7)),
            "key_frame_hashes": [f"{int(v):016x}" if ok else None for v, ok in zip(row, oks, strict=True)],
        }
        for i, (row, oks) in enumerate(zip(values, valid, strict=True))
    ]


def test_close_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    keys = np.sort(rng.integers(0, 6, 60))
    values = rng.integers(0, 16, 60).astype(np.uint64)  # 4-bit values: distances 0-4
    for limit in (0, 1, 2, 4):
        first, second = dedup_index.close_pairs(keys, values, limit)
        got = sorted(zip(first.tolist(), second.tolist(), strict=True))
        expected = [
            (p, q)
            for p, q in itertools.combinations(range(60), 2)
            if keys[p] == keys[q] and int(np.bitwise_count(values[p] ^ values[q])) <= limit
        ]
        assert got == expected
    assert len(dedup_index.close_pairs(np.arange(5), np.zeros(5, np.uint64), 64)[0]) == 0


def test_mih_masks_partition_the_bits():
    for t in (0, 3, 10.0, 10.9, 31.5):
        masks = dedup_index.mih_masks(t)
        assert len(masks) == int(t) + 1
        assert np.bitwise_or.reduce(masks) == np.uint64(2**64 - 1)
        assert sum(int(np.bitwise_count(m)) for m in masks) == 64  # disjoint


def test_mih_candidates_have_recall_one():
    """Pigeonhole: every pair within the rule shares a multi-index key, including pairs right at the threshold with
    their distance spread unevenly over the frames and pairs missing a frame."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, np.iinfo(np.uint64).max, (400, 3), dtype=np.uint64, endpoint=True)
    valid = rng.random((400, 3)) >= 0.1
    for i, spread in enumerate([(10, 10, 10), (0, 15, 15), (5, 5, 20), (10, 10, 11), (3, 17, 10), (2, 2, 2)] * 10):
        a, b = 2 * i, 2 * i + 1
        values[b] = [flip_random(rng, v, d) for v, d in zip(values[a], spread, strict=True)]
    values[~valid] = 0
    exact = hash_pairs(values, valid, 10.0, 2)
    a, b, d = dedup_index.hash_pairs_indexed(values, valid, 10.0, 2, dedup_index.mih_masks(10.0))
    assert list(zip(a.tolist(), b.tolist(), d.tolist(), strict=True)) == exact and len(exact) >= 40
    cfg = DedupConfig(method="approximate", hash_index="mih", hash_distance=4.5, min_hashed_frames=1)
    assert find_hash_pairs(values, valid, cfg) == hash_pairs(values, valid, 4.5, 1)


def test_lsh_pairs_are_exact_pairs():
    values, valid, _ = synthetic(3000, 8, 4)
    exact = hash_pairs(values, valid, 10.0, 2)
    got = find_hash_pairs(values, valid, DedupConfig(method="approximate"))
    assert set(got) <= set(exact)  # verified: never a pair the exact rule rejects, with the same distance
    assert len(got) >= 0.99 * len(exact) and len(exact) > 500


def test_residual_bound_loses_no_pair():
    """With one list every pair is compared, so the PCA + residual-norm filter alone decides: it must keep every pair
    the exact cosine passes, also when the reduced space holds little of the vectors."""
    _, _, emb = synthetic(1500, 48, 5)
    exact = embedding_pairs(emb, 0.95)
    for dims in (4, 16, 0):
        a, b, cos = dedup_index.embedding_pairs_indexed(emb, 0.95, dims, nlist=1, nprobe=1, margin=0.0, seed=0)
        assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(i, j) for i, j, _ in exact]
        assert np.allclose(cos, [s for _, _, s in exact], atol=1e-5)


def test_memmap_embeddings_read_in_batches(tmp_path):
    _, _, emb = synthetic(800, 32, 6)
    path = tmp_path / "emb.f16"
    emb.astype(np.float16).tofile(path)
    mapped = np.memmap(path, np.float16, "r", shape=emb.shape)
    assert np.array_equal(dedup_index.take_rows(mapped, np.array([5, 1, 700])), emb.astype(np.float16)[[5, 1, 700]])
    in_memory = dedup_index.embedding_pairs_indexed(np.array(mapped), 0.95, 8, 4, 2, 0.03, seed=0)
    from_disk = dedup_index.embedding_pairs_indexed(mapped, 0.95, 8, 4, 2, 0.03, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(in_memory, from_disk, strict=True)) and len(from_disk[0]) > 50


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cell_search_over_every_cell_is_the_flat_search():
    """Searching all cells, the two-level kernel returns each row's lists exactly as a brute-force search would: the
    most similar first, those within the margin of the best, at most nprobe."""
    from curation.dedup_cells import dimension_major, search_cells

    rng = np.random.default_rng(0)
    x, fine = unit_rows(rng, 600, 12), unit_rows(rng, 57, 12)
    first = np.array([0, 9, 10, 30, 41, 57])  # five cells of unequal size, one of a single list
    top = unit_rows(rng, 5, 12)
    lists, counts = np.zeros((600, 8), np.int64), np.zeros(600, np.int64)
    layout = dimension_major([fine[a:b] for a, b in itertools.pairwise(first)])
    search_cells(x, dimension_major([top]), layout, first, 5, 8, np.float32(0.1), lists, counts)
    sims = x @ fine.T
    for i in range(600):
        order = np.argsort(-sims[i], kind="stable")[:8]
        want = order[sims[i, order] >= sims[i, order[0]] - 0.1]
        assert counts[i] == len(want) >= 1
        assert np.allclose(sims[i, lists[i, : counts[i]]], sims[i, want], atol=1e-6)  # ties may swap two lists


def test_two_level_search_finds_the_flat_search_pairs():
    """Coarse cells searched partly: every pair found is a true pair, and nearly all the flat search's are found."""
    _, _, emb = synthetic(6000, 32, 9)
    flat = dedup_index.embedding_pairs_indexed(emb, 0.95, 8, 96, 16, 0.03, seed=0, coarse=1)
    two = dedup_index.embedding_pairs_indexed(emb, 0.95, 8, 96, 16, 0.03, seed=0, coarse=12, coarse_nprobe=6)
    exact = {(i, j) for i, j, _ in embedding_pairs(emb, 0.95)}
    found = set(zip(two[0].tolist(), two[1].tolist(), strict=True))
    assert found <= exact and len(exact) > 1000
    assert len(found & set(zip(flat[0].tolist(), flat[1].tolist(), strict=True))) >= 0.99 * len(flat[0])


def test_auto_index_sizes():
    """Lists of ~256 clips; the coarse level from 1,024 lists, searched through 2 sqrt(cells) of them."""
    assert dedup_index.auto_nlist(1_000_000) == 3906 and dedup_index.auto_nlist(1000) == 4
    assert dedup_index.auto_coarse(1000) == 1 and dedup_index.auto_coarse(39062) == 395
    assert dedup_index.auto_coarse_nprobe(395) == 40 and dedup_index.auto_coarse_nprobe(30) == 16


@pytest.mark.parametrize("seed", [7, 8])
def test_approximate_decisions_equal_exact(seed: int):
    """A few thousand clips: the approximate path drops the same clips for the same keepers with the same evidence
    (multi-index hashing finds every hash pair; the probe margin covers this data's embedding pairs)."""
    values, valid, emb = synthetic(3000, 32, seed)
    clips = clips_of(values, valid, seed)
    exact = find_duplicates(clips, emb, DedupConfig(method="exact"))
    cfg = DedupConfig(method="approximate", hash_index="mih", embedding_dims=8, embedding_probe_margin=0.06)
    approx = find_duplicates(clips, emb, cfg)
    assert approx == exact and len(exact) > 500


def test_auto_takes_exact_path_below_threshold(monkeypatch):
    cfg = DedupConfig(exact_max_clips=100)
    assert not cfg.approximate(100) and cfg.approximate(101)
    assert DedupConfig(method="approximate").approximate(2) and not DedupConfig(method="exact").approximate(10**9)

    def refuse(*args, **kwargs):
        raise AssertionError("the candidate search ran below exact_max_clips")

    monkeypatch.setattr(dedup_index, "hash_pairs_indexed", refuse)
    monkeypatch.setattr(dedup_index, "embedding_pairs_indexed", refuse)
    values, valid, emb = synthetic(100, 8, 9)
    assert find_duplicates(clips_of(values, valid, 9), emb, cfg)  # exact, and it finds duplicates
    with pytest.raises(AssertionError, match="candidate search"):
        find_duplicates(clips_of(values, valid, 9), emb, DedupConfig(exact_max_clips=99))


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "fast"},
        {"exact_max_clips": -1},
        {"hash_index": "simhash"},
        {"hash_bits": 4},
        {"hash_bits": 65},
        {"hash_tables": 0},
        {"embedding_dims": -1},
        {"embedding_nlist": -2},
        {"embedding_nprobe": 0},
        {"embedding_coarse": -1},
        {"embedding_coarse_nprobe": -3},
        {"embedding_probe_margin": -0.1},
    ],
)
def test_scale_config_validation(bad: dict):
    with pytest.raises(ValueError, match="dedup"):
        DedupConfig(**bad)
