# Two commands do everything: `make demo` and `make test`. Both create .venv when missing
# and reinstall only when pyproject.toml changed (the stamp file), so repeats are fast.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real data sets; override with `make demo CNNLAB_DATA=/path`.
CNNLAB_DATA ?= $(abspath ../shared/data)
export CNNLAB_DATA

.PHONY: demo test install catalog clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# facenet-pytorch: MTCNN face detection and its weights (face alignment). Its metadata pins an
# old torch that this project does not need, so it goes in without its dependencies; the ones it
# imports (requests, tqdm, numpy, pillow, torchvision) are cnnlab's own.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "facenet-pytorch==2.6.0"
	touch $(STAMP)

install: $(STAMP)

# ruff first: a lint error fails `make test` (and CI) before minutes of tests. Then the suite on
# every core (pytest-xdist; each worker computes with one thread: tests/conftest.py).
test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q -n auto tests

# What `--help` shows from the library, stored so that help imports no torch (cnnlab.cli.catalog);
# rewrite it after changing a config dataclass, a preset or a registry (tests/test_cli_help.py says when).
catalog: $(STAMP)
	$(BIN)/python -m cnnlab.cli.catalog

demo: $(STAMP)
	$(BIN)/python -m cnnlab.demo

clean:
	rm -rf $(VENV) runs .pytest_cache
