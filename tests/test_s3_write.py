"""`--output s3://...`: the run is staged locally and published with `_run.json` as its commit point. Killed
mid-run, the bucket holds no run; rerun, it holds the clean run's clips, every object whole; rerun again, nothing is
uploaded. The bucket lives in moto's S3 API server on loopback, reached only through the AWS environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from curation import storage
from curation.duck import QueryError, connect, run_query
from curation.query import main as query_main
from curation.snapshot import create_snapshot
from pipelines import publish
from tests.conftest import SMOKE, run_pipeline
from tests.s3_moto import moto_s3
from tests.test_resume import kill_everything

BUCKET = "curation-writes"
URL = f"s3://{BUCKET}/run"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_s3(tmp_path_factory.mktemp("aws"), "AKIAS3WRITETEST00042", "s3-write-test-secret", BUCKET) as endpoint:
        yield endpoint


def objects(url: str = f"s3://{BUCKET}") -> dict[str, tuple]:
    """Every object in the bucket: key -> (size, ETag, LastModified)."""
    fs, root = storage.filesystem(url)
    fs.invalidate_cache()
    found = fs.find(root, detail=True)
    return {p: (i["size"], i.get("ETag"), i.get("LastModified")) for p, i in found.items() if i["type"] == "file"}


def args(corpus_dir: Path, staging: Path) -> list[str]:
    return ["--stage=all", "--input", str(corpus_dir), "--output", URL, "--staging", str(staging)]


def start_run(corpus_dir: Path, staging: Path, ray_tmp: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.run", *args(corpus_dir, staging), "--config", SMOKE]
    cmd += ["--set", "runtime.num_cpus=1"]  # one CPU: slow enough to be caught mid-run
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}  # the AWS variables too: they point at moto
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def clip_ids(run: str | Path) -> list[str]:
    return [r["clip_id"] for r in run_query(connect(run), "SELECT clip_id FROM clips ORDER BY clip_id").to_pylist()]


def test_kill_9_rerun_publishes_the_clean_run_once(corpus_dir, smoke_run, ray_local, s3_endpoint, tmp_path, capsys):
    from training.data import DataConfig, make_loader

    staging = tmp_path / "staging"
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    proc = start_run(corpus_dir, staging, ray_tmp)
    deadline, done = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None:
        done = len(list((staging / "_work" / "clips").glob("*.json")))
        if done >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    kill_everything(proc, ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done >= 2
    # a. Killed: nothing committed, and a reader refuses the prefix in one line.
    assert not any(k.endswith("/_run.json") for k in objects())
    capsys.readouterr()
    assert query_main([URL, "SELECT count(*) FROM clips"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {URL}") and err.count("\n") == 1

    # b. Rerun: resumes from the staging records, publishes the clean run's clips.
    assert run_pipeline(*args(corpus_dir, staging), "--set", "runtime.num_cpus=1") == 0
    assert clip_ids(URL) == clip_ids(smoke_run) and clip_ids(URL)

    # c. Every object whole; the local-only state stayed local; the prefix mirrors the staging directory.
    published = objects()
    keys = [k.removeprefix(f"{BUCKET}/run/") for k in published]
    assert not [k for k in keys if k.startswith(("_work/", "_samples/"))]
    assert sorted(keys) == sorted(publish.local_files(staging))
    parquet = [k for k in published if k.endswith(".parquet")]
    assert len(parquet) > 4
    for key in parquet:
        assert storage.read_table(f"s3://{key}").num_rows >= 0  # reads every row group: no partial object

    # d. A query, a snapshot and a training batch from the bucket.
    sql = "SELECT count(*) AS n, sum(end_s - start_s) AS seconds FROM clips"
    capsys.readouterr()  # the runs' summary tables
    assert query_main([str(smoke_run), sql, "--format", "csv"]) == 0
    expected = capsys.readouterr().out
    assert query_main([URL, sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out == expected
    snap = create_snapshot(URL, tmp_path / "snap")
    assert snap.num_clips > 0 and snap.record["runs"][0]["path"] == URL
    with make_loader(DataConfig(source=URL, batch_size=2)) as loader:
        batch = next(iter(loader))
    assert len(batch["clip_id"]) == 2

    # e. Rerun with the staging directory, then without it: a no-op, nothing uploaded.
    assert run_pipeline(*args(corpus_dir, staging), "--set", "runtime.num_cpus=1") == 0
    shutil.rmtree(staging)
    started = time.perf_counter()
    assert run_pipeline(*args(corpus_dir, staging), "--set", "runtime.num_cpus=1") == 0
    assert time.perf_counter() - started < 20, "a published run was recomputed"
    assert objects() == published


def test_publish_replaces_stale_objects_and_commits_last(smoke_run, s3_endpoint, tmp_path, monkeypatch):
    """Straight to `publish`: a prefix with an older run's leftovers (a stale shard, an old `_run.json`) ends up the
    staging directory's mirror; an unrelated prefix beside it is untouched; `_run.json` goes up after all else."""
    url = f"s3://{BUCKET}/direct"
    staging = tmp_path / "staged"
    shutil.copytree(smoke_run, staging, ignore=shutil.ignore_patterns("_work"))
    fs, _ = storage.filesystem(url)
    fs.pipe_file(f"{BUCKET}/direct/shards/clip-stale.parquet", b"old")
    fs.pipe_file(f"{BUCKET}/direct/_run.json", b"{}")
    fs.pipe_file(f"{BUCKET}/direct-other/keep.txt", b"other")
    fs.pipe_file(f"{BUCKET}/direct/elsewhere/keep.txt", b"not the run's")

    calls: list[tuple[str, object]] = []

    def spy(name: str, target: int) -> None:  # record (method, the remote path(s) it writes or deletes)
        real = getattr(fs, name)

        def recorded(*a: object, **k: object) -> object:
            calls.append((name, a[target]))
            return real(*a, **k)

        monkeypatch.setattr(fs, name, recorded)

    for name, target in (("put", 1), ("put_file", 1), ("rm", 0), ("rm_file", 0)):
        spy(name, target)
    done = publish.publish(staging, url)
    assert done.uncommit and done.delete == ["shards/clip-stale.parquet"] and done.upload
    assert [c[0] for c in calls] == ["rm_file", "put", "put", "rm", "put_file"]
    assert calls[0][1].endswith("/direct/_run.json") and calls[-1][1].endswith("/direct/_run.json")
    assert all("/videos/" in p for p in calls[2][1]) and not any("/videos/" in p for p in calls[1][1])
    keys = {k.removeprefix(f"{BUCKET}/direct/") for k in objects() if k.startswith(f"{BUCKET}/direct/")}
    assert keys == set(publish.local_files(staging)) | {"elsewhere/keep.txt"}
    assert f"{BUCKET}/direct-other/keep.txt" in objects()
    assert publish.publish(staging, url).empty  # published: nothing left to do
    # Without its commit point the prefix is an unfinished run to every reader, whatever tables it holds.
    fs.rm_file(f"{BUCKET}/direct/_run.json")
    fs.invalidate_cache()
    with pytest.raises(QueryError, match="not finished"):
        connect(url)
