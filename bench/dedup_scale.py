"""Benchmark: near-duplicate removal at scale, the candidate search (`dedup.method = approximate`) against the exact
all-pairs path, on synthetic clips.

Synthetic clips (3 key-frame hashes of 64 bits, a `--dim` embedding stored float16 in a file read as np.memmap, as
10 M x 768 would not fit in memory): clips come in videos of 1-8 clips that share a topic (siblings at cosine ~0.75,
unrelated clips ~0.5: CLIP's cone). About 12% of units are near-duplicate groups of 2-5 clips made from their first
clip: 60% copies (a few flipped bits per frame, mean-distance levels up to 7 so member-to-member pairs reach the
threshold; cosine 0.955-0.998 to the first clip), 20% semantic copies (embedding only: fresh hashes), 20% hash
copies (embedding cosine 0.90-0.95, below the threshold). 5% of the other clips are hard negatives: a random clip's
hashes 11-14 bits away per frame and cosine 0.90-0.95, just outside both thresholds. 2% of key frames have no hash,
1% of clips no embedding. The quality rank is a random permutation.

Truth is the exact path on the first `--exact-sample` clips (all when fewer: units never straddle it), so recall and
precision are of the approximate path's pairs among those clips; with every clip in the sample the dropped sets and
keepers are compared too. Pair precision is 1 by construction (candidates are verified by the exact rule).

    python bench/dedup_scale.py --clips 100000 [--dim 768] [--exact-sample 100000] [--no-exact] [--set key=value]
        [--tag NAME]

Prints one JSON object and merges it into bench/results/dedup_scale.json under the clip count (plus the tag). The
exact pairs are cached in the temp directory, so other approximate settings on the same clips rerun in seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.dedup import (  # noqa: E402
    DedupConfig,
    evidence_of,
    find_embedding_pairs,
    find_hash_pairs,
    resolve_groups,
)

FRAMES = 3
TOPIC_DIMS = 48
BLOCK = 65536  # clips generated at a time (units never cross a block)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flip_bits(rng: np.random.Generator, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`values` (m,) uint64 with `counts` (m,) distinct random bits flipped."""
    ranks = np.argsort(rng.random((len(values), 64)), axis=1)
    chosen = ranks < counts[:, None]
    masks = np.bitwise_or.reduce(np.where(chosen, np.uint64(1) << np.arange(64, dtype=np.uint64), np.uint64(0)), 1)
    return values ^ masks


def near(rng: np.random.Generator, x: np.ndarray, cosine: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Unit rows at exactly `cosine` to the unit rows `x`, the offset half in the topic subspace, half isotropic."""
    v = unit(rng.standard_normal((len(x), TOPIC_DIMS), dtype=np.float32) @ basis.T)
    v = v + unit(rng.standard_normal(x.shape, dtype=np.float32))
    v -= np.einsum("ij,ij->i", v, x)[:, None] * x
    return cosine[:, None] * x + np.sqrt(1 - cosine**2)[:, None] * unit(v)


def synth_block(rng: np.random.Generator, n: int, mean: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, ...]:
    """(hashes (n, 3) uint64, valid (n, 3), embeddings (n, D) float32) of n clips, units inside the block."""
    dim = len(mean)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, (n, FRAMES), dtype=np.uint64, endpoint=True)
    # videos of 1-8 clips share a topic; each clip varies it
    video = np.repeat(np.arange(n), rng.integers(1, 9, n))[:n]
    topics = rng.standard_normal((n, TOPIC_DIMS), dtype=np.float32)[video]
    topics += 0.5 * rng.standard_normal((n, TOPIC_DIMS), dtype=np.float32)
    emb = 0.7 * mean + 0.6 * unit(topics @ basis.T) + 0.4 * unit(rng.standard_normal((n, dim), dtype=np.float32))
    emb = unit(emb)
    # near-duplicate groups: consecutive rows starting at `starts`
    starts, sizes, pos = [], [], 0
    while pos < n:
        size = int(rng.integers(2, 6)) if rng.random() < 0.12 else 1
        if size > 1 and pos + size <= n:
            starts.append(pos)
            sizes.append(size)
        pos += size
    starts, sizes = np.array(starts, dtype=np.int64), np.array(sizes, dtype=np.int64)
    kind = rng.choice(3, len(starts), p=[0.6, 0.2, 0.2])  # copy, semantic copy, hash copy
    base = np.repeat(starts, sizes - 1)
    member = base + (np.arange(len(base)) - np.repeat(np.cumsum(sizes - 1) - (sizes - 1), sizes - 1)) + 1
    member_kind = np.repeat(kind, sizes - 1)
    level = rng.uniform(0, 7, len(member))  # per-frame flips around this level; members differ from each other more
    for f in range(FRAMES):
        flips = np.clip(np.round(level + rng.normal(0, 1.5, len(member))), 0, 20).astype(np.int64)
        hashes[member, f] = flip_bits(rng, hashes[base, f], flips)
    semantic = member[member_kind == 1]
    hashes[semantic] = rng.integers(0, np.iinfo(np.uint64).max, (len(semantic), FRAMES), np.uint64, endpoint=True)
    cosine = np.where(member_kind == 2, rng.uniform(0.90, 0.95, len(member)), rng.uniform(0.955, 0.998, len(member)))
    emb[member] = near(rng, emb[base], cosine.astype(np.float32), basis)
    # hard negatives: just outside both thresholds of a random clip of the block
    in_group = np.zeros(n, dtype=bool)
    in_group[starts], in_group[member] = True, True
    singles = np.flatnonzero(~in_group)
    hard = rng.choice(singles, min(len(singles), int(0.05 * len(singles))), replace=False)
    partner = rng.integers(0, n, len(hard))
    partner = np.where(partner == hard, (partner + 1) % n, partner)
    for f in range(FRAMES):
        hashes[hard, f] = flip_bits(rng, hashes[partner, f], rng.integers(11, 15, len(hard)))
    emb[hard] = near(rng, emb[partner], rng.uniform(0.90, 0.95, len(hard)).astype(np.float32), basis)
    valid = rng.random((n, FRAMES)) >= 0.02
    hashes[~valid] = 0
    emb[rng.random(n) < 0.01] = np.nan
    return hashes, valid, emb


def synthesize(n: int, dim: int, seed: int, path: Path) -> tuple[np.ndarray, np.ndarray, np.memmap]:
    """All n clips: hashes and valid in memory, embeddings float16 written to `path` block by block and mapped."""
    rng = np.random.default_rng(seed)
    mean = unit(rng.standard_normal((1, dim)))[0].astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, TOPIC_DIMS)))[0].astype(np.float32)
    hashes = np.empty((n, FRAMES), dtype=np.uint64)
    valid = np.empty((n, FRAMES), dtype=bool)
    with open(path, "wb") as out:  # plain writes: a writable mapping would count the whole file as resident
        for start in range(0, n, BLOCK):
            stop = min(n, start + BLOCK)
            hashes[start:stop], valid[start:stop], emb = synth_block(rng, stop - start, mean, basis)
            out.write(emb.astype(np.float16).tobytes())
    return hashes, valid, np.memmap(path, np.float16, "r", shape=(n, dim))


def run(values, valid, emb, cfg: DedupConfig, rank: np.ndarray) -> dict:
    """Pairs of each kind, the decisions, and seconds per step."""
    out, t = {}, time.perf_counter()
    print(f"{cfg.method}: hash pairs of {len(values)} clips", file=sys.stderr, flush=True)
    out["hash"] = find_hash_pairs(values, valid, cfg)
    out["hash_s"], t = time.perf_counter() - t, time.perf_counter()
    print(f"{cfg.method}: embedding pairs ({out['hash_s']:.0f} s so far)", file=sys.stderr, flush=True)
    out["embedding"] = find_embedding_pairs(emb, cfg)
    out["embedding_s"], t = time.perf_counter() - t, time.perf_counter()
    print(f"{cfg.method}: groups", file=sys.stderr, flush=True)
    out["dups"] = resolve_groups(len(values), evidence_of(out["hash"], out["embedding"]), rank.__getitem__)
    out["groups_s"] = time.perf_counter() - t
    return out


def exact_pairs(values, valid, emb, sample: int, cfg: DedupConfig, rank: np.ndarray, args) -> dict:
    """The exact path on the first `sample` clips (whole units), its pairs cached in the temp directory: the same
    synthetic clips and rule give the same pairs, and the exact path takes minutes at 1e5 clips."""
    key = f"{args.clips}_{sample}_{args.dim}_{args.seed}_{cfg.hash_distance}_{cfg.min_hashed_frames}"
    cache = Path(tempfile.gettempdir()) / f"dedup_scale_exact_{key}_{cfg.embedding_similarity}.json"
    if cache.exists():
        out = json.loads(cache.read_text())
        out["hash"] = [tuple(p) for p in out["hash"]]
        out["embedding"] = [tuple(p) for p in out["embedding"]]
        print(f"exact pairs from {cache} (seconds as first measured)", file=sys.stderr)
    else:
        sub = np.ascontiguousarray(emb[:sample])  # the first blocks: whole units
        out = run(values[:sample], valid[:sample], sub, cfg, rank[:sample])
        del out["dups"]
        cache.write_text(json.dumps(out))
    out["dups"] = resolve_groups(sample, evidence_of(out["hash"], out["embedding"]), rank.__getitem__)
    return out


def pair_scores(approx: list, exact: list, limit: int) -> dict:
    """Recall and precision of approximate pairs (both ends below `limit`) against exact ones."""
    got = {(a, b) for a, b, _ in approx if b < limit}
    truth = {(a, b) for a, b, _ in exact}
    hit = len(got & truth)
    return {
        "exact": len(truth),
        "approximate": len(got),
        "recall": hit / len(truth) if truth else 1.0,
        "precision": hit / len(got) if got else 1.0,
    }


def banded_recall(approx: list, exact: list, edges: list[float]) -> dict:
    """Recall of exact pairs by value band (hash distance or cosine), to show where misses are."""
    got = {(a, b) for a, b, _ in approx}
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = [(a, b) for a, b, v in exact if lo <= v < hi]
        if band:
            out[f"[{lo:g}, {hi:g})"] = {"pairs": len(band), "recall": sum(p in got for p in band) / len(band)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, required=True)
    parser.add_argument("--dim", type=int, default=768, help="embedding width (ViT-L-14: 768)")
    parser.add_argument("--exact-sample", type=int, default=100_000)
    parser.add_argument("--no-exact", action="store_true", help="time the approximate path only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="a DedupConfig field, e.g. embedding_nprobe=3")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dedup_scale.json")
    parser.add_argument("--tag", default="", help="stored under '<clips><tag>' in --json (default: the clip count)")
    args = parser.parse_args(argv)
    fields = {k: (v if k in ("method", "hash_index") else float(v) if "." in v else int(v))
              for k, v in (s.split("=", 1) for s in args.set)}  # fmt: skip
    approx_cfg = DedupConfig(**{"method": "approximate", **fields})
    exact_cfg = DedupConfig(**{**fields, "method": "exact"})

    result: dict = {"clips": args.clips, "dim": args.dim, "config": {k: v for k, v in vars(approx_cfg).items()}}
    with tempfile.TemporaryDirectory(prefix="dedup_scale_") as tmp:  # outside the repo: 15 GB at 10 M clips
        t = time.perf_counter()
        values, valid, emb = synthesize(args.clips, args.dim, args.seed, Path(tmp) / "emb.f16")
        rank = np.random.default_rng(args.seed + 1).permutation(args.clips)
        result["synthesize_s"] = round(time.perf_counter() - t, 1)
        rss_before = peak_rss_mb()
        approx = run(values, valid, emb, approx_cfg, rank)
        result["approximate"] = {
            "seconds": {k: round(approx[f"{k}_s"], 1) for k in ("hash", "embedding", "groups")},
            "hash_pairs": len(approx["hash"]),
            "embedding_pairs": len(approx["embedding"]),
            "dropped": len(approx["dups"]),
            "peak_rss_mb": round(peak_rss_mb()),
        }
        result["approximate"]["seconds"]["total"] = round(sum(result["approximate"]["seconds"].values()), 1)
        result["peak_rss_mb_before_dedup"] = round(rss_before)
        if not args.no_exact:
            sample = min(args.clips, args.exact_sample)
            exact = exact_pairs(values, valid, emb, sample, exact_cfg, rank, args)
            result["exact"] = {
                "clips": sample,
                "seconds": {k: round(exact[f"{k}_s"], 1) for k in ("hash", "embedding", "groups")},
                "peak_rss_mb": round(peak_rss_mb()),
            }
            result["pairs"] = {
                "hash": pair_scores(approx["hash"], exact["hash"], sample),
                "embedding": pair_scores(approx["embedding"], exact["embedding"], sample),
                "hash_recall_by_distance": banded_recall(approx["hash"], exact["hash"], [0, 4, 7, 9, 10.01]),
                "embedding_recall_by_cosine": banded_recall(
                    approx["embedding"], exact["embedding"], [0.95, 0.96, 0.98, 1.01]
                ),
            }
            all_a = {(a, b) for a, b, _ in approx["hash"] + approx["embedding"] if b < sample}
            all_e = {(a, b) for a, b, _ in exact["hash"] + exact["embedding"]}
            result["pairs"]["all"] = {
                "recall": len(all_a & all_e) / max(1, len(all_e)),
                "precision": len(all_a & all_e) / max(1, len(all_a)),
            }
            if sample == args.clips:  # decisions are comparable only when the exact path saw every clip
                drop_a = {d.dropped: d.kept for d in approx["dups"]}
                drop_e = {d.dropped: d.kept for d in exact["dups"]}
                both = set(drop_a) & set(drop_e)
                result["decisions"] = {
                    "dropped_exact": len(drop_e),
                    "dropped_approximate": len(drop_a),
                    "recall": len(both) / max(1, len(drop_e)),
                    "precision": len(both) / max(1, len(drop_a)),
                    "same_keeper": sum(drop_a[i] == drop_e[i] for i in both) / max(1, len(both)),
                }
    print(json.dumps(result, indent=2))
    saved = json.loads(args.json.read_text()) if args.json.exists() else {}
    saved[f"{args.clips}{args.tag}"] = result
    args.json.write_text(json.dumps(saved, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
