"""One decode per video: the scenes step keeps the frames its clips will need while it scans for shots, and the clips
step reads them back instead of opening the decoder a second time.

During the scan every decoded frame (already at the clip's stored size) goes into a `FrameBuffer`: in memory up to
`scenes.frame_buffer_mb`, then appended to a spill file in the local temp directory up to `scenes.frame_spill_mb`.
Which frames the clips need is known only once the shots are (a clip's frames depend on where its shot ends), so
the buffer holds them all until then. A video too long for both bounds stops being kept (`overflowed`): its clips
step decodes the video again, as before, and nothing is lost.

When the shots are known the wanted frames are written to RUN_DIR/_work/frames/<key>.npy (a plain .npy array,
memory-mapped when read, so the clips step streams it); the scenes record, written after it, is what commits it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from curation.tables import temp_path

log = logging.getLogger(__name__)

MB = 1 << 20


class FrameBuffer:
    """Frames of one (height, width, 3) uint8 shape by source index, in memory then in a spill file, both bounded."""

    def __init__(self, ram_mb: int, spill_mb: int, spill_dir: str | None = None) -> None:
        self.ram_bytes, self.spill_bytes = ram_mb * MB, spill_mb * MB
        self.spill_dir = spill_dir
        self.memory: dict[int, np.ndarray] = {}
        self.spilled: dict[int, int] = {}  # index -> slot in the spill file
        self.shape: tuple[int, ...] | None = None
        self.overflowed = False
        self._file = None
        self._path: str | None = None
        self._used = 0

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 0

    def add(self, index: int, frame: np.ndarray) -> None:
        if self.overflowed:
            return
        if self.shape is None:
            self.shape = tuple(frame.shape)
        elif tuple(frame.shape) != self.shape:
            raise ValueError(f"frame {index} has shape {frame.shape}, the buffer holds {self.shape}")
        if self._used + self.frame_bytes <= self.ram_bytes:
            self.memory[index] = np.ascontiguousarray(frame)
            self._used += self.frame_bytes
            return
        if (len(self.spilled) + 1) * self.frame_bytes > self.spill_bytes:
            log.info(
                "frame buffer full (%d MB in memory, %d MB spilled): the clips step will decode this video again",
                self.ram_bytes // MB,
                self.spill_bytes // MB,
            )
            self.overflowed = True
            self.close()
            return
        if self._file is None:
            fd, self._path = tempfile.mkstemp(prefix="frames-", suffix=".spill", dir=self.spill_dir)
            self._file = os.fdopen(fd, "w+b")
        self.spilled[index] = len(self.spilled)
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(frame).tobytes())

    def get(self, index: int) -> np.ndarray:
        if index in self.memory:
            return self.memory[index]
        slot = self.spilled[index]
        self._file.seek(slot * self.frame_bytes)
        data = self._file.read(self.frame_bytes)
        return np.frombuffer(data, np.uint8).reshape(self.shape)

    def __contains__(self, index: int) -> bool:
        return index in self.memory or index in self.spilled

    def close(self) -> None:
        """Free the memory and delete the spill file."""
        self.memory.clear()
        self.spilled.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)
            self._path = None


def write_frames(buffer: FrameBuffer, indices: Sequence[int], path: Path) -> bool:
    """Write the buffered frames `indices` (sorted) to `path` as one (N, H, W, 3) uint8 .npy, atomically. False when
    the buffer does not hold them all (it overflowed, or the file ended early): then nothing is written."""
    if buffer.overflowed or buffer.shape is None or not indices or any(i not in buffer for i in indices):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(indices), *buffer.shape))
        for slot, index in enumerate(indices):
            out[slot] = buffer.get(index)
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def read_frames(path: Path, indices: Sequence[int], pts: Sequence[float]) -> Iterator[tuple[int, float, np.ndarray]]:
    """Stream `(index, pts, rgb)` back from a frames file, in index order, memory-mapped (nothing loaded at once)."""
    frames = np.load(path, mmap_mode="r")
    if len(frames) != len(indices) or len(pts) != len(indices):
        raise ValueError(f"{path}: {len(frames)} frames, the scenes record lists {len(indices)}")
    for slot, index in enumerate(indices):
        yield int(index), float(pts[slot]), np.array(frames[slot])
