"""Global near-duplicate removal: perceptual hashes of key frames (always available) and cosine similarity of CLIP
clip embeddings (when an embedding model ran).

Two clips are near-duplicates when their key frames' mean Hamming distance is at most `dedup.hash_distance` bits
(of 64) or their embeddings' cosine similarity is at least `dedup.embedding_similarity`. Duplicate pairs are
joined into groups (connected components); each group keeps its best clip (`quality_rank`) and the others are
dropped with the kept clip's id in the detail.

Pairs are found one of two ways (`dedup.method`): exactly, all pairs block-wise (memory: a few blocks of
`block_rows x n`, time: n^2, fine to about 1e5 clips), or through the candidate search of curation/dedup_index.py,
which applies the same rule to the candidates it proposes, so grouping and keepers follow the same rule and only
missed pairs can differ. `auto` takes the exact path up to `exact_max_clips` clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import dedup_index

NO_HASH = np.uint64(0)  # placeholder where a key frame had no hash; masked out by `valid`
METHODS = ("auto", "exact", "approximate")
HASH_INDEXES = ("lsh", "mih")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Near-duplicate detection settings."""

    enabled: bool = True
    hash_distance: float = 10.0  # max mean Hamming distance of key-frame hashes, bits of 64 (unrelated: about 32)
    min_hashed_frames: int = 2  # key frames both clips must have hashes for (flat frames have none)
    use_embeddings: bool = True  # also link clips whose CLIP embeddings are close (when embeddings exist)
    embedding_similarity: float = 0.95  # min cosine similarity of clip embeddings
    block_rows: int = 1024  # rows compared at once (memory: block_rows x clips)
    method: str = "auto"  # exact (all pairs) | approximate (dedup_index) | auto: exact up to exact_max_clips
    exact_max_clips: int = 50_000
    hash_index: str = "lsh"  # approximate hash search: lsh (bit sampling) | mih (recall 1; cheap only for small t)
    hash_bits: int = 0  # LSH key bits; 0 = log2(clips) - 4 in [16, 32]
    hash_tables: int = 32  # LSH tables per key frame
    embedding_dims: int = 64  # PCA dimensions of the embedding index (0: the full vectors)
    embedding_nlist: int = 0  # k-means lists; 0 = one per 256 clips
    embedding_nprobe: int = 16  # most lists a clip probes ...
    embedding_probe_margin: float = 0.03  # ... of those within this centroid similarity of its nearest list
    embedding_coarse: int = 0  # coarse cells the lists are found through; 0 = 2 sqrt(lists) from 1024 lists, 1 = flat
    embedding_coarse_nprobe: int = 0  # nearest cells a clip searches for its lists; 0 = max(16, 2 sqrt(cells))
    seed: int = 0  # LSH permutations, PCA and k-means samples

    def __post_init__(self) -> None:
        if not 0.0 <= self.hash_distance < 32.0:
            raise ValueError("dedup.hash_distance must be in [0, 32) bits (unrelated frames differ by about 32)")
        if self.min_hashed_frames < 1:
            raise ValueError("dedup.min_hashed_frames must be >= 1")
        if not 0.0 < self.embedding_similarity <= 1.0:
            raise ValueError("dedup.embedding_similarity must be in (0, 1]")
        if self.block_rows < 1:
            raise ValueError("dedup.block_rows must be >= 1")
        if self.method not in METHODS:
            raise ValueError(f"dedup.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.exact_max_clips < 0:
            raise ValueError("dedup.exact_max_clips must be >= 0")
        if self.hash_index not in HASH_INDEXES:
            raise ValueError(f"dedup.hash_index must be one of {', '.join(HASH_INDEXES)}, not {self.hash_index!r}")
        if not (self.hash_bits == 0 or 8 <= self.hash_bits <= 64):
            raise ValueError("dedup.hash_bits must be 0 (auto) or in [8, 64]")
        if self.hash_tables < 1:
            raise ValueError("dedup.hash_tables must be >= 1")
        if self.embedding_dims < 0 or self.embedding_nlist < 0:
            raise ValueError("dedup.embedding_dims and dedup.embedding_nlist must be >= 0 (0: full / auto)")
        if self.embedding_nprobe < 1:
            raise ValueError("dedup.embedding_nprobe must be >= 1")
        if self.embedding_coarse < 0 or self.embedding_coarse_nprobe < 0:
            raise ValueError("dedup.embedding_coarse and dedup.embedding_coarse_nprobe must be >= 0 (0: auto)")
        if not 0.0 <= self.embedding_probe_margin <= 2.0:
            raise ValueError("dedup.embedding_probe_margin must be in [0, 2] (a cosine difference)")

    def approximate(self, n: int) -> bool:
        """Whether n clips take the candidate search rather than all pairs."""
        return self.method == "approximate" or (self.method == "auto" and n > self.exact_max_clips)


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


_HEX = np.full(256, 255, dtype=np.uint8)  # ASCII -> nibble value; 255: not a hex digit
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _HEX[ord(chr(_c).upper())] = _i


def hash_arrays(column: pa.Array | pa.ChunkedArray, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """`parse_hashes` of an Arrow list<string> column (the clips table's `key_frame_hashes`), without a Python object
    per hash: the 16-digit hex strings are decoded straight from the string buffer, `chunk` hashes at a time. Other
    lengths go through `int`."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    k = int(lengths.max(initial=0))
    values, valid = np.zeros((n, k), dtype=np.uint64), np.zeros((n, k), dtype=bool)
    flat = arr.flatten().cast(pa.string())
    if not len(flat):
        return values, valid
    starts = np.cumsum(lengths) - lengths  # each clip's first hash in `flat`

    def cell(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clip, key frame) of flat hashes i: the last clip starting at or before each (empty clips start where the
        next one does, so they are never it)."""
        r = np.searchsorted(starts, i, side="right") - 1
        return r, i - starts[r]

    offsets = np.frombuffer(flat.buffers()[1], dtype=np.int32)[flat.offset : flat.offset + len(flat) + 1]
    sizes = np.diff(offsets)
    present = sizes > 0  # null and empty strings: no hash (as in `parse_hashes`)
    if flat.null_count:
        present &= flat.is_valid().to_numpy(zero_copy_only=False)
    data = np.frombuffer(flat.buffers()[2], dtype=np.uint8) if flat.buffers()[2] is not None else np.zeros(0, np.uint8)
    fixed = np.flatnonzero(present & (sizes == 16))
    for start in range(0, len(fixed), chunk):  # chunks: the digit indices take 128 bytes a hash (5 GB at 10 M clips)
        part = fixed[start : start + chunk]
        digits = _HEX[data[offsets[part, None] + np.arange(16)]]
        ok = (digits != 255).all(axis=1)
        parsed = np.zeros(len(part), dtype=np.uint64)
        for d in range(16):  # most significant digit first
            parsed = (parsed << np.uint64(4)) | digits[:, d].astype(np.uint64)
        at = part[ok]
        r, c = cell(at)
        values[r, c], valid[r, c] = parsed[ok], True
        present[at] = False  # what is left: odd lengths or bad digits, where int() decides (and raises on bad hex)
    left = np.flatnonzero(present)
    for i, r, c in zip(left.tolist(), *(x.tolist() for x in cell(left)), strict=True):
        values[r, c], valid[r, c] = np.uint64(int(flat[i].as_py(), 16)), True
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
    x, usable = dedup_index.unit_rows(embeddings)
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
    for a in sorted({x for pair in pairs for x in pair}):  # nodes without an edge are singletons: skip them
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


def find_hash_pairs(values: np.ndarray, valid: np.ndarray, cfg: DedupConfig) -> list[tuple[int, int, float]]:
    """Pairs (i < j, mean distance) within the hash rule, in order: all pairs or the candidate search."""
    n = len(values)
    if not cfg.approximate(n):
        return hash_pairs(values, valid, cfg.hash_distance, cfg.min_hashed_frames, cfg.block_rows)
    if cfg.hash_index == "mih":
        masks = dedup_index.mih_masks(cfg.hash_distance)
    else:
        masks = dedup_index.lsh_masks(cfg.hash_bits or dedup_index.auto_key_bits(n), cfg.hash_tables, cfg.seed)
    a, b, d = dedup_index.hash_pairs_indexed(values, valid, cfg.hash_distance, cfg.min_hashed_frames, masks)
    return list(zip(a.tolist(), b.tolist(), d.tolist(), strict=True))


def find_embedding_pairs(embeddings: np.ndarray, cfg: DedupConfig) -> list[tuple[int, int, float]]:
    """Pairs (i < j, cosine) within the embedding rule, in order: all pairs or the candidate search. `embeddings`
    (n, d) may be a np.memmap: the candidate search reads it in row batches."""
    if not cfg.approximate(len(embeddings)):
        return embedding_pairs(embeddings, cfg.embedding_similarity, cfg.block_rows)
    a, b, sim = dedup_index.embedding_pairs_indexed(
        embeddings,
        cfg.embedding_similarity,
        cfg.embedding_dims,
        cfg.embedding_nlist,
        cfg.embedding_nprobe,
        cfg.embedding_probe_margin,
        cfg.seed,
        cfg.embedding_coarse,
        cfg.embedding_coarse_nprobe,
    )
    return list(zip(a.tolist(), b.tolist(), sim.tolist(), strict=True))


def evidence_of(
    hash_found: Sequence[tuple[int, int, float]], embedding_found: Sequence[tuple[int, int, float]]
) -> dict[tuple[int, int], str]:
    """{(i, j): why they are near-duplicates}, hash evidence first."""
    evidence = {(a, b): f"key-frame hash distance {d:.1f}/64 bits" for a, b, d in hash_found}
    for a, b, sim in embedding_found:
        text = f"embedding cosine {sim:.3f}"
        evidence[a, b] = f"{evidence[a, b]}, {text}" if (a, b) in evidence else text
    return evidence


def resolve_groups(n: int, evidence: Mapping[tuple[int, int], str], rank: Callable[[int], Any]) -> list[Duplicate]:
    """One `Duplicate` per clip to drop: each connected group of `evidence` keeps its clip of least `rank`."""
    out = []
    for group in connected_groups(n, list(evidence)):
        keeper = min(group, key=rank)
        for i in group:
            if i != keeper:
                direct = evidence.get((min(i, keeper), max(i, keeper)))
                out.append(Duplicate(i, keeper, direct or f"same near-duplicate group ({len(group)} clips)"))
    return out


def find_duplicates(
    clips: Sequence[Mapping[str, Any]], embeddings: np.ndarray | None, cfg: DedupConfig
) -> list[Duplicate]:
    """The clips to drop as near-duplicates, one `Duplicate` each. `clips` need `key_frame_hashes` plus the
    `quality_rank` fields; `embeddings` is (n, d) with NaN rows for clips without one (or None)."""
    if not cfg.enabled or len(clips) < 2:
        return []
    values, valid = parse_hashes([c.get("key_frame_hashes") for c in clips])
    return find_duplicates_in(values, valid, embeddings, lambda i: quality_rank(clips[i]), cfg)


def find_duplicates_in(
    values: np.ndarray, valid: np.ndarray, embeddings: np.ndarray | None, rank: Callable[[int], Any], cfg: DedupConfig
) -> list[Duplicate]:
    """`find_duplicates` over arrays: hashes as `parse_hashes` or `hash_arrays` give them, and `rank(i)` the
    `quality_rank` of clip i (called only for clips in a group), so a run's clips need not be dicts."""
    if not cfg.enabled or len(values) < 2:
        return []
    by_embedding = find_embedding_pairs(embeddings, cfg) if cfg.use_embeddings and embeddings is not None else []
    evidence = evidence_of(find_hash_pairs(values, valid, cfg), by_embedding)
    return resolve_groups(len(values), evidence, rank)
