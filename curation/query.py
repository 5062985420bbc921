"""Query a run with DuckDB: `python -m curation.query RUN_DIR "SELECT ..."` or `--name clips_per_source`.

RUN_DIR may be an object-store URL (`s3://bucket/prefix`); its endpoint and credentials come from the standard
AWS environment (AWS_ENDPOINT_URL, AWS_PROFILE, ...).

`--run OTHER_RUN` (repeatable) queries several runs at once: every view has a `run` column. Read-only;
parameters are bound (`--param key=value`, referenced as `$key`), never pasted into the SQL.
"""

from __future__ import annotations

import argparse
import json
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation.duck import QueryError, connect, load_named, named_queries, run_query
from curation.selection import SELECTION_QUERY, check_params, configured_params
from curation.storage import StorageError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m curation.query", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="run directory written by pipelines.run, or its URL (s3://bucket/prefix)")
    p.add_argument(
        "--run", action="append", default=[], metavar="RUN_DIR", help="another run or URL to query too (repeatable)"
    )
    p.add_argument("sql", nargs="?", help="ad-hoc SQL over the views videos, scenes, clips, rejected, shards")
    p.add_argument("--name", help=f"named query from sql/: {', '.join(named_queries())}")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="bind $KEY (repeatable)")
    p.add_argument("--format", choices=("table", "csv", "parquet"), default="table")
    p.add_argument("--out", help="output file (required for parquet; default stdout)")
    p.add_argument("--max-rows", type=int, default=100, help="rows shown in table format")
    return p.parse_intermixed_args(argv)  # options may sit between the run directory and the SQL


def _param_value(raw: str) -> object:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            continue
    return raw


def csv_ready(table: pa.Table) -> pa.Table:
    """CSV has no lists or structs: nested columns become JSON text, binary columns hex."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()]
        elif pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            text = [None if v is None else v.hex() for v in table.column(i).to_pylist()]
        else:
            continue
        table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def parse_params(items: list[str]) -> dict[str, object]:
    """`key=value` strings to bound parameters (numbers as numbers, the rest as text); QueryError when malformed."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise QueryError(f"--param expects key=value, got {item!r}")
        params[key] = _param_value(value)
    return params


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if bool(args.sql) == bool(args.name):
        print("error: give either SQL or --name", file=sys.stderr)
        return 2
    runs = [args.run_dir, *args.run]
    try:
        params = parse_params(args.param)
        con = connect(runs)
        if args.name == SELECTION_QUERY:  # unset selection parameters come from the runs' own config
            params = check_params({**configured_params(runs, given=params), **params})
        table = run_query(con, load_named(args.name) if args.name else args.sql, params)
    except (QueryError, StorageError) as e:  # a store that refuses mid-query: one line too
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format == "parquet":
        if not args.out:
            print("error: --format parquet needs --out FILE", file=sys.stderr)
            return 2
        pq.write_table(table, args.out)
    elif args.format == "csv":
        pacsv.write_csv(csv_ready(table), args.out or sys.stdout.buffer)
    else:
        print(table.to_pandas().to_string(max_rows=args.max_rows, index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
