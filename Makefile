# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo

.PHONY: run test lint bench clean system-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q nodepilot services  # an editable install ships no bytecode
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m nodepilot.demo --dir $(DEMO)

system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) system-deps
	@# a real single-node Slurm for tests/hpc/test_slurm.py (it skips its srun test without one)
	@timeout 400 bash tests/hpc/slurm-single-node.sh >/dev/null 2>&1 || echo "no single-node Slurm here: the srun test will skip"
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) $(DEMO)
