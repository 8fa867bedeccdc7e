"""Haven's dev stack through a real `pulumi up` on a real Docker engine, release after release.

The tests run in order on one stack: each step builds on the state the previous one left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from typing import Any

import pytest

from components.ops.stack import plaintext
from tests.e2e.stack import Stack, docker, kill_engine_processes, start_ollama, wait_http

pytestmark = pytest.mark.e2e
SERVICES = ("gateway", "catalog", "search", "worker")
DATASTORES = ("postgres", "qdrant", "minio")
EDGE = ("caddy",)
MONITORING = ("prometheus", "alertmanager", "postgres-exporter")  # on by default in dev


def secret_values(stack: Stack) -> dict[str, str]:
    """Generated secrets by key, as an operator with the passphrase sees them."""
    values = {}
    for res in stack.export(secrets=True)["deployment"]["resources"]:
        name = res["urn"].rsplit("::", 1)[-1]
        if res["type"] == "pulumi-python:dynamic/ops:GeneratedSecret":
            value = plaintext(res["outputs"]["value"])
            values[name.removeprefix(f"{stack.name}-haven-")] = value
    return values


def steps(preview: dict[str, Any]) -> dict[str, str]:
    """Planned operation per resource name, leaving out the ones that stay the same."""
    return {
        s["urn"].rsplit("::", 1)[-1]: s["op"]
        for s in preview.get("steps", [])
        if s["op"] != "same" and not s["urn"].endswith("pulumi:pulumi:Stack::" + "appstack-e2e")
    }


def test_first_up_deploys_everything_healthy(haven: Stack) -> None:
    haven.up()
    running = haven.containers()
    assert set(running) == set(SERVICES + DATASTORES + EDGE + MONITORING)
    assert all(c["State"]["Running"] for c in running.values())
    # appstack gates on the health test itself (every 0.5 s); Docker's own status follows at its
    # next interval (5 s): every container with a check must get there, none may fail it.
    checked = {n for n, c in running.items() if c["State"].get("Health")}
    assert checked >= set(SERVICES + DATASTORES + EDGE) - {"worker"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = {n: haven.containers()[n]["State"]["Health"]["Status"] for n in checked}
        assert "unhealthy" not in status.values(), status
        if set(status.values()) == {"healthy"}:
            break
        time.sleep(1)
    assert set(status.values()) == {"healthy"}, status
    health = wait_http(haven.url("/v1/healthz"))
    assert health.json()["status"] == "ok"
    token = secret_values(haven)["authToken"]
    assert haven.get("/v1/search?q=hello").status_code == 401
    assert haven.get("/v1/search?q=hello", token="wrong").status_code == 403
    assert haven.get("/v1/search?q=hello", token=token).status_code == 200


def test_first_up_initialised_the_schema_and_ledger(haven: Stack) -> None:
    out = haven.resource_outputs("::e2e-haven-migration")
    assert out["applied"] == ["init.sql"], "a fresh database runs init.sql, and only it"
    assert out["baselined"], "every migration file of the release is baselined on a fresh init"
    assert out["backup_id"] == "", "an empty database has nothing to back up"
    ledger = haven.psql("select name || ':' || how from appstack_schema_ledger order by name")
    assert "init.sql:init" in ledger.splitlines()
    assert all(line.endswith((":baselined", ":init")) for line in ledger.splitlines())


def test_exactly_one_published_port_and_an_internal_network(haven: Stack) -> None:
    published = {
        name: bindings
        for name, c in haven.containers().items()
        for port, bindings in (c["NetworkSettings"]["Ports"] or {}).items()
        if bindings
    }
    assert list(published) == ["caddy"], "the edge is the only published entry"
    assert published["caddy"] == [{"HostIp": "127.0.0.1", "HostPort": str(haven.port)}]
    gateway_nets = set(haven.containers()["gateway"]["NetworkSettings"]["Networks"])
    assert gateway_nets == {"e2e-haven-internal", "e2e-haven-edge"}
    caddy_nets = set(haven.containers()["caddy"]["NetworkSettings"]["Networks"])
    assert caddy_nets == {"e2e-haven-edge"}, "the edge reaches no data store"
    net = json.loads(docker("network", "inspect", "e2e-haven-internal"))[0]
    assert net["Internal"] is True
    pg_nets = set(haven.containers()["postgres"]["NetworkSettings"]["Networks"])
    assert pg_nets == {"e2e-haven-internal"}


def test_no_secret_in_plaintext_in_state_or_export(haven: Stack) -> None:
    secrets = secret_values(haven)
    assert len(secrets) == 7
    exported = json.dumps(haven.export())
    files = [p.read_text(errors="replace") for p in haven.state_dir.rglob("*") if p.is_file()]
    assert files, "the file backend wrote state"
    for key, value in secrets.items():
        assert value not in exported, f"{key} appears in `pulumi stack export`"
        for text in files:
            assert value not in text, f"{key} appears in a state file"


def test_second_up_changes_nothing_but_the_smoke_test(haven: Stack) -> None:
    before = haven.resource_outputs("::e2e-haven-migration")
    planned = steps(haven.preview())
    assert planned == {"e2e-haven-smoke": "update"}, planned
    ids = {n: c["Id"] for n, c in haven.containers().items()}
    haven.up()
    assert {n: c["Id"] for n, c in haven.containers().items()} == ids
    after = haven.resource_outputs("::e2e-haven-migration")
    assert after["ran_at"] == before["ran_at"], "a no-op up must not run the migration"
    assert {k: v for k, v in after.items() if k != "__provider"} == {
        k: v for k, v in before.items() if k != "__provider"
    }


def test_new_gateway_tag_replaces_only_the_gateway_and_keeps_data(haven: Stack) -> None:
    haven.psql(
        "insert into documents (title) values ('kept across releases');"
        "insert into chunks (document_id, content) select id, 'c' from documents limit 1"
    )
    ids = {n: c["Id"] for n, c in haven.containers().items()}
    haven.set_images("0.2.0", ("gateway",))
    planned = steps(haven.preview())
    replaced = {name for name, op in planned.items() if op in ("replace", "create-replacement")}
    assert replaced <= {"e2e-haven-gateway", "e2e-haven-gateway-image"}
    assert "e2e-haven-gateway" in replaced
    # The edge is re-pointed (an update), never replaced.
    assert set(planned) <= {
        "e2e-haven-gateway", "e2e-haven-gateway-image", "e2e-haven-smoke", "e2e-haven-edge-route"
    }  # fmt: skip
    assert planned.get("e2e-haven-edge-route", "update") == "update"
    haven.up()
    after = {n: c["Id"] for n, c in haven.containers().items()}
    changed = {n for n in ids if ids[n] != after[n]}
    assert changed == {"gateway"}
    assert haven.get("/v1/healthz").json().get("version") == "0.2.0"
    assert "kept across releases" in haven.psql("select title from documents")


def test_new_release_backs_up_then_applies_only_the_new_migration(haven: Stack) -> None:
    haven.set_images("0.2.0", ("catalog", "search", "worker"))
    haven.up()
    out = haven.resource_outputs("::e2e-haven-migration")
    assert [f for f in out["applied"] if f != "init.sql"] == ["migrations/v2_003_collections.sql"]
    assert out["backup_id"].startswith("e2e-haven-")
    assert "kept across releases" in haven.psql("select title from documents")
    backups = docker(
        "run", "--rm", "-v", "e2e-haven-backups:/backups", "--entrypoint", "ls",
        "appstack.local/postgres-pgvector:17", "/backups",
    )  # fmt: skip
    assert out["backup_id"] in backups.split()


def test_broken_migration_fails_the_up_and_the_old_release_keeps_serving(haven: Stack) -> None:
    ids = {n: c["Id"] for n, c in haven.containers().items()}
    haven.set_images("0.3.0-broken", SERVICES)
    result = haven.up(check=False)
    assert result.code != 0
    assert "v2_004_broken.sql" in result.text
    after = haven.containers()
    assert {n: c["Id"] for n, c in after.items()} == ids, "no service was replaced"
    assert all(c["State"]["Running"] for c in after.values()), "the worker was restarted"
    assert haven.get("/v1/healthz").json().get("version") == "0.2.0"
    ledger = haven.psql("select name from appstack_schema_ledger")
    assert "migrations/v2_004_broken.sql" not in ledger
    haven.set_images("0.2.0", SERVICES)
    haven.up()


def test_failing_smoke_test_fails_the_up(haven: Stack) -> None:
    haven.set_config("appstack:ollama", {"url": "http://nowhere.invalid:11434",
                                         "network": haven.ollama_network})  # fmt: skip
    result = haven.up(check=False)
    assert result.code != 0
    assert "search-authorized" in result.text
    token = secret_values(haven)["authToken"]
    assert token not in result.text
    haven.set_config("appstack:ollama", {"url": "http://ollama:11434",
                                         "network": haven.ollama_network})  # fmt: skip
    haven.up()


def test_interrupted_up_converges_on_the_next_up(haven: Stack) -> None:
    haven.set_images("0.1.0", ("gateway", "search"))
    old = haven.containers()["gateway"]["Id"]
    old_version = haven.get("/v1/healthz").json()["version"]
    proc = subprocess.Popen(
        ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", haven.name],
        cwd=haven.workdir,
        env=haven.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Kill the engine (and its plugins) once the new gateway exists beside the old one and
        # is not yet healthy: the worst moment.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(c["Id"] != old for c in haven.releases("gateway")):
                break
            assert proc.poll() is None, "the update ended before it could be interrupted"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        assert kill_engine_processes(haven) >= 1, "the engine's plugins outlive it"
    finally:
        proc.wait()
    releases = {c["Id"]: c for c in haven.releases("gateway")}
    assert len(releases) == 2, "the update was interrupted with both releases on the engine"
    assert releases[old]["State"]["Running"], "the running release was not touched"
    assert haven.get("/v1/healthz").json()["version"] == old_version, "the edge still serves it"
    locked = haven.up(check=False)
    assert locked.code != 0 and "locked" in locked.text, "a killed update leaves its lock"
    deploy = haven.appstack("deploy")  # releases the dead update's lock, then `pulumi up`
    assert deploy.code == 0, deploy.text
    assert "releasing the lock of a killed update" in deploy.stderr
    running = haven.containers()
    assert set(running) == set(SERVICES + DATASTORES + EDGE + MONITORING)
    assert all(c["State"]["Running"] for c in running.values())
    assert len(haven.releases("gateway")) == 1, "the leftover and the old release are gone"
    assert haven.get("/v1/healthz").json().get("version") == "0.1.0"
    assert steps(haven.preview()) == {"e2e-haven-smoke": "update"}


def test_destroy_removes_containers_networks_and_unprotected_volumes(haven: Stack) -> None:
    haven.pulumi("destroy", "--yes", "--skip-preview", "--stack", haven.name, check=True)
    assert haven.containers() == {}
    left = docker("ps", "-aq", "--filter", f"label=appstack.stack={haven.name}").split()
    assert left == [], "no container of the stack at all, task containers included"
    nets = docker("network", "ls", "--format", "{{.Name}}").split()
    assert not [n for n in nets if n.startswith("e2e-haven-")]
    vols = docker("volume", "ls", "--format", "{{.Name}}").split()
    assert not [v for v in vols if v.startswith("e2e-haven-")], "dev volumes are not protected"


def test_protected_volumes_outlive_the_state_and_a_new_up_adopts_them_with_their_data(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Staging-like: secrets from config (a generated password would be lost with the state, and
    the adopted database would refuse the new one), volumes protected and retained."""
    from components.settings import APP_SECRETS
    from tests.e2e.conftest import cleanup

    config = {"appstack:protectVolumes": "true", "appstack:generateSecrets": "false",
              "appstack:monitoring": {"enabled": False}}  # fmt: skip
    stack = Stack.create(tmp_path_factory.mktemp("kept"), "kept", 18383, config)
    for key in APP_SECRETS["haven"]:
        stack.set_config(f"appstack:{key}", f"kept-{key}-{secrets.token_hex(8)}", secret=True)
    other = "kept-haven-qdrant-storage"
    start_ollama(stack.ollama_network, "appstack-kept-ollama")
    try:
        stack.up()
        stack.psql("insert into documents (title) values ('outlives the state')")
        plain = stack.pulumi("destroy", "--yes", "--skip-preview", "--stack", stack.name)
        assert plain.code != 0 and "protected" in plain.text, "protect stops a plain destroy"
        # Every resource leaves the state; the protected volumes are retained on the engine.
        stack.pulumi("state", "unprotect", "--all", "--yes", "--stack", stack.name, check=True)
        stack.pulumi("destroy", "--yes", "--skip-preview", "--stack", stack.name, check=True)
        assert stack.export()["deployment"].get("resources") in (None, [])
        assert stack.containers() == {}
        vols = docker("volume", "ls", "--format", "{{.Name}}").split()
        assert {"kept-haven-postgres-pgdata", "kept-haven-backups", other} <= set(vols)
        # A volume of that name labelled for another stack is refused, naming it.
        docker("volume", "rm", other)
        docker("volume", "create", "--label", "appstack.stack=someone-else", other)
        refused = stack.up(check=False)
        assert refused.code != 0
        assert f"volume {other} already exists and is not this stack's" in refused.text
        docker("volume", "rm", other)
        adopted = stack.up(check=False)
        assert adopted.code == 0, adopted.text[-3000:]
        assert "outlives the state" in stack.psql("select title from documents")
    finally:
        stack.pulumi("state", "unprotect", "--all", "--yes", "--stack", stack.name)
        cleanup(stack, "appstack-kept-ollama")
