# Everything installs itself: `make run` and `make test` work on a fresh clone with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp

.PHONY: install install-run run test slurm-test lint format bench clean

# `make run` installs what running needs; `make test` (and the rest) the development tools too.
install-run: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

install: $(STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: install-run
	$(BIN)/krea-batch plan jobs.example.yaml
	$(BIN)/krea-batch run jobs.example.yaml --emulator --out out

test: install
	$(BIN)/python -m pytest -q -n 4 -m 'not serial'
	$(BIN)/python -m pytest -q -m serial

# examples/slurm on a real single-node Slurm against the emulator, checked end to end (as root:
# it installs Debian's Slurm and munge when missing and starts their daemons with a config of
# its own; see .ci/slurm-example.sh). About a minute.
slurm-test: install-run
	bash .ci/slurm-example.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

UNDER_A_RATE_LIMIT = --jobs 200 --latency 6 --latency-dist lognormal:6,0.5 --limit 64 \
	--server-rate-limit 10 --rate-limit 10 --poll 2
MANY_IN_FLIGHT = --jobs 2000 --latency 10 --latency-dist lognormal:10,0.5 --limit 500 --poll 2

bench: install
	$(BIN)/python bench/plan_scale.py
	$(BIN)/python bench/emulator_load.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/throughput.py --jobs 600 --latency 2 --poll 0.5 --rtt 0.15
	$(BIN)/python bench/throughput.py --jobs 600 --latency 2 --poll 0.5 --rtt 0.15 --client naive
	$(BIN)/python bench/throughput.py $(UNDER_A_RATE_LIMIT)
	$(BIN)/python bench/throughput.py $(UNDER_A_RATE_LIMIT) --webhooks --webhook-repeats 2 --webhook-drop-rate 0.1
	$(BIN)/python bench/throughput.py $(MANY_IN_FLIGHT)
	$(BIN)/python bench/throughput.py $(MANY_IN_FLIGHT) --poll-mode job
	$(BIN)/python bench/versus_naive.py
	$(BIN)/python bench/pool.py --scenario done-when
	$(BIN)/python bench/pool.py --scenario pool
	$(BIN)/python bench/shared_account.py  # needs redis-server (apt-get install redis-server)
	$(BIN)/python bench/listing.py
	$(BIN)/python bench/rerun.py
	$(BIN)/python bench/report_scale.py
	$(BIN)/python bench/kill_storm.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
