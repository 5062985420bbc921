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
# `[buckets]` on the smoke preset: six aspect ratios of about 112x64 pixels, windows of 5, 9 and 17 frames.
BUCKETED = [
    'buckets.aspect_ratios=["9:16","3:4","1:1","4:3","16:9","2.39:1"]',
    # small, for a 2-core test: 112x64 at 16:9, 144x64 at 2.39:1 (at 6144 pixels the coarse 16-pixel sides make
    # that 128x48, 2.67:1: a 10% crop of the corpus's 2.39:1 wide_long)
    "buckets.area=7936",
    "buckets.frames=[5,9,17]",
    "frames.windows=3",
]
# With a VAE: 1 + 4k frames (17 -> 5 latent frames) and one model actor (the tiny models load in seconds).
LATENT_SETS = ["frames.num_frames=17", "runtime.model_actors=1"]


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


@pytest.fixture(scope="session")
def bucketed_run(corpus_dir: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus through --stage=all with the smoke preset and `BUCKETED`, run once per session."""
    run_dir = tmp_path_factory.mktemp("buckets") / "run"
    sets = [arg for item in BUCKETED for arg in ("--set", item)]
    assert run_pipeline("--stage=all", "--input", str(corpus_dir), "--output", str(run_dir), *sets) == 0
    return run_dir


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every socket connection: code under test that tries to download something fails loudly."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random AutoencoderKLWan (z_dim 4, 8x spatial, 4x temporal) saved as a local diffusers folder."""
    pytest.importorskip("diffusers")
    import torch

    from tests.test_vae import tiny_wan

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wan")
    tiny_wan().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random UMT5EncoderModel (d_model 32) with a word-level tokenizer, saved as a local folder."""
    pytest.importorskip("transformers")
    import torch

    from tests.test_text_encoder import save_tokenizer, tiny_encoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("t5")
    tiny_encoder("umt5").save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def latent_run(corpus_dir: Path, wan_dir: Path, t5_dir: Path, ray_local, tmp_path_factory) -> Path:
    """3 corpus videos through the smoke preset with the tiny Wan VAE and UMT5: latents, latent-grid noise, text
    embeddings in the shards."""
    videos = sorted(p for p in corpus_dir.iterdir() if p.suffix in (".mp4", ".mkv", ".mov"))[:3]
    run_dir = tmp_path_factory.mktemp("latent") / "run"
    models = [f"latents.model_path={wan_dir}", f"text_encoder.model_path={t5_dir}"]
    sets = [a for s in [*LATENT_SETS, *models] for a in ("--set", s)]
    assert run_pipeline("--stage=all", "--input", *map(str, videos), "--output", str(run_dir), *sets) == 0
    return run_dir
