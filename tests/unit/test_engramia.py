"""Engramia's stacks under mocks: the contract of DESIGN.md, on Docker and on Kubernetes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from components.apps.engramia import DEEP_HEALTH_TIMEOUT_S
from tests.unit.harness import Program, answering, run, unwrap

CONTAINER = "pulumi-python:dynamic/docker:Container"
VOLUME = "pulumi-python:dynamic/docker:Volume"
EDGE_ROUTE = "pulumi-python:dynamic/docker:EdgeRoute"
ENGRAMIA_SECRETS = {
    "postgresPassword": "s3cretEngramiaPostgres",
    "apiKeys": "s3cret-engramia-api-key",
    "bootstrapToken": "s3cret-bootstrap-token",
    "metricsToken": "s3cret-metrics-token",
}


def containers(
    stack: str = "engramia-dev", overrides: dict[str, Any] | None = None
) -> dict[str, dict]:
    program = run(stack, overrides=overrides)
    # the monitoring component's containers are tested on their own (test_monitoring.py)
    return {
        r.inputs["name"].rsplit("-", 1)[-1]: unwrap(r.inputs)
        for r in program.of_type(CONTAINER)
        if unwrap(r.inputs["labels"]).get("appstack.component") != "monitoring"
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


def _dev() -> Program:
    return run("engramia-dev")


def _app_owned(inputs: dict[str, Any]) -> bool:
    return unwrap(inputs["labels"]).get("appstack.component") != "monitoring"


def test_on_dev_only_caddy_publishes_and_the_api_has_no_port_and_no_volume() -> None:
    program = _dev()
    # every container counts for what publishes; the app's own for the rest (monitoring has its
    # own tests in test_monitoring.py)
    every = {r.inputs["name"].rsplit("-", 1)[-1]: r.inputs for r in program.of_type(CONTAINER)}
    publishing = [name for name, c in every.items() if c["ports"]]
    assert publishing == ["caddy"]
    running = {n: c for n, c in every.items() if _app_owned(c)}
    api = running["api"]
    assert api["ports"] == [] and api["mounts"] == []
    nets = {n["name"] for n in api["networks"]}
    assert nets == {"engramia-dev-engramia-internal", "engramia-dev-engramia-edge"}
    volumes = {v.inputs["name"] for v in program.of_type(VOLUME) if _app_owned(v.inputs)}
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
        # Engramia has its own maintenance switch: the edge answers for it only in the runbook's
        # window around a migration (while the window file exists), sparing the health paths.
        caddyfile = inputs["caddyfile"]
        assert route.is_secret("caddyfile"), "it holds the window's token"
        window = caddyfile.split("@window {", 1)[1].split("handle @window", 1)[0]
        assert "try_files /window" in window and "root /data/appstack" in window
        assert "not path /v1/health /v1/health/deep" in window
        token = window.split("not header X-Appstack-Window ", 1)[1].split()[0]
        assert len(token) == 40 and caddyfile.count("respond") == 1, maintenance
        assert "reverse_proxy engramia-dev-engramia-api-0123abcd:8000 {" in caddyfile
        smoke = program.named("engramia-dev-engramia-smoke")
        assert unwrap(smoke.inputs["headers"]) == {"X-Appstack-Window": token}
        assert smoke.is_secret("headers")
        migration = program.named("engramia-dev-engramia-migration")
        assert migration.inputs["window"]["name"] == "engramia-dev-engramia-caddy"
        assert migration.inputs["heads_command"] == ["alembic", "heads"]
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


def test_smoke_requires_the_named_checks_not_the_overall_status() -> None:
    smoke = run("engramia-dev").named("engramia-dev-engramia-smoke")
    checks = {c["name"]: c for c in smoke.inputs["checks"]}
    assert checks["deep-health"]["expect_json"] == {
        "checks.storage.status": "ok",
        "checks.migration.status": "ok",
    }
    assert checks["deep-health"]["bearer_key"]
    assert checks["health-unauthorized"]["expect_status"] == 401


def test_required_deep_checks_come_from_config() -> None:
    program = run("engramia-dev", overrides={"appstack:engramia": {"requiredChecks": ["storage"]}})
    checks = {c["name"]: c for c in program.named("engramia-dev-engramia-smoke").inputs["checks"]}
    assert checks["deep-health"]["expect_json"] == {"checks.storage.status": "ok"}


def test_an_unknown_required_check_is_refused_naming_the_key() -> None:
    with pytest.raises(Exception, match=r"appstack:engramia.requiredChecks: \['disk'\] not among"):
        run("engramia-dev", overrides={"appstack:engramia": {"requiredChecks": ["disk"]}})


def test_maintenance_is_the_apps_own_switch() -> None:
    on = containers(overrides={"appstack:maintenance": "true"})
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


def test_prod_refuses_a_single_api_replica_naming_the_key() -> None:
    with pytest.raises(
        Exception, match=r"appstack:services.api.replicas: 1: prod keeps at least 2"
    ):
        run(
            "engramia-prod",
            secrets=ENGRAMIA_SECRETS,
            overrides={"appstack:services": {"api": {"replicas": 1}, "caddy": {"replicas": 2}}},
        )


@pytest.mark.parametrize(
    ("status", "healthy"), [(401, True), (429, True), (200, False), (503, False), (404, False)]
)
def test_the_api_probe_takes_an_anonymous_401_as_serving(status: int, healthy: bool) -> None:
    """The probe the container runs, run here against a server answering ``status``."""
    test = containers()["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python3", "-c"]
    assert test[-1] == "http://127.0.0.1:8000/v1/health", "never /v1/version: 503 in maintenance"
    with answering(status) as url:
        probe = subprocess.run(
            [sys.executable, "-c", test[3], url], capture_output=True, text=True, timeout=30
        )
    assert (probe.returncode == 0) is healthy, probe.stderr


def test_the_api_probe_fails_when_nothing_listens() -> None:
    test = containers()["api"]["healthcheck"]["test"]
    probe = subprocess.run(
        [sys.executable, "-c", test[3], "http://127.0.0.1:9/v1/health"],
        capture_output=True,
        timeout=30,
    )
    assert probe.returncode != 0


def test_auth_mode_and_integer_rate_limits_reach_the_api() -> None:
    dev = containers()["api"]["env"]
    assert dev["ENGRAMIA_AUTH_MODE"] == "env"
    limits = {k: v for k, v in dev.items() if k.startswith("ENGRAMIA_RATE_LIMIT_")}
    assert limits == {
        "ENGRAMIA_RATE_LIMIT_DEFAULT": "60",
        "ENGRAMIA_RATE_LIMIT_EXPENSIVE": "10",
        "ENGRAMIA_RATE_LIMIT_PER_KEY": "120",
    }
    tuning: dict[str, Any] = {"authMode": "db", "rateLimits": {"default": 600, "perKey": "7"}}
    tuned = containers(overrides={"appstack:engramia": tuning})["api"]["env"]
    assert tuned["ENGRAMIA_AUTH_MODE"] == "db"
    assert (tuned["ENGRAMIA_RATE_LIMIT_DEFAULT"], tuned["ENGRAMIA_RATE_LIMIT_PER_KEY"]) == (
        "600",
        "7",
    )
    assert tuned["ENGRAMIA_RATE_LIMIT_EXPENSIVE"] == "10"


def test_the_bootstrap_token_goes_only_where_it_can_be_used() -> None:
    assert "ENGRAMIA_BOOTSTRAP_TOKEN" not in containers()["api"]["env"], "env mode has no bootstrap"
    db = run("engramia-dev", overrides={"appstack:engramia": {"authMode": "db"}})
    api = db.named("engramia-dev-engramia-api")
    assert api.is_secret("env")
    # Docker: the bootstrap's throwaway container gets the token, the API never does.
    assert "ENGRAMIA_BOOTSTRAP_TOKEN" not in unwrap(api.inputs["env"])
    boot = db.named("engramia-dev-engramia-bootstrap")
    assert boot.is_secret("token") and boot.is_secret("env")
    assert unwrap(boot.inputs["token"]) == "generated-engramia-dev-engramia-bootstrapToken"
    assert "ENGRAMIA_BOOTSTRAP_TOKEN" not in unwrap(boot.inputs["env"])
    assert unwrap(boot.inputs["env"])["ENGRAMIA_AUTH_MODE"] == "db"
    assert (boot.inputs["path"], boot.inputs["result_key"]) == ("/v1/keys/bootstrap", "key")
    deps = {db.by_urn(u).name for u in boot.dependencies}
    assert {"engramia-dev-engramia-migration", "engramia-dev-engramia-postgres"} <= deps
    assert "engramia-dev-engramia-bootstrap" in {db.by_urn(u).name for u in api.dependencies}
    smoke = db.named("engramia-dev-engramia-smoke")
    assert smoke.is_secret("secrets"), "the deep check sends the bootstrap's owner key"


def test_prod_defaults_to_db_auth() -> None:
    program = run("engramia-prod", secrets=ENGRAMIA_SECRETS)
    (api,) = [
        d
        for d in program.of_type("kubernetes:apps/v1:Deployment")
        if d.inputs["metadata"]["name"] == "api"
    ]
    (container,) = api.inputs["spec"]["template"]["spec"]["containers"]
    plain = {e["name"]: e.get("value") for e in container["env"]}
    assert plain["ENGRAMIA_AUTH_MODE"] == "db"
    assert "ENGRAMIA_BOOTSTRAP_TOKEN" not in plain, (
        "the Bootstrap Job holds the token, never the API"
    )
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[-1] == "http://127.0.0.1:8000/v1/health", "never /v1/version: 503 in maintenance"


def test_smoke_checks_the_deployed_version_with_deep_healths_timeout() -> None:
    smoke = run("engramia-dev").named("engramia-dev-engramia-smoke")
    checks = {c["name"]: c for c in smoke.inputs["checks"]}
    assert checks["version"]["expect_json"] == {"app_version": "0.6.1"}
    assert not checks["version"].get("bearer_key"), "no key: /v1/version is public"
    # Deep health has a timeout of its own; the shallow checks keep the short default.
    assert checks["deep-health"]["timeout_s"] == DEEP_HEALTH_TIMEOUT_S >= 15
    assert checks["version"].get("timeout_s") is None and smoke.inputs["timeout_s"] == 5
    assert smoke.is_secret("secrets")


def test_smoke_sends_the_first_of_several_api_keys() -> None:
    keys = "first-key-of-two,second-key-of-two"
    program = run("engramia-dev", secrets={"apiKeys": keys})
    smoke = program.named("engramia-dev-engramia-smoke")
    assert unwrap(smoke.inputs["secrets"]) == {"deep-health": "first-key-of-two"}
    api = program.named("engramia-dev-engramia-api")
    assert unwrap(api.inputs["env"])["ENGRAMIA_API_KEYS"] == keys


def test_a_digest_pinned_api_skips_the_version_value_not_the_check() -> None:
    digest = "sha256:" + "b" * 64
    images = {
        "api": {"registry": "appstack.local", "repository": "engramia", "digest": digest},
        "postgres": {"registry": "appstack.local", "repository": "postgres-pgvector", "tag": "17"},
        "caddy": {"registry": "appstack.local", "repository": "caddy", "tag": "2"},
    }
    smoke = run("engramia-dev", overrides={"appstack:images": images}).named(
        "engramia-dev-engramia-smoke"
    )
    checks = {c["name"]: c for c in smoke.inputs["checks"]}
    assert checks["version"]["expect_status"] == 200
    assert checks["version"]["expect_json"] == {}


def test_old_images_are_pruned_after_the_smoke_test_where_config_says() -> None:
    dev = run("engramia-dev").named("engramia-dev-engramia-smoke")
    assert not dev.inputs.get("prune"), "dev runs images built here: never pruned by default"
    on = run("engramia-dev", overrides={"appstack:pruneImages": "true"})
    prune = on.named("engramia-dev-engramia-smoke").inputs["prune"]
    assert prune["images"] == {
        "api": "appstack.local/engramia:0.6.1",
        "postgres": "appstack.local/postgres-pgvector:17",
        "caddy": "appstack.local/caddy:2",
    }
