"""Runs that are killed or raced, through a real `pulumi up` on a real engine (Haven, dev-like).

- `pulumi up` killed (SIGKILL, engine and program alike) while the migration has the embedding
  worker stopped: the next `up` (after `pulumi cancel` released the file backend's lock) starts it
  again and converges, the ledger holding each file once.
- A second `up` while one runs on the stack: it fails cleanly on the stack's lock, the first
  completes.
- A deploy with a migration leaves no dangling volume behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import cleanup
from tests.e2e.stack import Stack, docker, kill_engine_processes, start_ollama

pytestmark = pytest.mark.e2e
PORT = 18888


@pytest.fixture(scope="module")
def kil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dev-like Haven stack of its own (monitoring off: not what this file is about)."""
    tmp: Path = tmp_path_factory.mktemp("killed")
    stack = Stack.create(tmp, "kil", PORT, {"appstack:monitoring": {"enabled": False}})
    ollama = f"appstack-{stack.name}-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        stack.up()
        yield stack
    finally:
        cleanup(stack, ollama)


def _worker_state(stack: Stack) -> str:
    """The newest worker release's state (task containers of a migration carry no service)."""
    releases = sorted(stack.releases("worker"), key=lambda c: str(c["Created"]))
    return str(releases[-1]["State"]["Status"]) if releases else "missing"


def _dangling() -> set[str]:
    return set(docker("volume", "ls", "-q", "--filter", "dangling=true").split())


def test_up_killed_while_the_worker_is_stopped_converges_on_the_next_up(kil: Stack) -> None:
    dangling = _dangling()
    kil.set_images("0.2.0", ("catalog",))  # the 0.2.0 catalog image carries pending migrations
    # The engine's own event says when the migration stopped the worker: no polling to miss it.
    events = subprocess.Popen(
        ["docker", "events", "--format", "{{.Status}}", "--filter", "event=die",
         "--filter", f"label=appstack.stack={kil.name}",
         "--filter", "label=appstack.service=worker"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc = subprocess.Popen(
        ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", kil.name],
        cwd=kil.workdir, env=kil.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    seen_stopped = False
    try:
        assert events.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([events.stdout], [], [], 0.2)
            if ready:
                seen_stopped = events.stdout.readline().strip() == "die" and proc.poll() is None
                break
        # The engine, its language host, the program and its provider (the last run in process
        # groups of their own), as a kill -9 of the whole session would.
        os.killpg(proc.pid, signal.SIGKILL)
        kill_engine_processes(kil)
    finally:
        events.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert seen_stopped, "the update ended before the migration stopped the worker"
    assert _worker_state(kil) == "exited", "the killed run left the worker stopped"
    kil.pulumi("cancel", "--yes", "--stack", kil.name, check=True)
    again = kil.up(check=False)
    assert again.code == 0, again.text[-4000:]
    assert _worker_state(kil) == "running"
    ledger = kil.psql("select name from appstack_schema_ledger order by name").split()
    assert len(ledger) == len(set(ledger)) and any(n.startswith("migrations/v2_") for n in ledger)
    assert "collections" in kil.psql("select tablename from pg_tables where schemaname='public'")
    # Every task container of both runs went with its anonymous volume (Postgres' image declares
    # VOLUME /var/lib/postgresql/data): nothing dangles that did not before.
    assert _dangling() - dangling == set()


def test_a_second_up_while_one_runs_fails_on_the_lock(kil: Stack) -> None:
    kil.set_images("0.2.0", ("gateway",))  # a real release: the first update takes a while
    cmd = ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", kil.name]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(cmd, cwd=kil.workdir, env=kil.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip

    first = start()
    # The second arrives once the first holds the stack's lock (two started in the same instant
    # can both pass the file backend's check: that race is the backend's, not this test's).
    locks = kil.state_dir / ".pulumi" / "locks"
    deadline = time.monotonic() + 120
    while not any(locks.rglob("*.json")):
        assert first.poll() is None and time.monotonic() < deadline, "the first up took no lock"
        time.sleep(0.05)
    second = start()
    refused_code = second.wait(timeout=600)
    refused = second.stdout.read() if second.stdout else ""
    code = first.wait(timeout=600)
    out = first.stdout.read() if first.stdout else ""
    assert code == 0, out[-3000:]
    assert refused_code != 0 and "locked" in refused, refused[-2000:]
    assert _worker_state(kil) == "running"
    ledger = kil.psql("select name from appstack_schema_ledger").split()
    assert len(ledger) == len(set(ledger))
