# Thin wrappers over the real commands; see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
CLIENT := clients/python
## The relay's compiled core (core/, Rust): built with cargo and installed next to the relay,
## which uses it when present (RELAY_CORE=auto) and runs without it. `make venv CORE=` leaves
## it out (a machine without cargo); the stamp changes with its sources, which rebuilds it.
CORE ?= ./core
## Without cargo, maturin's build backend would download a Rust toolchain (puccinialin, into
## ~/.cache, unpinned, ~650 MB) instead of failing: a missing cargo fails here, clearly.
export MATURIN_NO_INSTALL_RUST := 1
NO_CARGO := make venv builds the relay's compiled core (core/, Rust) with cargo, not found on PATH: \
  install rustup (its cargo is in ~/.cargo/bin) or leave the core out with 'make venv CORE='
CORE_FILES := $(if $(CORE),$(wildcard core/pyproject.toml core/Cargo.* core/*.pyi core/src/*.rs))
HASH := $(shell cat pyproject.toml $(CLIENT)/pyproject.toml $(CORE_FILES) | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-all-$(HASH)
RUN_STAMP := $(VENV)/.installed-run-$(HASH)

.PHONY: core-wheel run test lint e2e e2e-pods pods-deps bench system-deps venv js-deps js-build js-vendor

## Everything: the relay, the operator extra and the dev extra (tests, linters, their tools).
## The Python client is its own distribution (clients/python), installed editable next to the
## server: the relay CLI depends on it, and the tests and lint see the working tree's client.
$(STAMP): pyproject.toml $(CLIENT)/pyproject.toml $(CORE_FILES)
	$(if $(CORE),@command -v cargo >/dev/null || { echo "$(NO_CARGO)" >&2; exit 1; })
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e $(CLIENT) -e '.[operator,dev]'
	$(if $(CORE),$(PY) -m pip install -q --disable-pip-version-check --force-reinstall --no-deps $(CORE))
	@rm -f $(VENV)/.installed-* && touch $@ $(RUN_STAMP)

## The relay's run-time dependencies only (the base of pyproject.toml and the client, no
## extras); skipped when the full set above is already installed for these files.
$(RUN_STAMP): pyproject.toml $(CLIENT)/pyproject.toml $(CORE_FILES)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e $(CLIENT) -e .
	@if test -z "$(CORE)"; then :; elif command -v cargo >/dev/null; then \
	  $(PY) -m pip install -q --disable-pip-version-check --force-reinstall --no-deps $(CORE); \
	else echo "no cargo here: the relay runs without its compiled core (pure Python)"; fi
	@rm -f $(VENV)/.installed-run-* && touch $@

venv: $(STAMP)

## The compiled core's wheel in core/dist, for the container image (Dockerfile): the image
## build has no Rust toolchain, so the wheel is built here first (cargo, maturin) and copied
## in; the real-pod tier runs this before it builds the image.
core-wheel: $(STAMP)
	rm -rf core/dist
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps -w core/dist ./core

## The TypeScript client (clients/js): its pinned dev dependencies from package-lock.json,
## reinstalled when the lock file changes.
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed-$(shell sha1sum $(JS)/package-lock.json | cut -c1-12)

$(JS_STAMP): $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

js-deps: $(JS_STAMP)

js-build: js-deps
	cd $(JS) && npm run --silent build

## The demo page serves the browser bundle from the relay's static files, committed so that
## `make run` works without Node; tests/integration/test_browser_client.py fails when the
## committed copy differs from a fresh build (run this target and commit).
js-vendor: js-build
	cp $(JS)/dist/browser/gamecluster-client.js service/relay/static/gamecluster-client.js

## redis-server and redis-sentinel from Debian's packages, when missing (the tests start their
## own on free ports; redis-sentinel is a package of its own, which the Sentinel tests run);
## Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium, never its own).
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v redis-sentinel >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-sentinel; }
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }

## Run the relay: single node, embedded broker, auth off (a laptop default), with the room
## policies the demo page at / needs: `arena:*` volatile with presence (positions, who is
## there); `chat:*` matches no rule, so it is durable (the default). Both overridable.
## `exec`: the relay replaces the recipe's shell, so the SIGTERM that make passes on to its
## child on `kill <make>` reaches the relay (it drains and exits) instead of a shell that
## dies and leaves the relay running (tests/integration/test_make_run.py).
DEMO_ROOMS := [{"match":"arena:*","policy":"volatile","presence":true}]
run: $(RUN_STAMP)
	RELAY_AUTH=$${RELAY_AUTH:-none} RELAY_ROOMS=$${RELAY_ROOMS:-'$(DEMO_ROOMS)'} exec $(VENV)/bin/relay serve

## The whole test suite, as CI runs it.
test: venv system-deps
	$(PY) -m pytest

## Python (ruff, mypy, import layers), TypeScript (eslint, tsc) and the compiled core (rustfmt,
## clippy with warnings as errors; skipped with CORE=).
lint: venv js-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service/relay operator/gamecluster clients/python/src/gamecluster_client
	$(VENV)/bin/lint-imports
	cd $(JS) && npm run --silent lint
	$(if $(CORE),cargo fmt --check --manifest-path core/Cargo.toml)
	$(if $(CORE),cargo clippy --quiet --manifest-path core/Cargo.toml -- -D warnings)

e2e: venv system-deps
	$(PY) -m pytest -m e2e

## The real-pod tier's Debian packages (tests/e2e/README.md): a container runtime, CNI plugins,
## image builders, iptables, gcc + static libc for the pause binary.
POD_DEPS := containerd runc containernetworking-plugins buildah mmdebstrap iptables conntrack gcc libc6-dev
pods-deps:
	@missing=; for p in $(POD_DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

## Real pods on a real node (root; builds kubelet, kube-proxy, CoreDNS and the images on first run).
e2e-pods: venv system-deps pods-deps
	bash tests/e2e/tools.sh
	bash tests/e2e/tools.sh --node
	$(PY) -m pytest -m pods

## The relay against Node socket.io, python-socketio and the frame-once floor (bench/compare.py);
## BENCH_QUICK=1 for a short run. Installs its own extras: the `bench` extra and bench/js (npm ci).
bench: venv system-deps
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	cd bench/js && npm ci --no-audit --no-fund --silent
	$(PY) bench/compare.py $(BENCH_ARGS)
