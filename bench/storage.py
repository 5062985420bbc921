"""Benchmark: bytes per clip-second of stored frames, raw vs video storage (`frames.store`), and what the coding
costs in quality (PSNR against the raw frames) and time (encode and decode per clip).

Clips: one window per video at its bucket (the default aspect-ratio buckets, 49 frames at 8 fps, cover + centre
crop, exactly as the clips step stores them), from the real videos of ../shared/media (skipped when absent) and
the generated sample corpus. Raw is the uint8 bytes the row would hold; each codec setting encodes the same
frames, and `decode ms` is the time the loader's decode threads spend per clip (`decode_video`, one codec thread).
Goal (issue "shards a real training job can use"): video <= 1/10 of raw at PSNR >= 40 dB. No assertions.

    python bench/storage.py [--frames 49] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.buckets import DEFAULT_ASPECTS, BucketConfig  # noqa: E402
from curation.decode import DecodeError, iter_frames, probe_video  # noqa: E402
from curation.sampling import FramesConfig, clip_windows, decode_size, fit_to_target, video_layout  # noqa: E402
from curation.video_store import VideoCodec, decode_video, encode_video, psnr  # noqa: E402

MEDIA = Path(os.environ.get("SHARED_MEDIA_DIR", ROOT.parent / "shared" / "media")) / "videos"
REAL = [
    "moviepy_media/big_buck_bunny_0_30.webm",
    "moviepy_media/chaplin.mp4",
    "moviepy_media/fire2.mp4",
    "imageio_test_images/cockatoo.mp4",
    "mmaction2/test.mp4",
    "opencv_tutorial_slow_traffic/slow_traffic_small.mp4",
    "torchcodec_resources/nasa_13013.mp4",
]
SETTINGS = {  # h264 is coded with tune=fastdecode unless "cabac" says otherwise (VideoCodec.fast_decode)
    "h264 crf11 444 faster (default)": VideoCodec(),
    "h264 crf11 444 faster cabac": VideoCodec(fast_decode=False),
    "h264 crf18 444 faster": VideoCodec(crf=18),
    "h264 crf11 420 faster": VideoCodec(pix_fmt="yuv420p"),
    "h264 crf12 444 fast": VideoCodec(crf=12, preset="fast"),
    "h264 crf17 rgb faster": VideoCodec(pix_fmt="rgb24", crf=17),
    "h264 crf18 rgb faster": VideoCodec(pix_fmt="rgb24", crf=18),
    "av1 crf20 420 p8": VideoCodec(codec="av1", pix_fmt="yuv420p", crf=20, preset="8"),
}


def window(path: Path, num_frames: int) -> tuple[np.ndarray, str] | None:
    """The first stored window of `path` at its bucket, and the bucket's name; None if it has no such window."""
    info = probe_video(str(path))
    buckets = BucketConfig(aspect_ratios=DEFAULT_ASPECTS, frames=(num_frames,))
    layout = video_layout(info.width, info.height, FramesConfig(fps=8.0), buckets)
    windows = clip_windows(0, info.n_frames, info.fps, layout)
    if not windows or layout.problem:
        return None
    indices, _ = windows[0]
    size = decode_size(info.width, info.height, layout.frames)
    frames = [
        fit_to_target(rgb, layout.frames) for _, _, rgb in iter_frames(str(path), info, size=size, indices=indices)
    ]
    fc = layout.frames
    return np.stack(frames), f"{num_frames}x{fc.height}x{fc.width}"


def sources(num_frames: int) -> list[tuple[str, np.ndarray, str]]:
    from pipelines.samples import generate_corpus

    out = []
    paths = [MEDIA / r for r in REAL if (MEDIA / r).exists()]
    corpus = Path(tempfile.mkdtemp(prefix="storage-corpus-"))
    generate_corpus(corpus)
    paths += sorted(p for p in corpus.iterdir() if p.suffix in (".mp4", ".mkv", ".webm", ".avi"))
    for path in paths:
        try:
            got = window(path, num_frames)
        except DecodeError:
            continue
        if got is not None:
            out.append((path.name, *got))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--json", default="")
    args = p.parse_args()
    clips = sources(args.frames)
    seconds = args.frames / 8.0
    raw_per_s = statistics.mean(f.nbytes for _, f, _ in clips) / seconds
    print(f"{len(clips)} clips of {args.frames} frames at 8 fps: {', '.join(n for n, *_ in clips)}")
    print(f"buckets: {sorted({b for *_, b in clips})}")
    print(f"raw: {raw_per_s / 1e6:.2f} MB per clip-second")
    results = {"clips": len(clips), "raw_bytes_per_clip_second": raw_per_s, "settings": {}}
    print(f"{'setting':32s} {'MB/clip-s':>9s} {'raw/video':>9s} {'PSNR min':>8s} {'mean':>6s}", end="")
    print(f" {'enc ms':>7s} {'dec ms':>7s}")
    for name, codec in SETTINGS.items():
        sizes, quality, enc, dec = [], [], [], []
        for _, frames, _ in clips:
            t0 = time.perf_counter()
            data = encode_video(frames, codec)
            t1 = time.perf_counter()
            back = decode_video(data, frames.shape)
            dec.append(time.perf_counter() - t1)
            enc.append(t1 - t0)
            sizes.append(len(data))
            quality.append(psnr(frames, back))
        per_s = statistics.mean(sizes) / seconds
        row = {
            "bytes_per_clip_second": per_s,
            "ratio_raw_over_video": raw_per_s / per_s,
            "psnr_min": min(quality),
            "psnr_mean": statistics.mean(quality),
            "encode_ms_per_clip": 1e3 * statistics.median(enc),
            "decode_ms_per_clip": 1e3 * statistics.median(dec),
        }
        results["settings"][name] = row
        print(
            f"{name:32s} {per_s / 1e6:9.3f} {row['ratio_raw_over_video']:9.1f} {row['psnr_min']:8.1f} "
            f"{row['psnr_mean']:6.1f} {row['encode_ms_per_clip']:7.0f} {row['decode_ms_per_clip']:7.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
