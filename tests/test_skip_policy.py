"""The CI skip policy (tests/skip_policy.py), run on scratch test files in a pytest of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRATCH = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("no frobnicator on PATH")

def test_needs_media():
    pytest.skip("../shared/media is absent")

@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("no CUDA device")
"""


def run_scratch(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    (tmp_path / "test_scratch.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    if ci:
        env["CI"] = "true"
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider", "-rs", "-q"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_for_an_unlisted_reason_fails_ci_and_is_named(tmp_path):
    out = run_scratch(tmp_path, SCRATCH, ci=True)
    assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout
    section = out.stdout.split("skips CI does not allow", 1)[1]
    assert "test_needs_a_tool: no frobnicator on PATH" in section
    assert "test_needs_media" not in section and "test_needs_cuda" not in section  # allowed, and a GPU test
    assert "1 passed, 3 skipped" in out.stdout


def test_outside_ci_skips_are_listed_but_pass(tmp_path):
    out = run_scratch(tmp_path, SCRATCH, ci=False)
    assert out.returncode == 0, out.stdout
    assert "SKIPPED" in out.stdout and "no frobnicator on PATH" in out.stdout
    assert "skips CI does not allow" not in out.stdout


def test_allowed_skips_alone_pass_ci(tmp_path):
    source = SCRATCH.replace('pytest.skip("no frobnicator on PATH")', "pass")
    assert run_scratch(tmp_path, source, ci=True).returncode == 0


def test_a_module_skipped_while_collected_fails_ci(tmp_path):
    source = 'import pytest\nnot_here = pytest.importorskip("no_such_module_anywhere")\n\ndef test_x():\n    pass\n'
    out = run_scratch(tmp_path, source, ci=True)
    assert out.returncode != 0 and "no_such_module_anywhere" in out.stdout.split("skips CI does not allow", 1)[1]
