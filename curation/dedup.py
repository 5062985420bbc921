"""Global near-duplicate removal: perceptual hashes of key frames (always available) and cosine similarity of CLIP
clip embeddings (when an embedding model ran).

Two clips are near-duplicates when their key frames' mean Hamming distance is at most `dedup.hash_distance` bits
(of 64) or their embeddings' cosine similarity is at least `dedup.embedding_similarity`. Duplicate pairs are
joined into groups (connected components); each group keeps its best clip (`quality_rank`) and the others are
dropped with the kept clip's id in the detail. Pairs are found block-wise so memory stays at a few blocks of
`block_rows x n` whatever the number of clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NO_HASH = np.uint64(0)  # placeholder where a key frame had no hash; masked out by `valid`


@dataclasses.dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Near-duplicate detection settings."""

    enabled: bool = True
    hash_distance: float = 10.0  # max mean Hamming distance of key-frame hashes, bits of 64 (unrelated: about 32)
    min_hashed_frames: int = 2  # key frames both clips must have hashes for (flat frames have none)
    use_embeddings: bool = True  # also link clips whose CLIP embeddings are close (when embeddings exist)
    embedding_similarity: float = 0.95  # min cosine similarity of clip embeddings
    block_rows: int = 1024  # rows compared at once (memory: block_rows x clips)

    def __post_init__(self) -> None:
        if not 0.0 <= self.hash_distance < 32.0:
            raise ValueError("dedup.hash_distance must be in [0, 32) bits (unrelated frames differ by about 32)")
        if self.min_hashed_frames < 1:
            raise ValueError("dedup.min_hashed_frames must be >= 1")
        if not 0.0 < self.embedding_similarity <= 1.0:
            raise ValueError("dedup.embedding_similarity must be in (0, 1]")
        if self.block_rows < 1:
            raise ValueError("dedup.block_rows must be >= 1")


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """A clip dropped as a near-duplicate of `kept` (indices into the clip list), with the evidence."""

    dropped: int
    kept: int
    evidence: str


def parse_hashes(hashes: Sequence[Sequence[str | None] | None]) -> tuple[np.ndarray, np.ndarray]:
    """Hex key-frame hashes per clip -> (values (n, k) uint64, valid (n, k) bool); k is the longest list."""
    k = max((len(h) for h in hashes if h), default=0)
    values = np.zeros((len(hashes), k), dtype=np.uint64)
    valid = np.zeros((len(hashes), k), dtype=bool)
    for i, row in enumerate(hashes):
        for j, h in enumerate(row or ()):
            if h:
                values[i, j], valid[i, j] = np.uint64(int(h, 16)), True
    return values, valid


def hash_pairs(
    values: np.ndarray, valid: np.ndarray, max_distance: float, min_frames: int, block_rows: int = 1024
) -> list[tuple[int, int, float]]:
    """Pairs (i < j, mean distance) whose key frames (compared position by position, where both have a hash, at
    least `min_frames` of them) differ by at most `max_distance` bits on average."""
    n, k = values.shape
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, n, block_rows):
        rows = slice(start, min(n, start + block_rows))
        bits = np.zeros((rows.stop - start, n), dtype=np.int32)
        common = np.zeros((rows.stop - start, n), dtype=np.int32)
        for f in range(k):
            both = valid[rows, f, None] & valid[None, :, f]
            distance = np.bitwise_count(values[rows, f, None] ^ values[None, :, f]).astype(np.int32)
            bits += np.where(both, distance, 0)
            common += both
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = bits / common
        i, j = np.nonzero((common >= min_frames) & (mean <= max_distance))
        i += start
        keep = j > i  # each unordered pair once, no self-pairs
        pairs.extend((int(a), int(b), float(mean[a - start, b])) for a, b in zip(i[keep], j[keep], strict=True))
    return pairs


def embedding_pairs(
    embeddings: np.ndarray, min_similarity: float, block_rows: int = 1024
) -> list[tuple[int, int, float]]:
    """Pairs (i < j, cosine) of rows of `embeddings` (n, d) whose cosine similarity is at least `min_similarity`.
    Rows of NaN (no embedding) never pair."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    usable = np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)
    x = np.where(usable[:, None], x / np.where(usable[:, None], norms, 1.0), 0.0)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(x), block_rows):
        sims = x[start : start + block_rows] @ x.T
        i, j = np.nonzero(sims >= min_similarity)
        i += start
        keep = (j > i) & usable[i] & usable[j]
        pairs.extend((int(a), int(b), float(sims[a - start, b])) for a, b in zip(i[keep], j[keep], strict=True))
    return pairs


def connected_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size >= 2 of the graph on n nodes with edges `pairs`, each sorted, in order of
    their smallest member."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving keeps the trees shallow
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for a in range(n):
        members.setdefault(root(a), []).append(a)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def quality_rank(clip: Mapping[str, Any]) -> tuple:
    """Sort key, best first when sorted ascending: aesthetic score, then source resolution, then duration (a
    full-length original beats a trimmed or split copy), then sharpness, then clip id (so ties resolve the same
    way in every run)."""

    def neg(value: Any) -> float:
        return -float(value) if value is not None and np.isfinite(value) else float("inf")

    pixels = (clip.get("width") or 0) * (clip.get("height") or 0)
    seconds = (clip.get("end_s") or 0.0) - (clip.get("start_s") or 0.0)
    return (
        neg(clip.get("aesthetic_score")),
        -pixels,
        -round(seconds, 3),
        neg(clip.get("sharpness")),
        clip.get("clip_id") or "",
    )


def find_duplicates(
    clips: Sequence[Mapping[str, Any]], embeddings: np.ndarray | None, cfg: DedupConfig
) -> list[Duplicate]:
    """The clips to drop as near-duplicates, one `Duplicate` each. `clips` need `key_frame_hashes` plus the
    `quality_rank` fields; `embeddings` is (n, d) with NaN rows for clips without one (or None)."""
    if not cfg.enabled or len(clips) < 2:
        return []
    values, valid = parse_hashes([c.get("key_frame_hashes") for c in clips])
    evidence: dict[tuple[int, int], str] = {}
    for a, b, d in hash_pairs(values, valid, cfg.hash_distance, cfg.min_hashed_frames, cfg.block_rows):
        evidence[a, b] = f"key-frame hash distance {d:.1f}/64 bits"
    if cfg.use_embeddings and embeddings is not None:
        for a, b, s in embedding_pairs(embeddings, cfg.embedding_similarity, cfg.block_rows):
            text = f"embedding cosine {s:.3f}"
            evidence[a, b] = f"{evidence[a, b]}, {text}" if (a, b) in evidence else text
    out = []
    for group in connected_groups(len(clips), list(evidence)):
        keeper = min(group, key=lambda i: quality_rank(clips[i]))
        for i in group:
            if i != keeper:
                direct = evidence.get((min(i, keeper), max(i, keeper)))
                out.append(Duplicate(i, keeper, direct or f"same near-duplicate group ({len(group)} clips)"))
    return out
