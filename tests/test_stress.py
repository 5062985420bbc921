"""Bounded memory on a corpus of hundreds of files: the whole pipeline on N and 10N tiny generated videos under an
explicit object-store limit. Decoded frames never travel between DAG stages, so peak memory must not grow with
the corpus (slow: about 3 minutes on 2 cores; `pytest -m slow`, also run by .ci/run)."""

from __future__ import annotations

import pytest

from bench.memory import run_and_watch
from pipelines.samples.tiny import generate_tiny_corpus
from tests.conftest import SMOKE


@pytest.mark.slow
def test_ten_times_the_videos_run_in_about_the_same_memory(tmp_path_factory: pytest.TempPathFactory):
    videos = generate_tiny_corpus(tmp_path_factory.mktemp("tiny"), 300)
    limits = ["runtime.object_store_mb=128", "runtime.data_object_store_mb=64", "runtime.data_cpus=2"]
    small, large = run_and_watch(videos[:30], SMOKE, limits), run_and_watch(videos, SMOKE, limits)
    print(f"N: {small}\n10N: {large}")
    assert small["clips"] > 0 and large["clips"] >= 9 * small["clips"]  # the run did all the work
    assert large["rejected"] <= 10 * small["rejected"] + 10
    assert large["peak_pss_mb"] < 1.5 * small["peak_pss_mb"], (small, large)
    if large["spilled_bytes"] is not None:  # rows are tiny: nothing should ever reach disk
        assert large["spilled_bytes"] == 0
