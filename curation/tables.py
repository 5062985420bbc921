"""Atomic file writes for the run directory: every file appears complete under its final name or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.schema import TABLES, rows_to_table


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # what open() would give: mkstemp's 0600 would hide a shared run's files from its team


def temp_path(path: Path) -> Path:
    """A new, unique temporary file beside `path`: same directory, so the rename into place is atomic (same
    filesystem); dot-prefixed, so globs skip it. Unique per call: two attempts at the same output (a task Ray retried
    while the first attempt still runs, a worker left over from a killed run) never write into one file. Its mode is
    the umask's, as for any file the run writes."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return Path(name)


def atomic_write_json(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_json_once(obj: Any, path: str | Path) -> bool:
    """Write `path` atomically unless it exists: the first writer wins and a later one changes nothing (returns
    False). A hard link publishes the complete file under its final name without replacing one already there; a
    filesystem without hard links falls back to a rename (last writer wins, still never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE and object-store mounts)
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_run_table(run_dir: str | Path, name: str, rows: list[dict]) -> Path:
    """Write RUN_DIR/<name>/<name>.parquet with the table's explicit schema (typed even when empty)."""
    return write_run_table_batches(run_dir, name, [rows_to_table(rows, TABLES[name])])


def write_run_table_batches(run_dir: str | Path, name: str, batches: Iterable[pa.Table]) -> Path:
    """`write_run_table` from tables of rows, one row group each, so a table of millions of rows never has to be
    in memory at once; each batch is cast to the table's schema. Atomic like every write here."""
    schema = TABLES[name]
    path = Path(run_dir) / name / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            wrote = False
            for batch in batches:
                if batch.num_rows:
                    writer.write_table(batch.select(schema.names).cast(schema))
                    wrote = True
            if not wrote:
                writer.write_table(schema.empty_table())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
