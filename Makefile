# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
DEMO := .demo

.PHONY: run test test-realserver lint bench chaos clean system-deps

# what running needs (make run); the test servers, browser driver and linters come with make test
$(RUN_STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m compileall -q nodepilot services  # an editable install ships no bytecode
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m nodepilot.demo --dir $(DEMO)

system-deps:
	bash scripts/system-deps.sh

# scripts/test.sh: system packages, a private Slurm, ruff, pytest; stops every daemon it started
test: $(TEST_STAMP)
	BIN=$(BIN) bash scripts/test.sh

# the integration suite against the real PanDA server (tests/realserver/README.md): needs a checkout of the
# public PanDAWMS/panda-database repository named by PANDA_DATABASE_DIR; installs panda-server 1.0.4 and
# PostgreSQL 15 (cached under NODEPILOT_REALSERVER_HOME, default ~/.cache/nodepilot-realserver)
test-realserver: $(TEST_STAMP)
	@test -n "$$PANDA_DATABASE_DIR" || { echo "test-realserver: set PANDA_DATABASE_DIR to a checkout of the PanDAWMS/panda-database repository"; exit 2; }
	$(BIN)/python -m tests.realserver.install
	$(BIN)/pytest -q -rs tests/realserver

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(RUN_STAMP)
	$(BIN)/python bench/overhead.py

# 20 fault-injection trials per victim (monitor, runner, stager, eventclient, Redis): the table
chaos: $(TEST_STAMP)
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) $(DEMO)
