# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
# Both create .venv (Python >= 3.11) and install the project into it on first use, at the exact versions in
# constraints.txt (the set CI passed on).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
PIP := $(PY) -m pip install --quiet -c $(CONSTRAINTS)
RUN_DIR ?= runs/sample

.PHONY: install run test test-slow lint check-deps upgrade-deps bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch and torchvision first, together, as the pinned pair (constraints.txt explains the pairing rule).
	$(PIP) torch torchvision
	$(PIP) -e ".[dev]"
	$(PY) tools/constraints.py check
	touch $(STAMP)

install: $(STAMP)

run: install  ## the main job on the embedded sample corpus
	$(PY) -m pipelines.run --stage=all --output $(RUN_DIR)

test: install  ## the test suite (CPU, a few minutes); the skip reasons are listed at the end
	$(PY) -m pytest

test-slow: install  ## the long tests: a node lost mid-run, 10x the corpus in the same memory (~5 min)
	$(PY) -m pytest -m slow

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

check-deps: install  ## the installed versions vs constraints.txt (every difference, extras included)
	$(PY) tools/constraints.py check --strict

# A deliberate upgrade: resolve every dependency afresh in a scratch venv, pin what it got, rebuild .venv from the
# new pins and run both suites. Review and commit constraints.txt only if they pass.
upgrade-deps:
	rm -rf .venv-upgrade
	$(PYTHON) -m venv .venv-upgrade
	.venv-upgrade/bin/python -m pip install --quiet --upgrade pip
	.venv-upgrade/bin/python -m pip install --quiet torch torchvision
	.venv-upgrade/bin/python -m pip install --quiet -e ".[dev]"
	.venv-upgrade/bin/python tools/constraints.py write
	rm -rf .venv-upgrade $(VENV)
	$(MAKE) check-deps test test-slow

bench: install  ## benchmarks: ratios against a baseline in the same run
	$(PY) bench/scenes.py
	$(PY) bench/shot_accuracy.py
	$(PY) bench/noise_warp.py
	$(PY) bench/flow.py
	$(PY) bench/camera.py
	$(PY) bench/events.py
	$(PY) bench/quality.py
	$(PY) bench/loader.py
	$(PY) bench/buckets.py
	$(PY) bench/storage.py
	$(PY) bench/vae.py
	$(PY) bench/memory.py
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) runs
