# Two commands set up everything: `make dev` (UI, daemon, sync on embedded engines) and
# `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: dev test unit lint bench soak lock browser docker kubernetes clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev]"
	rm -f $(VENV)/.installed-* && touch $@

dev: $(STAMP)
	$(BIN)/python -m demo.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast tier: pure functions, no database, no Dagster instance, a few seconds.
unit: $(STAMP)
	$(BIN)/python -m pytest --noconftest -q tests/unit

# `dg check defs` loads the code location as Dagster does: a broken definition fails in seconds.
test: lint unit browser docker kubernetes
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg check defs
	$(BIN)/python -m pytest --ignore=tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Long runs, not in CI: 200 random histories, then production-like traffic with killed runs
# (SOAK_ARGS, e.g. --minutes 30), ending in an exact comparison (soak/results.json).
soak: $(STAMP)
	PROPERTY_HISTORIES=200 $(BIN)/python -m pytest -q -p no:logging tests/test_properties.py
	$(BIN)/python -m soak.run $(SOAK_ARGS)

# The image's exact dependencies (Dockerfile), from a clean install of pyproject.toml.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet .
	{ sed -n '1,3p' requirements.lock; $(VENV)-lock/bin/pip freeze --exclude pg2ch; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf $(VENV)-lock

# The end-to-end test screenshots the UI in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the UI test (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The image tests build the Dockerfile and run its containers on a Docker daemon of their own
# (Debian's docker.io); debootstrap builds a stand-in base image where no registry answers.
# Installed only as root, who can start that daemon; elsewhere the tests use a running Docker
# engine, or skip and say why.
docker:
	@if [ "$$(id -u)" = 0 ] && ! { command -v dockerd && command -v debootstrap; } >/dev/null 2>&1; then \
	  echo "installing docker.io and debootstrap for the image tests (apt-get)"; \
	  apt-get update -qq && \
	  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null; \
	fi

# The Kubernetes test (tests/test_kubernetes.py) builds Kubernetes 1.20.2 from Debian's source
# package once (cached in ~/.cache/pg2ch/kubernetes) and runs a single-node cluster in a network
# namespace of its own: Debian's Go, etcd, CNI plugins, dnsmasq, iptables and socat. Installed
# only as root, who can run that cluster; elsewhere the test skips and says why.
KUBERNETES_PACKAGES := golang-go dpkg-dev gcc etcd-server containernetworking-plugins \
	dnsmasq-base iptables conntrack socat
kubernetes:
	@if [ "$$(id -u)" = 0 ] && ! { command -v go && command -v dpkg-source && command -v gcc \
	    && command -v etcd && command -v dnsmasq && command -v iptables && command -v conntrack \
	    && command -v socat && test -x /usr/lib/cni/bridge; } >/dev/null 2>&1; then \
	  echo "installing Debian's packages for the Kubernetes test (apt-get)"; \
	  apt-get update -qq && \
	  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(KUBERNETES_PACKAGES) >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .dev .soak .pytest_cache .ruff_cache
