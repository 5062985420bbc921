"""Benchmark: our scenes stage vs the `scenedetect` command line over the same >= 10 minutes of video.

Both use ContentDetector with the same threshold, minimum scene length and downscaled width. The CLI runs once
per video, one after the other (how a data team scripts it); ours is `pipelines.run --stage ingest` then
`--stage scenes` in one process, Ray start-up included. Also reported: pure decoding time of the same videos
(decord at detection size, one process), and accuracy of both against the generated ground truth.

    python bench/scenes.py [--videos 14] [--seconds 45] [--cache bench/.cache]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.decode import iter_frames, probe_video  # noqa: E402
from curation.metrics import match_frames  # noqa: E402
from curation.scenes import SceneConfig, detection_size  # noqa: E402
from pipelines.samples import generate_video, load_truth  # noqa: E402
from pipelines.samples.model import VideoSpec  # noqa: E402


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


def upscaled(videos: list[Path], width: int, height: int) -> list[Path]:
    """Re-encode the cached videos at a larger size (same frames, same cuts): decode cost closer to real footage."""
    import av
    import cv2

    out = []
    for video in videos:
        target = video.with_name(f"{video.stem}_{width}x{height}.mp4")
        if not target.exists():
            tmp = target.with_suffix(".part.mp4")
            with av.open(str(video)) as src, av.open(str(tmp), "w") as dst:
                stream = dst.add_stream("libx264", rate=src.streams.video[0].average_rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast"}
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


def cli_cuts(video: Path, cfg: SceneConfig, out_dir: Path) -> list[int]:
    """Run the scenedetect CLI with our detector settings; return the first frame of every shot after the first."""
    info = probe_video(str(video))
    factor = max(1, round(info.width / cfg.detect_width)) if cfg.detect_width else 1
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
        "detect-content",
        "-t",
        str(cfg.threshold),
        "list-scenes",
        "-s",
        "-f",
        f"{video.stem}.csv",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(out_dir / f"{video.stem}.csv") as f:
        rows = list(csv.DictReader(f))
    return [int(r["Start Frame"]) - 1 for r in rows[1:]]  # the CLI numbers frames from 1


def pure_decode_seconds(videos: list[Path], cfg: SceneConfig) -> float:
    started = time.perf_counter()
    for video in videos:
        info = probe_video(str(video))
        for _ in iter_frames(str(video), info, size=detection_size(info.width, info.height, cfg.detect_width)):
            pass
    return time.perf_counter() - started


def ours(videos: list[Path], run_dir: Path) -> tuple[float, dict[str, list[int]]]:
    code = (
        "import sys; from pipelines.run import main; a = sys.argv[1:]; "
        "sys.exit(main(['--stage', 'ingest', *a]) or main(['--stage', 'scenes', *a]))"
    )
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, "--input", *map(str, videos), "--output", str(run_dir)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    import duckdb

    rows = duckdb.sql(
        f"SELECT source_uri, start_frame FROM read_parquet('{run_dir}/scenes/*.parquet') "
        "WHERE transition = 'cut' ORDER BY 1, 2"
    ).fetchall()
    cuts: dict[str, list[int]] = {str(v): [] for v in videos}
    for uri, frame in rows:
        cuts[uri].append(frame)
    return seconds, cuts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=14)
    p.add_argument("--seconds", type=int, default=45)
    p.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "long_cuts"))
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="re-encode at this size (e.g. 1280 720)")
    args = p.parse_args()
    cfg = SceneConfig()
    videos = long_cut_videos(Path(args.cache), args.videos, args.seconds)
    if args.size:
        videos = upscaled(videos, *args.size)
    minutes = sum(probe_video(str(v)).duration_s for v in videos) / 60
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cli = {str(v): cli_cuts(v, cfg, Path(tmp)) for v in videos}
        cli_seconds = time.perf_counter() - started
        ours_seconds, our_cuts = ours(videos, Path(tmp) / "run")
    decode_seconds = pure_decode_seconds(videos, cfg)
    truth = {str(v): load_truth(v)["cuts"] for v in videos}

    def accuracy(found: dict[str, list[int]]) -> dict[str, float]:
        matches = [match_frames(found[k], truth[k], 1) for k in truth]
        tp, fp, fn = (
            sum(getattr(m, a) for m in matches) for a in ("true_positives", "false_positives", "false_negatives")
        )
        return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}

    result = {
        "videos": len(videos),
        "minutes": round(minutes, 2),
        "cli_seconds": round(cli_seconds, 2),
        "ours_seconds": round(ours_seconds, 2),
        "ratio_ours_over_cli": round(ours_seconds / cli_seconds, 3),
        "pure_decode_seconds": round(decode_seconds, 2),
        "ratio_ours_over_pure_decode": round(ours_seconds / decode_seconds, 3),
        "same_cuts_as_cli": sum(cli[k] == our_cuts[k] for k in cli),
        "cli_accuracy": accuracy(cli),
        "our_accuracy": accuracy(our_cuts),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
