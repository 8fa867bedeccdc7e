"""Secrets as files and non-root services on Docker, on a real engine (issue 12, items 3 and 4).

A dev-like Haven stack of its own (monitoring on, as in dev) is deployed; then every container of
the stack is inspected against every secret of the stack (the generated ones, read from
``pulumi stack export --show-secrets``): none may appear in ``docker inspect``, except where the
image reads that secret from its environment only: exactly ``ENV_ONLY`` (README, "Security").
Every Haven service must run as a non-zero uid, the one the Kubernetes platform forces, and the
app must still answer. A stop-first replacement of Postgres then gets a secrets volume of its
own and takes the old one away.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from components.ops.logs import SECRET_SIG
from tests.e2e.conftest import haven_stack
from tests.e2e.stack import Stack, docker

STACK, PORT = "sec", 18999  # a name and port of its own: e2e files run side by side
DB_URL_SECRET = "postgresPassword"  # inside DATABASE_URL / DB_DSN
ENV_ONLY = {
    "gateway": {DB_URL_SECRET, "authToken", "catalogToken", "searchToken", "minioAccessKey",
                "minioSecretKey"},
    "catalog": {DB_URL_SECRET, "catalogToken", "searchToken"},
    "search": {DB_URL_SECRET, "searchToken"},
    "worker": {DB_URL_SECRET, "catalogToken"},
}  # fmt: skip
"""Haven's services read their credentials from env only (no ``*_FILE`` in its source): the only
places a secret may show in ``docker inspect``. Everything else must show none."""
UIDS = {
    **dict.fromkeys(("gateway", "catalog", "search", "worker"), 10001),
    "postgres": 999,
    "qdrant": 1000,
    "minio": 1000,
    "caddy": 1000,
}
"""Every Haven service and the uid it runs as (Kubernetes: runAsUser; caddy: the image's own)."""
MONITORING = {"prometheus", "alertmanager", "postgres-exporter"}


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The deployed stack."""
    with haven_stack(tmp_path_factory.mktemp("sec"), STACK, PORT) as stack:
        stack.up()
        yield stack


def stack_secrets(stack: Stack) -> dict[str, str]:
    """The stack's secrets by key, as ``--show-secrets`` exports them (generated, encrypted)."""
    found = {}
    prefix = f"{stack.name}-haven-"
    for res in stack.export(secrets=True)["deployment"]["resources"]:
        if not res["type"].endswith("ops:GeneratedSecret"):
            continue
        value = res["outputs"]["value"]
        assert isinstance(value, dict) and value.get(SECRET_SIG), "kept as a secret in state"
        found[res["urn"].rsplit("::", 1)[-1].removeprefix(prefix)] = json.loads(value["plaintext"])
    return found


def test_docker_inspect_shows_no_secret_but_the_env_only_images(sec: Stack) -> None:
    secrets = stack_secrets(sec)
    assert set(secrets) >= {"postgresPassword", "authToken", "catalogToken", "searchToken",
                            "minioAccessKey", "minioSecretKey", "hostAgentSecret"}  # fmt: skip
    running = sec.containers()
    assert set(running) == set(UIDS) | MONITORING
    seen = {}
    for service, container in running.items():
        text = docker("inspect", container["Id"])
        seen[service] = {key for key, value in secrets.items() if value in text}
    assert seen == {service: ENV_ONLY.get(service, set()) for service in running}


def test_images_that_read_files_get_them_read_only_owned_by_their_uid(sec: Stack) -> None:
    running = sec.containers()
    expected = {
        "postgres": {"POSTGRES_PASSWORD": "postgres_password"},
        "minio": {
            "MINIO_ROOT_USER": "minio_root_user",
            "MINIO_ROOT_PASSWORD": "minio_root_password",
        },
    }
    for service, files in expected.items():
        container = running[service]
        env = dict(e.split("=", 1) for e in container["Config"]["Env"])
        mounts = {m["Destination"]: m for m in container["Mounts"]}
        assert mounts["/run/secrets"]["RW"] is False, f"{service}: its secrets are read-only"
        for key, name in files.items():
            assert key not in env and env[f"{key}_FILE"] == f"/run/secrets/{name}", service
            mode = docker("exec", container["Id"], "stat", "-c", "%a %u", f"/run/secrets/{name}")
            assert mode.split() == ["400", str(UIDS[service])], f"{service}: {name}"


def _process_uids(container_id: str) -> list[int]:
    status = docker("exec", container_id, "cat", "/proc/1/status")
    line = next(x for x in status.splitlines() if x.startswith("Uid:"))
    return [int(u) for u in line.split()[1:]]


def test_every_haven_service_runs_with_a_non_zero_uid(sec: Stack) -> None:
    running = sec.containers()
    for service, uid in UIDS.items():
        container = running[service]
        assert docker("exec", container["Id"], "id", "-u").strip() == str(uid), service
        # The server itself (pid 1: real, effective, saved, fs uid), not only what exec gets.
        assert _process_uids(container["Id"]) == [uid] * 4, service
    for service in ("postgres", "minio"):
        assert not running[service]["HostConfig"]["CapAdd"], f"{service} keeps no capability"
    read_only = {s for s, c in running.items() if c["HostConfig"]["ReadonlyRootfs"]}
    assert read_only & set(UIDS) == set(UIDS) - {"qdrant", "minio"}, "read-only where it can be"


def test_the_app_still_answers(sec: Stack) -> None:
    token = sec.outputs(secrets=True)["authToken"]
    health = sec.get("/v1/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert sec.get("/v1/search?q=hello", token=token).status_code == 200
    assert sec.get("/v1/search?q=hello").status_code == 401
    assert sec.psql("select 1").strip() == "1", "postgres as 999 serves its data"


def test_a_replaced_release_gets_secrets_of_its_own_and_the_old_ones_go(sec: Stack) -> None:
    before = sec.containers()["postgres"]["Name"].lstrip("/")
    sec.set_config("appstack:services", {"postgres": {"memoryMb": 1100}})
    sec.up()
    after = sec.containers()["postgres"]["Name"].lstrip("/")
    assert after != before, "a new release of postgres"
    volumes = set(docker("volume", "ls", "-q").split())
    assert f"{after}-secrets" in volumes
    assert f"{before}-secrets" not in volumes, "the old release's secrets went with it"
    assert sec.psql("select 1").strip() == "1", "the new release read the same password"
    token = sec.outputs(secrets=True)["authToken"]
    assert sec.get("/v1/search?q=hello", token=token).status_code == 200
