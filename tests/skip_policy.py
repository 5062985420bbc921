"""Skips under CI: a test may skip only for a reason in ALLOWED_SKIPS, or because it is marked `gpu`.

Under CI=true any other skip fails the run, and the summary lists those tests: a skip there means something the
README claims was never exercised (the browser test without Chromium, say). Everywhere, `-rs` (pyproject) lists
every skip reason at the end of the run. Loaded by tests/conftest.py; `-p tests.skip_policy` loads it elsewhere.
"""

from __future__ import annotations

import os

import pytest

# Why a test may skip under CI=true, each with the reason it is allowed (matched as a prefix of the skip message).
# Everything else that skips fails the CI run: a skip there means a claim of the README was never exercised. Tests
# marked `gpu` may always skip (CI has no GPU). Keep this short.
ALLOWED_SKIPS: dict[str, str] = {
    "../shared/media is absent": "real media live beside the checkout, never in it; a user's clone may lack them",
}


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def disallowed(report: pytest.TestReport | pytest.CollectReport) -> bool:
    """A skip CI must not accept: not a GPU test, and its reason is not in ALLOWED_SKIPS."""
    return "gpu" not in getattr(report, "keywords", {}) and not skip_reason(report).startswith(tuple(ALLOWED_SKIPS))


_DISALLOWED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and os.environ.get("CI") == "true" and disallowed(report):
        _DISALLOWED.append((report.nodeid, skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module skipped whole while collected (`pytest.importorskip` at the top of a test file)."""
    pytest_runtest_logreport(report)  # type: ignore[arg-type]


def pytest_terminal_summary(terminalreporter) -> None:
    if _DISALLOWED:
        terminalreporter.section("skips CI does not allow", sep="=", red=True, bold=True)
        for nodeid, reason in _DISALLOWED:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(
            f"CI=true: {len(_DISALLOWED)} tests skipped for a reason not in ALLOWED_SKIPS (tests/skip_policy.py): "
            "install what they need (see .ci/run), or add the reason there with why it is allowed"
        )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _DISALLOWED and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
