"""Data access for the report: the `_Run` holder (DuckDB connection, `_run.json`, manifest, every shard row with its
scores and drop stage) and small query helpers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from curation.duck import connect
from curation.filters import FILTERABLE
from curation.shards import read_manifest
from curation.tables import read_json

GLOBAL_STAGES = ("filters", "dedup", "events")  # run after shard rows are written: their drops keep their rows


@dataclasses.dataclass
class _Run:
    run_dir: Path
    con: duckdb.DuckDBPyConnection
    run_json: dict[str, Any]
    manifest: dict[str, Any]
    has_shards: bool
    rows: list[dict[str, Any]]  # every shard row: locator, scores, kept, drop stage/reason
    scores: list[str]  # FILTERABLE columns with at least one finite value over the shard rows


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()}


def _load(run_dir: Path) -> _Run:
    con = connect(run_dir)  # QueryError for a directory that is not a finished run
    run_json = read_json(run_dir / "_run.json") if (run_dir / "_run.json").exists() else {}
    try:
        manifest = read_manifest(run_dir)
    except FileNotFoundError:
        manifest = {}
    has_shards = any((run_dir / "shards").glob("*.parquet"))
    rows: list[dict[str, Any]] = []
    if has_shards:
        shard_cols, video_cols = _columns(con, "shard_rows"), _columns(con, "videos")
        # width/height are the source video's: not stored per shard row, so they come from `videos`.
        select = [
            f's."{c}"' if c in shard_cols else f'v."{c}"' if c in video_cols else f'NULL::DOUBLE AS "{c}"'
            for c in FILTERABLE
        ]
        rows = _fetch(
            con,
            f"""
            SELECT s.clip_id, s.shard, s.shard_row, s.source_uri, {", ".join(select)},
                   s.clip_id IN (SELECT clip_id FROM clips) AS kept, r.stage AS drop_stage, r.reason AS drop_reason
            FROM shard_rows AS s
            LEFT JOIN (SELECT video_id, any_value(width) AS width, any_value(height) AS height
                       FROM videos GROUP BY video_id) AS v USING (video_id)
            LEFT JOIN (SELECT clip_id, any_value(stage) AS stage, any_value(reason) AS reason FROM rejected
                       WHERE clip_id IS NOT NULL AND stage IN ('filters', 'dedup', 'events') GROUP BY clip_id) AS r
                   USING (clip_id)
            ORDER BY s.shard, s.shard_row
            """,
        )
    scores = [c for c in FILTERABLE if any(_finite(r[c]) for r in rows)]
    return _Run(run_dir, con, run_json, manifest, has_shards, rows, scores)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
