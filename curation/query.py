"""Query a run with DuckDB: `python -m curation.query RUN_DIR "SELECT ..."` or `--name clips_per_source`.

`--run OTHER_RUN` (repeatable) queries several runs at once: every view has a `run` column. Read-only;
parameters are bound (`--param key=value`, referenced as `$key`), never pasted into the SQL.
"""

from __future__ import annotations

import argparse
import sys

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation.duck import QueryError, connect, load_named, named_queries, run_query


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m curation.query", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="run directory written by pipelines.run")
    p.add_argument(
        "--run", action="append", default=[], metavar="RUN_DIR", help="another run to query with it (repeatable)"
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if bool(args.sql) == bool(args.name):
        print("error: give either SQL or --name", file=sys.stderr)
        return 2
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --param expects key=value, got {item!r}", file=sys.stderr)
            return 2
        params[key] = _param_value(value)
    try:
        con = connect([args.run_dir, *args.run])
        table = run_query(con, load_named(args.name) if args.name else args.sql, params)
    except QueryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format == "parquet":
        if not args.out:
            print("error: --format parquet needs --out FILE", file=sys.stderr)
            return 2
        pq.write_table(table, args.out)
    elif args.format == "csv":
        pacsv.write_csv(table, args.out or sys.stdout.buffer)
    else:
        print(table.to_pandas().to_string(max_rows=args.max_rows, index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
