"""Steps called directly (no Ray): an unexpected error in one input becomes a recorded rejection."""

from __future__ import annotations

import pytest

from curation.ids import uri_key
from pipelines import steps
from pipelines.config import RunConfig
from pipelines.finalize import collect


def test_unexpected_step_error_is_recorded_and_reported(tmp_path, monkeypatch: pytest.MonkeyPatch):
    def explode(*_args, **_kwargs):
        raise RuntimeError("decoder library bug")

    monkeypatch.setattr(steps, "probe_input", explode)
    row = {"source_uri": str(tmp_path / "a.mp4"), "key": uri_key(str(tmp_path / "a.mp4"))}
    out = steps.make_ingest_fn(RunConfig(), tmp_path)(row)
    assert out["ingest_done"]
    data = collect(tmp_path, [row], attempted=("ingest",))
    assert [r["reason"] for r in data.rejected] == ["ingest_error"]
    assert "decoder library bug" in data.rejected[0]["detail"]
    assert data.videos[0]["error"] and data.videos[0]["source_uri"] == row["source_uri"]
    assert not data.ready["scenes"]  # a failed input is not scheduled for later steps
