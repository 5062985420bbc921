"""Benchmark: shot-boundary accuracy of each detector against truth, on the sample corpus (generated truth) and on
the hand-labelled real videos (`tests/data/shot_labels.json`, read from ../shared/media).

A boundary is the pair (end of the shot before, start of the shot after): a hard cut at c is (c, c), a fade or a
dissolve [s, e) is (s, e), a black or fading start or end of the video is a boundary too. A detected boundary
matches a true one when both ends are within 1 frame (F1), and is exact when both ends are equal. Detections inside
a labelled `ambiguous` span count neither way. Scans each video once as the scenes step does (no Ray), then scores
every TransNetV2 threshold asked for on the same scan.

    python bench/shot_accuracy.py [--detectors content,hybrid,transnetv2] [--thresholds 0.2,0.3,0.4,0.5]
        [--corpus DIR] [--media DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.decode import DecodeError, iter_frames, probe_video  # noqa: E402
from curation.metrics import match_boundaries, shot_boundaries, truth_boundaries  # noqa: E402
from curation.scenes import detect_shots, scan_frames  # noqa: E402
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


def scan(videos: list[dict], detector: str) -> tuple[dict, float, int]:
    """One detection scan per video, as the scenes step makes it (decode at the detection size, TransNetV2 when the
    detector uses it); (scans by video, seconds, frames)."""
    cfg = load_config(None, [f"scenes.detector={detector}"])
    scans: dict = {}
    seconds, frames = 0.0, 0
    for video in videos:
        path = str(video["path"])
        started = time.perf_counter()
        try:
            info = probe_video(path)
            net = steps.transnet_stream(cfg.scenes) if cfg.scenes.uses_transnet else None
            size, _ = steps.scan_sizes(info, cfg.scenes, None)  # no kept frames: decoded at the detection size
            scans[video["name"]] = scan_frames(iter_frames(path, info, size=size), info.fps, cfg.scenes, net=net)
        except DecodeError as e:
            print(f"{video['name']}: {e}", file=sys.stderr)
            scans[video["name"]] = None
            continue
        seconds += time.perf_counter() - started
        frames += scans[video["name"]].n_frames
    return scans, seconds, frames


def detect(scans: dict, detector: str, threshold: float | None = None) -> dict[str, list]:
    """The boundaries each scan gives under `detector` (and a TransNetV2 threshold)."""
    sets = [f"scenes.detector={detector}"] + ([f"scenes.transnet_threshold={threshold}"] if threshold else [])
    cfg = load_config(None, sets).scenes
    found = {}
    for name, result in scans.items():
        if result is None:
            found[name] = []
            continue
        shots = [(s.start, s.end) for s in detect_shots(result, cfg)]
        found[name] = shot_boundaries(result.n_frames, shots)
    return found


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
    p.add_argument("--thresholds", default="0.5", help="TransNetV2 thresholds to score (one scan each video)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        if not args.corpus:
            generate_corpus(corpus)
        sets = {"corpus": corpus_videos(corpus), "real": labelled_media(Path(args.media))}
        result: dict = {"videos": {k: len(v) for k, v in sets.items()}}
        thresholds = [float(t) for t in args.thresholds.split(",")]
        for detector in args.detectors.split(","):
            for name, videos in sets.items():
                scans, seconds, frames = scan(videos, detector)
                uses_net = detector in ("transnetv2", "hybrid")
                for threshold in thresholds if uses_net else [None]:
                    key = f"{detector}@{threshold}" if uses_net else detector
                    result.setdefault(key, {})[name] = {
                        **score(videos, detect(scans, detector, threshold)),
                        "frames": frames,
                        "seconds": round(seconds, 1),
                        "frames_per_s": round(frames / seconds, 1) if seconds else None,
                    }
                    shown = {k: v for k, v in result[key][name].items() if k != "wrong"}
                    print(key, name, shown, flush=True)
    text = json.dumps(result, indent=1, default=list)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
