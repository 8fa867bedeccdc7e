"""Engramia's dev stack through a real `pulumi up` on a real Docker engine, with its contract image.

The stack is ``Pulumi.engramia-dev.yaml`` as shipped (local images, env auth, generated secrets),
published on its own port; the tests run in order on it: deploy from empty, a release that adds a
revision under load, a release whose migration fails, maintenance on and off, a bad rate limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import _require_engines, cleanup
from tests.e2e.stack import Result, Stack, Watch, docker

pytestmark = pytest.mark.e2e
PORT = 18494
LOAD_LIMIT = 100_000
"""Requests per minute per client IP and path: the load loop comes from one IP, and Engramia's
default (60) would answer it 429 after three seconds, the old release and the new one alike."""


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack from ``Pulumi.engramia-dev.yaml``; only the port and the per-IP limit differ."""
    _require_engines()
    tmp: Path = tmp_path_factory.mktemp("engramia")
    config = {"appstack:engramia": {"authMode": "env", "rateLimits": {"default": LOAD_LIMIT}}}
    stack = Stack.create(tmp, "eng", PORT, config, base="engramia-dev")
    try:
        yield stack
    finally:
        cleanup(stack, app="engramia")


def api_key(stack: Stack) -> str:
    """The generated ``apiKeys`` secret, read from the stack's state as an operator could."""
    resources = stack.export(secrets=True)["deployment"]["resources"]
    (found,) = [r for r in resources if r["urn"].endswith("::eng-engramia-apiKeys")]
    value: Any = found["outputs"]["value"]
    if isinstance(value, dict):  # a secret envelope: {"<sig>": ..., "plaintext": "\"...\""}
        value = json.loads(value["plaintext"])
    return str(value)


def sql(stack: Stack, query: str) -> str:
    """One query in Engramia's database."""
    return stack.psql(query, database="engramia")


def set_api_tag(stack: Stack, tag: str) -> None:
    """Point the API at another release of the contract image."""
    stack.pulumi(
        "config", "set", "--path", "--stack", stack.name, "appstack:images.api.tag", tag,
        check=True,
    )  # fmt: skip


def up_watched(stack: Stack, interval_s: float) -> tuple[Result, Watch]:
    """``pulumi up`` while ``/v1/version`` is requested through the edge every ``interval_s``.

    503 answers with ``Retry-After`` (the runbook's maintenance window) are counted apart.
    """
    watch = Watch(stack.url("/v1/version"), interval_s, version_key="app_version", window=True)
    with watch:
        result = stack.up(check=False)
    return result, watch


def test_deploy_from_empty(eng: Stack) -> None:
    result = eng.up(check=False)
    assert result.code == 0, result.text[-4000:]
    running = eng.containers()
    # Monitoring is on by default in dev (blackbox probes Engramia's deep health).
    monitoring = {"prometheus", "alertmanager", "postgres-exporter", "blackbox"}
    assert set(running) == {"api", "postgres", "caddy"} | monitoring
    assert all(c["State"]["Running"] for c in running.values())
    # appstack gates on the health test itself; Docker's own status follows at its next interval.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = {
            n: eng.containers()[n]["State"]["Health"]["Status"]
            for n in ("api", "postgres", "caddy")
        }
        assert "unhealthy" not in status.values(), status
        if set(status.values()) == {"healthy"}:
            break
        time.sleep(1)
    assert set(status.values()) == {"healthy"}, status
    published = {n: c["HostConfig"]["PortBindings"] for n, c in running.items()}
    assert [n for n, ports in published.items() if ports] == ["caddy"]
    env = dict(e.split("=", 1) for e in running["api"]["Config"]["Env"])
    assert env["ENGRAMIA_AUTH_MODE"] == "env"
    assert env["ENGRAMIA_RATE_LIMIT_DEFAULT"] == str(LOAD_LIMIT)
    assert (env["ENGRAMIA_RATE_LIMIT_EXPENSIVE"], env["ENGRAMIA_RATE_LIMIT_PER_KEY"]) == (
        "10",
        "120",
    )
    assert "ENGRAMIA_BOOTSTRAP_TOKEN" not in env

    smoke = eng.resource_outputs("eng-engramia-smoke")
    assert smoke["passed"] == ["version", "deep-health", "health-unauthorized"]
    # Deep health runs its slow probes: longer than the smoke test's old 5 s request timeout.
    assert smoke["latencies"]["deep-health"] > 5000, smoke["latencies"]

    key = api_key(eng)
    assert eng.get("/v1/version").json()["app_version"] == "0.6.1"
    assert eng.get("/v1/health").status_code == 401
    assert eng.get("/v1/health", token="not-" + key).status_code == 401
    health = eng.get("/v1/health", token=key)
    assert health.status_code == 200 and health.json()["storage"] == "postgres", health.text
    deep = httpx.get(
        eng.url("/v1/health/deep"), headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert deep.status_code == 200, deep.text
    checks = deep.json()["checks"]
    assert checks["storage"]["status"] == "ok"
    assert (checks["migration"]["status"], checks["migration"]["current_revision"]) == ("ok", "003")
    assert sql(eng, "SELECT version_num FROM alembic_version") == "003"
    written = httpx.post(
        eng.url("/v1/memories"),
        headers={"Authorization": f"Bearer {key}"},
        json={"content": "written by 0.6.1"},
        timeout=10,
    )
    assert written.status_code == 201, written.text


def test_logs_show_each_service_with_every_secret_redacted(eng: Stack) -> None:
    key = api_key(eng)
    # The edge's access log records the URI: a key sent in a query string lands in it.
    assert eng.get(f"/v1/version?leak={key}").status_code == 200
    out = eng.appstack("logs", "caddy", "--tail", "50")
    assert out.code == 0, out.text
    assert "/v1/version?leak=***" in out.stdout
    assert key not in out.stdout
    assert all(line.startswith("caddy | ") for line in out.stdout.splitlines())
    every = eng.appstack("logs", "--tail", "5", "--since", "1h")
    assert every.code == 0, every.text
    assert {line.split(" | ", 1)[0].strip() for line in every.stdout.splitlines()} >= {
        "api",
        "caddy",
        "postgres",
    }
    unknown = eng.appstack("logs", "gateway")
    assert unknown.code == 2 and "unknown service 'gateway'; this stack runs: " in unknown.stderr


def test_status_explains_health_and_shows_a_stopped_service(eng: Stack) -> None:
    out = eng.appstack("status", "--json")
    assert out.code == 0, out.text
    report = json.loads(out.stdout)
    deep = next(a for a in report["app_health"] if a["path"] == "/v1/health/deep")
    assert deep["status"] == 200 and "storage ok" in deep["detail"], deep
    assert "migration ok" in deep["detail"]
    assert report["smoke"]["passed"] == ["version", "deep-health", "health-unauthorized"]
    assert report["migration"]["revision"] == "003"
    assert api_key(eng) not in out.stdout
    api = eng.containers()["api"]["Id"]
    docker("stop", api)
    try:
        stopped = json.loads(eng.appstack("status", "--json").stdout)
        rows = {s["name"]: s for s in stopped["services"]}
        assert rows["eng-engramia-api"]["health"] == "exited", rows["eng-engramia-api"]
    finally:
        docker("start", api)
    deadline = time.monotonic() + 60
    while eng.containers()["api"]["State"]["Health"]["Status"] != "healthy":
        assert time.monotonic() < deadline, "the api did not get healthy again"
        time.sleep(1)


def test_tag_change_runs_the_runbook_in_a_maintenance_window_under_load(eng: Stack) -> None:
    old = eng.containers()["api"]["Id"]
    set_api_tag(eng, "0.6.2")
    result, watch = up_watched(eng, interval_s=0.05)  # 20 requests/s for the whole update
    assert result.code == 0, result.text[-4000:]
    # Every request was answered: by a release, or by the window (503 with Retry-After) while
    # the backup and the migration ran; no connection error, no other status.
    assert watch.failures == [], f"{len(watch.failures)} failed: {watch.failures[:5]}"
    assert watch.windowed >= 5, "clients saw the maintenance window while it migrated"
    assert watch.versions == {"0.6.1", "0.6.2"}, "the load saw the switch happen"
    assert watch.ok >= 20
    assert "maintenance window open at the edge" in result.text
    assert "maintenance window closed at the edge" in result.text
    assert eng.get("/v1/version").status_code == 200, "closed once the smoke test passed"
    smoke = eng.resource_outputs("eng-engramia-smoke")
    migration = eng.resource_outputs("eng-engramia-migration")
    assert migration["window_opened"] and smoke["window_closed"] >= migration["window_opened"]
    assert eng.containers()["api"]["Id"] != old
    assert len(eng.releases("api")) == 1, "the old release is removed once the new one serves"

    assert sql(eng, "SELECT version_num FROM alembic_version") == "004"
    migration = eng.resource_outputs("eng-engramia-migration")
    assert (migration["revision_before"], migration["revision_after"]) == ("003", "004")
    assert migration["backup_id"], "a non-empty database is backed up before it is migrated"
    key = api_key(eng)
    rows = eng.get("/v1/memories", token=key).json()["memories"]
    assert [(r["content"], r["tags"]) for r in rows] == [("written by 0.6.1", [])]
    tagged = httpx.post(
        eng.url("/v1/memories"),
        headers={"Authorization": f"Bearer {key}"},
        json={"content": "written by 0.6.2", "tags": ["release"]},
        timeout=10,
    )
    assert tagged.status_code == 201 and tagged.json()["tags"] == ["release"], tagged.text


def test_failing_migration_leaves_the_running_release_and_the_revision(eng: Stack) -> None:
    before = {n: c["Id"] for n, c in eng.containers().items()}
    set_api_tag(eng, "0.6.3-badmigration")
    result, watch = up_watched(eng, interval_s=0.1)
    assert result.code != 0
    assert "migration command ['alembic', 'upgrade', 'head'] failed" in result.text, result.text[
        -3000:
    ]
    assert 'column "weight" does not exist' in result.text
    assert "the maintenance window was closed: the running release serves" in result.text
    assert watch.failures == [], f"{len(watch.failures)} failed: {watch.failures[:5]}"
    assert watch.versions == {"0.6.2"}
    assert eng.get("/v1/version").status_code == 200, "the window closed with the failure"
    assert watch.ok >= 10, "the probe ran for the whole update"
    assert sql(eng, "SELECT version_num FROM alembic_version") == "004"
    assert sql(eng, "SELECT to_regclass('public.memory_links') IS NULL") == "t", "rolled back"
    assert {n: c["Id"] for n, c in eng.containers().items()} == before
    assert len(eng.releases("api")) == 1
    set_api_tag(eng, "0.6.2")
    again = eng.up(check=False)
    assert again.code == 0, again.text[-3000:]
    assert eng.containers()["api"]["Id"] == before["api"], "back on 0.6.2: nothing to replace"


def test_maintenance_is_the_apis_own_switch_and_the_release_stays_healthy(eng: Stack) -> None:
    eng.set_config("appstack:maintenance", "true")
    result = eng.up(check=False)
    assert result.code == 0, result.text[-4000:]
    api = eng.containers()["api"]
    assert api["State"]["Health"]["Status"] == "healthy", "the probe does not use /v1/version"
    version = eng.get("/v1/version")
    assert version.status_code == 503 and version.headers["Retry-After"] == "3600"
    assert eng.get("/v1/memories", token=api_key(eng)).status_code == 503
    assert eng.get("/v1/health", token=api_key(eng)).status_code == 200
    assert eng.resource_outputs("eng-engramia-smoke")["passed"] == ["deep-health", "maintenance"]
    eng.set_config("appstack:maintenance", "false")
    result = eng.up(check=False)
    assert result.code == 0, result.text[-4000:]
    assert eng.get("/v1/version").json()["app_version"] == "0.6.2"


def test_a_rate_limit_with_a_unit_is_rejected_at_preview(eng: Stack) -> None:
    before = {n: c["Id"] for n, c in eng.containers().items()}
    eng.pulumi(
        "config", "set", "--path", "--stack", eng.name,
        "appstack:engramia.rateLimits.default", "120/minute", check=True,
    )  # fmt: skip
    preview = eng.pulumi("preview", "--stack", eng.name)
    assert preview.code != 0
    assert "appstack:engramia.rateLimits.default: must be an integer" in preview.text
    assert "'120/minute'" in preview.text
    up = eng.up(check=False)
    assert up.code != 0 and "appstack:engramia.rateLimits.default" in up.text
    assert {n: c["Id"] for n, c in eng.containers().items()} == before, "nothing was touched"
    assert eng.get("/v1/version").json()["app_version"] == "0.6.2"
    eng.pulumi(
        "config", "set", "--path", "--stack", eng.name,
        "appstack:engramia.rateLimits.default", str(LOAD_LIMIT), check=True,
    )  # fmt: skip
    assert eng.pulumi("preview", "--stack", eng.name).code == 0


def test_a_wrong_version_release_fails_its_smoke_test_and_deploy_rolls_back(eng: Stack) -> None:
    before = eng.containers()["api"]["Id"]
    set_api_tag(eng, "0.6.4-wrongversion")
    out = eng.appstack("deploy")
    assert out.code == 4, out.text[-4000:]
    assert "json 'app_version' = '0.6.2' (expected '0.6.4-wrongversion')" in out.text
    assert "rolling back to entry" in out.text
    # Its steps were shown as they went, from the engine's events.
    assert "updating SmokeTest eng-engramia-smoke ..." in out.stderr
    assert "SmokeTest eng-engramia-smoke: FAILED (" in out.stderr
    assert eng.get("/v1/version").json()["app_version"] == "0.6.2"
    assert eng.containers()["api"]["Id"] != before, "a new container of the good release"
    # Its head is the database's revision: nothing pending, so no window and no backup.
    migration = eng.resource_outputs("eng-engramia-migration")
    assert (migration["revision_before"], migration["revision_after"]) == ("004", "004")
    assert migration["backup_id"] == "" and migration["window_opened"] == ""
    assert any("nothing pending" in n for n in migration["notes"]), migration["notes"]


def test_rollback_across_the_added_revision_downgrades_with_the_current_image(eng: Stack) -> None:
    history = json.loads(eng.appstack("history", "--json").stdout)
    first = history[-1]
    assert (first["number"], first["migration"]["revision"]) == (1, "003")
    assert history[0]["migration"]["revision"] == "004"
    out = eng.appstack("rollback", "--to", "1", "--yes")
    assert out.code == 0, out.text[-4000:]
    assert "revision 004 -> 003 (downgrade, backup first)" in out.text
    assert "maintenance window open" in out.text
    assert sql(eng, "SELECT version_num FROM alembic_version") == "003"
    assert sql(eng, "SELECT count(*) FROM information_schema.columns WHERE column_name='tags'") == (
        "0"
    ), "revision 004 (memories.tags) was downgraded"
    assert eng.get("/v1/version").json()["app_version"] == "0.6.1"
    rows = eng.get("/v1/memories", token=api_key(eng)).json()["memories"]
    assert sorted(r["content"] for r in rows) == ["written by 0.6.1", "written by 0.6.2"]
    assert eng.get("/v1/health", token=api_key(eng)).status_code == 200, "window closed"
    status = json.loads(eng.appstack("status", "--json").stdout)
    assert status["migration"]["revision"] == "003"
    record = sql(eng, "SELECT backup_id || ' ' || revision FROM appstack.releases "
                      "WHERE release = 'rollback-to-1'")  # fmt: skip
    assert "pre-rollback" in record and record.endswith(" 003"), record
