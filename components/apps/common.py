"""Pieces both apps' topologies share: Postgres with pgvector, data-store capabilities, sizing."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.settings import Settings
from components.spec import HealthCheck, Resources, Role, ServiceSpec, Volume

# The official entrypoints of postgres and minio start as root, fix volume ownership, then drop
# to their own user: they keep only the capabilities that needs.
DATASTORE_CAPS = ("CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER")
PGDATA_MOUNT = "/var/lib/postgresql/data"


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
        health=HealthCheck(command=("pg_isready", "-h", "127.0.0.1", "-U", user, "-d", database)),
        volumes=(Volume("pgdata", PGDATA_MOUNT, 10),),
        resources=resources,
        cap_add=DATASTORE_CAPS,
        read_only_root=False,
    )
