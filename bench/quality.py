"""Benchmark: classical quality scores' seconds per clip on CPU (against decoding the same clip, measured in the
same run), and near-duplicate detection's precision/recall on the sample corpus's known duplicates.

Every true shot of every corpus video becomes one clip (so the measurement is of dedup, not of scene detection),
annotated with the given preset and flow off (quality only). The truth: a copy (`duplicate_of` in its sidecar)
duplicates its source shot for shot; every other pair of clips is distinct. Precision and recall are over
unordered clip pairs placed in one near-duplicate group.

    python bench/quality.py [--preset default|smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.decode import iter_frames, probe_video  # noqa: E402
from curation.dedup import DedupConfig, connected_groups, find_duplicates, hash_pairs, parse_hashes  # noqa: E402
from curation.sampling import decode_size, sample_indices  # noqa: E402
from pipelines.annotate import annotate_file, annotators_for  # noqa: E402
from pipelines.config import load_config, preset_path  # noqa: E402
from pipelines.samples import generate_corpus, load_truth  # noqa: E402


def corpus_clips(cache: Path, preset: str) -> tuple[list[dict], dict[str, float]]:
    """One annotated clip per true shot of every corpus video, and the seconds spent decoding vs scoring."""
    cfg = load_config(preset_path(preset), ["flow.backend=none"])
    clips, decode_s = [], 0.0
    scorer = annotators_for(cfg)
    quality_before = scorer.seconds["quality"]
    for video in generate_corpus(cache):
        truth = load_truth(video)
        info = probe_video(str(video))
        for k, shot in enumerate(truth["shots"]):
            sampled = sample_indices(shot["start"], shot["end"], info.fps, cfg.frames)
            if sampled is None:
                continue
            started = time.perf_counter()  # the baseline: decoding the clip's frames alone
            size = decode_size(info.width, info.height, cfg.frames)
            for _ in iter_frames(str(video), info, size=size, indices=sampled[0]):
                pass
            decode_s += time.perf_counter() - started
            out = annotate_file(str(video), cfg, shot["start"], shot["end"])
            clips.append(
                {
                    "clip_id": f"{video.stem}#{k}",
                    "video": video.stem,
                    "shot": k,
                    "source": truth.get("duplicate_of", video.stem),
                    "width": info.width,
                    "height": info.height,
                    **{c: out[c] for c in ("sharpness", "brightness", "contrast", "colorfulness", "key_frame_hashes")},
                }
            )
    quality_s = scorer.seconds["quality"] - quality_before
    return clips, {"decode_s": decode_s, "quality_s": quality_s}


def pair_scores(clips: list[dict], cfg: DedupConfig) -> dict:
    found = find_duplicates(clips, None, cfg)
    groups = connected_groups(len(clips), [(d.dropped, d.kept) for d in found])
    predicted = {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}
    truth = {
        frozenset((i, j))
        for i, j in itertools.combinations(range(len(clips)), 2)
        if clips[i]["source"] == clips[j]["source"] and clips[i]["shot"] == clips[j]["shot"]
    }
    hit = predicted & truth
    return {
        "true_pairs": len(truth),
        "predicted_pairs": len(predicted),
        "precision": round(len(hit) / len(predicted), 3) if predicted else 1.0,
        "recall": round(len(hit) / len(truth), 3) if truth else 1.0,
        "kept": sorted(clips[d.kept]["clip_id"] for d in found),
        "dropped": sorted(clips[d.dropped]["clip_id"] for d in found),
        "false_pairs": sorted(
            f"{clips[i]['clip_id']}~{clips[j]['clip_id']}" for i, j in (tuple(sorted(p)) for p in predicted - truth)
        ),
        "missed_pairs": sorted(
            f"{clips[i]['clip_id']}~{clips[j]['clip_id']}" for i, j in (tuple(sorted(p)) for p in truth - predicted)
        ),
    }


def distance_margin(clips: list[dict]) -> dict:
    """The separation the threshold sits in: the largest key-frame hash distance of a true duplicate pair and the
    smallest of a distinct pair (bits of 64)."""
    values, valid = parse_hashes([c["key_frame_hashes"] for c in clips])
    true_d, other_d = [], []
    for i, j, d in hash_pairs(values, valid, max_distance=64.0, min_frames=1):
        same = clips[i]["source"] == clips[j]["source"] and clips[i]["shot"] == clips[j]["shot"]
        (true_d if same else other_d).append(d)
    return {
        "max_duplicate_distance": round(max(true_d), 2) if true_d else None,
        "min_distinct_distance": round(min(other_d), 2) if other_d else None,
        "mean_distinct_distance": round(sum(other_d) / len(other_d), 2) if other_d else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=["default", "smoke"])
    parser.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "corpus_all"))
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    clips, seconds = corpus_clips(Path(args.cache), args.preset)
    result = {
        "preset": args.preset,
        "clips": len(clips),
        "quality_s_per_clip": round(seconds["quality_s"] / len(clips), 5),
        "decode_s_per_clip": round(seconds["decode_s"] / len(clips), 5),
        "quality_vs_decode": round(seconds["quality_s"] / seconds["decode_s"], 3),
        "hash_distances": distance_margin(clips),
        "dedup": {str(d): pair_scores(clips, DedupConfig(hash_distance=d)) for d in (6.0, 10.0, 14.0)},
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
