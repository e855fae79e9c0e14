# Two commands on a fresh machine with Python 3.11: `make dev` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install dev test lint typecheck unit soak bench bench-quick bench-durability clean

install: $(STAMP)

# setuptools adds a note ("Editable installation.") to every editable install it serves through
# an import finder, as ours is (cli/ and executors/ install as colonyos.cli, colonyos.executors);
# there is nothing to act on, so install prints no warnings of ours.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: install
	$(BIN)/colonies dev

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

# At length, outside make test: the fault-injection checker (more processes, a minute of kills),
# the fuzzers with thousands of new examples, and the monkey with hundreds of commands.
soak: install
	COLONIES_CHECKER_PROCESSES=3000 COLONIES_CHECKER_CHAOS_S=60 \
		$(BIN)/pytest -q -s tests/test_checker.py -o timeout=900
	COLONIES_FUZZ_EXAMPLES=2000 COLONIES_FUZZ_RANDOM=1 \
		$(BIN)/pytest -q tests/fuzz -o timeout=1800
	COLONIES_MONKEY_COMMANDS=400 $(BIN)/pytest -q -s tests/cli/test_monkey.py -o timeout=1800

# Throughput, latency, workflows, memory, edge executor; prints a table and writes
# bench/results/latest.json. bench-quick takes under a minute.
bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

# What JetStream's fsync policy (nats.conf sync_interval) costs on this machine.
bench-durability: install
	$(BIN)/python -m bench.durability

clean:
	rm -rf $(VENV) .colonies build dist *.egg-info
