"""`appstack:dockerHost: ssh://...`: the whole stack deployed to an engine reached over SSH.

The "remote host" is this machine behind its own sshd on 127.0.0.1 (key auth only, a host key
of its own, `DOCKER_HOST` set for the session by `SetEnv`): the Docker SDK speaks to it exactly as
to a remote staging host, through `docker system dial-stdio` over SSH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import _require_engines, cleanup
from tests.e2e.stack import Stack, start_ollama, wait_http

pytestmark = pytest.mark.e2e
SSHD = "/usr/sbin/sshd"
PORT = 2222


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60
    )


@pytest.fixture(scope="module")
def ssh_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An sshd on 127.0.0.1:2222 and a HOME whose ~/.ssh reaches it (known host, key)."""
    _require_engines()
    if not Path(SSHD).exists():
        pytest.fail(
            f"{SSHD} is missing: `make test` installs openssh-server (tools/system-deps.sh)"
        )
    root = tmp_path_factory.mktemp("sshd")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    _keygen(root / "hostkey")
    _keygen(home / ".ssh" / "id_ed25519")
    shutil.copy(home / ".ssh" / "id_ed25519.pub", root / "authorized_keys")
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    (root / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {PORT}\nHostKey {root}/hostkey\nPidFile {root}/sshd.pid\n"
        f"AuthorizedKeysFile {root}/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"StrictModes no\nSetEnv DOCKER_HOST={docker_host} PATH={os.environ['PATH']}\n"
    )
    host_key = (root / "hostkey.pub").read_text().split()[:2]
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{PORT} {' '.join(host_key)}\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(
        [SSHD, "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")], check=True
    )
    try:
        for _ in range(50):
            if (root / "sshd.pid").exists():
                break
            time.sleep(0.1)
        yield home
    finally:
        pid = (root / "sshd.pid").read_text().strip() if (root / "sshd.pid").exists() else ""
        if pid:
            subprocess.run(["kill", pid], check=False)


HOST_ADDRESS = "127.0.0.2"
"""Where the "remote" host publishes: another loopback address than the operator's 127.0.0.1, so
a smoke test or publicUrl that rewrote the address to 127.0.0.1 would find nothing there."""
URL = f"http://{HOST_ADDRESS}:18484"


def test_stack_deploys_to_an_engine_over_ssh(
    ssh_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack = Stack.create(
        tmp_path_factory.mktemp("remote"),
        "remote",
        18484,
        {
            "appstack:dockerHost": f"ssh://root@127.0.0.1:{PORT}",
            # A remote engine: where clients reach its published port must be said.
            "appstack:public": {"address": HOST_ADDRESS, "port": 18484, "url": URL},
        },
    )
    stack.env["HOME"] = str(ssh_home)  # the engine's SSH client reads ~/.ssh from here
    start_ollama(stack.ollama_network, "appstack-remote-ollama")
    try:
        stack.up()
        running = stack.containers()
        expected = {"gateway", "catalog", "search", "worker", "postgres", "qdrant", "minio", "caddy",
                    "prometheus", "alertmanager", "postgres-exporter"}  # fmt: skip
        assert set(running) == expected
        assert all(c["State"]["Running"] for c in running.values())
        assert wait_http(f"{URL}/v1/healthz").json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError):
            httpx.get("http://127.0.0.1:18484/v1/healthz", timeout=3)
        assert stack.outputs()["publicUrl"] == URL
        smoke = stack.resource_outputs("::remote-haven-smoke")
        assert smoke["base_url"] == URL and smoke["passed"], (
            "the smoke test probed the host's address"
        )
        # The migration's one-off tasks also went over SSH: the ledger exists.
        assert "init.sql" in stack.psql("select name from appstack_schema_ledger")
        out = stack.resource_outputs("::remote-haven-migration")
        assert out["target"]["docker_host"] == f"ssh://root@127.0.0.1:{PORT}"
        stack.pulumi("destroy", "--yes", "--skip-preview", "--stack", stack.name, check=True)
        assert stack.containers() == {}
    finally:
        cleanup(stack, "appstack-remote-ollama")
