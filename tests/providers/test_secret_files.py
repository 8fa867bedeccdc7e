"""Secret files through the Container provider on a real engine (no Pulumi).

A PostgreSQL release gets its password as ``/run/secrets/postgres_password`` (the image's
``POSTGRES_PASSWORD_FILE``): the server comes up with it, ``docker inspect`` never shows it, the
file is 0400 and belongs to the uid the container runs as (a user name is resolved in the image),
a writer a killed update left is cleared, and deleting the release takes its secrets volume too.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from components.providers.container import ContainerProvider, physical_name, secrets_volume
from tests.providers.test_runner import CLIENT_IMAGE, _docker_host

PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.fixture
def engine() -> Iterator[tuple[str, str]]:
    """An engine that has the postgres image, and a network of this test's own."""
    host = _docker_host()
    if host is None:
        pytest.skip(f"SKIPPED LOUDLY: no Docker engine with {CLIENT_IMAGE} (tools/images.sh)")
    network = f"test-secrets-{secrets.token_hex(4)}"
    docker(host, "network", "create", network)
    try:
        yield host, network
    finally:
        docker(host, "network", "rm", network)


def docker(host: str, *argv: str) -> str:
    """The docker CLI against ``host``; stdout, failing the test on a non-zero exit."""
    env = {**os.environ, "DOCKER_HOST": host}
    proc = subprocess.run(["docker", *argv], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _props(host: str, network: str) -> dict[str, Any]:
    image_id = docker(host, "image", "inspect", "-f", "{{.Id}}", CLIENT_IMAGE).strip()
    return {
        "name": f"{network}-postgres",
        "image": CLIENT_IMAGE,
        "image_id": image_id,
        "command": [],
        "env": {
            "POSTGRES_USER": "app",
            "POSTGRES_DB": "app",
            "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        },
        "secret_files": {"postgres_password": PASSWORD},
        "user": "postgres",  # a name: the provider finds its uid in the image's /etc/passwd
        "networks": [{"name": network, "aliases": ["postgres"]}],
        "ports": [],
        "healthcheck": {"test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "app"],
                        "interval_s": 1, "timeout_s": 3, "retries": 30, "start_period_s": 1},
        "restart": "no",
        "memory_mb": 256,
        "cpus": 0.5,
        "read_only": False,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=16m"},
        "security_opt": ["no-new-privileges:true"],
        "cap_add": [],
        "mounts": [],
        "labels": {"appstack.stack": network},
        "extra_hosts": {},
        "stop_timeout_s": 5,
        "docker_host": host,
        "rollout": "stop-first",
        "wait_timeout_s": 60,
        "grace_s": 2,
    }  # fmt: skip


def test_a_release_reads_its_password_from_a_file_docker_inspect_never_shows(
    engine: tuple[str, str],
) -> None:
    host, network = engine
    props = _props(host, network)
    # What an update killed while writing the files leaves: a writer of this very release.
    leftover = f"{secrets_volume(physical_name(props))}-writer"
    docker(host, "create", "--name", leftover, "--label", f"appstack.stack={network}",
           CLIENT_IMAGE, "true")  # fmt: skip
    provider = ContainerProvider()
    created = provider.create(props)
    outs = created.outs or {}
    name = outs["container_name"]
    try:
        inspected = docker(host, "inspect", name)
        assert PASSWORD not in inspected, "the password must not be in docker inspect"
        env = json.loads(inspected)[0]["Config"]["Env"]
        assert "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password" in env
        assert docker(host, "exec", name, "id", "-u").strip() == "999"
        listing = docker(
            host, "exec", name, "stat", "-c", "%a %u", "/run/secrets/postgres_password"
        )
        assert listing.split() == ["400", "999"]
        write = subprocess.run(
            ["docker", "exec", name, "touch", "/run/secrets/x"],
            env={**os.environ, "DOCKER_HOST": host},
            capture_output=True,
            check=False,
        )
        assert write.returncode != 0, "the secrets mount is read-only"
        query = ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-Atc", "select 42"]
        out = docker(host, "exec", "-e", f"PGPASSWORD={PASSWORD}", name, *query)
        assert out.strip() == "42", "the server took the password from the file"
        volumes = docker(host, "volume", "ls", "-q").split()
        assert secrets_volume(name) in volumes
        left = docker(host, "ps", "-a", "--filter", f"label=appstack.stack={network}",
                      "--format", "{{.Names}}").split()  # fmt: skip
        assert left == [name], "no writer is left, not even a killed update's"
    finally:
        provider.delete(str(created.id), outs)
    assert secrets_volume(name) not in docker(host, "volume", "ls", "-q").split()
    assert name not in docker(host, "ps", "-a", "--format", "{{.Names}}").split()
