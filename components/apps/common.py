"""Pieces both apps' topologies share: Postgres with pgvector, the edge, capabilities, sizing."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.settings import Settings
from components.spec import (
    EdgeSpec,
    HealthCheck,
    PublicEntry,
    Resources,
    Role,
    ServiceSpec,
    TlsMode,
    Volume,
)

PGDATA_MOUNT = "/var/lib/postgresql/data"
POSTGRES_UID = "999"
"""The official postgres image's uid (the local one's too); its data directory, and so a fresh
volume, is owned by it, so the entrypoint runs as that uid from the start with no capability."""


def sized(settings: Settings, defaults: Mapping[str, Resources], name: str) -> Resources:
    """A service's resources: the app's default, overridden per service in config."""
    base = defaults[name]
    override = settings.overrides[name]
    return Resources(override.memory_mb or base.memory_mb, override.cpus or base.cpus)


def postgres(
    image: str, database: str, user: str, password: pulumi.Output[str], resources: Resources
) -> ServiceSpec:
    """Postgres with pgvector as a data store, gated on ``pg_isready``, data in a volume."""
    return ServiceSpec(
        name="postgres",
        image=image,
        role=Role.DATASTORE,
        port=5432,
        env={
            "POSTGRES_USER": user,
            "POSTGRES_DB": database,
            # A subdirectory: a fresh volume's root may hold lost+found, which initdb refuses.
            "PGDATA": f"{PGDATA_MOUNT}/pgdata",
        },
        secret_env={"POSTGRES_PASSWORD": password},
        file_env=("POSTGRES_PASSWORD",),  # the official entrypoint's POSTGRES_PASSWORD_FILE
        health=HealthCheck(command=("pg_isready", "-h", "127.0.0.1", "-U", user, "-d", database)),
        volumes=(Volume("pgdata", PGDATA_MOUNT, 10),),
        resources=resources,
        user=POSTGRES_UID,
        # It writes only to its data volume, and its socket and lock file to /var/run/postgresql.
        tmpfs=("/tmp", "/var/run/postgresql"),
    )


def edge(
    settings: Settings,
    secrets: Mapping[str, pulumi.Output[str]],
    upstream: ServiceSpec,
    health: tuple[str, int],
    maintenance_pass: tuple[str, ...] | None = None,
    window_pass: tuple[str, ...] | None = None,
) -> tuple[EdgeSpec, PublicEntry]:
    """The edge (Caddy, ``images.caddy``) in front of ``upstream``, and where it is published.

    ``health`` is the upstream's path and the status it answers an anonymous probe; the edge
    switches to a new release only once it does. ``maintenance_pass``, for an app without a
    maintenance switch of its own, makes the edge answer 503 for every other path while
    ``appstack:maintenance`` is on. ``window_pass`` turns on the runbook's maintenance window
    around migrations with pending work, serving only those paths meanwhile.
    """
    public = settings.public
    tls = TlsMode(public.tls)
    spec = EdgeSpec(
        image=settings.images["caddy"].ref,
        upstream=upstream.name,
        upstream_port=upstream.port or 0,
        health_path=health[0],
        health_status=health[1],
        maintenance=settings.maintenance and maintenance_pass is not None,
        pass_through=maintenance_pass or (),
        window=window_pass is not None,
        window_pass=window_pass or (),
        tls=tls,
        host=public.host or "localhost",
        acme_email=public.acme_email,
        certificate=secrets.get("tlsCertificate"),
        private_key=secrets.get("tlsKey"),
        resources=sized(settings, {"caddy": Resources(128, 0.25)}, "caddy"),
    )
    https = tls is not TlsMode.OFF
    entry = PublicEntry(
        upstream.name,
        public.address,
        (public.tls_port or public.port) if https else public.port,
        scheme="https" if https else "http",
        host=public.host if https else None,
    )
    return spec, entry
