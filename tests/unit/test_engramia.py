"""Engramia's stacks under mocks: the contract of DESIGN.md, on Docker and on Kubernetes."""

from __future__ import annotations

import json

from tests.unit.harness import run, unwrap

CONTAINER = "pulumi-python:dynamic/docker:Container"
ENGRAMIA_SECRETS = {
    "postgresPassword": "s3cretEngramiaPostgres",
    "apiKeys": "s3cret-engramia-api-key",
    "bootstrapToken": "s3cret-bootstrap-token",
    "metricsToken": "s3cret-metrics-token",
}


def containers(stack: str = "engramia-dev", **overrides: str) -> dict[str, dict]:
    program = run(stack, overrides=overrides)
    return {
        r.inputs["name"].rsplit("-", 1)[-1]: unwrap(r.inputs) for r in program.of_type(CONTAINER)
    }


def test_api_postgres_and_caddy_with_caddy_the_only_public_entry() -> None:
    running = containers()
    assert set(running) == {"api", "postgres", "caddy"}
    published = {name: c["ports"] for name, c in running.items() if c.get("ports")}
    assert published == {"caddy": [{"internal": 8080, "external": 18443, "ip": "127.0.0.1"}]}


def test_api_runs_as_1001_read_only_with_tmpfs_and_a_data_volume() -> None:
    api = containers()["api"]
    assert api["user"] == "1001" and api["read_only"] is True
    assert set(api["tmpfs"]) == {"/tmp", "/app/tmp"}
    assert [m["target"] for m in api["mounts"]] == ["/data"]
    assert api["healthcheck"]["test"][-1] == "http://127.0.0.1:8000/v1/version"


def test_database_url_names_the_psycopg2_driver_and_is_secret() -> None:
    program = run("engramia-dev")
    api = next(r for r in program.of_type(CONTAINER) if r.inputs["name"].endswith("-api"))
    assert api.is_secret("env")
    url = unwrap(api.inputs["env"])["ENGRAMIA_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg2://engramia:") and url.endswith(
        "@postgres:5432/engramia"
    )


def test_migration_is_alembic_in_the_api_image_after_postgres() -> None:
    program = run("engramia-dev")
    migration = program.named("engramia-dev-engramia-migration")
    assert migration.inputs["mode"] == "command"
    assert migration.inputs["command"] == ["alembic", "upgrade", "head"]
    assert migration.is_secret("secret_env") and migration.is_secret("db_password")
    deps = {program.by_urn(u).name for u in migration.dependencies}
    assert "engramia-dev-engramia-postgres" in deps
    api = program.named("engramia-dev-engramia-api")
    assert "engramia-dev-engramia-migration" in {program.by_urn(u).name for u in api.dependencies}


def test_smoke_requires_storage_ok_not_the_overall_status() -> None:
    smoke = run("engramia-dev").named("engramia-dev-engramia-smoke")
    checks = {c["name"]: c for c in smoke.inputs["checks"]}
    assert checks["deep-health"]["expect_json"] == {"checks.storage.status": "ok"}
    assert checks["deep-health"]["bearer_key"]
    assert checks["health-unauthorized"]["expect_status"] == 401


def test_maintenance_is_the_apps_own_switch() -> None:
    on = containers(**{"appstack:maintenance": "true"})
    assert on["api"]["env"]["ENGRAMIA_MAINTENANCE"] == "true"
    assert "maintenance" not in on, "no responder: Engramia has its own switch"
    smoke = run("engramia-dev", overrides={"appstack:maintenance": "true"}).named(
        "engramia-dev-engramia-smoke"
    )
    assert {c["name"]: c["expect_status"] for c in smoke.inputs["checks"]} == {
        "deep-health": 200,
        "maintenance": 503,
    }


def test_prod_runs_two_api_replicas_with_secret_refs_only() -> None:
    program = run("engramia-prod", secrets=ENGRAMIA_SECRETS)
    deployments = program.of_type("kubernetes:apps/v1:Deployment")
    api = next(d for d in deployments if d.inputs["metadata"]["name"] == "api")
    assert api.inputs["spec"]["replicas"] >= 2
    text = json.dumps([d.inputs for d in deployments])
    for value in ENGRAMIA_SECRETS.values():
        assert value not in text
