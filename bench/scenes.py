"""Benchmark: our scenes stage, per detector, vs the `scenedetect` command line and vs pure decoding, over the same
>= 10 minutes of video at each size asked for; optionally the whole pipeline vs pure decoding.

Per size and detector (`scenes.detector`), back to back:
- the `scenedetect` CLI, once per video, one after the other (how a data team scripts it): `detect-adaptive` for
  `adaptive`, `detect-content` for every other detector (the CLI has no TransNetV2), with our threshold, minimum
  scene length and downscale factor;
- pure decoding of the same videos, every frame once with `curation.decode.iter_frames`, at the size the scenes
  step decodes at (`pipelines.steps.scan_sizes` with the default config's clip layout: a run with a clips step
  keeps the clips' frames from this one decode);
- ours: `pipelines.run --stage ingest` then `--stage scenes` in one subprocess, Ray start-up included.
Ratios are ours over those baselines, never absolute times across runs: the machine is shared and noisy. Also
reported once per size: pure decoding at the detection size (what `--stage scenes` alone decodes at, since no clips
step follows it) and at full size; and accuracy of each detector and of the CLI against the generated truth (hard
cuts within +-1 frame, and frame-exact). `transnetv2` and `hybrid` (~30-55 frames/s on a CPU) run on the first
videos covering `--subset-seconds` (0 = all), their baselines on the same subset. `--pipeline` adds `--stage all`
with annotators off (`flow.backend=none`) and with the default annotators, vs pure decoding at the scan size.

Videos: `--videos` x `--seconds` of hard cuts every 2-4 s (480x270, cached), re-encoded at each `--sizes` (libx264
crf 20, preset `veryfast`, or `--large-preset` from 720 lines up; cached next to them).

    python bench/scenes.py [--videos 14] [--seconds 45] [--sizes 854x480,1920x1080]
        [--detectors content,adaptive,transnetv2,hybrid] [--subset-seconds 135] [--pipeline] [--json OUT]
    python bench/scenes.py --sizes native --detectors content   # the original benchmark (480x270 sources)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.decode import VideoInfo, iter_frames, probe_video  # noqa: E402
from curation.metrics import match_frames  # noqa: E402
from curation.sampling import video_layout  # noqa: E402
from curation.scenes import DETECTORS, SceneConfig, detection_size  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.samples import generate_video, load_truth  # noqa: E402
from pipelines.samples.model import VideoSpec  # noqa: E402
from pipelines.steps import scan_sizes  # noqa: E402

SLOW_DETECTORS = ("transnetv2", "hybrid")


def long_cut_videos(cache: Path, count: int, seconds: int, fps: int = 30) -> list[Path]:
    """`count` videos of `seconds` each, hard cuts every 2-4 s at random (seeded), rendered once and cached."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        n_frames = seconds * fps
        starts = [0]
        while starts[-1] + 4 * fps < n_frames:
            starts.append(starts[-1] + int(rng.integers(2 * fps, 4 * fps)))
        spec = VideoSpec(
            f"long_{i:02d}", "cuts", "libx264", "mp4", fps, 480, 270, n_frames, ("bench",), {"starts": tuple(starts)}
        )
        path = spec.video_path(cache)
        if not (path.exists() and spec.truth_path(cache).exists()):
            generate_video(spec, cache)
        paths.append(path)
    return paths


def upscaled(videos: list[Path], width: int, height: int, preset: str = "veryfast") -> list[Path]:
    """Re-encode the cached videos at a larger size (same frames, same cuts): decode cost closer to real footage.
    libx264 crf 20 at `preset` (files of another preset than `veryfast` are named after it)."""
    import av
    import cv2

    out = []
    for video in videos:
        suffix = "" if preset == "veryfast" else f"_{preset}"
        target = video.with_name(f"{video.stem}_{width}x{height}{suffix}.mp4")
        if not target.exists():
            tmp = target.with_suffix(".part.mp4")
            with av.open(str(video)) as src, av.open(str(tmp), "w") as dst:
                stream = dst.add_stream("libx264", rate=src.streams.video[0].average_rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": "20", "preset": preset}
                for frame in src.decode(video=0):
                    rgb = cv2.resize(frame.to_ndarray(format="rgb24"), (width, height), interpolation=cv2.INTER_CUBIC)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                        dst.mux(packet)
                for packet in stream.encode():
                    dst.mux(packet)
            tmp.rename(target)
            target.with_suffix(".json").write_text(video.with_suffix(".json").read_text())
        out.append(target)
    return out


def cli_cuts(video: Path, cfg: SceneConfig, out_dir: Path, detector: str = "content") -> list[int]:
    """Run the scenedetect CLI with our detector settings (`detect-adaptive` for `adaptive`, else `detect-content`);
    return the first frame of every shot after the first."""
    info = probe_video(str(video))
    factor = max(1, round(info.width / cfg.detect_width)) if cfg.detect_width else 1
    if detector == "adaptive":
        detect = ["detect-adaptive", "-t", str(cfg.adaptive_threshold)]
    else:
        detect = ["detect-content", "-t", str(cfg.threshold)]
    cmd = [
        str(Path(sys.executable).parent / "scenedetect"),
        "-i",
        str(video),
        "-o",
        str(out_dir),
        "-q",
        "-d",
        str(factor),
        "-m",
        str(cfg.min_scene_len),
        *detect,
        "list-scenes",
        "-s",
        "-f",
        f"{video.stem}.csv",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(out_dir / f"{video.stem}.csv") as f:
        rows = list(csv.DictReader(f))
    return [int(r["Start Frame"]) - 1 for r in rows[1:]]  # the CLI numbers frames from 1


def timed_cli(videos: list[Path], cfg: SceneConfig, detector: str) -> tuple[float, dict[str, list[int]]]:
    """The CLI over `videos`, one after the other: (seconds, cuts per video)."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cuts = {str(v): cli_cuts(v, cfg, Path(tmp), detector) for v in videos}
        return time.perf_counter() - started, cuts


def pure_decode_seconds(
    videos: list[Path], cfg: SceneConfig, size: Callable[[VideoInfo], tuple[int, int] | None] | None = None
) -> float:
    """Decode every frame of `videos` once, at `size(info)` (default: the detection size; None = full size)."""
    started = time.perf_counter()
    for video in videos:
        info = probe_video(str(video))
        at = size(info) if size else detection_size(info.width, info.height, cfg.detect_width)
        for _ in iter_frames(str(video), info, size=at):
            pass
    return time.perf_counter() - started


def scan_size_of(run_cfg) -> Callable[[VideoInfo], tuple[int, int]]:
    """The size the scenes step decodes a video at when the clips step follows (the clips' layout is known)."""

    def size(info: VideoInfo) -> tuple[int, int]:
        layout = video_layout(info.width, info.height, run_cfg.frames, run_cfg.buckets)
        return scan_sizes(info, run_cfg.scenes, layout)[0]

    return size


OURS_CODE = """
import json, sys, time
t0 = time.perf_counter()
from pipelines.run import main
times = {"import_s": time.perf_counter() - t0}
args = sys.argv[2:]
for stage in sys.argv[1].split(","):
    t = time.perf_counter()
    rc = main(["--stage", stage, *args])
    times[stage + "_s"] = time.perf_counter() - t
    if rc:
        sys.exit(rc)
print("BENCH_TIMES " + json.dumps(times))
"""


def ours(
    videos: list[Path], run_dir: Path, stages: str = "ingest,scenes", overrides: tuple[str, ...] = ()
) -> tuple[float, dict[str, list[int]], dict]:
    """`pipelines.run` over `videos`, `stages` in order in one subprocess (Ray start-up included): (seconds, hard
    cuts per video from the scenes table, details: per-stage seconds and the other transitions found)."""
    sets = [x for o in overrides for x in ("--set", o)]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", OURS_CODE, stages, "--input", *map(str, videos), "--output", str(run_dir), *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"pipelines.run {stages} {overrides} exited {proc.returncode}: {proc.stderr[-3000:]}")
    details: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_TIMES "):
            details = {k: round(v, 2) for k, v in json.loads(line[len("BENCH_TIMES ") :]).items()}
    import duckdb

    rows = duckdb.sql(
        f"SELECT source_uri, start_frame, transition FROM read_parquet('{run_dir}/scenes/*.parquet') ORDER BY 1, 2"
    ).fetchall()
    cuts: dict[str, list[int]] = {str(v): [] for v in videos}
    other: dict[str, int] = {}
    for uri, frame, transition in rows:
        if transition == "cut":
            cuts[uri].append(frame)
        elif transition != "start":
            other[transition] = other.get(transition, 0) + 1
    details["other_transitions"] = other  # shot starts that are not hard cuts: fades, dissolves
    return seconds, cuts, details


def accuracy(found: dict[str, list[int]], truth: dict[str, list[int]]) -> dict[str, float]:
    """Hard cuts against the truth: precision, recall and F1 within +-1 frame; `exact_share`: true cuts found at
    exactly their frame; `exact_share_of_matched`: of the cuts matched within +-1 frame, those exact."""
    total = {"tp": 0, "fp": 0, "fn": 0, "exact": 0}
    for k, true in truth.items():
        m, exact = match_frames(found[k], true, 1), match_frames(found[k], true, 0)
        total["tp"] += m.true_positives
        total["fp"] += m.false_positives
        total["fn"] += m.false_negatives
        total["exact"] += exact.true_positives
    tp, fp, fn, exact = total["tp"], total["fp"], total["fn"], total["exact"]
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        "exact_share": round(exact / max(tp + fn, 1), 4),
        "exact_share_of_matched": round(exact / max(tp, 1), 4),
        "true_cuts": tp + fn,
        "found_cuts": tp + fp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def parse_size(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def n_frames(videos: list[Path]) -> int:
    return sum(probe_video(str(v)).n_frames for v in videos)


def bench_size(
    videos: list[Path], detectors: list[str], subset_seconds: float, seconds_per_video: int, pipeline: bool, log
) -> dict:
    """Every figure for one size: baselines and ours, per detector, back to back."""
    run_cfg = load_config(None)
    cfg = run_cfg.scenes
    scan_size = scan_size_of(run_cfg)
    first = probe_video(str(videos[0]))
    k = len(videos) if subset_seconds <= 0 else min(len(videos), math.ceil(subset_seconds / seconds_per_video))
    subset = videos[:k]
    out: dict = {
        "videos": len(videos),
        "minutes": round(sum(probe_video(str(v)).duration_s for v in videos) / 60, 2),
        "frames": n_frames(videos),
        "source_size": [first.width, first.height],
        "scan_decode_size": list(scan_size(first)),
        "detection_size": list(detection_size(first.width, first.height, cfg.detect_width)),
        "subset": {
            "detectors": [d for d in detectors if d in SLOW_DETECTORS],
            "videos": len(subset),
            "minutes": round(sum(probe_video(str(v)).duration_s for v in subset) / 60, 2),
            "frames": n_frames(subset),
        },
        "decode_other_sizes": {},
        "detectors": {},
    }
    truth_all = {str(v): load_truth(v)["cuts"] for v in videos}

    for detector in detectors:
        vids = subset if detector in SLOW_DETECTORS else videos
        truth = {str(v): truth_all[str(v)] for v in vids}
        frames = n_frames(vids)
        log(f"  {detector}: {len(vids)} videos, {frames} frames")
        load = os.getloadavg()[0]
        cli_detector = "adaptive" if detector == "adaptive" else "content"
        cli_seconds, cli = timed_cli(vids, cfg, cli_detector)
        decode_seconds = pure_decode_seconds(vids, cfg, scan_size)
        entry: dict = {
            "on_subset": vids is subset and len(subset) < len(videos),
            "videos": len(vids),
            "frames": frames,
            "loadavg_1m_before": round(load, 2),
            "cli_detector": f"detect-{cli_detector}",
            "cli_seconds": round(cli_seconds, 2),
            "pure_decode_seconds": round(decode_seconds, 2),
        }
        with tempfile.TemporaryDirectory() as tmp:
            try:
                ours_seconds, our_cuts, details = ours(
                    vids, Path(tmp) / "run", overrides=(f"scenes.detector={detector}",)
                )
            except RuntimeError as e:
                log(f"  {detector}: FAILED {e}")
                entry["error"] = str(e)
                out["detectors"][detector] = entry
                continue
        entry.update(
            ours_seconds=round(ours_seconds, 2),
            ours_stage_seconds={k: v for k, v in details.items() if k.endswith("_s")},
            ours_other_transitions=details["other_transitions"],
            ratio_ours_over_cli=ratio(ours_seconds, cli_seconds),
            ratio_ours_over_pure_decode=ratio(ours_seconds, decode_seconds),
            ours_frames_per_s=round(frames / ours_seconds, 1),
            ours_scenes_stage_frames_per_s=round(frames / details["scenes_s"], 1) if details.get("scenes_s") else None,
            cli_frames_per_s=round(frames / cli_seconds, 1),
            pure_decode_frames_per_s=round(frames / decode_seconds, 1),
            same_cuts_as_cli=sum(cli[k] == our_cuts[k] for k in cli),
            cli_accuracy=accuracy(cli, truth),
            our_accuracy=accuracy(our_cuts, truth),
        )
        out["detectors"][detector] = entry
        log(f"  {detector}: {json.dumps(entry)}")
        if not out["decode_other_sizes"] and not entry["on_subset"]:
            # Once per size, right after a full-set detector: decoding at the detection size and at full size.
            det_seconds = pure_decode_seconds(videos, cfg)
            full_seconds = pure_decode_seconds(videos, cfg, lambda info: None)
            out["decode_other_sizes"] = {
                "measured_after": detector,
                "detection_size_seconds": round(det_seconds, 2),
                "full_size_seconds": round(full_seconds, 2),
                "ratio_ours_over_detection_size_decode": ratio(ours_seconds, det_seconds),
                "ratio_ours_over_full_size_decode": ratio(ours_seconds, full_seconds),
                "ratio_scan_size_decode_over_full_size_decode": ratio(decode_seconds, full_seconds),
            }
            log(f"  decode at other sizes: {json.dumps(out['decode_other_sizes'])}")

    if pipeline:
        out["pipeline"] = {}
        for name, overrides in (("annotators_off", ("flow.backend=none",)), ("default_annotators", ())):
            load = os.getloadavg()[0]
            decode_seconds = pure_decode_seconds(videos, cfg, scan_size)
            entry = {
                "detector": run_cfg.scenes.detector,
                "overrides": list(overrides),
                "loadavg_1m_before": round(load, 2),
                "pure_decode_seconds": round(decode_seconds, 2),
            }
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    seconds, _, details = ours(videos, Path(tmp) / "run", stages="all", overrides=overrides)
                    entry.update(
                        all_seconds=round(seconds, 2),
                        stage_seconds={k: v for k, v in details.items() if k.endswith("_s")},
                        ratio_all_over_pure_decode=ratio(seconds, decode_seconds),
                        frames_per_s=round(out["frames"] / seconds, 1),
                    )
                    if name == "annotators_off":
                        entry["goal_ratio_max"] = 1.3
                        entry["meets_goal"] = entry["ratio_all_over_pure_decode"] <= 1.3
                except RuntimeError as e:
                    entry["error"] = str(e)
            out["pipeline"][name] = entry
            log(f"  pipeline {name}: {json.dumps(entry)}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=14)
    p.add_argument("--seconds", type=int, default=45)
    p.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "long_cuts"), help="videos in CACHE/<seconds>s")
    p.add_argument(
        "--sizes", default="854x480,1920x1080", help="comma-separated WxH re-encodes, or `native` (480x270 sources)"
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="one size only (same as --sizes WxH)")
    p.add_argument("--large-preset", default="superfast", help="libx264 preset of re-encodes >= 720 lines")
    p.add_argument("--detectors", default=",".join(DETECTORS), help=f"comma-separated, of {','.join(DETECTORS)}")
    p.add_argument(
        "--subset-seconds",
        type=float,
        default=135.0,
        help=f"{' and '.join(SLOW_DETECTORS)} run on the first videos covering this many seconds (0 = all)",
    )
    p.add_argument("--pipeline", action="store_true", help="also --stage all, annotators off and default ones")
    p.add_argument("--json", help="also write the JSON document here")
    p.add_argument("--prepare-only", action="store_true", help="render and re-encode the videos, measure nothing")
    args = p.parse_args()
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    if unknown := set(detectors) - set(DETECTORS):
        p.error(f"unknown detectors {sorted(unknown)}; choose from {DETECTORS}")
    sizes = [f"{args.size[0]}x{args.size[1]}"] if args.size else [s.strip() for s in args.sizes.split(",")]

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    import torch

    result: dict = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch_cuda": torch.cuda.is_available(),
        "videos": args.videos,
        "seconds_per_video": args.seconds,
        "subset_seconds": args.subset_seconds,
        "encode": {},
        "sizes": {},
    }
    # One folder per video length: the files are named by index only.
    base = long_cut_videos(Path(args.cache) / f"{args.seconds}s", args.videos, args.seconds)
    for size in sizes:
        wh = parse_size(size)
        if wh is None:
            videos, preset = base, "source (sample generator)"
        else:
            preset = args.large_preset if wh[1] >= 720 else "veryfast"
            log(f"{size}: re-encoding (libx264 crf 20 preset {preset}; cached)")
            started = time.perf_counter()
            videos = upscaled(base, *wh, preset=preset)
            result["encode"][size] = {"preset": preset, "seconds_this_run": round(time.perf_counter() - started, 1)}
        if args.prepare_only:
            continue
        log(f"{size}: benchmarking {len(videos)} videos")
        result["sizes"][size] = bench_size(videos, detectors, args.subset_seconds, args.seconds, args.pipeline, log)
        result["sizes"][size]["encode_preset"] = preset
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
