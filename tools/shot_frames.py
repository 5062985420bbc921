"""Evidence for hand-labelling shot boundaries: per-frame statistics and labelled contact sheets.

Frames are numbered exactly as the project's decoder yields them (``curation.decode.iter_frames``, 0-based).

    python tools/shot_frames.py VIDEO --stats                       # candidate cuts, flat runs, slow changes
    python tools/shot_frames.py VIDEO --table 100 130               # per-frame statistics for frames 100..129
    python tools/shot_frames.py VIDEO --around 41 --radius 4 --out sheet.png    # frames 37..45, index-labelled
    python tools/shot_frames.py VIDEO --every 10 --out coarse.png   # every 10th frame of the whole video
    python tools/shot_frames.py VIDEO --range 100 130 --out r.png   # frames 100..129
    python tools/shot_frames.py VIDEO --frames 32-36,51-55 --cols 5 # several places on one sheet

Statistics are computed on frames shrunk to 64 pixels wide: mean and std of luma (0..255), ``mad`` = mean absolute
luma difference to the previous frame, ``hist`` = half the L1 distance between the previous and this frame's
8x8x8 RGB histograms (0 = same colours, 1 = disjoint), and ``d8`` = mean absolute luma difference to the frame 8
back. A dissolve or fade changes pixels monotonically, so ``d8`` is close to the sum of the 8 ``mad`` steps
(``lin`` = d8 / that sum, near 1); motion mostly is not. The candidates printed by ``--stats`` are leads to look at,
not labels: every one is to be checked on a contact sheet.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curation.decode import VideoInfo, iter_frames, probe_video  # noqa: E402
from curation.transitions import runs  # noqa: E402

STAT_WIDTH = 64
LAG = 8


@dataclass
class Stats:
    """Per-frame statistics, each an array of n_frames values (the differences are 0 for frame 0 / the first LAG)."""

    luma: np.ndarray
    std: np.ndarray
    mad: np.ndarray
    hist: np.ndarray
    d8: np.ndarray
    lin: np.ndarray
    rgb: np.ndarray  # n x 3, mean colour


def _small(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    height = max(1, round(h * STAT_WIDTH / w))
    return cv2.resize(rgb, (STAT_WIDTH, height), interpolation=cv2.INTER_AREA)


def compute_stats(path: str, info: VideoInfo) -> Stats:
    lumas: list[np.ndarray] = []
    hists: list[np.ndarray] = []
    colours: list[np.ndarray] = []
    for _, _, rgb in iter_frames(path, info, size=None):
        small = _small(rgb)
        lumas.append(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32))
        hist = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256]).ravel()
        hists.append(hist / max(hist.sum(), 1.0))
        colours.append(small.reshape(-1, 3).mean(axis=0))
    n = len(lumas)
    y = np.stack(lumas)
    h = np.stack(hists)
    mad = np.zeros(n, np.float32)
    hist = np.zeros(n, np.float32)
    d8 = np.zeros(n, np.float32)
    lin = np.zeros(n, np.float32)
    if n > 1:
        mad[1:] = np.abs(y[1:] - y[:-1]).mean(axis=(1, 2))
        hist[1:] = 0.5 * np.abs(h[1:] - h[:-1]).sum(axis=1)
    for i in range(LAG, n):
        d8[i] = np.abs(y[i] - y[i - LAG]).mean()
        steps = mad[i - LAG + 1 : i + 1].sum()
        lin[i] = d8[i] / steps if steps > 0 else 0.0
    return Stats(y.mean(axis=(1, 2)), y.std(axis=(1, 2)), mad, hist, d8, lin, np.stack(colours))


def cut_candidates(st: Stats, ratio: float = 3.0, floor: float = 6.0) -> list[tuple[int, float, float]]:
    """Frames whose difference to the previous one stands out from the neighbourhood: (index, mad, ratio)."""
    out: list[tuple[int, float, float]] = []
    n = len(st.mad)
    for i in range(1, n):
        around = np.concatenate([st.mad[max(1, i - 6) : i], st.mad[i + 1 : i + 7]])
        base = float(np.median(around)) if len(around) else 0.0
        score = float(st.mad[i]) / max(base, 0.5)
        if (st.mad[i] >= floor and score >= ratio) or st.hist[i] >= 0.5:
            out.append((i, float(st.mad[i]), score))
    return out


def flat_runs(st: Stats, max_std: float = 8.0, min_len: int = 1) -> list[tuple[int, int, str]]:
    """Runs [start, end) of nearly uniform frames, with their mean colour."""
    flat = st.std < max_std
    out: list[tuple[int, int, str]] = []
    for i, j in runs(flat):
        if j - i >= min_len:
            r, g, b = st.rgb[i:j].mean(axis=0)
            out.append((i, j, f"rgb=({r:.0f},{g:.0f},{b:.0f})"))
    return out


def slow_changes(st: Stats, min_d8: float = 12.0, min_lin: float = 0.6) -> list[tuple[int, int, float]]:
    """Stretches [start, end) where frames change steadily (large d8, linear, no single big step): dissolve/fade
    leads, or pans and zooms."""
    # the largest single step in the lag window must not carry the change: that would be a cut, seen LAG times
    top = np.zeros_like(st.d8)
    for i in range(LAG, len(st.mad)):
        top[i] = st.mad[i - LAG + 1 : i + 1].max()
    hot = (st.d8 >= min_d8) & (st.lin >= min_lin) & (top < 0.5 * st.d8)
    return [(max(0, i - LAG), j, float(st.d8[i:j].max())) for i, j in runs(hot)]


def print_stats(path: str, info: VideoInfo) -> None:
    st = compute_stats(path, info)
    print(f"{path}: decoder={info.decoder} n_frames={info.n_frames} decoded={len(st.mad)} fps={info.fps:.3f}")
    print(f"mad: median {np.median(st.mad[1:]):.2f}, p90 {np.percentile(st.mad[1:], 90):.2f}, max {st.mad.max():.2f}")
    print("cut candidates (index: mad, ratio to neighbours, hist):")
    for i, mad, score in cut_candidates(st):
        print(f"  {i}: mad {mad:.1f} x{score:.1f} hist {st.hist[i]:.2f}")
    print("flat runs [start, end) (luma std < 8):")
    for a, b, what in flat_runs(st):
        print(f"  [{a}, {b}) {what} luma {st.luma[a:b].mean():.0f}")
    print(f"steady changes [start, end) (d{LAG} >= 12, linear >= 0.6):")
    for a, b, peak in slow_changes(st):
        print(f"  [{a}, {b}) peak d{LAG} {peak:.1f}")


def print_table(path: str, info: VideoInfo, start: int, end: int) -> None:
    st = compute_stats(path, info)
    print(f"{'idx':>5} {'luma':>6} {'std':>6} {'mad':>6} {'hist':>5} {'d8':>6} {'lin':>5}  mean rgb")
    for i in range(max(0, start), min(end, len(st.mad))):
        r, g, b = st.rgb[i]
        print(
            f"{i:5d} {st.luma[i]:6.1f} {st.std[i]:6.1f} {st.mad[i]:6.2f} {st.hist[i]:5.2f} {st.d8[i]:6.2f}"
            f" {st.lin[i]:5.2f}  ({r:.0f},{g:.0f},{b:.0f})"
        )


def decode_some(path: str, info: VideoInfo, indices: list[int]) -> dict[int, np.ndarray]:
    """The given frames, decoded sequentially from frame 0: decord's seeks (``iter_frames(indices=...)``) returned
    grey garbage mid-file on imageio's cockatoo.mp4, and evidence must show the frames a full pass yields."""
    wanted, last = set(indices), max(indices)
    frames: dict[int, np.ndarray] = {}
    for i, _, rgb in iter_frames(path, info, size=None):
        if i in wanted:
            frames[i] = rgb
        if i >= last:
            break
    return frames


def contact_sheet(path: str, info: VideoInfo, indices: list[int], tile_width: int, cols: int) -> np.ndarray:
    """A grid of the given frames, each labelled with its index (BGR, for cv2.imwrite)."""
    frames = decode_some(path, info, indices)
    tile_height = max(1, round(info.height * tile_width / info.width))
    rows = (len(indices) + cols - 1) // cols
    sheet = np.full((rows * (tile_height + 2), cols * (tile_width + 2), 3), 255, np.uint8)
    for k, i in enumerate(indices):
        tile = np.zeros((tile_height, tile_width, 3), np.uint8)
        if i in frames:
            tile = cv2.resize(frames[i], (tile_width, tile_height), interpolation=cv2.INTER_AREA)
            tile = cv2.cvtColor(tile, cv2.COLOR_RGB2BGR)
        label = str(i)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(tile, (0, 0), (tw + 6, th + 8), (0, 0, 0), -1)
        cv2.putText(tile, label, (3, th + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(k, cols)
        y, x = r * (tile_height + 2), c * (tile_width + 2)
        sheet[y : y + tile_height, x : x + tile_width] = tile
    return sheet


def parse_frames(text: str) -> list[int]:
    """'32-36,51' -> [32, 33, 34, 35, 36, 51] (order kept)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stats", action="store_true", help="print candidate boundaries from per-frame statistics")
    mode.add_argument("--table", nargs=2, type=int, metavar=("START", "END"), help="per-frame statistics")
    mode.add_argument("--around", type=int, help="contact sheet of frames AROUND-RADIUS..AROUND+RADIUS")
    mode.add_argument("--every", type=int, help="contact sheet of every k-th frame (of --start/--end)")
    mode.add_argument("--range", nargs=2, type=int, metavar=("START", "END"), help="contact sheet of [START, END)")
    mode.add_argument("--frames", help="contact sheet of a list such as 32-36,51-55 (ranges inclusive)")
    parser.add_argument("--radius", type=int, default=4)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--end", type=int, default=None)
    parser.add_argument("--tile-width", type=int, default=240)
    parser.add_argument("--cols", type=int, default=0, help="tiles per row (default: about square)")
    parser.add_argument("--out", default=None, help="PNG path (default /tmp/shotlabels/<video>_<frames>.png)")
    args = parser.parse_args(argv)

    if args.every is not None and args.every < 1:
        parser.error("--every must be >= 1")
    info = probe_video(args.video)
    if args.stats:
        print_stats(args.video, info)
        return 0
    if args.table:
        print_table(args.video, info, *args.table)
        return 0
    n = info.n_frames
    if args.around is not None:
        lo, hi = max(0, args.around - args.radius), min(n, args.around + args.radius + 1)
        indices = list(range(lo, hi))
    elif args.every is not None:
        indices = list(range(max(0, args.start), min(n, args.end or n), args.every))
    elif args.frames:
        indices = [i for i in parse_frames(args.frames) if 0 <= i < n]
    else:
        indices = list(range(max(0, args.range[0]), min(n, args.range[1])))
    if not indices:
        parser.error(f"no frames selected (the video has {n})")
    cols = args.cols or max(1, int(np.ceil(np.sqrt(len(indices) * 1.5))))
    sheet = contact_sheet(args.video, info, indices, args.tile_width, cols)
    out = Path(args.out or f"/tmp/shotlabels/{Path(args.video).stem}_{indices[0]}-{indices[-1]}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    print(f"{out}: frames {indices[0]}..{indices[-1]} ({len(indices)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
