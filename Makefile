# Thin wrappers over the real commands; see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test lint e2e bench system-deps venv

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## redis-server from Debian's packages, when missing (the tests start their own on free ports);
## Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium, never its own).
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }

## Run the relay: single node, embedded broker, auth off (a laptop default).
run: venv
	RELAY_AUTH=$${RELAY_AUTH:-none} $(VENV)/bin/relay serve

## The whole test suite, as CI runs it.
test: venv system-deps
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service/relay operator/gamecluster
	$(VENV)/bin/lint-imports

e2e: venv system-deps
	$(PY) -m pytest -m e2e

## The relay against Node socket.io, python-socketio and the frame-once floor (bench/compare.py);
## BENCH_QUICK=1 for a short run. Installs its own extras: the `bench` extra and bench/js (npm ci).
bench: venv system-deps
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	cd bench/js && npm ci --no-audit --no-fund --silent
	$(PY) bench/compare.py $(BENCH_ARGS)
