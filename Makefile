# Everything bootstraps itself: a fresh machine needs only python3 (3.11+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint format typecheck pytest test-cluster fuzz simulate bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(VENV): $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests
	$(BIN)/ruff check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Two processes (whole clusters stay on one: xdist_group "cluster"); PYTEST_WORKERS=0 runs
# everything in this process.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

# Only the offline cluster scenarios (scale-out.md §6.4): redis-server, haproxy and N bridge
# processes on loopback (sudo apt-get install -y redis-server haproxy). make test runs them too.
test-cluster: $(STAMP)
	$(BIN)/pytest -q -m cluster

# The long fuzz campaign: 10 000 examples per target (make test runs a short one).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -m fuzz -p no:cacheprovider --hypothesis-show-statistics

simulate: $(STAMP)
	$(BIN)/voicebridge simulate $(ARGS)

bench: $(STAMP)
	$(BIN)/voicebridge bench $(ARGS)

clean:
	rm -rf $(VENV) sim-out .pytest_cache .mypy_cache .ruff_cache
