# The two commands: `make up` deploys the dev stack; `make test` runs ruff, mypy and every test.
# Both do all set-up themselves (venv, Pulumi toolchain, Docker engine, test images).
SHELL := /bin/bash
STACK ?= dev
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: up down preview test lint typecheck unit providers e2e bench venv system-deps clean-state

venv: .venv/.installed
.venv/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	.venv/bin/pip install --disable-pip-version-check -q -r requirements-dev.txt
	.venv/bin/pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

up: venv
	tools/env.sh tools/up.sh $(STACK)

preview: venv
	tools/env.sh bash -c 'pulumi stack select --create $(STACK) --non-interactive && pulumi preview --diff --stack $(STACK)'

down: venv
	tools/env.sh --no-images bash -c 'pulumi destroy --stack $(STACK) --yes --non-interactive --skip-preview --exclude-protected'

system-deps:
	tools/system-deps.sh

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: venv
	.venv/bin/mypy components __main__.py tests bench

unit: venv
	.venv/bin/pytest tests/unit -q $(PYTEST_ARGS)

providers: venv system-deps
	tools/env.sh --no-images .venv/bin/pytest tests/providers -q $(PYTEST_ARGS)

e2e: venv system-deps
	tools/env.sh .venv/bin/pytest tests/e2e -q $(PYTEST_ARGS)

test: venv system-deps lint typecheck
	tools/env.sh .venv/bin/pytest tests -q $(PYTEST_ARGS)

bench: venv
	tools/env.sh .venv/bin/python bench/deploy.py
