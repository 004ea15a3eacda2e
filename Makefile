# Two commands: `make demo` and `make test`. Each creates .venv with the machine's python3 and
# installs the project into it when pyproject.toml changed (a stamp file makes it idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdfl-installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

# The Prefect UI on this machine (see deployments/README.md): `make server deploy worker`, open
# http://127.0.0.1:4200, and `make ui-stop` at the end. The server's database and the logs and PIDs
# of what these targets start live in .prefect/.
HOST ?= 127.0.0.1
PORT ?= 4200
REACTOR ?= virtual-cs3cu2i5
PREFECT_LOCAL := $(CURDIR)/.prefect
LOCAL := $(BIN)/python deployments/local.py --home $(PREFECT_LOCAL) --host $(HOST) --port $(PORT)

.PHONY: demo test install bench clean-data lint server deploy worker ui-stop

server deploy worker ui-stop: export PREFECT_API_URL := http://$(HOST):$(PORT)/api
server deploy worker ui-stop: export PREFECT_HOME := $(PREFECT_LOCAL)

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
	$(BIN)/ruff check hardware tasks flows tests benchmarks deployments

server: $(STAMP)
	@$(LOCAL) server

deploy: $(STAMP)
	@$(LOCAL) deploy

worker: $(STAMP)
	@$(LOCAL) worker --reactor $(REACTOR)

ui-stop:
	@if test -x $(BIN)/python; then $(LOCAL) stop; else echo "nothing to stop (no $(VENV))"; fi

clean-data:
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +
