# Two commands: `make demo` and `make test`. Each creates .venv with the machine's python3 and
# installs the project into it when pyproject.toml changed (a stamp file makes it idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdfl-installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test install bench clean-data lint

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sdfl demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/experiment.py

lint: $(STAMP)
	$(BIN)/ruff check hardware tasks flows tests benchmarks

clean-data:
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +
