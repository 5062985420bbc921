"""Measurement: where the default preset's aspect-ratio buckets put the sample corpus and the real test videos.

One real pipeline run (`pipelines.run --stage=all`, the default preset's buckets and windows) over a folder of
symlinks in a temporary directory: the generated sample corpus plus every file of ../shared/media (skipped when
absent; SHARED_MEDIA_DIR points elsewhere). The annotators that do not touch the bucket columns are turned off and
dedup keeps every clip, so the run is quick and every window is listed. Per video, from the run's own tables:
source size, display aspect (after rotation), bucket, crop_fraction, windows and the seconds they cover against the
seconds of the shots they came from; unreadable files with their reason. The summary counts the distinct display
aspect ratios, portrait included, whose clips all land in a bucket of their orientation with crop_fraction <= 0.1.

    python bench/buckets.py [--media DIR] [--run DIR] [--report-only] [--max-crop 0.1] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.buckets import Bucket, BucketConfig, nearest_shape  # noqa: E402
from pipelines.config import build  # noqa: E402
from pipelines.samples import generate_corpus  # noqa: E402

MEDIA = Path(os.environ.get("SHARED_MEDIA_DIR", ROOT.parent / "shared" / "media"))
DOCS = {".md", ".txt", ".json", ".html", ".py"}  # the media folder's notes and licences, not inputs
# Only the bucket columns are measured: the annotators that do not set them are off, and dedup keeps every window.
LIGHT = [
    "flow.backend=none",
    "noise.enabled=false",
    "camera.enabled=false",
    "events.enabled=false",
    "dedup.enabled=false",
    "frames.store=none",
    "ingest.extensions=[]",  # the media folder has raw streams and odd extensions: let ingest judge every file
]


def link_inputs(corpus: Path, media: Path, links: Path) -> None:
    """Symlink the corpus videos and the media files into `links`, flat: `corpus/a.mp4` as `corpus__a.mp4`."""
    links.mkdir(parents=True, exist_ok=True)
    sources = [("corpus", p, corpus) for p in sorted(corpus.iterdir()) if p.suffix not in {".json", ".npz"}]
    if media.is_dir():
        files = sorted(p for p in media.rglob("*") if p.is_file())
        sources += [("media", p, media) for p in files if p.suffix.lower() not in DOCS and "LICENSE" not in p.name]
    for kind, path, base in sources:
        label = f"{kind}/{path.relative_to(base)}"
        (links / label.replace("/", "__")).symlink_to(path.resolve())


def label_of(uri: str) -> str:
    """`corpus/a.mp4` back from the link's name."""
    return Path(uri).name.replace("__", "/")


def run_pipeline(links: Path, run_dir: Path, extra: list[str]) -> None:
    """The default preset, `LIGHT` and `extra` overrides, over every file in `links`."""
    args = [sys.executable, "-m", "pipelines.run", "--stage=all", "--input", str(links), "--output", str(run_dir)]
    for item in [*LIGHT, *extra]:
        args += ["--set", item]
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def table(run_dir: Path, name: str) -> list[dict]:
    files = list((run_dir / name).glob("*.parquet"))
    if not files:
        return []
    return duckdb.sql(f"SELECT * FROM read_parquet('{run_dir}/{name}/*.parquet')").to_arrow_table().to_pylist()


COMMON = {"9:16": 9 / 16, "2:3": 2 / 3, "3:4": 0.75, "4:5": 0.8, "1:1": 1.0, "11:9": 11 / 9, "5:4": 1.25}
COMMON |= {"4:3": 4 / 3, "3:2": 1.5, "16:10": 1.6, "16:9": 16 / 9, "1.85:1": 1.85, "2:1": 2.0, "2.39:1": 2.39}


def aspect_name(aspect: float) -> str:
    """The display aspect as text: the common ratio it is within 1% of (`16:9`), else its value (`0.600`)."""
    return next((k for k, v in COMMON.items() if abs(math.log(aspect / v)) < 0.01), f"{aspect:.3f}")


def orientation(width: int, height: int) -> str:
    return "portrait" if height > width else "square" if height == width else "landscape"


def report(run_dir: Path, max_crop: float) -> None:
    """Print one line per video of the run and the summary, from its videos, scenes, clips and rejected tables."""
    run = json.loads((run_dir / "_run.json").read_text())
    shapes = build(BucketConfig, run["config"]["buckets"], "buckets").shapes()  # the ones this run used
    videos, clips, scenes, rejected = (table(run_dir, n) for n in ("videos", "clips", "scenes", "rejected"))
    clips_of, shot_s, rejects_of = defaultdict(list), defaultdict(float), defaultdict(set)
    for c in clips:
        clips_of[c["video_id"]].append(c)
    for sc in scenes:
        shot_s[sc["video_id"]] += sc["end_s"] - sc["start_s"]
    for r in rejected:
        if r["stage"] in ("scenes", "clips"):
            rejects_of[r["video_id"]].add(r["reason"])
    print(f"{'video':56} {'source':>9} {'rot':>3} {'display':>7} {'bucket HxW T':>20} {'crop':>6} {'win':>3} ", end="")
    print(f"{'covered s':>9} {'shots s':>7}")
    good: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # group -> aspect -> videos
    bad, unreadable = [], []
    for v in sorted(videos, key=lambda v: label_of(v["source_uri"])):
        label = label_of(v["source_uri"])
        if v["error"]:
            unreadable.append((label, v["error"]))
            continue
        rot = v["rotation"] or 0
        coded = (v["height"], v["width"]) if rot in (90, 270) else (v["width"], v["height"])
        own = clips_of[v["video_id"]]
        buckets = sorted({Bucket.parse(c["bucket"]) for c in own})
        spatial = sorted({(b.height, b.width) for b in buckets})
        counts = "/".join(str(t) for t in sorted({b.num_frames for b in buckets}))
        where = (
            f"{','.join(f'{h}x{w}' for h, w in spatial)} {counts}"
            if own
            else ",".join(sorted(rejects_of[v["video_id"]]))
        )
        crop = max((c["crop_fraction"] for c in own), default=float("nan"))
        covered = sum(c["end_s"] - c["start_s"] for c in own)
        aspect = aspect_name(v["width"] / v["height"])
        print(
            f"{label[:56]:56} {coded[0]:>4}x{coded[1]:<4} {rot:>3} {aspect:>7} {where[:20] or '-':>20} {crop:6.3f} ",
            end="",
        )
        print(f"{len(own):>3} {covered:9.2f} {shot_s[v['video_id']]:7.2f}")
        if not own:
            continue
        nearest = nearest_shape(v["width"], v["height"], shapes)
        same_side = {orientation(c["frame_width"], c["frame_height"]) for c in own} == {
            orientation(v["width"], v["height"])
        }
        if spatial == [nearest] and same_side and crop <= max_crop:
            for group in (label.split("/")[0], "all"):
                good[group][f"{aspect} {orientation(v['width'], v['height'])}"].add(label)
        else:
            bad.append(f"{label} ({aspect}: {where}, crop {crop:.3f})")
    print(f"\nunreadable or refused at ingest ({len(unreadable)}), skipped:")
    for label, error in unreadable:
        print(f"  {label}: {error[:90]}")
    for group in ("corpus", "media", "all"):
        found = good.get(group, {})
        portrait = sorted(k for k in found if k.endswith("portrait"))
        print(
            f"\n{group}: {len(found)} distinct display aspect ratios land in their nearest bucket, same orientation, "
            f"crop_fraction <= {max_crop} ({len(portrait)} portrait)"
        )
        for key in sorted(found, key=lambda k: COMMON.get(k.split()[0], 0.0) or float(k.split()[0])):
            print(f"  {key:>18}: {len(found[key])} videos")
    if bad:
        print(f"\nnot in the nearest bucket, orientation changed, or crop_fraction above {max_crop}: {', '.join(bad)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--media", type=Path, default=MEDIA, help="real videos (default ../shared/media; absent = skip)")
    p.add_argument("--run", type=Path, help="keep the run directory here (default: a temporary one)")
    p.add_argument("--report-only", action="store_true", help="only read the tables of an earlier --run")
    p.add_argument("--max-crop", type=float, default=0.1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another override of the run")
    args = p.parse_args()
    if args.report_only:
        if not args.run:
            p.error("--report-only needs --run")
        report(args.run, args.max_crop)
        return 0
    if not args.media.is_dir():
        print(f"{args.media} not found: the corpus only")
    with tempfile.TemporaryDirectory(prefix="bench_buckets_") as tmp:
        corpus = Path(tmp) / "corpus"
        generate_corpus(corpus)
        link_inputs(corpus, args.media, Path(tmp) / "links")
        run_dir = args.run or Path(tmp) / "run"
        run_pipeline(Path(tmp) / "links", run_dir, args.set)
        report(run_dir, args.max_crop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
