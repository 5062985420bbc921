"""DuckDB over one or more run directories: views from `sql/views.sql`, named queries from `sql/<name>.sql`,
read-only."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from curation.filters import FILTERABLE
from curation.schema import SCHEMA_VERSION

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# Only statements that read: a query over a run must never change files (COPY, EXPORT, ATTACH, SET, ...).
READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


MEMORY_LIMIT_MB = 4096  # DuckDB's working memory per connection, at most (it spills past it)
MEMORY_ENV = "CURATION_DUCKDB_MEMORY_MB"  # overrides it, for machines where queries should use more


def memory_limit_mb() -> int:
    """$CURATION_DUCKDB_MEMORY_MB, else MEMORY_LIMIT_MB or 80% of this machine's RAM (DuckDB's default) when that
    is less."""
    if override := os.environ.get(MEMORY_ENV, "").strip():
        if not override.isdigit() or int(override) < 64:
            raise ValueError(f"{MEMORY_ENV} must be a whole number of megabytes >= 64, not {override!r}")
        return int(override)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return MEMORY_LIMIT_MB
    return max(256, min(MEMORY_LIMIT_MB, int(0.8 * ram / 2**20)))


class QueryError(ValueError):
    """A query that cannot run: unknown name, a statement that writes, or a DuckDB error."""


def connect(run_dirs: str | Path | Sequence[str | Path]) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with the views `videos`, `scenes`, `clips`, `rejected`, `shard_rows` (every
    shard row, dropped clips included), `shards` (the curated clips' rows) and `runs` (one row per `_run.json`)
    over one run directory or several (each view's `run` column says which). QueryError for a directory that is not
    a finished run of this schema version."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise QueryError("no run directory given")
    for run_dir in dirs:
        check_run_dir(run_dir)
    con = duckdb.connect(":memory:")
    # DuckDB's own default is 80% of RAM, which a 1e7-clip selection (a sort of every shard row) fills before it
    # spills; bounded, it spills to the temp directory instead (bench/metadata_scale.py: 10 M clips, snapshot peak
    # RSS 3.9 GB at 3 GB against > 10 GB at the default).
    con.execute("SET memory_limit = $limit", {"limit": f"{memory_limit_mb()}MB"})
    con.execute("SET temp_directory = $dir", {"dir": tempfile.gettempdir()})
    resolved = [str(d.resolve()) for d in dirs]
    with_shards = [str(d.resolve()) for d in dirs if any((d / "shards").glob("*.parquet"))]
    con.execute("SET VARIABLE run_dirs = $dirs", {"dirs": resolved})
    con.execute("SET VARIABLE shard_dirs = $dirs", {"dirs": with_shards})
    run_jsons = [str(d.resolve() / "_run.json") for d in dirs if (d / "_run.json").exists()]
    con.execute("SET VARIABLE run_json_files = $files", {"files": run_jsons})
    # The numeric scores `[filters]` can threshold, for the queries that go over every score.
    con.execute("SET VARIABLE score_columns = $names", {"names": list(FILTERABLE)})
    for statement in _statements((SQL_DIR / "views.sql").read_text()):
        if ("VIEW shards" in statement or "VIEW shard_rows" in statement) and not with_shards:
            continue  # no shard files yet (ingest-only run): DuckDB cannot bind a view over an empty glob
        if "VIEW runs" in statement and not run_jsons:
            continue
        con.execute(statement)
    return con


def check_run_dir(run_dir: Path) -> None:
    """A run directory the views can read: its tables exist and its schema version is this code's."""
    if not (run_dir / "videos").is_dir():
        raise QueryError(f"{run_dir} is not a run directory (no videos/ table); run pipelines.run first")
    missing = [t for t in ("scenes", "clips", "rejected") if not any((run_dir / t).glob("*.parquet"))]
    if missing:
        raise QueryError(f"{run_dir} has no {', '.join(missing)} table: the run has not finished (rerun it)")
    run_json = run_dir / "_run.json"
    if run_json.exists():
        version = json.loads(run_json.read_text()).get("schema_version")
        if version != SCHEMA_VERSION:
            raise QueryError(
                f"{run_dir} was written with schema version {version}; this code reads version {SCHEMA_VERSION} "
                "(rerun the pipeline into a new --output to upgrade)"
            )


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def named_queries() -> list[str]:
    return sorted(p.stem for p in SQL_DIR.glob("*.sql") if p.stem != "views")


def load_named(name: str) -> str:
    path = SQL_DIR / f"{name}.sql"
    if name == "views" or not path.exists():
        raise QueryError(f"unknown query {name!r}; named queries: {', '.join(named_queries())}")
    return path.read_text()


def run_query(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> Any:
    """Run one read-only statement with bound parameters; returns a pyarrow Table."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READ_ONLY_TYPES:
        raise QueryError(f"only read-only queries are allowed (got a {kind} statement)")
    try:
        relation = con.sql(sql, params=params or None)
        # DuckDB 2 renamed Relation.arrow() to to_arrow_table().
        return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    except duckdb.Error as e:
        raise QueryError(str(e).splitlines()[0]) from e
