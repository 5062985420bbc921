"""The pinned dependency set: constraints.txt agrees with what is installed and with pyproject's requirements."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tools.constraints import CONSTRAINTS, canonical, disagreements, installed, read_pins

ROOT = Path(__file__).resolve().parents[1]


def test_installed_versions_match_the_constraints_file():
    # Under CI every installed package must be pinned too: CI installs from the file alone, so an extra one means
    # an install step that does not use it.
    problems = disagreements(read_pins(), installed(), strict=os.environ.get("CI") == "true")
    assert not problems, f"{CONSTRAINTS.name} and this environment disagree: {problems}"


def test_vendored_packages_on_sys_path_are_not_counted(monkeypatch):
    import ray

    vendored = Path(ray.__file__).parent / "thirdparty_files"
    monkeypatch.syspath_prepend(str(vendored))  # what `import ray` does
    assert "colorama" not in installed() or "colorama" in read_pins()


def test_pins_satisfy_every_requirement_of_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = read_pins()
    for text in requirements:
        req = Requirement(text)
        name = canonical(req.name)
        assert name in pins, f"{req.name} is a requirement but has no pin in {CONSTRAINTS.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {name}=={pins[name]} violates {text}"


def test_ray_is_held_below_the_release_that_drops_ray_remote_args():
    ray = next(
        Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if canonical(Requirement(r).name) == "ray"
    )
    assert not ray.specifier.contains("2.64.0") and ray.specifier.contains(read_pins()["ray"])


def test_torch_and_torchvision_are_pinned_as_a_pair():
    pins = read_pins()
    assert "torch" in pins and "torchvision" in pins
    assert "torchvision" in CONSTRAINTS.read_text().split("\n\n")[0], "the pairing rule lives in the file's header"


def test_disagreements_name_each_kind_of_difference():
    pins = {"a": "1.0", "b": "2.0", "c": "3.0"}
    have = {"a": "1.0", "b": "2.1", "d": "4.0"}
    assert disagreements(pins, have, strict=False) == ["b: pinned 2.0, installed 2.1"]
    assert disagreements(pins, have, strict=True) == [
        "b: pinned 2.0, installed 2.1",
        "c: pinned 3.0, not installed",
        "d: installed 4.0, not pinned",
    ]
    assert disagreements(pins, dict(pins), strict=True) == []
    # a local build tag is a different build
    assert disagreements({"torch": "2.14.1"}, {"torch": "2.14.1+cpu"}, strict=False)


def test_a_malformed_pin_is_refused_with_its_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# header\nnumpy==2.0\ntorch>=2\n")
    with pytest.raises(ValueError, match=r"c.txt:3: expected `name==version`"):
        read_pins(path)
    path.write_text("Open_Clip.Torch == 3.3.0  # comment\n")
    assert read_pins(path) == {"open-clip-torch": "3.3.0"}
