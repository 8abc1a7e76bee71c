# Thin wrappers over the real commands; see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test lint e2e e2e-pods pods-deps bench system-deps venv

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

bench: venv system-deps
	$(PY) bench/fanout.py
