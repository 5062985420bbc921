"""Deterministic identifiers: videos by content, clips by (video, span), work items by source URI."""

from __future__ import annotations

import hashlib
import os

import fsspec

# Hashing the whole file would read every byte twice; size + head + middle + tail pins the content of real
# video files (containers differ in headers, index and payload) at a fixed cost of 3 MiB per file.
_BLOCK = 1 << 20


def video_id_from_content(uri: str) -> str:
    """16-hex content id of a video file: blake2b over its size and three 1 MiB blocks (head, middle, tail)."""
    h = hashlib.blake2b(digest_size=8)
    with fsspec.open(uri, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        h.update(size.to_bytes(8, "little"))
        for offset in sorted({0, max(0, size // 2 - _BLOCK // 2), max(0, size - _BLOCK)}):
            f.seek(offset)
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def uri_key(uri: str) -> str:
    """16-hex key of a source URI; names the per-input work records so resume needs no file reads."""
    return hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    """16-hex id of the clip [start_frame, end_frame) of a video."""
    return hashlib.blake2b(f"{video_id}:{start_frame}:{end_frame}".encode(), digest_size=8).hexdigest()


def shard_name(video_id: str, chunk: int) -> str:
    """File name of the `chunk`-th shard of a video's clips (stable across reruns and input additions)."""
    return f"{video_id}-{chunk:04d}.parquet"
