"""Shared fixtures: the generated sample corpus, one local Ray per session, and one smoke run of the pipeline. Also
the skip policy of `tests.skip_policy` (under CI=true a test may skip only for an allowed reason)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.skip_policy import (  # noqa: F401  (hooks, registered by being here)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

# Real test media live beside the checkout (../shared/media) and are never copied into it; SHARED_MEDIA_DIR
# points elsewhere. Tests that need them skip when the folder is absent.
SHARED_MEDIA = Path(os.environ.get("SHARED_MEDIA_DIR", Path(__file__).resolve().parents[2] / "shared" / "media"))
SMOKE = str(Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "smoke.toml")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.samples import generate_corpus

    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, on loopback, 2 CPUs, no dashboard."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address="local",
        _node_ip_address="127.0.0.2",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def run_pipeline(*args: str) -> int:
    from pipelines.run import main

    return main(["--config", SMOKE, *args])


@pytest.fixture(scope="session")
def smoke_run(corpus_dir: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole sample corpus through --stage=all with the smoke preset, run once per session."""
    run_dir = tmp_path_factory.mktemp("run") / "smoke"
    assert run_pipeline("--stage=all", "--input", str(corpus_dir), "--output", str(run_dir)) == 0
    return run_dir


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every socket connection: code under test that tries to download something fails loudly."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
