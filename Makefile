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
	@echo "make docs   build the documentation site into _docs/ with Quarto (nbdev-docs); make preview serves it"

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
	$(BIN)/ruff check --quiet . || { echo "ruff: fix the findings above (lines over 110 columns, unused names)"; exit 1; }

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

# The documentation site (README: "The documentation site"): Quarto renders every notebook through
# nbdev-docs (nbs/_quarto.yml links to ../_quarto.yml) into _docs/. KaTeX comes once from the npm
# registry into nbs/katex/ (ignored by git), and Quarto copies it into the site: no page loads anything
# from the network. Quarto itself: quarto.org, or on a machine that reaches only the package registries
# ../shared/tools/quarto/install (it prints the launcher; put its folder on PATH).
KATEX_VERSION := 0.16.22
KATEX_DIR := nbs/katex
.PHONY: docs katex preview
katex: $(KATEX_DIR)/.katex-$(KATEX_VERSION)

$(KATEX_DIR)/.katex-$(KATEX_VERSION):
	@command -v npm >/dev/null || { echo "make docs: npm is needed once, to fetch KaTeX from the npm registry (apt-get install npm)"; exit 1; }
	rm -rf $(KATEX_DIR) .cache/katex && mkdir -p .cache/katex $(KATEX_DIR)
	cd .cache/katex && npm pack --silent katex@$(KATEX_VERSION) >/dev/null && tar -xzf katex-$(KATEX_VERSION).tgz
	cp -r .cache/katex/package/dist/katex.min.js .cache/katex/package/dist/katex.min.css \
	  .cache/katex/package/dist/fonts .cache/katex/package/LICENSE $(KATEX_DIR)/
	@touch $@

# Quarto is looked for first: without it nothing is installed, fetched or built.
docs:
	@command -v quarto >/dev/null || { \
	  echo "make docs: Quarto is not on PATH. Install it from https://quarto.org/docs/get-started/, or where only"; \
	  echo "the package registries are reachable: PATH=\"\$$(dirname \$$(../shared/tools/quarto/install)):\$$PATH\" make docs"; \
	  exit 1; }
	@$(MAKE) --no-print-directory env katex
	$(BIN)/nbdev-docs
	@echo "built the site with Quarto (nbdev-docs): $$(ls _docs/*.html | wc -l) pages, open _docs/index.html"

# Quarto's live preview of the same site (it re-renders a notebook when it is saved).
preview: $(STAMP) katex
	$(BIN)/nbdev-preview
