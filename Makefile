# Two commands on a fresh machine with Python 3.11: `make dev` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install dev test lint typecheck unit soak mutate bench bench-quick bench-durability bench-platforms bench-scale bench-one-write bench-burst clean

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

# The fifteen slowest tests are named at the end of every run: make test stays within about ten
# minutes on a 2-core machine, and this says where the time goes when it does not.
unit: install
	$(BIN)/pytest -q --durations=15

test: lint typecheck unit

# At length, outside make test: the fault-injection checker (more processes, a minute of kills),
# the fuzzers with thousands of new examples, the monkey with hundreds of commands, and a cron
# ticking through a minute of broker kills.
soak: install
	COLONIES_CHECKER_PROCESSES=3000 COLONIES_CHECKER_CHAOS_S=60 \
		$(BIN)/pytest -q -s tests/test_checker.py -o timeout=900
	COLONIES_CRON_CHAOS_S=60 $(BIN)/pytest -q -s tests/crons/test_failover.py -o timeout=600
	COLONIES_FUZZ_EXAMPLES=2000 COLONIES_FUZZ_RANDOM=1 \
		$(BIN)/pytest -q tests/fuzz -o timeout=1800
	COLONIES_MONKEY_COMMANDS=400 $(BIN)/pytest -q -s tests/cli/test_monkey.py -o timeout=1800

# Mutation testing (cosmic-ray), outside make test: each module is changed one operator at a time
# and the tests that run the changed line are run against it; a change no test notices "survives".
# `make mutate MUTATE="service workflows"` picks the modules of colonyos/broker (default: all of
# the core). First the broker's lines are mapped to the tests that run them (the suite under
# coverage, except the tests whose brokers run in other processes; remade when code or tests
# change); then each mutant runs only its line's tests, fastest first (tests/mutate_select.py). A
# line run only at import (a default, a constant) takes the module's home set below.
# tests/mutate_filter.py skips the mutants inside type annotations, which no test can notice.
# cosmic-ray changes the file in place and puts it back; after an interrupted run, `git diff`.
# Sessions and reports go to .mutate/.
MUTATE ?= transitions scheduler store lease service assignment reports workflows lifecycle
MUTATE_MAP_TESTS := tests --ignore=tests/test_checker.py --ignore=tests/test_cluster.py \
	--ignore=tests/test_packaging.py --ignore=tests/fuzz

MUTATE_STORE_TESTS := tests/broker/test_store.py tests/broker/test_two_writers.py \
	tests/test_stored_values.py tests/test_assign_flow.py

.mutate/map.json: $(STAMP) $(shell find colonyos tests -name '*.py')
	@mkdir -p .mutate
	$(BIN)/python tests/mutate_select.py map colonyos/broker $@ -- $(MUTATE_MAP_TESTS)

mutate: install
	@git diff --quiet HEAD -- colonyos || { echo "make mutate: commit colonyos/ first (the map and the mutants are read against HEAD)"; exit 2; }
	@$(MAKE) --no-print-directory .mutate/map.json
	@set -e; for m in $(MUTATE); do \
		case $$m in \
			transitions) tests="tests/broker/test_transitions.py tests/broker/test_transitions_values.py";; \
			scheduler) tests="tests/broker/test_scheduler.py tests/broker/test_scheduler_edges.py";; \
			store) tests="$(MUTATE_STORE_TESTS)";; \
			lease) tests="tests/broker/test_lease_terms.py tests/broker/test_lease.py";; \
			lifecycle) tests="tests/broker/test_lifecycle_steps.py tests/test_lifecycle.py tests/test_executor_liveness.py";; \
			workflows) tests="tests/broker/test_workflows_edges.py tests/test_workflows.py";; \
			service) tests="tests/broker/test_service_edges.py tests/broker/test_service_values.py tests/broker/test_service_paths.py tests/test_service_state.py tests/test_assign_flow.py tests/test_capacity.py";; \
			assignment) tests="tests/broker/test_assignment_batch.py tests/broker/test_assignment_paths.py tests/test_assign_flow.py tests/test_capacity.py tests/broker/test_two_writers.py";; \
			reports) tests="tests/broker/test_log_entries.py tests/test_report_notices.py tests/test_assign_flow.py tests/test_lifecycle.py tests/test_sizes.py";; \
			*) echo "make mutate: no home tests listed for $$m"; exit 2;; \
		esac; \
		printf '%s\n' '[cosmic-ray]' "module-path = \"colonyos/broker/$$m.py\"" 'timeout = 300.0' \
			'excluded-modules = []' \
			"test-command = \"$(BIN)/python tests/mutate_select.py run colonyos/broker/$$m.py .mutate/map.json $$tests\"" \
			'' '[cosmic-ray.distributor]' 'name = "local"' > .mutate/$$m.toml; \
		rm -f .mutate/$$m.sqlite; \
		$(BIN)/cosmic-ray baseline .mutate/$$m.toml; \
		$(BIN)/cosmic-ray init .mutate/$$m.toml .mutate/$$m.sqlite; \
		$(BIN)/python tests/mutate_filter.py .mutate/$$m.sqlite > .mutate/$$m.skipped; \
		started=$$(date +%s); \
		$(BIN)/cosmic-ray exec .mutate/$$m.toml .mutate/$$m.sqlite; \
		took=$$(( $$(date +%s) - started )); \
		$(BIN)/cr-report --surviving-only --show-diff .mutate/$$m.sqlite > .mutate/$$m.txt; \
		cat .mutate/$$m.skipped >> .mutate/$$m.txt; \
		echo "wall time: $$took s" >> .mutate/$$m.txt; \
		tail -n 5 .mutate/$$m.txt; \
	done

# Throughput, latency, workflows, memory, edge executor; prints a table and writes
# bench/results/latest.json. bench-quick takes under a minute.
bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

# What the container executor adds to a container: the executor against podman's own run.
bench-platforms: install
	$(BIN)/python -m bench.platforms

# A broker's memory right after a burst of 20,000 processes and after 35 s at rest
# (bench/burst.py).
bench-burst: install
	$(BIN)/python -m bench.burst

# Two busy colonies: one broker serving both, against a broker each; then 200 colonies at
# rest, what they cost (bench/scale.py).
bench-scale: install
	$(BIN)/python -m bench.scale

# What JetStream's fsync policy (nats.conf sync_interval) costs on this machine.
bench-durability: install
	$(BIN)/python -m bench.durability

# One JetStream write per transition (the event as the record) against today's KV write +
# event, bare nats-py: writes, reads and a leader's load of 100,000 processes (docs/architecture.md).
bench-one-write: install
	$(BIN)/python -m bench.one_write

clean:
	rm -rf $(VENV) .colonies build dist *.egg-info
