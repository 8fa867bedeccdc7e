"""What the monitoring scrapes, for every platform: the jobs, the pods behind them, their secrets.

The Docker component addresses a job by its container alias, the Kubernetes platform by a
headless Service in front of the job's pods; both read the same list from ``scrapes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import edge
from components.monitoring import config
from components.settings import MonitoringSettings
from components.spec import AppSpec

QDRANT_PORT = 6333
MINIO_PORT = 9000
MINIO_TOKEN = "minio-token"  # noqa: S105 - a file name, not a credential
ENGRAMIA_TOKEN = "engramia-metrics-token"  # noqa: S105 - a file name


@dataclass(frozen=True)
class Scrape:
    """One scrape job: the service whose pods/containers serve it, and the credential it needs
    (a name: the file in ``config.SECRETS_DIR``, the key of the Kubernetes Secret)."""

    job: str
    service: str
    port: int
    path: str = "/metrics"
    labels: tuple[tuple[str, str], ...] = ()
    credential: str | None = None


def scrapes(app: AppSpec, settings: MonitoringSettings) -> list[Scrape]:
    """The jobs of one stack: exporter, Alertmanager, the edge, Qdrant, MinIO, Engramia."""
    jobs = [
        Scrape("postgres", "postgres-exporter", config.POSTGRES_EXPORTER_PORT),
        Scrape("alertmanager", "alertmanager", config.ALERTMANAGER_PORT),
    ]
    if app.edge is not None:
        labels = (("app", app.name), ("service", app.edge.upstream))
        jobs.append(Scrape("edge", "caddy", edge.METRICS_PORT, labels=labels))
    names = {s.name for s in app.services}
    if "qdrant" in names and settings.qdrant_metrics:
        jobs.append(Scrape("qdrant", "qdrant", QDRANT_PORT))
    if "minio" in names and settings.minio_metrics:
        jobs.append(
            Scrape("minio", "minio", MINIO_PORT, config.MINIO_METRICS_PATH, credential=MINIO_TOKEN)
        )
    if "api" in names and app.name == "engramia":
        api = app.service("api")
        if "ENGRAMIA_METRICS_TOKEN" in api.secret_env:
            jobs.append(Scrape("engramia", "api", api.port or 0, credential=ENGRAMIA_TOKEN))
    return jobs


def credentials(app: AppSpec, jobs: list[Scrape]) -> dict[str, pulumi.Output[str]]:
    """The secret value of every credential the jobs name (always secret Outputs)."""
    values: dict[str, pulumi.Output[str]] = {}
    for job in jobs:
        if job.credential == MINIO_TOKEN:
            minio = app.service("minio")
            access = minio.secret_env["MINIO_ROOT_USER"]
            secret = minio.secret_env["MINIO_ROOT_PASSWORD"]
            # a fixed issue time: the token changes only with the keys, not on every `up`
            values[MINIO_TOKEN] = pulumi.Output.secret(
                pulumi.Output.all(access, secret).apply(
                    lambda ks: config.minio_token(str(ks[0]), str(ks[1]), now=0)
                )
            )
        elif job.credential == ENGRAMIA_TOKEN:
            token = app.service("api").secret_env["ENGRAMIA_METRICS_TOKEN"]
            values[ENGRAMIA_TOKEN] = pulumi.Output.secret(token)
    return values


def deep_health_key(app: AppSpec) -> pulumi.Output[str] | None:
    """A bearer key for Engramia's deep health: the first static key (auth mode `env`).

    In `db` mode keys live only in Engramia's database (made by its bootstrap): there is none
    to give the probe, so the deep-health alerts are not wired and a warning says so.
    """
    if app.name != "engramia" or "api" not in {s.name for s in app.services}:
        return None
    api = app.service("api")
    keys = api.secret_env.get("ENGRAMIA_API_KEYS")
    if api.env.get("ENGRAMIA_AUTH_MODE") != "env" or keys is None:
        pulumi.log.warn(
            "monitoring: Engramia's deep-health alerts need a static API key (authMode env);"
            " not probed in this stack"
        )
        return None
    return pulumi.Output.secret(
        pulumi.Output.from_input(keys).apply(lambda k: k.split(",")[0].strip())
    )
