"""Data access for the report: the `_Run` holder (DuckDB connection, `_run.json`, manifest, and a temporary table of
every shard row with its scores and drop stage) and small query helpers.

The shard rows stay in DuckDB (`ROWS`, which spills to disk past its memory limit): the report reads one score column
at a time as arrays, and the few rows it shows by their row id, so its memory does not grow with a row's Python
objects (a dict per row took 3.9 GB at 1 M clips)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from curation.duck import connect
from curation.filters import FILTERABLE
from curation.shards import read_manifest
from curation.tables import read_json

GLOBAL_STAGES = ("filters", "dedup", "events")  # run after shard rows are written: their drops keep their rows


ROWS = "report_rows"  # the temporary table: rowid, clip_id, shard, shard_row, source_uri, scores, kept, drop_*


@dataclasses.dataclass
class _Run:
    run_dir: Path
    con: duckdb.DuckDBPyConnection
    run_json: dict[str, Any]
    manifest: dict[str, Any]
    has_shards: bool
    n_rows: int  # shard rows (the ROWS table)
    scores: list[str]  # FILTERABLE columns with at least one finite value over the shard rows
    dropped: dict[str, int]  # shard rows dropped per GLOBAL_STAGES stage


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
    n_rows, scores, dropped = 0, [], dict.fromkeys(GLOBAL_STAGES, 0)
    if has_shards:
        shard_cols, video_cols = _columns(con, "shard_rows"), _columns(con, "videos")
        # width/height are the source video's: not stored per shard row, so they come from `videos`.
        select = [
            f's."{c}"::DOUBLE AS "{c}"'
            if c in shard_cols
            else f'v."{c}"::DOUBLE AS "{c}"'
            if c in video_cols
            else f'NULL::DOUBLE AS "{c}"'
            for c in FILTERABLE
        ]
        con.execute(
            f"""
            CREATE TEMP TABLE {ROWS} AS
            SELECT s.clip_id, s.shard, s.shard_row, s.source_uri, {", ".join(select)},
                   s.clip_id IN (SELECT clip_id FROM clips) AS kept, r.stage AS drop_stage, r.reason AS drop_reason
            FROM shard_rows AS s
            LEFT JOIN (SELECT video_id, any_value(width) AS width, any_value(height) AS height
                       FROM videos GROUP BY video_id) AS v USING (video_id)
            LEFT JOIN (SELECT clip_id, any_value(stage) AS stage, any_value(reason) AS reason FROM rejected
                       WHERE clip_id IS NOT NULL AND stage IN ('filters', 'dedup', 'events') GROUP BY clip_id) AS r
                   USING (clip_id)
            """
        )
        finite = ", ".join(f'count(*) FILTER (WHERE isfinite("{c}"))' for c in FILTERABLE)
        n_rows, *counts = con.execute(f"SELECT count(*), {finite} FROM {ROWS}").fetchone()
        scores = [c for c, n in zip(FILTERABLE, counts, strict=True) if n]
        for stage, n in con.execute(f"SELECT drop_stage, count(*) FROM {ROWS} GROUP BY 1").fetchall():
            if stage in dropped:
                dropped[stage] = n
    return _Run(run_dir, con, run_json, manifest, has_shards, n_rows, scores, dropped)


def score_column(run: _Run, column: str, order: bool = False) -> dict[str, np.ndarray]:
    """`value`, `kept` and `rowid` arrays of the shard rows where `column` is finite; with `order`, sorted by
    (value, clip_id, shard, shard_row), else in no set order."""
    by = f'ORDER BY "{column}", clip_id, shard, shard_row' if order else ""
    sql = f'SELECT "{column}" AS value, kept, rowid FROM {ROWS} WHERE isfinite("{column}") {by}'
    return {k: np.asarray(v) for k, v in run.con.execute(sql).fetchnumpy().items()}


def rows_by_id(run: _Run, rowids: Sequence[int], column: str) -> dict[int, dict[str, Any]]:
    """The shard rows with these row ids (locator, kept, drop stage and reason, and `column` as `_score`)."""
    if not rowids:
        return {}
    found = _fetch(
        run.con,
        f'SELECT rowid, clip_id, shard, shard_row, source_uri, kept, drop_stage, drop_reason, "{column}" AS _score '
        f"FROM {ROWS} WHERE rowid IN ({', '.join(str(int(i)) for i in rowids)})",
    )
    return {int(r.pop("rowid")): r for r in found}
