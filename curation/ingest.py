"""Stage: ingest. Reads: input URIs. Writes: one `videos` record per input (probe results or the error).

Input discovery accepts directories (recursive), globs, list files (`.txt`/`.lst`, one URI per line) and fsspec
URLs; decoders need a local file, so non-local URLs are fetched to a local cache first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fsspec

from curation.decode import DecodeError, probe_video
from curation.ids import uri_key, video_id_from_content

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".m2ts",
    ".mts",
    ".ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".gif",
    ".mxf",
    ".ivf",
    ".264",
    ".h264",
    ".265",
    ".hevc",
    ".obu",
    ".m1v",
    ".m2v",
    ".mjpeg",
)
LIST_EXTENSIONS = (".txt", ".lst")


class InputError(ValueError):
    """An --input cannot be read at all (the run stops before doing any work)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Input discovery and the limits that guard against absurd files."""

    max_pixels: int = 8192 * 4320  # 8K; larger frames are decompression-bomb territory for 2-core workers
    max_duration_s: float = 4 * 3600.0
    decoders: tuple[str, ...] = ("decord", "pyav")  # tried in order; the first that decodes a frame is recorded
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS  # files picked from directories; empty = every file
    cache_dir: str = ""  # where non-local URLs are fetched; empty = RUN_DIR/_work/cache

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_duration_s <= 0:
            raise ValueError("ingest.max_pixels and ingest.max_duration_s must be > 0")
        unknown = set(self.decoders) - {"decord", "pyav"}
        if not self.decoders or unknown:
            raise ValueError(f"ingest.decoders must be a non-empty list of decord/pyav, got {list(self.decoders)}")


@dataclasses.dataclass
class Discovery:
    """What discovery found: the inputs to process, and the files it passed over (reported, never dropped silently)."""

    uris: list[str]
    ignored: list[str]


def discover_inputs(specs: Iterable[str], extensions: tuple[str, ...]) -> Discovery:
    """Expand directories, globs and list files into a sorted, de-duplicated list of URIs."""
    uris: list[str] = []
    ignored: list[str] = []
    for spec in specs:
        found, skipped = _expand(spec, extensions)
        uris.extend(found)
        ignored.extend(skipped)
    return Discovery(uris=sorted(dict.fromkeys(uris)), ignored=sorted(set(ignored)))


def _expand(spec: str, extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    fs, path = fsspec.core.url_to_fs(spec)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def to_uri(p: str) -> str:
        return p if protocol in ("file", "local") else fs.unstrip_protocol(p)

    if any(ch in path for ch in "*?["):
        matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not matches:
            raise InputError(f"--input {spec}: the pattern matches no files")
        return [to_uri(p) for p in matches], []
    if not fs.exists(path):
        raise InputError(f"--input {spec}: no such file or directory")
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if not Path(p).name.startswith("."))
        wanted = [p for p in files if not extensions or p.lower().endswith(extensions)]
        return [to_uri(p) for p in wanted], [to_uri(p) for p in files if p not in set(wanted)]
    if path.lower().endswith(LIST_EXTENSIONS):
        return _read_list_file(fs, path, spec), []
    return [to_uri(path)], []


def _read_list_file(fs: Any, path: str, spec: str) -> list[str]:
    try:
        with fs.open(path, "r") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--input {spec}: cannot read list file ({e})") from e
    base = Path(path).parent
    entries = [line for line in lines if line and not line.startswith("#")]
    return [e if "://" in e or os.path.isabs(e) else str(base / e) for e in entries]


def local_path(uri: str, cache_dir: str) -> str:
    """A local filesystem path for `uri`, fetching non-local URLs into `cache_dir` once."""
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    target = Path(cache_dir) / f"{uri_key(uri)}{Path(path).suffix}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        fs.get(path, str(tmp))
        tmp.replace(target)
    return str(target)


def probe_input(uri: str, cfg: IngestConfig, cache_dir: str) -> dict[str, Any]:
    """Probe one input; returns a `videos` record whose `error` is set (with a `reason`) when it cannot be used."""
    record: dict[str, Any] = {"source_uri": uri, "video_id": None, "error": None, "reason": None}
    try:
        path = local_path(uri, cache_dir)
        record["file_bytes"] = os.path.getsize(path)
        record["video_id"] = video_id_from_content(path)
        info = probe_video(path, max_pixels=cfg.max_pixels, max_duration_s=cfg.max_duration_s, decoders=cfg.decoders)
    except DecodeError as e:
        record.update(error=f"{e.reason}: {e.detail}", reason=e.reason, detail=e.detail)
        return record
    except (OSError, ValueError) as e:  # missing, unreadable or unfetchable input
        record.update(error=f"unreadable: {e}", reason="unreadable", detail=str(e))
        return record
    record.update(dataclasses.asdict(info))
    return record
