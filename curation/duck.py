"""DuckDB over a run directory: views from `sql/views.sql`, named queries from `sql/<name>.sql`, read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# Only statements that read: a query over a run must never change files (COPY, EXPORT, ATTACH, SET, ...).
READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


class QueryError(ValueError):
    """A query that cannot run: unknown name, a statement that writes, or a DuckDB error."""


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with the run's views (`videos`, `scenes`, `clips`, `rejected`, `shards`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "videos").is_dir():
        raise QueryError(f"{run_dir} is not a run directory (no videos/ table); run pipelines.run first")
    con = duckdb.connect(":memory:")
    con.execute("SET VARIABLE run_dir = $dir", {"dir": str(run_dir.resolve())})
    has_shards = any((run_dir / "shards").glob("*.parquet"))
    for statement in _statements((SQL_DIR / "views.sql").read_text()):
        if "VIEW shards" in statement and not has_shards:
            continue  # no shard files yet (ingest-only run): DuckDB cannot bind a view over an empty glob
        con.execute(statement)
    return con


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
