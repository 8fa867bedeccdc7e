"""Engramia's topology, written once for every platform (contract: shared/DESIGN.md, "Engramia").

API (port 8000, uid 1001, read-only root with tmpfs /tmp and /app/tmp, data volume /data),
Postgres 16 with pgvector, and Caddy in front as the only public entry. Migrations are
``alembic upgrade head`` inside the API image; maintenance is the app's own switch
(``ENGRAMIA_MAINTENANCE``: every path but the health endpoints answers 503). The auth mode and the
rate limits come from ``appstack:engramia`` (settings).
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.apps import common
from components.apps.common import sized
from components.settings import Settings
from components.spec import (
    AppSpec,
    BootstrapSpec,
    DatabaseRef,
    Exposure,
    HealthCheck,
    MigrationSpec,
    Resources,
    ServiceSpec,
    SmokeCheck,
    SmokeSpec,
)

DB_NAME = "engramia"
DB_USER = "engramia"
API_PORT = 8000
DEFAULT_RESOURCES = {
    "api": Resources(512, 1.0),
    "postgres": Resources(1024, 1.0),
    "caddy": Resources(128, 0.25),
}
# The container's health probe: ``/v1/health`` answers an anonymous request 401, in maintenance
# too, which proves the process serves (``/v1/version`` turns 503 in maintenance). 429 proves it as
# well: Engramia's rate limiter counts probes like any client, per IP and path.
API_PROBE = (
    "import sys, urllib.error, urllib.request\n"
    "try:\n"
    "    urllib.request.urlopen(sys.argv[1], timeout=2)\n"
    "except urllib.error.HTTPError as e:\n"
    "    sys.exit(0 if e.code in (401, 429) else f'{sys.argv[1]} answered {e.code}')\n"
    "sys.exit(f'{sys.argv[1]} answered without auth')"
)
MAINTENANCE_EXEMPT = ("/v1/health", "/v1/health/deep")
"""The paths Engramia serves in maintenance (DESIGN.md); the edge's window spares them too."""
HEALTH_URL = f"http://127.0.0.1:{API_PORT}/v1/health"
DEEP_HEALTH_TIMEOUT_S = 20.0
"""Deep health's own request timeout: it runs Engramia's LLM and embedding probes for real, and
without a reachable provider one call takes several seconds (about 8 s measured, DESIGN.md)."""
OPTIONAL_ENV = {
    "openaiApiKey": "OPENAI_API_KEY",
    "stripeSecretKey": "STRIPE_SECRET_KEY",
    "stripeWebhookSecret": "STRIPE_WEBHOOK_SECRET",
}


def _first_key(api_keys: pulumi.Output[str]) -> pulumi.Output[str]:
    """The key the smoke test sends: the first of ``apiKeys`` (comma-separated, as Engramia)."""
    first = api_keys.apply(lambda keys: keys.split(",")[0].strip())
    return pulumi.Output.secret(first)


def _smoke(settings: Settings, api_key: pulumi.Output[str]) -> SmokeSpec:
    """Version (the deployed tag) without auth; deep health with a key, judged by named checks.

    A normal install answers deep health ``degraded`` (DESIGN.md): the overall status is not the
    test, the required checks (``engramia.requiredChecks``: storage and migration by default) are;
    the others (llm, embedding, stripe) are tolerated. Deep health has a timeout of its own: its
    slow probes take seconds, the shallow checks answer in milliseconds.
    """
    deep = SmokeCheck(
        "deep-health",
        "/v1/health/deep",
        200,
        bearer=api_key,
        expect_json={f"checks.{c}.status": "ok" for c in settings.engramia.required_checks},
        timeout_s=DEEP_HEALTH_TIMEOUT_S,
        # db mode: the owner key appstack's bootstrap issued (env keys are not accepted then).
        bearer_from_bootstrap=settings.engramia.auth_mode == "db",
    )
    if settings.maintenance:
        return SmokeSpec(checks=(deep, SmokeCheck("maintenance", "/v1/version", 503)))
    tag = settings.images["api"].tag  # None when pinned by digest: the digest is the identity
    expect = {"app_version": tag} if tag else {}
    version = SmokeCheck("version", "/v1/version", 200, expect_json=expect)
    return SmokeSpec(checks=(version, deep, SmokeCheck("health-unauthorized", "/v1/health", 401)))


def _api_env(settings: Settings) -> dict[str, pulumi.Input[str]]:
    """The API's plain environment: storage, auth mode, rate limits, maintenance switch."""
    engramia = settings.engramia
    return {
        "ENGRAMIA_STORAGE": "postgres",
        "ENGRAMIA_AUTH_MODE": engramia.auth_mode,
        "ENGRAMIA_METRICS": "true",
        "ENGRAMIA_JSON_LOGS": "true",
        # Integers, requests per minute: Engramia parses them with int() at start-up.
        "ENGRAMIA_RATE_LIMIT_DEFAULT": str(engramia.rate_limit_default),
        "ENGRAMIA_RATE_LIMIT_EXPENSIVE": str(engramia.rate_limit_expensive),
        "ENGRAMIA_RATE_LIMIT_PER_KEY": str(engramia.rate_limit_per_key),
        "ENGRAMIA_MAINTENANCE": "true" if settings.maintenance else "false",
    }


def build(settings: Settings, secrets: Mapping[str, pulumi.Output[str]]) -> AppSpec:
    """Engramia as specs: API, Postgres+pgvector, Caddy."""
    image = {name: ref.ref for name, ref in settings.images.items()}
    db_password = secrets["postgresPassword"]
    # The image ships the psycopg2 driver: the URL must name it.
    database_url: pulumi.Output[str] = pulumi.Output.secret(
        pulumi.Output.concat(
            "postgresql+psycopg2://", DB_USER, ":", db_password, "@postgres:5432/", DB_NAME
        )
    )  # type: ignore[arg-type]
    api_secrets: dict[str, pulumi.Output[str]] = {
        "ENGRAMIA_DATABASE_URL": database_url,
        "ENGRAMIA_API_KEYS": secrets["apiKeys"],
        "ENGRAMIA_METRICS_TOKEN": secrets["metricsToken"],
    }
    bootstrap = None
    if settings.engramia.auth_mode == "db":
        # Only db mode has a bootstrap endpoint. Both platforms run the bootstrap themselves and
        # take the token out of the API's env (the Bootstrap's server alone gets it).
        api_secrets["ENGRAMIA_BOOTSTRAP_TOKEN"] = secrets["bootstrapToken"]
        bootstrap = BootstrapSpec(
            service="api",
            path="/v1/keys/bootstrap",
            token=secrets["bootstrapToken"],
            token_env="ENGRAMIA_BOOTSTRAP_TOKEN",  # noqa: S106 (a variable name)
            body_key="bootstrap_token",
            result_key="key",
            output="engramiaOwnerKey",
        )
    for key, env in OPTIONAL_ENV.items():
        if key in secrets:
            api_secrets[env] = secrets[key]

    postgres = common.postgres(
        image["postgres"], DB_NAME, DB_USER, db_password,
        sized(settings, DEFAULT_RESOURCES, "postgres"),
    )  # fmt: skip
    api = ServiceSpec(
        name="api",
        image=image["api"],
        port=API_PORT,
        env=_api_env(settings),
        secret_env=api_secrets,
        health=HealthCheck(command=("python3", "-c", API_PROBE, HEALTH_URL)),
        replicas=settings.replicas("api"),
        resources=sized(settings, DEFAULT_RESOURCES, "api"),
        exposure=Exposure.PUBLIC,
        depends_on=("postgres",),
        user="1001",
        # With postgres storage the API keeps no state on disk (DESIGN.md): /data needs no volume,
        # so releases can overlap (create-before-delete) and replicas share nothing.
        tmpfs=("/tmp", "/app/tmp", "/data"),
    )
    migration = MigrationSpec(
        mode="command",
        source_image=image["api"],
        database=DatabaseRef("postgres", DB_NAME, DB_USER, db_password, image=image["postgres"]),
        command=("alembic", "upgrade", "head"),
        heads_command=("alembic", "heads"),
        downgrade_command=("alembic", "downgrade"),
        secret_env={"ENGRAMIA_DATABASE_URL": database_url},
        keep_backups=settings.keep_backups,
        backup_store=settings.backups.store_spec(),
    )
    # Engramia has its own maintenance switch: the edge only proxies. `/v1/health` answers an
    # anonymous probe 401 in and out of maintenance, which proves the process serves. The
    # runbook's window around a migration is the edge's, with the app's own two exempt paths.
    edge, entry = common.edge(
        settings, secrets, api, ("/v1/health", 401), window_pass=MAINTENANCE_EXEMPT
    )
    return AppSpec(
        name="engramia",
        services=(postgres, api),
        entry=entry,
        edge=edge,
        migration=migration,
        smoke=_smoke(settings, _first_key(secrets["apiKeys"])),
        bootstrap=bootstrap,
    )
