"""Benchmark: shot-boundary accuracy of each detector against truth, on the sample corpus (generated truth) and on
the hand-labelled real videos (`tests/data/shot_labels.json`, read from ../shared/media).

A boundary is the pair (end of the shot before, start of the shot after): a hard cut at c is (c, c), a fade or a
dissolve [s, e) is (s, e), a black or fading start or end of the video is a boundary too. A detected boundary
matches a true one when both ends are within 1 frame (F1), and is exact when both ends are equal. Detections inside
a labelled `ambiguous` span count neither way. Runs the scenes step itself (no Ray), one video at a time.

    python bench/shot_accuracy.py [--detectors content,hybrid,transnetv2] [--corpus DIR] [--media DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.ids import uri_key  # noqa: E402
from curation.metrics import match_boundaries, shot_boundaries, truth_boundaries  # noqa: E402
from pipelines import steps  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.samples import generate_corpus, load_truth  # noqa: E402

LABELS = ROOT / "tests" / "data" / "shot_labels.json"
MEDIA = ROOT.parent / "shared" / "media"
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")


def labelled_media(media: Path) -> list[dict]:
    """The labelled real videos present on this machine, each with its path and truth boundaries."""
    import site

    labels = json.loads(LABELS.read_text())
    out = []
    for video in labels["videos"]:
        if video.get("root") == "site-packages":
            found = [Path(p) / video["path"] for p in site.getsitepackages() if (Path(p) / video["path"]).exists()]
            path = found[0] if found else None
        else:
            path = media / video["path"]
        if path is None or not path.exists():
            continue
        excluded = [(g["start"], g["end"]) for g in video["gradual"]]
        excluded += [(f["start"], f["end"]) for f in video.get("flat_spans", [])]
        out.append(
            {
                "name": video["path"],
                "path": path,
                "truth": truth_boundaries(video["n_frames"], video["cuts"], excluded),
                "ignore": [(a["start"], a["end"]) for a in video.get("ambiguous", [])],
            }
        )
    return out


def corpus_videos(corpus: Path) -> list[dict]:
    """The sample corpus's videos with their generated truth boundaries."""
    out = []
    for path in sorted(p for p in corpus.iterdir() if p.suffix in VIDEO_SUFFIXES):
        truth = load_truth(path)
        excluded = [(g["start"], g["end"]) for g in truth["fades"] + truth.get("dissolves", [])]
        excluded += [(g["start"], g["end"]) for g in truth.get("flats", [])]
        out.append(
            {
                "name": path.name,
                "path": path,
                "truth": truth_boundaries(truth["n_frames"], truth["cuts"], excluded),
                "ignore": [],
            }
        )
    return out


def detect(videos: list[dict], detector: str, work: Path) -> tuple[dict[str, list], float, int]:
    """Run ingest + scenes on each video with `detector`; (boundaries per video, seconds, frames scanned)."""
    cfg = load_config(None, [f"scenes.detector={detector}"])
    shutil.rmtree(work, ignore_errors=True)
    found: dict[str, list] = {}
    seconds, frames = 0.0, 0
    for video in videos:
        row = {"source_uri": str(video["path"]), "key": uri_key(str(video["path"]))}
        steps.make_ingest_fn(cfg, work)(row)
        started = time.perf_counter()
        steps.make_scenes_fn(cfg, work)(row)
        seconds += time.perf_counter() - started
        record = steps.WorkDir(work).load("scenes", row["key"])
        n = record.get("n_decoded", 0)
        frames += n
        shots = [(s["start_frame"], s["end_frame"]) for s in record.get("scenes", [])]
        found[video["name"]] = shot_boundaries(n, shots) if n else []
    return found, seconds, frames


def score(videos: list[dict], found: dict[str, list]) -> dict:
    """Totals over the videos, and the videos with any miss or false boundary."""
    tp = fp = fn = exact = 0
    wrong = {}
    for video in videos:
        m = match_boundaries(found[video["name"]], video["truth"], 1, video["ignore"])
        tp, fp, fn = tp + m.match.true_positives, fp + m.match.false_positives, fn + m.match.false_negatives
        exact += m.exact
        if m.match.false_positives or m.match.false_negatives or m.exact < m.match.true_positives:
            wrong[video["name"]] = {"found": found[video["name"]], "truth": video["truth"]}
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {
        "boundaries": tp + fn,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "exact": exact,
        "exact_share_of_truth": round(exact / (tp + fn), 4) if tp + fn else 1.0,
        "wrong": wrong,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", default="content,hybrid,transnetv2")
    p.add_argument("--corpus", help="a generated sample corpus (default: generate one in a temp dir)")
    p.add_argument("--media", default=str(MEDIA))
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        if not args.corpus:
            generate_corpus(corpus)
        sets = {"corpus": corpus_videos(corpus), "real": labelled_media(Path(args.media))}
        result: dict = {"videos": {k: len(v) for k, v in sets.items()}}
        for detector in args.detectors.split(","):
            for name, videos in sets.items():
                found, seconds, frames = detect(videos, detector, Path(tmp) / "work")
                result.setdefault(detector, {})[name] = {
                    **score(videos, found),
                    "frames": frames,
                    "seconds": round(seconds, 1),
                    "frames_per_s": round(frames / seconds, 1) if seconds else None,
                }
                print(detector, name, {k: v for k, v in result[detector][name].items() if k != "wrong"}, flush=True)
    text = json.dumps(result, indent=1, default=list)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
