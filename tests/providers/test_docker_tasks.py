"""Migration through the Docker runner on a real engine: a PostgreSQL container on a private
network, a quiescent "worker" container, schema images built from the fixtures.

What a killed run can leave is staged by hand (a stopped worker, a task container whose owner
process is dead) and the next migration must clean it up; task containers carry their stack and
leave no anonymous volume behind.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.providers.migration import MigrationProvider
from components.providers.runner import OWNER_LABEL, TASK_LABEL, DockerRunner, Target, Task
from tests.providers.test_runner import CLIENT_IMAGE, _docker_host

FIXTURES = Path(__file__).parent / "fixtures"
PASSWORD = "pw-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Engine:
    """One test's objects on the engine."""

    host: str
    client: Any
    stack: str
    prefix: str
    network: str
    worker: Any
    target: Target

    def docker(self, *argv: str) -> str:
        """Run the docker CLI against this engine; return stdout."""
        env = {**os.environ, "DOCKER_HOST": self.host}
        proc = subprocess.run(["docker", *argv], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def dangling(self) -> set[str]:
        """Names of the engine's dangling volumes."""
        return set(self.docker("volume", "ls", "-q", "--filter", "dangling=true").split())

    def task_volumes(self, since: str, until: str) -> set[str]:
        """Volumes that this stack's task containers mounted between two engine times.

        Precise where a count of every dangling volume is not: other tests share the engine.
        """
        window = ("--since", since, "--until", until)
        labels = ("--filter", f"label=appstack.stack={self.stack}", "--filter", "event=create")
        ids = set(
            self.docker(
                "events", *window, "--filter", "type=container", *labels,
                "--format", "{{.Actor.ID}}",
            ).split()
        )  # fmt: skip
        mounts = self.docker(
            "events", *window, "--filter", "type=volume", "--filter", "event=mount",
            "--format", "{{json .Actor}}",
        )  # fmt: skip
        actors = [json.loads(line) for line in mounts.splitlines() if line.strip()]
        return {a["ID"] for a in actors if a["Attributes"].get("container") in ids}

    def now(self) -> str:
        """The engine's clock (RFC 3339), for ``docker events`` windows."""
        return str(self.client.info()["SystemTime"])

    def task_containers(self) -> list[Any]:
        """Task containers labelled with this test's stack."""
        labels = [TASK_LABEL, f"appstack.stack={self.stack}"]
        return list(self.client.containers.list(all=True, filters={"label": labels}))


def _schema_image(client: Any, schema: str) -> str:
    """An image holding fixture schema ``schema`` at /app/schema, built on the client image."""
    tag = f"appstack.test/schema:{schema}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = f"FROM {CLIENT_IMAGE}\nCOPY schema /app/schema\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(str(FIXTURES / schema), arcname="schema")
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    return tag


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A PostgreSQL container and a worker on a private network of their own, removed after."""
    host = _docker_host()
    if host is None:
        pytest.fail(
            f"no Docker engine answered with image {CLIENT_IMAGE}: run `make system-deps` "
            "(tools/docker-engine.sh start) and tools/images.sh"
        )
    import docker

    client = docker.DockerClient(base_url=host)
    stack = "pt" + secrets.token_hex(3)
    prefix = f"{stack}-haven"
    network = client.networks.create(f"{prefix}-internal", labels={"appstack.stack": stack})
    backups = client.volumes.create(f"{prefix}-backups", labels={"appstack.stack": stack})
    db = client.containers.run(
        CLIENT_IMAGE,
        name=f"{prefix}-postgres",
        environment={"POSTGRES_USER": "app", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "app"},
        network=network.name,
        detach=True,
        labels={"appstack.stack": stack},
    )
    worker = client.containers.run(
        CLIENT_IMAGE,
        entrypoint=["sleep", "infinity"],
        name=f"{prefix}-worker-0a1b2c3d",
        network=network.name,
        detach=True,
        labels={"appstack.stack": stack, "appstack.name": f"{prefix}-worker"},
    )
    target = Target(
        kind="docker",
        docker_host=host,
        network=network.name,
        name_prefix=prefix,
        client_image=CLIENT_IMAGE,
        db_host=db.name,
        db_name="app",
        db_user="app",
        backup_volume=backups.name,
        stack=stack,
    )
    try:
        yield Engine(host, client, stack, prefix, network.name, worker, target)
    finally:
        for c in client.containers.list(all=True, filters={"label": f"appstack.stack={stack}"}):
            c.remove(force=True, v=True)
        backups.remove(force=True)
        network.remove()
        client.close()


def _props(e: Engine, schema: str, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "target": e.target.to_dict(),
        "mode": "sql-dir",
        "source_image": _schema_image(e.client, schema),
        "schema_path": "/app/schema",
        "db_password": PASSWORD,
        "keep_backups": 3,
        "quiescent": [f"{e.prefix}-worker"],
        "release": schema,
        "connect_deadline_s": 60,
        "task_timeout_s": 120,
    }
    props.update(extra)
    return props


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftover(e: Engine, owner_pid: int) -> Any:
    """A task container as a run owned by ``owner_pid`` on this host would have left it."""
    labels = {
        TASK_LABEL: "migrate",
        "appstack.prefix": e.prefix,
        "appstack.stack": e.stack,
        OWNER_LABEL: f"{socket.gethostname()}:{owner_pid}",
    }
    return e.client.containers.run(
        CLIENT_IMAGE, entrypoint=["sleep", "infinity"], detach=True, labels=labels
    )


def test_killed_run_leftovers_are_recovered_and_no_volume_dangles(engine: Engine) -> None:
    e = engine
    dangling_before, since = e.dangling(), e.now()
    provider = MigrationProvider()
    e.worker.stop(timeout=1)  # a killed run stopped it for a migration and never started it
    first = provider.create(_props(e, "v1")).outs or {}
    e.worker.reload()
    assert e.worker.status == "running", "the stopped worker was not started again"
    assert any("quiescent containers started" in n for n in first["notes"])

    orphan = _leftover(e, _dead_pid())
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        live = _leftover(e, sleeper.pid)  # another run, still going: left alone
        anonymous = [m["Name"] for m in orphan.attrs["Mounts"] if m["Type"] == "volume"]
        assert anonymous, "the client image should declare a VOLUME (the leak under test)"
        e.client.containers.get(e.target.db_host).exec_run(
            ["psql", "-U", "app", "-d", "app", "-c", "INSERT INTO items (name) VALUES ('kept')"]
        )
        second = provider.update("id", first, _props(e, "v2")).outs or {}
        assert second["applied"] == ["migrations/v2_002_tags.sql"]
        assert second["backup_id"]
        assert any(orphan.name in n for n in second["notes"] if "killed run left" in n)
        assert [c.name for c in e.task_containers()] == [live.name]
        live.remove(force=True, v=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    e.worker.reload()
    assert e.worker.status == "running"
    e.worker.stop(timeout=1)  # killed after the stop: the next plan has nothing pending
    third = provider.update("id", second, _props(e, "v2")).outs or {}
    assert third["applied"] == []
    e.worker.reload()
    assert e.worker.status == "running", "a run with nothing pending left the worker stopped"
    assert e.task_containers() == []
    names = set(e.docker("volume", "ls", "-q").split())
    assert not set(anonymous) & names, "the swept container's anonymous volume is still there"
    used = e.task_volumes(since, e.now()) - {e.target.backup_volume}
    assert len(used) >= 5, f"expected the task containers' anonymous volumes, saw {used}"
    new_dangling = (e.dangling() - dangling_before) & used
    assert new_dangling == set(), f"task runs left dangling volumes: {sorted(new_dangling)}"
    assert not used & names, "a task container's anonymous volume outlived it"


def test_task_containers_carry_their_stack_and_owner(engine: Engine) -> None:
    e = engine
    runner = DockerRunner(e.host, e.network, e.prefix, e.stack)
    done = threading.Event()

    def run() -> None:
        runner.run(Task(name="probe", image=CLIENT_IMAGE, command=["sleep", "3"], timeout_s=60))
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline and not done.is_set():
        seen = [c.labels for c in e.task_containers()]
        time.sleep(0.1)
    thread.join(timeout=60)
    assert seen, "no running task container carried appstack.stack"
    assert seen[0][TASK_LABEL] == "probe"
    assert seen[0][OWNER_LABEL] == f"{socket.gethostname()}:{os.getpid()}"
    assert e.task_containers() == []
    assert runner.sweep_tasks() == []  # nothing of a live owner, nothing left
