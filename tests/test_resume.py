"""Crash safety: `kill -9` in the middle of a run, rerun the same command, get exactly the clean run's clips."""

from __future__ import annotations

import contextlib
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
from pipelines.records import RecordIndex
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
        "--set",
        "runtime.compact_every=1",
    ]  # one CPU: slow enough to be caught mid-run; records compacted after every video, so the kill can hit that too
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ray_processes(ray_tmp: Path) -> list[int]:
    """Every live process of the run's own Ray. Its daemons name `ray_tmp` on their command line, but its workers
    rename their process title (`ray::IDLE`, `ray::clips`), so they are found by the RAY_TMPDIR they inherited."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def kill_everything(proc: subprocess.Popen, ray_tmp: Path) -> None:
    """SIGKILL the driver and every process of its Ray at once, as a machine crash would. Killing only the driver
    and Ray's daemons (by command line) left its workers running for seconds, still writing into the run directory
    while the rerun did the same videos: the rerun must start from a dead run, as after a real crash (two attempts
    running at once are tested on their own in test_steps and test_shards)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while (alive := ray_processes(ray_tmp)) and time.time() < deadline:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert not alive, f"processes of the killed run survived: {alive}"


def test_kill_9_then_rerun_gives_the_clean_clip_set(corpus_dir, smoke_run, tmp_path, ray_local):
    run_dir = tmp_path / "killed"
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    clips_records = smoke_run / "_work" / "clips"  # a finished run: its records are batched (pipelines.records)
    total = len(RecordIndex(clips_records)) + len(list(clips_records.glob("*.json")))
    proc = start_run(corpus_dir, run_dir, ray_tmp)
    deadline = time.time() + 180
    done = 0
    while time.time() < deadline and proc.poll() is None:
        records = run_dir / "_work" / "clips"  # small files, and those the run compacted already
        compacted = len(RecordIndex(records))
        done = len(list(records.glob("*.json"))) + compacted
        if done >= 2 and compacted:
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
    # Packed files: the same names, so the same members, as the uninterrupted run (what snapshots rely on).
    assert [s["name"] for s in manifest["shards"]] == [s["name"] for s in read_manifest(smoke_run)["shards"]]
    assert len(manifest["shards"]) > 1 and manifest["shards"][0]["name"].startswith("part-")
    assert not [p for p in run_dir.rglob(".*.tmp")], "temporary files left behind"
    assert [r["clip_id"] for r in iter_clips(run_dir, columns=["clip_id"])] == [
        r["clip_id"] for r in iter_clips(smoke_run, columns=["clip_id"])
    ]
