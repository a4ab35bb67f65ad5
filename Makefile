# vaultkeeper: `make demo` runs the main job on embedded defaults; `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo test check bench clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	@$(PY) -m vaultkeeper.demo

test: bootstrap
	$(VENV)/bin/pytest -q

check: bootstrap
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf .demo bench/results
