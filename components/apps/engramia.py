"""Engramia's topology, written once for every platform (contract: shared/DESIGN.md, "Engramia").

API (port 8000, uid 1001, read-only root with tmpfs /tmp and /app/tmp, data volume /data),
Postgres 16 with pgvector, and Caddy in front as the only public entry. Migrations are
``alembic upgrade head`` inside the API image; maintenance is the app's own switch
(``ENGRAMIA_MAINTENANCE``: every path but the health endpoints answers 503).
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.apps import common
from components.apps.common import sized
from components.settings import Settings
from components.spec import (
    AppSpec,
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
OPTIONAL_ENV = {
    "openaiApiKey": "OPENAI_API_KEY",
    "stripeSecretKey": "STRIPE_SECRET_KEY",
    "stripeWebhookSecret": "STRIPE_WEBHOOK_SECRET",
}


def _smoke(api_key: pulumi.Output[str], maintenance: bool) -> SmokeSpec:
    """Version without auth; deep health with a key, judged by its storage check (DESIGN.md)."""
    deep = SmokeCheck(
        "deep-health",
        "/v1/health/deep",
        200,
        bearer=api_key,
        expect_json={"checks.storage.status": "ok"},
    )
    if maintenance:
        return SmokeSpec(checks=(deep, SmokeCheck("maintenance", "/v1/version", 503)))
    return SmokeSpec(
        checks=(
            SmokeCheck("version", "/v1/version", 200),
            deep,
            SmokeCheck("health-unauthorized", "/v1/health", 401),
        )
    )


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
        "ENGRAMIA_BOOTSTRAP_TOKEN": secrets["bootstrapToken"],
        "ENGRAMIA_METRICS_TOKEN": secrets["metricsToken"],
    }
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
        env={
            "ENGRAMIA_STORAGE": "postgres",
            "ENGRAMIA_AUTH_MODE": "api_key",
            "ENGRAMIA_METRICS": "true",
            "ENGRAMIA_JSON_LOGS": "true",
            "ENGRAMIA_RATE_LIMIT_DEFAULT": "120/minute",
            "ENGRAMIA_RATE_LIMIT_EXPENSIVE": "20/minute",
            "ENGRAMIA_MAINTENANCE": "true" if settings.maintenance else "false",
        },
        secret_env=api_secrets,
        health=HealthCheck(http_path=f"http://127.0.0.1:{API_PORT}/v1/version"),
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
        secret_env={"ENGRAMIA_DATABASE_URL": database_url},
        keep_backups=settings.keep_backups,
    )
    # Engramia has its own maintenance switch: the edge only proxies. `/v1/health` answers an
    # anonymous probe 401 in and out of maintenance, which proves the process serves.
    edge, entry = common.edge(settings, secrets, api, ("/v1/health", 401))
    return AppSpec(
        name="engramia",
        services=(postgres, api),
        entry=entry,
        edge=edge,
        migration=migration,
        smoke=_smoke(secrets["apiKeys"], settings.maintenance),
    )
