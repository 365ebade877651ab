# ucpcl: one-command setup. Every target creates the environment it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ucpcl-installed
# The CUDA build of torch that also runs on the CPU; asked for first, in one pip call,
# so that nothing later pulls another build.
TORCH := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# OpenMP threads that spin while they wait make PyTorch many times slower on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE
DEMO_OUT ?= report
DEMO_ARGS ?=

.PHONY: help env test check demo lab export readme

help:
	@echo "make test   create .venv if needed, check notebooks and library are in sync, run all tests"
	@echo "make demo   train on the embedded cardiac phantom (CPU), print a results table, write $(DEMO_OUT)/"
	@echo "make lab    open JupyterLab on nbs/"
	@echo "make docs   build the documentation site into _docs/ (Quarto via nbdev-docs if installed, else offline)"

env: $(STAMP)

# Installed once. nbdev-export rewrites pyproject.toml with the same text, which makes it newer than the
# stamp; the copy saved at install time tells a real change (reinstall) from a new time (nothing to do).
INSTALLED := $(VENV)/.pyproject.installed
$(STAMP): pyproject.toml
	@if [ -x $(BIN)/python ] && cmp -s pyproject.toml $(INSTALLED); then \
	  echo "pyproject.toml is unchanged since $(VENV) was installed: nothing to install"; \
	else $(MAKE) --no-print-directory install; fi
	@touch $@

.PHONY: install
install:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@cp pyproject.toml $(INSTALLED)

# The library is generated from the notebooks: exporting must change nothing, and the
# committed notebooks must already be clean (nbdev-clean leaves them unchanged).
check: $(STAMP)
	$(BIN)/python tools/check_nbs.py
	$(BIN)/ruff format --check --quiet . || { echo "ruff: files above are not formatted: run 'make format'"; exit 1; }

test: check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff formats the notebooks, tests, tools and benchmarks (line length 110, pyproject.toml); ucpcl/ is exported from nbs/.
.PHONY: format
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/nbdev-export

export: $(STAMP)
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

demo: $(STAMP)
	$(BIN)/ucpcl demo --out $(DEMO_OUT) $(DEMO_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab nbs/


readme: $(STAMP)
	$(BIN)/python tools/readme.py

# With Quarto: nbdev's site (nbdev-docs reads _quarto.yml through nbs/_quarto.yml). Without it: the same
# notebooks' saved outputs as static pages, math typeset by KaTeX (fetched once from npm), no CDN.
.PHONY: docs
docs: $(STAMP)
	@if command -v quarto >/dev/null 2>&1; then \
		echo "quarto found: building the Quarto site with nbdev-docs"; \
		$(BIN)/nbdev-docs && echo "built the Quarto site (nbdev-docs): open _docs/index.html"; \
	else \
		echo "quarto not found: building the offline site with tools/site.py"; \
		$(BIN)/python tools/site.py --out _docs && echo "built the offline site (tools/site.py): open _docs/index.html"; \
	fi
