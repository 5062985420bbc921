"""Crash safety: `kill -9` in the middle of a run, rerun the same command, get exactly the clean run's clips."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from curation.shards import iter_clips, read_manifest
from tests.conftest import SMOKE, run_pipeline


def clip_ids(run_dir: Path) -> set[str]:
    rows = duckdb.sql(f"SELECT clip_id FROM read_parquet('{run_dir}/clips/*.parquet')").fetchall()
    return {r[0] for r in rows}


def rejections(run_dir: Path) -> str:
    """The run's rejections other than dedup (what a mismatch usually comes from), for the failure message."""
    rows = duckdb.sql(
        f"SELECT stage, reason, source_uri, detail FROM read_parquet('{run_dir}/rejected/*.parquet') "
        "WHERE stage <> 'dedup' ORDER BY ALL"
    ).fetchall()
    return repr(rows)


def start_run(corpus_dir: Path, run_dir: Path, ray_tmp: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pipelines.run",
        "--stage=all",
        "--input",
        str(corpus_dir),
        "--output",
        str(run_dir),
        "--config",
        SMOKE,
        "--set",
        "runtime.num_cpus=1",
    ]  # one CPU: slow enough to be caught mid-run
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_everything(proc: subprocess.Popen, ray_tmp: Path) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray's own daemons run in their own sessions; take them down too, as a machine crash would.
    subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)


def test_kill_9_then_rerun_gives_the_clean_clip_set(corpus_dir, smoke_run, tmp_path, ray_local):
    run_dir = tmp_path / "killed"
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    total = len(list((smoke_run / "_work" / "clips").glob("*.json")))
    proc = start_run(corpus_dir, run_dir, ray_tmp)
    deadline = time.time() + 180
    done = 0
    while time.time() < deadline and proc.poll() is None:
        done = len(list((run_dir / "_work" / "clips").glob("*.json")))
        if done >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    kill_everything(proc, ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert 2 <= done < total
    assert not (run_dir / "shards" / "manifest.json").exists()

    assert run_pipeline("--stage=all", "--input", str(corpus_dir), "--output", str(run_dir)) == 0
    assert clip_ids(run_dir) == clip_ids(smoke_run), rejections(run_dir) + " vs clean run: " + rejections(smoke_run)
    manifest = read_manifest(run_dir)
    assert manifest["curation"]["clips_after"] == len(clip_ids(run_dir))
    assert sorted(s["name"] for s in manifest["shards"]) == sorted(
        p.name for p in (run_dir / "shards").glob("*.parquet")
    )
    assert not [p for p in run_dir.rglob(".*.tmp")], "temporary files left behind"
    assert [r["clip_id"] for r in iter_clips(run_dir, columns=["clip_id"])] == [
        r["clip_id"] for r in iter_clips(smoke_run, columns=["clip_id"])
    ]
