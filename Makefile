# Everything installs itself: `make run` and `make test` work on a fresh clone with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/krea-batch plan jobs.example.yaml
	$(BIN)/krea-batch run jobs.example.yaml --emulator --out out

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/plan_scale.py
	$(BIN)/python bench/emulator_load.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/throughput.py --jobs 600 --latency 2 --poll 0.5 --rtt 0.15
	$(BIN)/python bench/throughput.py --jobs 600 --latency 2 --poll 0.5 --rtt 0.15 --client naive

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
