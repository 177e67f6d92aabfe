# Scoreboard: `make demo` to try it, `make run` for real tenants, `make test` for the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MANAGE := $(BIN)/python manage.py
SIM_PORT ?= 8443

.DEFAULT_GOAL := help
.PHONY: help install dev-install setup demo run test lint format browser clean bench

help:
	@echo "make demo     try Scoreboard with three simulated tenants (http://127.0.0.1:8000/)"
	@echo "make run      run Scoreboard for your real tenants"
	@echo "make test     install what the tests need and run them all"
	@echo "make lint     ruff check and format check"
	@echo "make clean    remove the virtualenv and var/ (database, broker, certificates)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
dev-install: $(VENV)/.dev-installed

.env:
	$(BIN)/python scripts/init_env.py .env

setup: install .env
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0
	$(MANAGE) ensure_admin

demo: export SCOREBOARD_SIMULATOR_URL = https://127.0.0.1:$(SIM_PORT)
demo: export SCOREBOARD_CA_BUNDLE = $(CURDIR)/var/simulator/simulator-cert.pem
demo: setup
	$(MANAGE) runstack --demo --simulator-port $(SIM_PORT)

run: setup
	$(MANAGE) runstack

test: dev-install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Browser tests drive Debian's Chromium; install it when missing (needs root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: dev-install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: dev-install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The MSSP-scale benchmark (docs/benchmarks.md) on the configured database (DATABASE_URL).
BENCH_TENANTS ?= 1000
BENCH_DAYS ?= 730
BENCH_PER_DAY ?= 24
BENCH_FETCH_TENANTS ?= 1000
BENCH_FETCH_THREADS ?= 50
BENCH_JSON ?= var/bench.json
bench: install .env
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0
	$(MANAGE) bench --tenants $(BENCH_TENANTS) --days $(BENCH_DAYS) --per-day $(BENCH_PER_DAY) \
		--fetch-tenants $(BENCH_FETCH_TENANTS) --fetch-threads $(BENCH_FETCH_THREADS) \
		--json $(BENCH_JSON) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var staticfiles
