# tlkit workbench: `make lessons` runs every lesson, `make test` runs the test suite.
# Each target creates the environment first if it is missing or out of date.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
TLKIT_VENV ?= .venv
VENV_PY := $(TLKIT_VENV)/bin/python
STAMP := $(TLKIT_VENV)/.tlkit-env-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PRESET ?= auto
OUT ?=

export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup lab lessons test test-fast nbval test-gpu strip clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(TLKIT_VENV)
	@echo "Creating the environment in $(TLKIT_VENV) (first time: a few minutes) ..."
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -e ".[lab,test]" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@rm -f $(TLKIT_VENV)/.tlkit-env-*
	@touch $@

lab: setup
	$(VENV_PY) -m jupyter lab notebooks/

lessons: setup
	$(VENV_PY) -m tlkit lessons run --preset $(PRESET) $(if $(OUT),--out $(OUT))

test: setup
	$(VENV_PY) -m pytest

test-fast: setup
	$(VENV_PY) -m pytest -m "not notebook"

nbval: setup
	$(VENV_PY) -m pytest --nbval-lax notebooks/ -p no:cacheprovider

test-gpu: setup
	$(VENV_PY) -m pytest -m "notebook or gpu" --preset full

strip:
	$(VENV_PY) -m tlkit.notebook_hygiene strip notebooks/*.ipynb

clean:
	rm -rf runs .pytest_cache
