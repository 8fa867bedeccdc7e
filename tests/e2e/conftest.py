"""E2E fixtures: a real Pulumi engine and a real Docker engine (set up by tools/env.sh)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, docker, start_ollama


def _require_engines() -> None:
    missing = []
    if shutil.which("pulumi") is None:
        missing.append("`pulumi` on PATH (tools/toolchain.sh)")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        missing.append("a Docker engine (tools/docker-engine.sh)")
    if missing:
        # Not a skip: the e2e suite is part of `make test`, which sets both up.
        pytest.fail("e2e needs " + " and ".join(missing) + ": run it through `make test`")


def cleanup(stack: Stack, ollama: str = "", app: str = "haven") -> None:
    """Best effort: whatever a failed test left behind on the engine."""
    stack.pulumi("destroy", "--yes", "--skip-preview", "--stack", stack.name)
    ids = docker("ps", "-aq", "--filter", f"label=appstack.stack={stack.name}", check=False)
    if ids:
        docker("rm", "-f", *ids.split(), check=False)
    for vol in docker(
        "volume", "ls", "-q", "--filter", f"name={stack.name}-{app}", check=False
    ).split():
        docker("volume", "rm", "-f", vol, check=False)
    for net in docker(
        "network", "ls", "-q", "--filter", f"name={stack.name}-{app}", check=False
    ).split():
        docker("network", "rm", net, check=False)
    if ollama:
        docker("rm", "-f", ollama, check=False)
        docker("network", "rm", stack.ollama_network, check=False)


def seed_haven_rows(stack: Stack) -> None:
    """Rows in Haven's main tables for a backup to carry: 3 documents, 2 chunks each."""
    stack.psql(
        "insert into documents (title) select 'doc ' || i from generate_series(1, 3) i;"
        "insert into chunks (document_id, chunk_index, content)"
        " select d.id, i, 'chunk' from documents d, generate_series(1, 2) i"
    )


@contextmanager
def haven_stack(tmp: Path, name: str, port: int) -> Iterator[Stack]:
    """A fresh Haven stack with its Ollama stand-in; what it left on the engine removed after."""
    _require_engines()
    stack = Stack.create(tmp, name, port, {})
    ollama = f"appstack-{stack.name}-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        yield stack
    finally:
        cleanup(stack, ollama)


@pytest.fixture(scope="module")
def haven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh stack (named after the module) deploying Haven's test images."""
    with haven_stack(tmp_path_factory.mktemp("stack"), "e2e", 18181) as stack:
        yield stack
