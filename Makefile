# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
# Both create .venv (Python >= 3.11) and install the project into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/sample

.PHONY: install run test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision together from the registry: their builds match and run on CPU as well as GPU.
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install  ## the main job on the embedded sample corpus
	$(PY) -m pipelines.run --stage=all --output $(RUN_DIR)

test: install  ## the test suite (CPU, a few minutes)
	$(PY) -m pytest

test-slow: install  ## the long tests: a node lost mid-run, 10x the corpus in the same memory (~5 min)
	$(PY) -m pytest -m slow

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: install  ## benchmarks: ratios against a baseline in the same run
	$(PY) bench/scenes.py
	$(PY) bench/noise_warp.py
	$(PY) bench/flow.py
	$(PY) bench/camera.py
	$(PY) bench/events.py
	$(PY) bench/quality.py
	$(PY) bench/loader.py
	$(PY) bench/memory.py
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) runs
