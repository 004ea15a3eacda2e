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
PREFECT_LOCAL := $(CURDIR)/.prefect
LOCAL := $(BIN)/python deployments/local.py --home $(PREFECT_LOCAL) --host $(HOST) --port $(PORT)

# `make server DB=postgresql+asyncpg://user:password@host:5432/prefect`: the server on a lab's PostgreSQL
# (docs/lab.md); empty keeps Prefect's SQLite file in .prefect/. `make postgres` runs a PostgreSQL of
# this machine's own (in .prefect/postgres, port PG_PORT) to try the lab's set-up on one machine.
DB ?=
PG_PORT ?= 5433
PG_FOLDER := $(PREFECT_LOCAL)/postgres

# The Optuna dashboard over the campaigns' studies (the SQLite file under the data root).
DATA ?= $(or $(SDFL_DATA_ROOT),data)
DASHBOARD_PORT ?= 8080

.PHONY: demo test install gp peers browser postgresql postgres postgres-stop bench clean-data lint server deploy worker ui-stop dashboard

server deploy worker ui-stop: export PREFECT_API_URL := http://$(HOST):$(PORT)/api
server deploy worker ui-stop: export PREFECT_HOME := $(PREFECT_LOCAL)

install: $(STAMP)

# uv resolves the same ranges as pip and installs in about 40 s instead of about 110 s (parallel
# downloads and unpacking); it compiles the bytecode up front, as pip does, so no process has to
# compile the libraries it imports (some machines set PYTHONDONTWRITEBYTECODE).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.9,<1"
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[dev,dashboard,postgres]'
	@touch $(STAMP)

# Optional extras, by pip: it reads PIP_FIND_LINKS, where a machine may keep its CPU build of torch.
# gp: Optuna's GP sampler (policy gp). peers: the optimizers benchmarks/policies.py compares with.
gp peers: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[$@]'

demo: $(STAMP)
	$(BIN)/sdfl demo

# Three test processes on two cores (much of the suite waits on servers, leases and subprocesses);
# each module runs whole in one of them (module fixtures are set up once), and the tests on the
# shared Prefect server form one group that starts first. TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 3
test: $(STAMP) browser postgresql
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The browser test of the Prefect UI needs Chromium: Debian's package, installed when missing and
# this runs as root with apt-get; elsewhere the test says why it was skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test of the Prefect UI"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser test will be skipped"; fi; }

# The tests of the lab's multi-machine set-up run a PostgreSQL cluster of their own from Debian's
# server programs: installed when missing and this runs as root with apt-get; elsewhere those tests
# say why they were skipped.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql for the tests of the lab set-up"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "postgresql could not be installed: the PostgreSQL tests will be skipped"; \
	  else echo "postgresql is missing and cannot be installed here (needs root and apt-get): the PostgreSQL tests will be skipped"; fi; }

postgres: $(STAMP) postgresql
	@$(BIN)/python deployments/postgres.py start --folder $(PG_FOLDER) --port $(PG_PORT)

postgres-stop:
	@if test -x $(BIN)/python; then $(BIN)/python deployments/postgres.py stop --folder $(PG_FOLDER); fi

bench: $(STAMP)
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/experiment.py

lint: $(STAMP)
	$(BIN)/ruff check hardware tasks flows tests benchmarks deployments

server: $(STAMP)
	@$(LOCAL) server $(if $(DB),--database '$(DB)')

deploy: $(STAMP)
	@$(LOCAL) deploy

# `make worker`: a worker for every reactor of deployments/prefect.yaml; `make worker REACTOR=name`: that one.
worker: $(STAMP)
	@$(LOCAL) worker $(if $(REACTOR),--reactor $(REACTOR))

ui-stop:
	@if test -x $(BIN)/python; then $(LOCAL) stop; else echo "nothing to stop (no $(VENV))"; fi

dashboard: $(STAMP)
	@test -f $(DATA)/optuna.db || { echo "no campaigns under $(DATA) yet: run make demo (or sdfl optimize) first"; exit 2; }
	@echo "Optuna dashboard of $(DATA)/optuna.db on http://$(HOST):$(DASHBOARD_PORT) (Ctrl-C stops it)"
	@$(BIN)/optuna-dashboard --host $(HOST) --port $(DASHBOARD_PORT) --quiet sqlite:///$(abspath $(DATA))/optuna.db

clean-data:
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +
