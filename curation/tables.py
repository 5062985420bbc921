"""Atomic file writes for the run directory: every file appears complete under its final name or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.schema import TABLES, rows_to_table


def _tmp_path(path: Path) -> Path:
    # Same directory as the target so the rename is atomic (same filesystem); dot-prefixed so globs skip it.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_json(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_parquet(table: pa.Table, path: str | Path, **kwargs: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_run_table(run_dir: str | Path, name: str, rows: list[dict]) -> Path:
    """Write RUN_DIR/<name>/<name>.parquet with the table's explicit schema (typed even when empty)."""
    path = Path(run_dir) / name / f"{name}.parquet"
    atomic_write_parquet(rows_to_table(rows, TABLES[name]), path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
