"""DuckDB over one or more run directories: views from `sql/views.sql`, named queries from `sql/<name>.sql`,
read-only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from curation import storage
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
    over one run directory or several (each view's `run` column says which). A run may be a local directory or an
    object-store URL (`s3://bucket/prefix`, `curation.storage`). QueryError for one that is not a finished run of
    this schema version, or that cannot be read."""
    given = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    if not given:
        raise QueryError("no run directory given")
    try:
        dirs = [storage.location(d) for d in given]
        for run_dir in dirs:
            check_run_dir(run_dir)
        resolved = [storage.key(d) for d in dirs]
        pairs = list(zip(dirs, resolved, strict=True))
        with_shards = [k for d, k in pairs if storage.glob(storage.join(d, "shards"), "*.parquet")]
        run_jsons = [
            str(storage.join(k, "_run.json")) for d, k in pairs if storage.exists(storage.join(d, "_run.json"))
        ]
    except storage.StorageError as e:
        raise QueryError(str(e)) from e
    con = duckdb.connect(":memory:")
    # DuckDB's own default is 80% of RAM, which a 1e7-clip selection (a sort of every shard row) fills before it
    # spills; bounded, it spills to the temp directory instead (bench/metadata_scale.py: 10 M clips, snapshot peak
    # RSS 3.9 GB at 3 GB against > 10 GB at the default).
    con.execute("SET memory_limit = $limit", {"limit": f"{memory_limit_mb()}MB"})
    con.execute("SET temp_directory = $dir", {"dir": tempfile.gettempdir()})
    attach_stores(con, dirs)
    con.execute("SET VARIABLE run_dirs = $dirs", {"dirs": resolved})
    con.execute("SET VARIABLE shard_dirs = $dirs", {"dirs": with_shards})
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


def check_run_dir(run_dir: storage.Location) -> None:
    """A run directory the views can read: its tables exist and its schema version is this code's."""
    if not storage.is_dir(storage.join(run_dir, "videos")):
        raise QueryError(f"{run_dir} is not a run directory (no videos/ table); run pipelines.run first")
    missing = [t for t in ("scenes", "clips", "rejected") if not storage.glob(storage.join(run_dir, t), "*.parquet")]
    if missing:
        raise QueryError(f"{run_dir} has no {', '.join(missing)} table: the run has not finished (rerun it)")
    run_json = storage.join(run_dir, "_run.json")
    if storage.is_url(run_dir) and not storage.exists(run_json):
        # On an object store `_run.json` is the commit point of a publish (pipelines.publish): without it the
        # prefix is still being written, or was left half-published by a killed run.
        raise QueryError(f"{run_dir} is not finished (no _run.json): its publish has not completed (rerun it)")
    if storage.exists(run_json):
        version = storage.read_json(run_json).get("schema_version")
        if version != SCHEMA_VERSION:
            raise QueryError(
                f"{run_dir} was written with schema version {version}; this code reads version {SCHEMA_VERSION} "
                "(rerun the pipeline into a new --output to upgrade)"
            )


# ---------------------------------------------------------------------------------------------------------------
# Runs on an object store: DuckDB reads them through its httpfs extension when this machine already has it, else
# through the same fsspec filesystem the rest of the code uses (DuckDB cannot download extensions offline).


def attach_stores(con: duckdb.DuckDBPyConnection, dirs: Sequence[storage.Location]) -> str:
    """Make the URL runs among `dirs` readable by `con`; returns how: "local" (no URL), "httpfs" or "fsspec"."""
    urls = [str(d) for d in dirs if storage.is_url(d)]
    if not urls:
        return "local"
    if all(u.startswith("s3://") for u in urls) and _use_httpfs(con, urls):
        return "httpfs"
    for fs in storage.filesystems(urls):
        if not any(con.filesystem_is_registered(p) for p in _protocols(fs)):
            con.register_filesystem(fs)
    return "fsspec"


def httpfs_installed(con: duckdb.DuckDBPyConnection) -> bool:
    """httpfs is in this machine's extension directory already (never downloaded here)."""
    row = con.execute("SELECT installed FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchone()
    return bool(row and row[0])


def _use_httpfs(con: duckdb.DuckDBPyConnection, urls: Sequence[str]) -> bool:
    """Load httpfs with the AWS configuration botocore resolves, and check that it lists each run's clips; False
    when it is not installed or does not work (the caller then registers fsspec as well)."""
    if not httpfs_installed(con):
        return False
    try:
        con.execute("LOAD httpfs")
        # TEMPORARY: the secret lives in this connection's memory only, never in DuckDB's secret directory.
        con.execute(f"CREATE OR REPLACE TEMPORARY SECRET curation_s3 ({_s3_secret_options()})")
        probe = "SELECT count(*) FROM glob($pattern)"
        return all(con.execute(probe, {"pattern": f"{u}/clips/*.parquet"}).fetchone()[0] for u in urls)
    except (duckdb.Error, ImportError):
        return False


def _s3_secret_options() -> str:
    """DuckDB S3 secret options from botocore's view of the environment: credentials, region and endpoint."""
    import botocore.session

    session = botocore.session.get_session()  # AWS_* variables, AWS_PROFILE, ~/.aws/config and credentials
    client = session.create_client("s3")
    endpoint = urlsplit(client.meta.endpoint_url)
    options = {"REGION": client.meta.region_name or "us-east-1"}
    creds = session.get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        options.update(KEY_ID=frozen.access_key, SECRET=frozen.secret_key)
        if frozen.token:
            options["SESSION_TOKEN"] = frozen.token
    if not endpoint.netloc.endswith("amazonaws.com"):  # a custom endpoint (MinIO, a local S3 API): path-style
        options.update(ENDPOINT=endpoint.netloc, URL_STYLE="path")
    parts = [f"{name} {_sql_literal(value)}" for name, value in options.items()]
    return ", ".join(["TYPE s3", *parts, f"USE_SSL {str(endpoint.scheme == 'https').lower()}"])


def _sql_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _protocols(fs: object) -> list[str]:
    protocol = getattr(fs, "protocol", ())
    return [protocol] if isinstance(protocol, str) else list(protocol)


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
