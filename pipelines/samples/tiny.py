"""Many tiny distinct videos, for stress and memory tests of the pipeline on corpora of hundreds of files.

Each video is 4 s of a random texture drifting in a random direction, with a hard cut to a second
texture halfway through (so scene detection cuts it into two shots). Seeds make every file different in content,
so neither the ingest content hash nor near-duplicate removal collapses the corpus.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

VERSION = 2  # in the file names: a cache of files from an older generator is not reused


def _texture(rng: np.random.Generator, height: int, width: int, low: int, high: int) -> np.ndarray:
    """Blocky random colour texture with values in [low, high), twice the frame size so it can drift."""
    coarse = rng.integers(low, high, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    big = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))
    return big[: 2 * height, : 2 * width]


def tiny_video(path: Path, seed: int, seconds: float = 4.0, fps: int = 8, size: tuple[int, int] = (96, 64)) -> Path:
    """Write one tiny H.264 video (width, height = `size`) and return its path."""
    width, height = size
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    # A dark shot, then a bright one: the cut between them is unmistakable for content-based detection.
    shots = [(_texture(rng, height, width, lo, lo + 110), rng.uniform(-2, 2, size=2)) for lo in (10, 140)]
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(n):
            texture, (vx, vy) = shots[0] if t < n // 2 else shots[1]
            dx, dy = int(abs(vx) * t) % width, int(abs(vy) * t) % height
            frame = np.ascontiguousarray(texture[dy : dy + height, dx : dx + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def generate_tiny_corpus(
    out_dir: str | Path, count: int, seed: int = 0, seconds: float = 4.0, size: tuple[int, int] = (96, 64)
) -> list[Path]:
    """`count` distinct tiny videos in `out_dir` (files already there are reused), sorted by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"tiny_v{VERSION}_{size[0]}x{size[1]}_{seconds:g}s_{seed}_{i:05d}.mp4"
        paths.append(path if path.exists() else tiny_video(path, seed * 1_000_003 + i, seconds, size=size))
    return paths
