"""A clean start: a local run prints no warning about the project's own deliberate settings, and real warnings from
Ray still show."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines.runtime import DELIBERATE_NOTICES, quiet_deliberate_notices

ROOT = Path(__file__).resolve().parents[1]


def test_a_fresh_local_run_prints_no_warning(corpus_dir, tmp_path):
    """The default preset on a few sample videos, as `make run` does, in a new home (no Ray token yet)."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(home), "RAY_TMPDIR": ray_tmp}
    videos = [str(corpus_dir / name) for name in ("cuts.mp4", "pan_right.mp4", "static.mkv")]
    cmd = [sys.executable, "-m", "pipelines.run", "--stage=all", "--output", str(tmp_path / "run"), "--input", *videos]
    cmd += ["--set", "runtime.num_cpus=1"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    warnings = [line for line in text.splitlines() if re.search(r"\bWARNING\b|\bWARN\b|Warning:", line)]
    assert not warnings, warnings
    assert re.search(r"started local Ray on 127\.0\.0\.1: 1 CPUs, no dashboard, token authentication on", text)
    assert (home / ".ray" / "auth_token").exists()  # authentication stayed on: only the notice is gone
    assert "Progress bars disabled" not in text and "execution finished in" not in text


@pytest.mark.parametrize("name", sorted(DELIBERATE_NOTICES))
def test_only_the_deliberate_notice_is_dropped(name):
    quiet_deliberate_notices()
    quiet_deliberate_notices()  # once per process, however often called
    target = logging.getLogger(name)
    assert sum(type(f).__name__ == "_DropNotice" for f in target.filters) == 1
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    target.addHandler(handler)
    try:
        samples = {
            "ray._private.authentication.authentication_token_setup": "Token authentication is enabled for this Ray "
            "cluster. Set RAY_AUTH_MODE=disabled to opt out.",
            "ray.data._internal.progress": "Progress bars disabled. To enable, set `...enable_progress_bars = True`.",
            "ray.data._internal.execution.streaming_executor": "✔️  Dataset dataset_1_0 execution finished in 5.58 "
            "seconds",
        }
        target.warning(samples[name])
        target.warning("Token authentication is enabled but no token was found.")  # a real problem: kept
        target.warning("Task failed: worker died")
    finally:
        target.removeHandler(handler)
    assert seen == ["Token authentication is enabled but no token was found.", "Task failed: worker died"]
