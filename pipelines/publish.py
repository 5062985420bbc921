"""`--output URL`: the run is made in a local staging directory, then published to the object store with a commit
protocol whose commit point is `_run.json`.

Publishing a finished staging directory:
1. if anything must change and the store holds a `_run.json`, delete it first (the prefix is "unfinished" again
   while it changes, so a reader that requires `_run.json` never sees old and new files mixed);
2. upload every file that differs from the store's copy (not `_run.json`; `videos/` last, so a fresh prefix has no
   `videos/` table, and `curation.duck.check_run_dir` refuses it, until the rest is in);
3. delete the objects of the run's own entries the run no longer has (per-video shards that packing replaced);
4. upload `_run.json`: the commit point.

Each file goes up in one request (s3fs: a single PUT below 100 MB, else a multipart upload that S3 shows only once
it completes), so no partial object is ever visible; an interrupted publish is resumed by publishing again, which
skips the objects already there. `_work/` (resume records) and `_samples/` stay local. The store's endpoint and
credentials come from its standard environment (`curation.storage`); only the URL is logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from curation import storage

logger = logging.getLogger("pipelines.publish")

COMMIT = "_run.json"
LOCAL_ONLY = ("_work", "_samples")  # resume records and the generated sample corpus: never published
LAST_TABLE = "videos"  # the table `check_run_dir` looks for first: uploaded last before the commit


@dataclass
class Plan:
    """What a publish does, as keys relative to the run's prefix."""

    upload: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    commit: bool = False  # the store's `_run.json` differs from the staging one
    uncommit: bool = False  # the store holds a `_run.json` that must go while the prefix changes

    @property
    def empty(self) -> bool:
        return not (self.upload or self.delete or self.commit)


def default_staging(url: str) -> Path:
    """The staging directory of a URL when `--staging` is not given: the same for every run of that URL, so a rerun
    after a kill finds it and resumes from its records."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "video-curation" / "staging" / hashlib.sha256(url.encode()).hexdigest()[:16]


def local_files(staging: Path) -> dict[str, Path]:
    """The staging directory's files to publish, by key relative to it."""
    found = {}
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging)
        if rel.parts[0] in LOCAL_ONLY or not path.is_file() or path.name.endswith(".tmp"):
            continue  # `.tmp`: an atomic write's temporary (none in a finished run; never worth publishing)
        found[rel.as_posix()] = path
    return found


def remote_files(url: str) -> dict[str, dict]:
    """The objects under the URL's prefix (their fsspec info: size, ETag), by key relative to it."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    with storage.store_errors(url):
        fs.invalidate_cache(root)
        found = fs.find(root, detail=True) if fs.exists(root) else {}
    return {p[len(root) + 1 :]: info for p, info in found.items() if info.get("type", "file") == "file"}


def same_file(path: Path, info: dict) -> bool:
    """The object holds this file: same size and, where the ETag is a plain MD5 (a single-PUT upload), same MD5.
    Sizes alone would miss a table rewritten to the same length by a rerun with new selection settings."""
    if int(info.get("size", -1)) != path.stat().st_size:
        return False
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if len(etag) != 32 or "-" in etag:  # a multipart upload's ETag is not the content's MD5: trust the size
        return True
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == etag


def plan(staging: Path, url: str) -> Plan:
    """What publishing `staging` to `url` has to do."""
    local, remote = local_files(staging), remote_files(url)
    if COMMIT not in local:
        raise ValueError(f"{staging} has no {COMMIT}: only a finished run is published")
    changed = [k for k, p in local.items() if k != COMMIT and not (k in remote and same_file(p, remote[k]))]
    # Only under the run's own top-level entries: a prefix shared with other data (a bucket root) keeps the rest.
    owned = {k.split("/", 1)[0] for k in local}
    stale = sorted(k for k in remote if k not in local and k.split("/", 1)[0] in owned)
    commit = COMMIT not in remote or not same_file(local[COMMIT], remote[COMMIT])
    result = Plan(upload=changed, delete=stale, commit=commit)
    result.uncommit = COMMIT in remote and bool(changed or stale)
    return result


def publish(staging: Path, url: str) -> Plan:
    """Publish the finished run in `staging` to `url` (see the module docstring); returns what it did.
    StorageError when the store refuses a request: publishing again resumes."""
    todo = plan(staging, url)
    if todo.empty:
        logger.info("publish: %s already holds this run: nothing to upload", url)
        return todo
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    with storage.store_errors(url):
        if todo.uncommit:
            fs.rm_file(f"{root}/{COMMIT}")
        if todo.upload:
            logger.info("publish: uploading %d files to %s", len(todo.upload), url)
        # Two batches (each uploads concurrently): `videos/` only once everything else is in.
        for batch in _batches(todo.upload):
            fs.put([str(staging / k) for k in batch], [f"{root}/{k}" for k in batch])
        if todo.delete:
            logger.info("publish: deleting %d objects the run no longer has", len(todo.delete))
            fs.rm([f"{root}/{k}" for k in todo.delete])
        fs.put_file(str(staging / COMMIT), f"{root}/{COMMIT}")  # the commit point: always last
        fs.invalidate_cache(root)
    logger.info("publish: %s committed (%s)", url, COMMIT)
    return todo


def _batches(keys: list[str]) -> list[list[str]]:
    last = [k for k in keys if k.split("/", 1)[0] == LAST_TABLE]
    return [b for b in ([k for k in keys if k.split("/", 1)[0] != LAST_TABLE], last) if b]


def published_run(url: str) -> dict | None:
    """The store's `_run.json` under `url`, or None when it has none (an unfinished or absent run)."""
    try:
        storage.filesystem(url)[0].invalidate_cache()
        return storage.read_json(storage.join(url, COMMIT))
    except FileNotFoundError:
        return None
