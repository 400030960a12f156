# Vigil's two entry points: `make demo` and `make test`. Everything else is a helper.
# Each target installs what it needs once (.venv, Python packages, Kafka jars, Redis,
# Prometheus) and starts the local stack; a second run reuses all of it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vigil-installed

.PHONY: setup lint audit stack-up stack-down stack-status browser test test-unit demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || { $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null; $(BIN)/python -m pip install --quiet "uv>=0.4,<1"; }
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev,stack]'
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps 'flwr==1.42.0'
	@touch $@

setup: $(STAMP)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Known vulnerabilities of every installed package (docs/security.md). Fails on an advisory
# that applies to an installed version and is not in deploy/audit-accepted.toml, on a failed
# lookup, or when PyPI cannot be reached; packages it has no evidence for are listed loudly,
# never passed as clean. Uses PyPI's per-version JSON (pip-audit's service) when it answers.
audit: setup
	$(BIN)/python -m vigil.audit --accepted deploy/audit-accepted.toml --report reports/audit.json

stack-up: setup
	$(BIN)/vigil stack up

stack-down: setup
	$(BIN)/vigil stack down

stack-status: setup
	$(BIN)/vigil stack status

test-unit: setup
	$(BIN)/pytest -m "not integration"

# Debian's headless Chromium and its driver for the console's browser tests (apt-get as
# root when missing; docs/console.md). A missing browser fails the tests, never skips them.
browser: setup
	$(BIN)/python -c "from vigil.testing.browser import ensure_browser; ensure_browser()"

test: lint audit stack-up browser
	$(BIN)/pytest

demo: stack-up
	$(BIN)/vigil demo

# Benchmarks on the running stack (BENCHMARKS.md); results in bench/results/.
bench: setup
	$(BIN)/python -m bench.run

clean: stack-down
	rm -rf .vigil
