"""The notebooks in notebooks/ run top to bottom against the smoke run, and are committed without outputs."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_explore_run.ipynb", "02_inspect_clip.ipynb"}


@pytest.fixture(scope="module")
def executed(smoke_run: Path):
    """Run a notebook (once per module) in a fresh `python3` kernel with RUN_DIR = the smoke run and the repo on
    PYTHONPATH; returns the executed nbformat notebook."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    done: dict[str, Any] = {}

    def run(name: str):
        if name not in done:
            nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
            client = nbclient.NotebookClient(
                nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
            )
            # The kernel inherits this process's environment.
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("RUN_DIR", str(smoke_run))
                mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
                client.execute()
            done[name] = nb
        return done[name]

    return run


def _outputs(nb) -> list[dict[str, Any]]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _stdout(nb, cell_id: str | None = None) -> str:
    return "".join(
        out["text"]
        for cell in nb.cells
        if cell.cell_type == "code" and (cell_id is None or cell.id == cell_id)
        for out in cell.get("outputs", [])
        if out["output_type"] == "stream" and out["name"] == "stdout"
    )


def _has_svg(nb, cell_id: str) -> bool:
    cell = next(c for c in nb.cells if c.id == cell_id)
    data = [out.get("data", {}) for out in cell.get("outputs", [])]
    return any("image/svg+xml" in d or "<svg" in d.get("text/html", "") for d in data)


def test_expected_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_clean(path: Path):
    """No outputs, no execution counts, every cell with a unique id, the python3 kernel: diffs stay reviewable."""
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell.get("id") for cell in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name} cell {cell['id']} has outputs"
            assert cell["execution_count"] is None, f"{path.name} cell {cell['id']} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_validates(path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(path, as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(executed, path: Path):
    nb = executed(path.name)
    errors = [out for out in _outputs(nb) if out["output_type"] == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "a code cell did not run"
    # The kernel is this interpreter (the venv's), so it sees the same packages as the tests.
    assert f"python: {sys.executable}\n" in _stdout(nb)


def test_explore_run_outputs(executed, smoke_run: Path):
    from curation.duck import connect, run_query

    nb = executed("01_explore_run.ipynb")
    clips = run_query(connect(smoke_run), "SELECT count(*) AS n FROM clips").column("n")[0].as_py()
    assert clips > 0
    out = _stdout(nb, "select-default")
    assert f"default selection: {clips} clips (clips table: {clips})" in out
    assert "same clips as the clips table: True" in out
    retuned = re.search(r"re-tuned selection \(min sharpness [\d.]+\): (\d+) clips; (\d+) leave", _stdout(nb))
    assert retuned and int(retuned[1]) + int(retuned[2]) == clips and int(retuned[2]) > 0
    snap = _stdout(nb, "snapshot")
    assert re.search(r"^snapshot_id: [0-9a-f]{16}$", snap, re.M)
    assert f"clips: {retuned[1]} at" in snap
    params = json.loads(re.search(r"^params: (.*)$", snap, re.M)[1])
    assert "sharpness" in json.loads(params["min_scores"])
    for cell_id in ("score-charts", "qcm", "select-retuned"):
        assert _has_svg(nb, cell_id), cell_id


def test_inspect_clip_outputs(executed):
    nb = executed("02_inspect_clip.ipynb")
    picked = _stdout(nb, "pick")
    for name in ("frames", "flow", "warped_noise", "camera_c2w", "camera_tokens", "event_activity", "event_phase"):
        assert re.search(rf"^{name} +\(", picked, re.M), f"{name} missing from the smoke run's clip"
    stds = [float(s) for s in re.findall(r"^frame \d+: mean [-+][\d.]+ std ([\d.]+)$", _stdout(nb, "noise"), re.M)]
    assert len(stds) >= 2 and all(0.7 < s < 1.3 for s in stds), stds
    mixed = [float(s) for s in re.findall(r"beta [\d.]+: std ([\d.]+)", _stdout(nb, "mix"))]
    assert len(mixed) == 5 and all(0.7 < s < 1.3 for s in mixed), mixed
    assert re.search(r"^step 0 \(frames \d+\u2192\d+\): token +\d+ keys ", _stdout(nb, "camera"), re.M)
    for cell_id in ("camera", "events"):
        assert _has_svg(nb, cell_id), cell_id
    for cell_id in ("frames", "flow", "noise", "events"):
        cell = next(c for c in nb.cells if c.id == cell_id)
        html = "".join(out.get("data", {}).get("text/html", "") for out in cell.get("outputs", []))
        assert "<img src='data:image/" in html, cell_id
