"""Curated snapshots: a training selection frozen as shard/row references, with its lineage.

    python -m curation.snapshot create runs/a [--run runs/b] --out snapshots/v1 [--param min_scores='{"sharpness": 20}']
    python -m curation.snapshot verify snapshots/v1 [--checksums]

A snapshot directory holds `clips.parquet` (one row per selected clip: `run_id, run, shard, shard_row, clip_id` and
every metadata column of the shard row, in training order) and `snapshot.json`: the selection SQL and its sha256,
the bound parameters, and each source run's id, config hash, manifest digest and the size and sha256 of every shard
file it references. `snapshot_id` hashes all of that except the creation time, so the same selection over the same
runs always gets the same id: a training job records it to name exactly the data it used. Snapshots are immutable;
`iter_snapshot` streams the clips and refuses when a referenced shard changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage
from curation.duck import QueryError, connect, load_named
from curation.schema import SCHEMA_VERSION
from curation.selection import SELECTION_QUERY, check_params, configured_params
from curation.shards import MANIFEST, ShardReader
from curation.tables import atomic_write_json, temp_path

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"
CLIPS_FILE = "clips.parquet"
SNAPSHOT_FORMAT = 1


class SnapshotError(QueryError):
    """A snapshot that cannot be written or read: an existing target, a changed or missing source shard."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A snapshot directory's record (`snapshot.json`) and where it lives."""

    path: Path | str  # a URL for a snapshot read from an object store
    record: dict[str, Any]

    @property
    def snapshot_id(self) -> str:
        return self.record["snapshot_id"]

    @property
    def num_clips(self) -> int:
        return self.record["clips"]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a local file or of an object at a URL, streamed."""
    digest = hashlib.sha256()
    with storage.open_input(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _run_lineage(run_dir: storage.Location, shards: Sequence[str], selected: int) -> dict[str, Any]:
    """What identifies a source run and the exact shard files the snapshot reads from it. A URL run is recorded by
    its URL alone: the endpoint and credentials that reached it stay in the environment."""
    run = storage.read_json(storage.join(run_dir, "_run.json"))
    manifest_path = storage.join(run_dir, "shards", MANIFEST)
    manifest = storage.read_json(manifest_path)
    listed = {s["name"]: s for s in manifest["shards"]}
    files = []
    for name in sorted(shards):
        path = storage.join(run_dir, "shards", name)
        files.append(
            {"name": name, "rows": listed[name]["rows"], "bytes": storage.size(path), "sha256": file_sha256(path)}
        )
    return {
        "run_id": _run_id(run),
        "path": str(run_dir),
        "config_hash": run["config_hash"],
        "inputs_hash": run["inputs_hash"],
        "schema_version": run["schema_version"],
        "manifest_sha256": file_sha256(manifest_path),
        "curated_clips": manifest.get("curation", {}).get("clips_after"),
        "selected_clips": selected,
        "shards": files,
    }


def create_snapshot(
    run_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, overrides: Mapping[str, Any] | None = None
) -> Snapshot:
    """Select the training set over `run_dirs` (parameters from their config, `overrides` replacing some) and
    write it to `out_dir`, which must not exist yet (or be empty). Runs may be URLs (`curation.storage`); the
    snapshot itself is written to a local directory.

    The selection streams from DuckDB in batches straight into `clips.parquet`, and the id and lineage are
    accumulated as it goes: memory stays at one batch however many clips are selected (DuckDB sorts out of core)."""
    if storage.is_url(out_dir):
        raise SnapshotError(f"{out_dir}: snapshots are written to a local directory (--out), not to a URL")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SnapshotError(f"{out} already exists: snapshots are immutable, choose a new --out")
    given = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    con = connect(given)
    dirs = [storage.location(d) for d in given]
    overrides = dict(overrides or {})
    params = check_params({**configured_params(dirs, given=overrides), **overrides})
    sql = load_named(SELECTION_QUERY)
    # Keyed like the views' `run` column: a resolved local path, or the URL.
    by_path = {storage.key(d): storage.location(storage.key(d)) for d in dirs}
    try:
        run_ids = {key: _run_id(storage.read_json(storage.join(d, "_run.json"))) for key, d in by_path.items()}
        manifests = {key: file_sha256(storage.join(d, "shards", MANIFEST)) for key, d in by_path.items()}
    except storage.StorageError as e:
        raise SnapshotError(str(e)) from e
    sql_sha256 = hashlib.sha256(sql.encode()).hexdigest()
    identity = {
        "format": SNAPSHOT_FORMAT,
        "sql_sha256": sql_sha256,
        "params": params,
        "runs": [(run_ids[k], manifests[k]) for k in by_path],
        "refs": [],
    }
    # The id hashes json.dumps(identity, sort_keys=True) with every ref in `refs`: the text around the (empty) list
    # is hashed as is and the refs are serialised batch by batch in between, which gives the same bytes.
    head, sep, tail = json.dumps(identity, sort_keys=True).partition('"refs": []')
    digest = hashlib.sha256(f"{head}{sep[:-1]}".encode())
    shards: dict[str, set[str]] = {key: set() for key in by_path}
    selected: dict[str, int] = dict.fromkeys(by_path, 0)
    clips, clip_seconds = 0, 0  # summed in row order, as a plain Python sum over the rows would

    # Written into a temporary sibling and renamed: a reader never sees half a snapshot.
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    clips_tmp = temp_path(tmp / CLIPS_FILE)
    writer: pq.ParquetWriter | None = None
    try:
        for batch in _selection_batches(con, sql, params):
            runs_col = batch.column("run").to_pylist()
            ids = [run_ids[r] for r in runs_col]
            refs = list(
                zip(ids, *(batch.column(n).to_pylist() for n in ("shard", "shard_row", "clip_id")), strict=True)
            )
            if refs:
                digest.update(f"{', ' if clips else ''}{json.dumps(refs)[1:-1]}".encode())
            for run, (_, shard, _, _) in zip(runs_col, refs, strict=True):
                shards[run].add(shard)
                selected[run] += 1
            spans = batch.column("end_s").to_numpy(zero_copy_only=False) - batch.column("start_s").to_numpy(
                zero_copy_only=False
            )
            if len(spans):
                clip_seconds = float(np.cumsum(np.concatenate([[clip_seconds], spans]))[-1])  # sequential, like sum()
            table = pa.Table.from_batches([batch]).add_column(0, "run_id", pa.array(ids, pa.string()))
            if writer is None:
                writer = pq.ParquetWriter(clips_tmp, table.schema, compression="zstd")
            writer.write_table(table)
            clips += batch.num_rows
        if writer is None:  # nothing selected: an empty, typed file
            empty = _selection_schema(con, sql, params)
            pq.write_table(empty.add_column(0, "run_id", pa.array([], pa.string())), clips_tmp, compression="zstd")
        else:
            writer.close()
            writer = None
        os.replace(clips_tmp, tmp / CLIPS_FILE)
        digest.update(f"]{tail}".encode())
        lineage = {}
        for key, run_dir in by_path.items():
            logger.info(
                "snapshot: %s: %d clips from %d shards (hashing them)", run_dir, selected[key], len(shards[key])
            )
            lineage[key] = _run_lineage(run_dir, sorted(shards[key]), selected[key])
        record = {
            "format": SNAPSHOT_FORMAT,
            "snapshot_id": digest.hexdigest()[:16],
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "schema_version": SCHEMA_VERSION,
            "clips": clips,
            "clip_seconds": round(clip_seconds, 3),
            "clips_file": CLIPS_FILE,
            "query": SELECTION_QUERY,
            "sql": sql,
            "sql_sha256": sql_sha256,
            "params": params,
            "runs": list(lineage.values()),
        }
        atomic_write_json(record, tmp / SNAPSHOT_FILE)
    except BaseException:
        if writer is not None:
            writer.close()
        clips_tmp.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return Snapshot(out, record)


BATCH_ROWS = 65536  # selected rows held at once while a snapshot is written


def _selection_batches(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> Iterator[pa.RecordBatch]:
    """The selection's rows in its order, as Arrow record batches streamed from DuckDB; QueryError for a DuckDB
    error (a bad parameter raises while the rows are read)."""
    try:
        relation = con.sql(sql, params=dict(params))
        # DuckDB 2 renamed Relation.fetch_record_batch() to to_arrow_reader().
        yield from (
            relation.to_arrow_reader(BATCH_ROWS)
            if hasattr(relation, "to_arrow_reader")
            else relation.fetch_record_batch(BATCH_ROWS)
        )
    except (duckdb.Error, pa.ArrowException) as e:  # an error inside the query can surface through the stream
        raise QueryError(str(e).splitlines()[0]) from e


def _selection_schema(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> pa.Table:
    """The selection's columns, no rows (for an empty snapshot)."""
    try:
        relation = con.sql(sql, params=dict(params))
        return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    except duckdb.Error as e:
        raise QueryError(str(e).splitlines()[0]) from e


def _run_id(run: Mapping[str, Any]) -> str:
    return f"{run['config_hash']}-{run['inputs_hash']}"


def load_snapshot(path: str | Path) -> Snapshot:
    """A snapshot directory's record; `path` may be a URL (`curation.storage`)."""
    where = storage.location(path)
    record_path = storage.join(where, SNAPSHOT_FILE)
    if not storage.exists(record_path):
        raise SnapshotError(f"{path} is not a snapshot (no {SNAPSHOT_FILE}); write one with `curation.snapshot create`")
    record = storage.read_json(record_path)
    if record.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path}: snapshot format {record.get('format')}, this code reads {SNAPSHOT_FORMAT}")
    return Snapshot(where, record)


def verify_snapshot(
    snapshot: Snapshot, runs: Mapping[str, str | Path] | None = None, checksums: bool = False
) -> dict[str, Path | str]:
    """Check that every referenced shard file is still there with its recorded size (and sha256 with `checksums`);
    returns {run_id: run directory (a Path, or a URL)}. `runs` relocates runs by id (a copy on another machine, or
    in a bucket)."""
    located = {}
    for run in snapshot.record["runs"]:
        run_dir = storage.location((runs or {}).get(run["run_id"], run["path"]))
        for shard in run["shards"]:
            path = storage.join(run_dir, "shards", shard["name"])
            try:
                found = storage.size(path)
            except FileNotFoundError:
                found = None
            except storage.StorageError as e:
                raise SnapshotError(f"snapshot {snapshot.snapshot_id}: {e}") from e
            if found is None:
                raise SnapshotError(f"snapshot {snapshot.snapshot_id}: {path} is missing (run {run['run_id']})")
            if found != shard["bytes"] or (checksums and file_sha256(path) != shard["sha256"]):
                raise SnapshotError(
                    f"snapshot {snapshot.snapshot_id}: {path} changed since the snapshot was taken "
                    f"(recorded {shard['bytes']} bytes, sha256 {shard['sha256'][:12]}...)"
                )
        located[run["run_id"]] = run_dir
    return located


def iter_snapshot(
    path: str | Path,
    columns: Sequence[str] | None = None,
    runs: Mapping[str, str | Path] | None = None,
    checksums: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield the snapshot's clips in its order, decoded like `curation.shards.iter_clips` (tensors as numpy arrays).
    Verifies the source shards first (`verify_snapshot`) and each row's clip id as it is read."""
    snapshot = load_snapshot(path)
    located = verify_snapshot(snapshot, runs, checksums)
    wanted = None if columns is None else sorted({*columns, "clip_id"})
    reader: ShardReader | None = None
    for group in _ref_runs(storage.join(snapshot.path, CLIPS_FILE)):
        run_dir, shard = located[group[0]["run_id"]], group[0]["shard"]
        if reader is None or reader.key != (run_dir, shard):  # a shard's footer is read once per run of its rows
            reader = ShardReader(run_dir, shard, wanted)
        rows = reader.read([r["shard_row"] for r in group])
        for ref, row in zip(group, rows, strict=True):
            if row["clip_id"] != ref["clip_id"]:
                raise SnapshotError(
                    f"{ref['shard']} row {ref['shard_row']} holds {row['clip_id']}, not {ref['clip_id']}"
                )
            yield row if columns is None or "clip_id" in columns else {k: v for k, v in row.items() if k != "clip_id"}


READ_ROWS = 256  # refs decoded at once by `iter_snapshot`: a few row groups of clips, whatever a shard holds


def _ref_runs(clips_file: str | Path) -> Iterator[list[dict[str, Any]]]:
    """The snapshot's refs in order, in runs of consecutive rows from one (run_id, shard) of at most READ_ROWS,
    read batch by batch: memory stays at one batch of locators however many clips the snapshot holds."""
    group: list[dict[str, Any]] = []
    pf = storage.parquet_file(clips_file)
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=["run_id", "shard", "shard_row", "clip_id"]):
        for ref in batch.to_pylist():
            same = group and (ref["run_id"], ref["shard"]) == (group[0]["run_id"], group[0]["shard"])
            if group and (not same or len(group) >= READ_ROWS):
                yield group
                group = []
            group.append(ref)
    if group:
        yield group


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m curation.snapshot", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="select the training set and write it as a snapshot")
    create.add_argument("run_dir")
    create.add_argument("--run", action="append", default=[], metavar="RUN_DIR", help="another source run")
    create.add_argument("--out", required=True, help="the snapshot directory to write (must not exist)")
    create.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="override a selection parameter"
    )
    verify = sub.add_parser("verify", help="check that a snapshot's source shards are unchanged")
    verify.add_argument("snapshot")
    verify.add_argument("--checksums", action="store_true", help="compare sha256 too (reads every shard)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from curation.query import parse_params

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "create":
            snapshot = create_snapshot([args.run_dir, *args.run], args.out, parse_params(args.param))
        else:
            snapshot = load_snapshot(args.snapshot)
            verify_snapshot(snapshot, checksums=args.checksums)
    except (QueryError, storage.StorageError) as e:  # a store that refuses mid-way: one line too
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = snapshot.record
    print(f"snapshot {record['snapshot_id']}: {record['clips']} clips, {record['clip_seconds']} s, at {snapshot.path}")
    print(f"  query {record['query']} (sha256 {record['sql_sha256'][:12]}), params {json.dumps(record['params'])}")
    for run in record["runs"]:
        print(f"  run {run['run_id']}: {run['selected_clips']} clips from {len(run['shards'])} shards ({run['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
