"""The pinned dependency set: `constraints.txt` holds the exact versions CI passed on.

    python tools/constraints.py check [--strict]   # installed versions vs the file; exit 1 on a disagreement
    python tools/constraints.py write              # rewrite the file from this environment (`make upgrade-deps`)

`check` compares every pinned distribution with what is installed: a different version is a disagreement; with
`--strict` (CI) so are a pinned one that is missing and one installed but not pinned. Local version tags (`+cu128`)
are compared too: a CPU-only or other CUDA build of torch is a different build than the one CI ran.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PROJECT = "video-data-engine"

HEADER = """\
# The exact versions CI passed on. `make install` and the README's install path use this file (pip -c); change it
# only with `make upgrade-deps`, which re-resolves every package to its newest release, rewrites this file and runs
# the whole suite on the result. `make check-deps` (and tests/test_constraints.py) fail when the installed
# versions disagree with it.
#
# torch and torchvision are one pair from the registry, installed together: the registry's x86_64 build is a CUDA
# build that runs on CPU as well, so CPU machines, GPU machines and CI run the same build. Never mix a CPU-only
# torch wheel with the registry's torchvision (torchvision then fails to import: "operator torchvision::nms does
# not exist"). Upgrade both together or neither.
#
# ray stays below 2.64: Ray Data's map() takes max_retries / max_restarts / max_task_retries only through
# `ray_remote_args`, which 2.64 removes, and 2.60 offers no named parameter for them (see pipelines/dag.py).
"""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path.name}:{number}: expected `name==version`, got {raw!r}")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    """{canonical name: version} of this environment's site-packages, the project itself left out. Only there:
    `import ray` puts its vendored packages (ray/thirdparty_files) on sys.path, and those are Ray's, not ours."""
    site = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    dists = importlib.metadata.distributions(path=site)
    found = {canonical(d.metadata["Name"]): d.version for d in dists if d.metadata["Name"]}
    found.pop(PROJECT, None)
    return found


def disagreements(pins: dict[str, str], have: dict[str, str], strict: bool) -> list[str]:
    """One line per package where the environment and the pins differ."""
    out = []
    for name, version in sorted(pins.items()):
        if name not in have:
            if strict:  # elsewhere a platform may not need it (the CUDA libraries outside x86_64 Linux)
                out.append(f"{name}: pinned {version}, not installed")
        elif have[name] != version:
            out.append(f"{name}: pinned {version}, installed {have[name]}")
    if strict:
        out += [f"{name}: installed {have[name]}, not pinned" for name in sorted(set(have) - set(pins))]
    return out


def write(path: Path = CONSTRAINTS) -> int:
    lines = [f"{name}=={version}" for name, version in sorted(installed().items())]
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {path}")
    return 0


def check(path: Path = CONSTRAINTS, strict: bool = False) -> int:
    problems = disagreements(read_pins(path), installed(), strict)
    if problems:
        print(f"the installed packages disagree with {path.name} ({len(problems)}):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("reinstall with `make clean install`, or change the pins with `make upgrade-deps`", file=sys.stderr)
        return 1
    print(f"installed packages match {path.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check_cmd = sub.add_parser("check", help="installed versions vs constraints.txt")
    check_cmd.add_argument("--strict", action="store_true", help="an installed package that is not pinned fails too")
    sub.add_parser("write", help="rewrite constraints.txt from this environment")
    args = parser.parse_args(argv)
    return check(strict=args.strict) if args.command == "check" else write()


if __name__ == "__main__":
    sys.exit(main())
