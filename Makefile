# The two commands of the README's quick start:
#   make report   install, then run the default study end to end -> reports/report.html
#   make test     install, then run the test suite (what CI runs)
# Each creates a local virtual environment (.venv) pinned by requirements.lock.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?= -m "not slow"
# Jobs call `python -m trial_analysis`: put the environment first on PATH.
RUN := PATH="$(BIN):$$PATH"

.PHONY: report test dry-run lint install install-test system-test-deps lock clean-outputs slurm-check postgres-check

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

$(VENV)/.installed: pyproject.toml requirements.lock | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements.lock | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Through `trial-analysis pipeline`: a malformed --config in SNAKEMAKE_ARGS gets a plain-words
# message. A failed step prints its one-line error on the terminal; make then exits with 2.
# Reruns after an interrupted run redo its incomplete files (profiles/default).
report: install
	$(RUN) $(BIN)/python -m trial_analysis pipeline --cores $(CORES) $(SNAKEMAKE_ARGS)
	@echo "Report: reports/report.html"

dry-run: install
	$(RUN) snakemake -n $(SNAKEMAKE_ARGS)

lint: install-test
	$(RUN) ruff check .
	$(RUN) snakemake --lint

# Headless Chromium for the browser test of the report (Debian packages; needs root).
system-test-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser test needs Chromium: sudo apt-get install chromium" >&2; exit 1; \
	  fi; \
	fi

test: install-test system-test-deps
	$(RUN) python -m pytest $(PYTEST_ARGS)

# A real single-node SLURM cluster (Debian slurm-wlm + munge, as root): a small simulation
# study run locally and through profiles/slurm must give byte-identical results.
slurm-check: install-test
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[test,slurm]"
	bash ci/slurm/setup-single-node.sh
	$(RUN) bash ci/slurm/run-check.sh

# A throwaway PostgreSQL cluster (Debian postgresql, as root) with the default extract loaded:
# the pipeline read from it must give the same analysis files as from CSV.
postgres-check: install-test
	PYTHON=$(BIN)/python bash ci/postgres/setup.sh
	$(RUN) bash ci/postgres/run-check.sh

# Refresh the pinned versions after changing dependencies in pyproject.toml.
lock: install-test
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^trial-analysis' > requirements.lock

clean-outputs:
	rm -rf data/interim/* data/processed/* reports/* logs .snakemake
	touch data/interim/.gitkeep data/processed/.gitkeep reports/.gitkeep
