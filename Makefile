# The two commands: `make up` deploys the dev stack; `make test` runs ruff, mypy and every test.
# Both do all set-up themselves (venv, Pulumi toolchain, Docker engine, test images).
SHELL := /bin/bash
STACK ?= dev
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: up down preview test lint typecheck unit providers e2e bench venv system-deps clean-state \
	k8s-toolchain test-k8s bench-k8s policy

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
	.venv/bin/mypy components __main__.py tests bench policy

unit: venv
	.venv/bin/pytest tests/unit -q $(PYTEST_ARGS)

providers: venv system-deps
	tools/env.sh --no-images .venv/bin/pytest tests/providers -q $(PYTEST_ARGS)

e2e: venv system-deps
	tools/env.sh .venv/bin/pytest tests/e2e -q $(PYTEST_ARGS)

# The policy pack (policy/) under the real engine: every policy against a compliant and a
# violating stack (previews only; part of `make test` through tests/e2e).
policy: venv
	tools/env.sh --no-images .venv/bin/pytest tests/e2e/test_policy_e2e.py -q $(PYTEST_ARGS)

# tests/k8s run here only when the cluster toolchain is already cached: building it cold takes
# longer than CI allows (`make test-k8s` builds it). Which of the two happened is printed.
test: venv system-deps lint typecheck
	@if tools/k8s-toolchain.sh status >/dev/null 2>&1; then \
	  tools/k8s-toolchain.sh ensure all >/dev/null; \
	  echo "make test: the cluster toolchain is cached: tests/k8s RUN (real control plane)"; \
	  tools/env.sh .venv/bin/pytest tests -q $(PYTEST_ARGS); \
	else \
	  echo "make test: the cluster toolchain is NOT cached: tests/k8s NOT RUN (make test-k8s builds it and runs them)"; \
	  tools/env.sh .venv/bin/pytest tests -q --ignore=tests/k8s $(PYTEST_ARGS) && \
	  echo "make test: tests/k8s were NOT run (cluster toolchain not cached; make test-k8s)"; \
	fi

# The cluster toolchain (control plane, etcd, kwok, kubernetes plugin) from the Go module proxy,
# cached by input hash outside the repo; cold 23-55 min on 2 cores (measured), cached under 1 s.
k8s-toolchain:
	tools/k8s-toolchain.sh ensure all

test-k8s: venv k8s-toolchain
	tools/env.sh --no-docker .venv/bin/pytest tests/k8s -q $(PYTEST_ARGS)

bench-k8s: venv k8s-toolchain
	tools/env.sh --no-docker .venv/bin/python bench/k8s.py

bench: venv
	tools/env.sh .venv/bin/python bench/deploy.py
	tools/env.sh .venv/bin/python bench/monitoring.py
