"""A finished run read from an S3 bucket gives what the same run read from its local directory gives: queries,
snapshots, random row access and the training loader's source. The bucket lives in moto's S3 API server on
loopback; endpoint and credentials reach the code only through the AWS environment variables."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import duck, storage
from curation.duck import QueryError, connect, run_query
from curation.query import main as query_main
from curation.shards import ShardReader, curated_clip_ids, iter_clips, read_manifest, read_rows
from curation.snapshot import CLIPS_FILE, SnapshotError, create_snapshot, iter_snapshot, verify_snapshot
from tests.s3_moto import forget_s3_clients, moto_s3
from training.data import DataConfig, make_loader
from training.data.source import _open_source

BUCKET = "curation-runs"
# Recognisable fake credentials: the leak test looks for them in every file a snapshot writes.
ACCESS_KEY = "AKIAS3READTEST000042"
SECRET_KEY = "s3-read-test-secret-never-written"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_s3(tmp_path_factory.mktemp("aws"), ACCESS_KEY, SECRET_KEY) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_run(smoke_run: Path, s3_endpoint: str) -> str:
    """The smoke run uploaded to s3://curation-runs/run, file by file."""
    fsspec.filesystem("s3").mkdir(BUCKET)
    _upload(smoke_run, f"s3://{BUCKET}/run")
    return f"s3://{BUCKET}/run"


def _upload(local: Path, url: str) -> None:
    fs, root = storage.filesystem(url)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")
    fs.invalidate_cache()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a):
        return bool(np.isnan(b))
    return a == b


def test_queries_on_the_bucket_match_the_local_run(smoke_run: Path, s3_run: str, capsys) -> None:
    local, remote = connect(smoke_run), connect(s3_run)
    for view in ("videos", "scenes", "clips", "rejected", "shard_rows", "shards", "runs"):
        sql = f"SELECT count(*) AS n FROM {view}"
        assert run_query(remote, sql).to_pylist() == run_query(local, sql).to_pylist(), view
    join = """SELECT c.clip_id, c.video_id, s.shard, s.shard_row, v.duration_s
              FROM clips c JOIN shard_rows s USING (run, clip_id)
              JOIN videos v ON v.run = c.run AND v.video_id = c.video_id
              ORDER BY c.clip_id"""
    rows = run_query(remote, join).to_pylist()
    assert rows and rows == run_query(local, join).to_pylist()
    assert run_query(remote, "SELECT DISTINCT run FROM shards").to_pylist() == [{"run": s3_run}]
    # The CLI, trailing slash and all (`run` left out: it names where each run was read from).
    per_source = """SELECT v.source_uri, count(c.clip_id) AS clips, sum(c.end_s - c.start_s) AS seconds
                    FROM videos v LEFT JOIN clips c USING (run, video_id) GROUP BY ALL ORDER BY 1"""
    assert query_main([smoke_run.as_posix(), per_source, "--format", "csv"]) == 0
    expected = capsys.readouterr().out
    assert query_main([f"{s3_run}/", per_source, "--format", "csv"]) == 0
    assert capsys.readouterr().out == expected and expected.count("\n") > 1


def test_duckdb_reads_the_bucket_through_registered_fsspec(
    s3_run: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    con = duckdb.connect()
    monkeypatch.setattr(duck, "httpfs_installed", lambda con: False)  # as on this offline machine: no httpfs
    assert duck.attach_stores(con, [s3_run]) == "fsspec" and "s3" in con.list_filesystems()
    assert duck.attach_stores(con, [s3_run]) == "fsspec"  # registering twice is harmless
    options = duck._s3_secret_options()  # what httpfs would get, from botocore's view of the environment
    assert f"ENDPOINT '{s3_endpoint.split('://', 1)[1]}'" in options and f"KEY_ID '{ACCESS_KEY}'" in options
    assert "URL_STYLE 'path'" in options and options.endswith("USE_SSL false")


def test_snapshot_of_the_bucket_selects_what_the_local_run_does(smoke_run: Path, s3_run: str, tmp_path: Path) -> None:
    local = create_snapshot(smoke_run, tmp_path / "local")
    remote = create_snapshot(s3_run, tmp_path / "remote")
    refs = ["shard", "shard_row", "clip_id"]
    selected = pq.read_table(remote.path / CLIPS_FILE, columns=refs)
    assert selected.num_rows > 0 and selected.equals(pq.read_table(local.path / CLIPS_FILE, columns=refs))
    # The id names the data, not where it was read from.
    assert remote.snapshot_id == local.snapshot_id
    (run,) = remote.record["runs"]
    assert run["path"] == s3_run and run["shards"] == local.record["runs"][0]["shards"]
    assert verify_snapshot(remote, checksums=True) == {run["run_id"]: s3_run}
    streamed = list(iter_snapshot(remote.path))
    assert len(streamed) == remote.num_clips
    assert all(_same(a, b) for a, b in zip(streamed, iter_snapshot(local.path), strict=True))
    # The snapshot directory itself may sit in the bucket too.
    url = f"s3://{BUCKET}/snapshots/v1"
    _upload(remote.path, url)
    assert [r["clip_id"] for r in iter_snapshot(url, columns=["clip_id"])] == [r["clip_id"] for r in streamed]
    assert _open_source(url).num_samples == remote.num_clips


def test_no_credentials_or_endpoint_in_written_files(s3_run: str, s3_endpoint: str, tmp_path: Path, capsys) -> None:
    snap = create_snapshot(s3_run, tmp_path / "snap")
    assert query_main([s3_run, "SELECT count(*) FROM clips"]) == 0
    printed = "".join(capsys.readouterr())
    host = s3_endpoint.split("://", 1)[1]
    files = [p for p in snap.path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {CLIPS_FILE, "snapshot.json"}
    for text in [*(p.read_bytes().decode("latin-1") for p in files), printed]:
        for secret in (ACCESS_KEY, SECRET_KEY, s3_endpoint, host):
            assert secret not in text
    assert s3_run in (snap.path / "snapshot.json").read_text()  # the URL is all that names the run


def test_random_access_by_url_matches_local(smoke_run: Path, s3_run: str) -> None:
    manifest = read_manifest(s3_run)
    assert manifest == read_manifest(smoke_run)
    assert curated_clip_ids(s3_run) == curated_clip_ids(smoke_run)
    ids = [c["clip_id"] for c in iter_clips(s3_run, columns=["clip_id"])]
    assert ids == [c["clip_id"] for c in iter_clips(smoke_run, columns=["clip_id"])]
    shard = manifest["shards"][0]
    refs = [(shard["name"], r) for r in (shard["rows"] - 1, 0, shard["rows"] // 2)]
    assert all(_same(a, b) for a, b in zip(read_rows(s3_run, refs), read_rows(smoke_run, refs), strict=True))
    reader = ShardReader(s3_run, shard["name"], ["clip_id", "frames"])
    (row,) = reader.read([0])
    assert set(row) == {"clip_id", "frames"} and row["frames"].ndim == 4
    with pytest.raises(IndexError, match="does not exist"):
        reader.read([shard["rows"]])


def test_loader_source_on_the_bucket_lists_what_the_local_run_does(
    smoke_run: Path, s3_run: str, tmp_path: Path
) -> None:
    local, remote = _open_source(str(smoke_run)), _open_source(s3_run)
    assert [s.name for s in remote.shards] == [s.name for s in local.shards]
    assert [u.clip_ids for u in remote.units] == [u.clip_ids for u in local.units]
    assert remote.fingerprint == local.fingerprint and remote.num_samples == local.num_samples > 0
    assert remote.shards[0].path == f"{s3_run}/shards/{remote.shards[0].name}"
    # A local snapshot of the bucket's run is a source too.
    snap = create_snapshot(s3_run, tmp_path / "snap", {"event_top_fraction": 0.5})
    from_snapshot = _open_source(str(snap.path))
    assert from_snapshot.runs[0].path == s3_run and 0 < from_snapshot.num_samples < remote.num_samples
    # Decoding goes through the bucket as well: the first batch is the local run's.
    with (
        make_loader(DataConfig(source=s3_run, batch_size=2)) as a,
        make_loader(DataConfig(source=str(smoke_run), batch_size=2)) as b,
    ):
        x, y = next(iter(a)), next(iter(b))
    assert x["clip_id"] == y["clip_id"]
    assert all(_same(x[k].numpy(), y[k].numpy()) for k in ("latents", "noise", "event_activity"))
    # The data space (latent training, the camera bank) reads the manifests behind a URL run or its snapshot.
    from training.data.space import read_space, source_run_dirs

    assert source_run_dirs(s3_run) == [s3_run] and source_run_dirs(str(snap.path)) == [s3_run]
    assert read_space(s3_run) == read_space(str(smoke_run)) == read_space(str(snap.path))


@pytest.mark.parametrize("url", [f"s3://{BUCKET}/no-such-run", "s3://no-such-bucket/run"])
def test_a_bucket_without_a_run_is_a_one_line_error(s3_run: str, url: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(QueryError, match=r"is not a run directory \(no videos/ table\)"):
        connect(url)
    assert query_main([url, "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url} is not a run directory") and err.count("\n") == 1
    with pytest.raises(QueryError, match="is not a run directory"):
        create_snapshot(url, tmp_path / "snap")
    with pytest.raises(ValueError, match="does not exist or is not a directory"):
        _open_source(url)
    with pytest.raises(FileNotFoundError, match="the run has not finished"):
        read_manifest(url)


def test_missing_filesystem_package_is_named(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert query_main(["gs://bucket/run", "SELECT 1"]) == 2  # gcsfs is not a dependency
    err = capsys.readouterr().err
    assert "needs the gcsfs package" in err and err.count("\n") == 1
    # s3fs itself missing: fsspec imports it on first use of s3://.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    loaded = sys.modules["fsspec.registry"]._registry  # (`fsspec.registry` the attribute is a read-only view of it)
    for protocol in ("s3", "s3a"):
        monkeypatch.delitem(loaded, protocol, raising=False)
    with pytest.raises(QueryError, match=r"^reading s3:// URLs needs the s3fs package \(pip install s3fs\)$"):
        connect("s3://bucket/run")


def test_urls_with_credentials_or_snapshot_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="credentials in it"):
        connect("s3://key:secret@bucket/run")
    with pytest.raises(SnapshotError, match="local directory"):
        create_snapshot(tmp_path, "s3://bucket/snapshots/v1")
    assert storage.location("s3://b/run//") == "s3://b/run" and storage.location("runs/a") == Path("runs/a")
    assert storage.join("s3://b/run", "shards", "x.parquet") == "s3://b/run/shards/x.parquet"


def test_an_unreachable_endpoint_is_one_line_without_the_endpoint(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries, from the environment like the rest
    forget_s3_clients()
    try:
        assert query_main([f"s3://{BUCKET}/run", "SELECT 1"]) == 2
    finally:
        forget_s3_clients()  # the next test's client must see the real endpoint again
    err = capsys.readouterr().err
    assert err.startswith(f"error: s3://{BUCKET}/run") and err.count("\n") == 1
    assert "Could not connect" in err and closed not in err and "127.0.0.1" not in err
