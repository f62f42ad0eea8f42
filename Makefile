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

.PHONY: setup browser-setup lab lessons bench test test-fast nbval test-gpu strip clean

setup: $(STAMP)
	@$(VENV_PY) binder/install_overrides.py

# The stamp's name holds pyproject.toml's hash, so a stamp that exists says the packages are already the ones it
# asks for. A fresh clone (a newer pyproject.toml, the same contents) then only points the environment at this
# checkout, without resolving every dependency again (seconds instead of most of a minute).
$(STAMP): pyproject.toml
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(TLKIT_VENV)
	@if [ -e $@ ]; then \
	  echo "Pointing $(TLKIT_VENV) at this checkout (its packages already match pyproject.toml) ..."; \
	  $(VENV_PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . ; \
	else \
	  echo "Creating the environment in $(TLKIT_VENV) (first time: a few minutes) ..."; \
	  $(VENV_PY) -m pip install --quiet --disable-pip-version-check -e ".[lab,test]" 2>&1 \
	    | { grep -v "is ignored: it is neither a file nor a directory" || true; }; \
	fi
	@rm -f $(TLKIT_VENV)/.tlkit-env-*
	@touch $@

# Browser tests (tests/browser): Debian's chromium (apt, only when missing; never fails the build) and
# (setup) JupyterLab's widget saveState setting (binder/overrides.json) in the venv. Playwright comes from the
# test extras; without chromium or playwright the browser tests skip with one line saying so.
browser-setup: setup
	@if [ -n "$$TLKIT_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing chromium for the browser tests (apt-get, log in $(TLKIT_VENV)/apt-chromium.log) ..."; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    >$(TLKIT_VENV)/apt-chromium.log 2>&1 \
	    || echo "chromium could not be installed with apt-get: the browser tests will be skipped"; \
	else echo "no chromium (and no apt-get as root): the browser tests will be skipped; apt-get install -y chromium"; fi

lab: setup
	$(VENV_PY) -m jupyter lab notebooks/

lessons: setup
	$(VENV_PY) -m tlkit lessons run --preset $(PRESET) $(if $(OUT),--out $(OUT))

bench: setup
	$(VENV_PY) -m tlkit bench $(if $(OUT),--out $(OUT)) $(if $(AGAINST),--against $(AGAINST))

test: setup browser-setup
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
