# perceiver-edu. The README's two commands are `make test` and `make book`; both set themselves up
# on a fresh machine: a virtualenv in .venv with requirements.txt and this package installed
# (re-installed when requirements.txt or pyproject.toml change), the offline JavaScript from npm,
# and for the tests Chromium (Debian package) and the offline CIFAR-10 copy when ../shared is there.
#
#   make test        unit tests, browser test, and nbval on every notebook (strict, sanitised)
#   make workflows   actionlint on .github/workflows (make test runs it first)
#   make book        build _build/html from the stored outputs; warnings are errors; no page may
#                    load anything from another host, nor show an image without alt text and
#                    figure caption (tools/check_alt_text.py)
#   make format      ruff format + ruff check --fix on the converted chapters (issue 15's list in
#                    tests/test_notebook_style.py), or on one: make format NB=notebooks/06_...ipynb
#   make mutation    mutation check of the core modules with mutmut (long: see README, Testing);
#                    MODULES="optim data" for some, MUTATION_JOBS=N workers
#   make lab         JupyterLab on the chapters, with the .venv kernel that has this package
#                    (LAB_ARGS="--no-browser --port 8890" passes options to it)
#   make notebooks   re-execute every notebook in place on the CPU, in reading order
#   make colab-env   the Colab-like virtualenv .venv-colab of tests/test_colab_env.py (make test
#                    builds it; rebuilt from scratch when requirements-colab.txt changes)
#   make diagrams    redraw the SVG figures in book/figures from the presets (tools/diagrams.py)
#   make clean       remove _build;  make distclean: also .venv, .venv-colab and .vendor
#
# Variables: TOC=path/to/toc.yml (book, notebooks), NB_TIMEOUT=seconds per notebook,
#            PYTHON_BASE=python used to create .venv, PERCEIVER_EDU_DATA=prepared CIFAR-10 folder.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON_BASE := $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV        := .venv
PY          := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.perceiver-edu-installed
VENDOR      := .vendor
VENDOR_STAMP := $(VENDOR)/static/.complete
BUILD       := _build
TOC         ?= _toc.yml
NB_TIMEOUT  ?= 900
CHROMIUM    ?= /usr/bin/chromium
SHARED_DATA ?= ../shared/data

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PERCEIVER_EDU_CHROMIUM := $(CHROMIUM)# read by tests/test_browser.py
export PYDEVD_DISABLE_FILE_VALIDATION := 1# silences the kernels' "frozen modules" debugger warning

# Notebook execution and nbval run on the CPU whatever the machine has, so that stored and fresh
# outputs are produced alike.
CPU_ENV := CUDA_VISIBLE_DEVICES= PERCEIVER_EDU_DEVICE=cpu PYTHONHASHSEED=0

# Offline CIFAR-10: when the caller has not chosen a folder and ../shared/data is beside the
# repository (our machines and CI), prepare the shared copy once in a folder of its own and use it.
ifeq ($(origin PERCEIVER_EDU_DATA),undefined)
ifneq ($(wildcard $(SHARED_DATA)/prepare_cifar10.py),)
PERCEIVER_EDU_DATA := $(HOME)/.cache/perceiver_edu/shared-cifar10
export PERCEIVER_EDU_DATA
AUTO_DATA := 1
endif
endif

.PHONY: help setup vendor chromium data test notebooks diagrams book clean distclean mutation

help:
	@sed -n '1,/^$$/p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------------------------
# set-up

setup: $(SETUP_STAMP)

$(SETUP_STAMP): requirements.txt pyproject.toml
	@if [ -z "$(PYTHON_BASE)" ]; then echo "No python3 found: install Python 3.10+ (3.11 is tested)." >&2; exit 1; fi
	@if [ ! -x $(PY) ]; then echo "creating $(VENV) with $(PYTHON_BASE)"; $(PYTHON_BASE) -m venv $(VENV); fi
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e .
	@touch $@

vendor: $(VENDOR_STAMP)

$(VENDOR_STAMP): tools/vendor_assets.py | $(SETUP_STAMP)
	$(PY) tools/vendor_assets.py $(VENDOR)

chromium:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  echo "installing chromium with sudo (no password asked) for the browser test"; \
	  sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
	  echo "The browser test needs Chromium at $(CHROMIUM)." >&2; \
	  echo "Install it (Debian/Ubuntu: sudo apt-get install -y chromium), or point to one with" >&2; \
	  echo "  make test CHROMIUM=/path/to/chromium" >&2; \
	  exit 1; \
	fi

data: | $(SETUP_STAMP)
ifdef AUTO_DATA
	$(PY) $(SHARED_DATA)/prepare_cifar10.py $(PERCEIVER_EDU_DATA)
endif

# Colab's preinstalled versions (requirements-colab.txt) WITHOUT this package: tests/test_colab_env.py
# installs it there the way a chapter's first cell does. Built from scratch when the file changes
# (2.5 to 5 min here, 5.8 GB: torch is requirements.txt's pair); the freeze written last is the stamp,
# and what the test puts the environment back to after each run.
COLAB_VENV  := .venv-colab
COLAB_STAMP := $(COLAB_VENV)/baseline-freeze.txt
.PHONY: colab-env
colab-env: $(COLAB_STAMP)

$(COLAB_STAMP): requirements-colab.txt
	rm -rf $(COLAB_VENV)
	$(PYTHON_BASE) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install -q "$$(grep -m1 '^pip==' requirements-colab.txt)"
	$(COLAB_VENV)/bin/python -m pip install -q -r requirements-colab.txt
	$(COLAB_VENV)/bin/python -m pip freeze --all > $@.tmp
	mv $@.tmp $@

# ---------------------------------------------------------------------------------------------
# the two README commands, and the notebook runner

# The chapters that read CIFAR-10 print figures computed from it, stored from the offline JPEG copy
# (its folder has a SOURCE.txt). With other data, e.g. the official files that GitHub's runners
# download, those chapters still run and every cell and check cell must pass, but their printed
# figures are not compared (nbval's lax mode); every other chapter is compared as always.
CIFAR_DIR     = $(or $(PERCEIVER_EDU_DATA),$(HOME)/.cache/perceiver_edu)/cifar-10-batches-py
DATA_CHAPTERS = $(shell grep -l load_cifar10 notebooks/*.ipynb 2>/dev/null)
NBVAL         = $(CPU_ENV) $(PY) -m pytest -p no:cacheprovider --nbval --nbval-current-env \
                --nbval-sanitize-with tests/nbval_sanitize.cfg

# actionlint on .github/workflows first (tools/actionlint.py), so a broken workflow fails here.
# pytest exits 5 when it collects nothing (e.g. before the first notebook exists): that alone is
# not a failure. Every suite runs even if one fails; make fails if any did.
test: setup vendor chromium data colab-env
	@status=0; \
	rc=0; $(PY) tools/actionlint.py || rc=$$?; \
	if [ $$rc != 0 ]; then status=$$rc; fi; \
	rc=0; $(PY) -m pytest tests || rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest tests: no tests collected"; elif [ $$rc != 0 ]; then status=$$rc; fi; \
	if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  strict=notebooks; lax=; \
	  if [ ! -f "$(CIFAR_DIR)/SOURCE.txt" ] && [ -n "$(DATA_CHAPTERS)" ]; then \
	    strict="$(filter-out $(DATA_CHAPTERS),$(wildcard notebooks/*.ipynb))"; lax="$(DATA_CHAPTERS)"; \
	    echo "nbval: $(CIFAR_DIR) is not the offline copy the stored outputs come from;"; \
	    echo "  $$lax: run and checked, outputs not compared (--nbval-lax)"; \
	  fi; \
	  rc=0; $(NBVAL) $$strict || rc=$$?; \
	  if [ $$rc = 5 ]; then echo "nbval: no notebook cells collected"; elif [ $$rc != 0 ]; then status=$$rc; fi; \
	  if [ -n "$$lax" ]; then \
	    rc=0; $(NBVAL) --nbval-lax $$lax || rc=$$?; \
	    if [ $$rc != 0 ]; then status=$$rc; fi; \
	  fi; \
	else \
	  echo "nbval: no notebooks in notebooks/ yet"; \
	fi; \
	exit $$status

.PHONY: workflows
workflows: setup
	$(PY) tools/actionlint.py

# Mutation check (mutmut 3, configured in pyproject.toml [tool.mutmut]): mutate the core modules
# one small change at a time and run the fast unit tests against each mutant; then print killed /
# survived / timed out per module. Starts from a clean mutants/ so the score is this tree's.
# MODULES empty: every module listed in [tool.mutmut] only_mutate.
MODULES       ?=
MUTATION_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
mutation: setup
	rm -rf mutants
	@start=$$(date +%s); \
	nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) \
	  $(foreach m,$(MODULES),"perceiver_edu.$(m).*"); \
	echo "mutmut ran for $$(( $$(date +%s) - start )) s with $(MUTATION_JOBS) worker(s)"
	$(PY) tools/mutation_report.py $(MODULES)

diagrams: setup
	$(PY) tools/diagrams.py book/figures

# JupyterLab for a learner. Kernels are looked up in .venv before the user's own folders
# (JUPYTER_PREFER_ENV_PATH), so the chapters' "python3" kernel is .venv's, with this package, even
# when ~/.local/share/jupyter has another "python3". Only 127.0.0.1; Lab prints the tokened URL.
# Jupyter refuses to run as root unless told to (containers, our machines): then it is told.
LAB_ARGS ?=
.PHONY: lab
lab: setup data
	JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 \
	  --ServerApp.root_dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

notebooks: setup data
	$(CPU_ENV) $(PY) tools/run_notebooks.py --toc $(TOC) --timeout $(NB_TIMEOUT)

book: setup vendor
	$(PY) tools/toc.py check $(TOC)
	@start=$$(date +%s); \
	$(VENV)/bin/jupyter-book build . --toc $(TOC) --all -W -n --keep-going; \
	echo "book built in $$(( $$(date +%s) - start )) s: $(BUILD)/html/index.html"
	$(PY) tools/check_offline_html.py $(BUILD)/html
	$(PY) tools/check_alt_text.py $(BUILD)/html

# ruff on the chapters (notebooks/ruff.toml: 77 characters). Only the converted chapters, or NB=...:
# the others are still being edited. `make test` checks the same (tests/test_notebook_style.py).
.PHONY: format
format: setup
	@notebooks="$${NB:-$$($(PY) tests/test_notebook_style.py --converted)}"; \
	if [ -z "$$notebooks" ]; then \
	  echo "make format: no chapter is converted yet; name one: make format NB=notebooks/..."; \
	  exit 0; \
	fi; \
	$(VENV)/bin/ruff check --fix --exit-zero --quiet $$notebooks; \
	$(VENV)/bin/ruff format $$notebooks; \
	$(VENV)/bin/ruff check $$notebooks

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(VENV) $(COLAB_VENV) $(VENDOR)
