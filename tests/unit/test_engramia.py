"""Engramia's stacks under mocks: the contract of DESIGN.md, on Docker and on Kubernetes."""

from __future__ import annotations

import json

from tests.unit.harness import Program, run, unwrap

CONTAINER = "pulumi-python:dynamic/docker:Container"
VOLUME = "pulumi-python:dynamic/docker:Volume"
EDGE_ROUTE = "pulumi-python:dynamic/docker:EdgeRoute"
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


def test_api_runs_as_1001_read_only_on_tmpfs_without_a_volume() -> None:
    api = containers()["api"]
    assert api["user"] == "1001" and api["read_only"] is True
    # Postgres storage keeps no state on disk (DESIGN.md): /data is scratch, releases overlap.
    assert set(api["tmpfs"]) == {"/tmp", "/app/tmp", "/data"}
    assert api["mounts"] == []
    assert api["rollout"] == "start-first"
    assert api["healthcheck"]["test"][-1] == "http://127.0.0.1:8000/v1/version"


def _dev() -> Program:
    return run("engramia-dev")


def test_on_dev_only_caddy_publishes_and_the_api_has_no_port_and_no_volume() -> None:
    program = _dev()
    running = {r.inputs["name"].rsplit("-", 1)[-1]: r.inputs for r in program.of_type(CONTAINER)}
    publishing = [name for name, c in running.items() if c["ports"]]
    assert publishing == ["caddy"]
    api = running["api"]
    assert api["ports"] == [] and api["mounts"] == []
    nets = {n["name"] for n in api["networks"]}
    assert nets == {"engramia-dev-engramia-internal", "engramia-dev-engramia-edge"}
    volumes = {v.inputs["name"] for v in program.of_type(VOLUME)}
    assert volumes == {
        "engramia-dev-engramia-postgres-pgdata",
        "engramia-dev-engramia-backups",
        "engramia-dev-engramia-caddy-data",
    }
    assert {n: c["rollout"] for n, c in running.items()} == {
        "api": "start-first",
        "postgres": "stop-first",
        "caddy": "stop-first",
    }
    for res in [*program.of_type(CONTAINER), *program.of_type(VOLUME)]:
        assert not res.delete_before_replace, res.name


def test_the_edge_gates_on_the_apis_anonymous_401_and_only_proxies() -> None:
    for maintenance in ("false", "true"):
        program = run("engramia-dev", overrides={"appstack:maintenance": maintenance})
        (route,) = program.of_type(EDGE_ROUTE)
        inputs = unwrap(route.inputs)
        assert inputs["upstream"] == "engramia-dev-engramia-api-0123abcd:8000"
        assert (inputs["health_path"], inputs["health_status"]) == ("/v1/health", 401)
        # Engramia has its own maintenance switch: the edge never answers for it.
        assert "respond" not in inputs["caddyfile"], maintenance
        assert "reverse_proxy engramia-dev-engramia-api-0123abcd:8000 {" in inputs["caddyfile"]
        deps = {program.by_urn(u).name for u in route.dependencies}
        assert {"engramia-dev-engramia-api", "engramia-dev-engramia-caddy"} <= deps


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
    assert set(on) == {"api", "postgres", "caddy"}, "no responder: Engramia has its own switch"
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
    caddy = next(d for d in deployments if d.inputs["metadata"]["name"] == "caddy")
    assert caddy.inputs["spec"]["replicas"] == 2
    (ingress,) = program.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    (path,) = ingress.inputs["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {"name": "caddy", "port": {"number": 8080}}
    text = json.dumps([d.inputs for d in deployments])
    for value in ENGRAMIA_SECRETS.values():
        assert value not in text
