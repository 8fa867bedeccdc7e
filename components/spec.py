"""Backend-neutral description of an app: services, data stores, migrations and smoke checks.

Topologies (``components/apps``) are data built from these types; platforms
(``components/platforms``) turn them into resources. Nothing here creates a resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pulumi


class Role(str, Enum):
    """What a workload is to the rollout: a data store, an app service or a background worker."""

    DATASTORE = "datastore"
    SERVICE = "service"
    WORKER = "worker"


class Exposure(str, Enum):
    """Who may reach a service: only the internal network, or the public entry point."""

    INTERNAL = "internal"
    PUBLIC = "public"


@dataclass(frozen=True)
class HealthCheck:
    """How a platform decides a workload is healthy: an HTTP path or a command."""

    http_path: str | None = None
    command: tuple[str, ...] = ()
    interval_s: int = 5
    timeout_s: int = 3
    retries: int = 20
    start_period_s: int = 2

    def __post_init__(self) -> None:
        if bool(self.http_path) == bool(self.command):
            msg = "HealthCheck needs exactly one of http_path or command"
            raise ValueError(msg)


@dataclass(frozen=True)
class Resources:
    """Requests/limits of one replica."""

    memory_mb: int = 256
    cpus: float = 0.5


@dataclass(frozen=True)
class Volume:
    """A named data volume mounted into a workload."""

    name: str
    path: str
    size_gb: int = 1


@dataclass(frozen=True)
class ServiceSpec:
    """One workload of an app, described once for every platform."""

    name: str
    image: pulumi.Input[str]
    role: Role = Role.SERVICE
    port: int | None = None
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    file_env: tuple[str, ...] = ()
    """Keys of ``secret_env`` the image also reads from the file ``<KEY>_FILE`` names: Docker
    hands those over as files, out of ``docker inspect``'s sight."""
    health: HealthCheck | None = None
    exposure: Exposure = Exposure.INTERNAL
    replicas: int = 1
    resources: Resources = field(default_factory=Resources)
    depends_on: tuple[str, ...] = ()
    volumes: tuple[Volume, ...] = ()
    command: tuple[str, ...] = ()
    user: str | None = None
    cap_add: tuple[str, ...] = ()
    """Capabilities kept after dropping ALL (a data store's entrypoint may need CHOWN/SETUID)."""
    read_only_root: bool = True
    tmpfs: tuple[str, ...] = ("/tmp",)
    needs_egress: bool = False
    """Needs a route out of the internal network (Haven's search and worker reach Ollama)."""
    egress_hosts: tuple[str, ...] = ()
    """Host:port pairs that egress is for (the NetworkPolicy on Kubernetes)."""

    def __post_init__(self) -> None:
        if self.exposure is Exposure.PUBLIC and self.port is None:
            msg = f"service {self.name!r} is public but has no port"
            raise ValueError(msg)
        overlap = set(self.env) & set(self.secret_env)
        if overlap:
            msg = f"service {self.name!r} sets {sorted(overlap)} both as plain and secret env"
            raise ValueError(msg)
        unknown = set(self.file_env) - set(self.secret_env)
        if unknown:
            msg = f"service {self.name!r}: file_env {sorted(unknown)} are not secret env"
            raise ValueError(msg)


class TlsMode(str, Enum):
    """How the edge terminates TLS: not at all, its own CA, ACME, or a certificate from secrets."""

    OFF = "off"
    INTERNAL = "internal"
    ACME = "acme"
    CERTIFICATE = "certificate"


@dataclass(frozen=True)
class EdgeSpec:
    """The edge proxy (Caddy) in front of the public service: the only published entry.

    It switches to a new release of its upstream only once that release answers its health path,
    and holds the maintenance switch for apps that have none of their own.
    """

    image: pulumi.Input[str]
    upstream: str
    upstream_port: int
    health_path: str
    health_status: int = 200
    """What the upstream's health path answers an anonymous probe (Engramia: 401, DESIGN.md)."""
    maintenance: bool = False
    """Answer 503 with ``Retry-After`` at the edge for every path but ``pass_through``."""
    pass_through: tuple[str, ...] = ()
    window: bool = False
    """The runbook's maintenance window around a migration with pending work (Docker, the
    migration opens it, the smoke test closes it: ``components/edge.py``)."""
    window_pass: tuple[str, ...] = ()
    """Paths served during the window (Engramia: its two health paths, as its own switch)."""
    tls: TlsMode = TlsMode.OFF
    host: str = "localhost"
    acme_email: str | None = None
    certificate: pulumi.Output[str] | None = None
    private_key: pulumi.Output[str] | None = None
    resources: Resources = field(default_factory=lambda: Resources(128, 0.25))


@dataclass(frozen=True)
class PublicEntry:
    """Where the public service is published: bind address and host port (Docker), host (k8s)."""

    service: str
    address: str
    port: int
    scheme: str = "http"
    host: str | None = None
    """The name clients use (TLS): the entry URL names it instead of the bind address."""


@dataclass(frozen=True)
class DatabaseRef:
    """Which data store holds the app's database, and how tasks connect to it."""

    service: str
    database: str
    user: str
    password: pulumi.Output[str]
    port: int = 5432
    image: pulumi.Input[str] = ""
    """Image with the PostgreSQL client tools (psql, pg_dump) used by one-off tasks."""


@dataclass(frozen=True)
class MigrationSpec:
    """How an app's schema is migrated on every release.

    ``sql-dir``: files from ``schema_path`` inside ``source_image`` (init.sql + migrations/*.sql),
    applied by psql with a ledger. ``command``: a command run inside ``source_image``.
    """

    mode: str
    source_image: pulumi.Input[str]
    database: DatabaseRef
    schema_path: str = "/app/schema"
    command: tuple[str, ...] = ()
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    quiescent: tuple[str, ...] = ()
    """Services stopped while pending migrations run (Haven's embedding worker)."""
    baseline: str | None = None
    """For a database that predates the ledger: the last migration file already applied."""
    keep_backups: int = 5
    lock_timeout: str = "5s"
    """PostgreSQL ``lock_timeout`` of migration statements (``appstack:migrationLockTimeout``)."""
    heads_command: tuple[str, ...] = ()
    """``command`` mode: prints the image's head revision(s) as ``<rev> (head)`` lines
    (``alembic heads``); with it, a database already at a head has nothing pending: no backup, no
    window, the migration command does not run."""
    downgrade_command: tuple[str, ...] = ()
    """``command`` mode: downgrades to the revision appended as its last argument (``alembic
    downgrade``), run by ``appstack rollback`` with the current image (an older one does not know
    the newer revisions)."""
    backup_store: BackupStoreSpec | None = None
    """The off-host store each pre-migration backup is shipped to (``appstack:backups``)."""

    def __post_init__(self) -> None:
        if self.mode not in ("sql-dir", "command"):
            msg = f"migration mode {self.mode!r} is not one of sql-dir, command"
            raise ValueError(msg)
        if self.mode == "command" and not self.command:
            msg = "migration mode 'command' needs a command"
            raise ValueError(msg)


@dataclass(frozen=True)
class BackupStoreSpec:
    """An S3-compatible bucket for backups: ``plain`` (endpoint, bucket, prefix, region,
    keep_local, count, max_age_days) and ``secrets`` (access_key, secret_key, encryption_key)."""

    plain: Mapping[str, Any]
    secrets: pulumi.Input[Mapping[str, str]]


@dataclass(frozen=True)
class InitTask:
    """A one-off task run inside the target once its services are healthy (e.g. a bucket)."""

    name: str
    image: pulumi.Input[str]
    command: tuple[str, ...]
    after: tuple[str, ...]
    entrypoint: tuple[str, ...] | None = None
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BootstrapSpec:
    """A first-deploy call that issues the app's owner credential (Engramia's db auth mode).

    ``service``'s image serves ``POST path`` with ``{body_key: token}`` when ``token_env`` holds
    the token, and answers 201 with the key under ``result_key`` (409 once done). The key becomes
    the secret stack output ``output``; the long-running service never gets the token.
    """

    service: str
    path: str
    token: pulumi.Output[str]
    token_env: str
    body_key: str
    result_key: str
    output: str


@dataclass(frozen=True)
class SmokeCheck:
    """One HTTP check against the public entry point."""

    name: str
    path: str
    expect_status: int = 200
    method: str = "GET"
    bearer: pulumi.Output[str] | None = None
    expect_json: Mapping[str, object] = field(default_factory=dict)
    """Key/value pairs that must appear in the JSON body (a dotted key reaches into objects)."""
    timeout_s: float | None = None
    """This check's per-request timeout; None: the spec's (a slow probe gets one of its own)."""
    bearer_from_bootstrap: bool = False
    """Send the key the app's bootstrap issued, where the platform ran it (else ``bearer``)."""


@dataclass(frozen=True)
class SmokeSpec:
    """The checks run after every rollout, and how long they may take."""

    checks: tuple[SmokeCheck, ...]
    deadline_s: float = 90.0
    timeout_s: float = 5.0


@dataclass(frozen=True)
class AppSpec:
    """A whole app: its workloads, its public entry, its migration and its smoke checks."""

    name: str
    services: tuple[ServiceSpec, ...]
    entry: PublicEntry
    migration: MigrationSpec | None = None
    smoke: SmokeSpec | None = None
    init_tasks: tuple[InitTask, ...] = ()
    outputs: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    edge: EdgeSpec | None = None
    bootstrap: BootstrapSpec | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        if len(names) != len(set(names)):
            msg = f"app {self.name!r} has duplicate service names: {names}"
            raise ValueError(msg)
        for svc in self.services:
            for dep in svc.depends_on:
                if dep not in names:
                    msg = f"service {svc.name!r} depends on unknown service {dep!r}"
                    raise ValueError(msg)
        public = [s.name for s in self.services if s.exposure is Exposure.PUBLIC]
        if public != [self.entry.service]:
            msg = f"app {self.name!r}: exactly {self.entry.service!r} must be public, got {public}"
            raise ValueError(msg)
        if self.edge is not None and self.edge.upstream != self.entry.service:
            msg = f"app {self.name!r}: the edge must front {self.entry.service!r}"
            raise ValueError(msg)
        for task in self.init_tasks:
            unknown = set(task.after) - set(names)
            if unknown:
                msg = f"init task {task.name!r} runs after unknown services {sorted(unknown)}"
                raise ValueError(msg)
        if self.migration is not None:
            quiet = set(self.migration.quiescent) - set(names)
            if quiet:
                msg = f"migration names unknown quiescent services {sorted(quiet)}"
                raise ValueError(msg)

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``."""
        for svc in self.services:
            if svc.name == name:
                return svc
        msg = f"app {self.name!r} has no service {name!r}"
        raise KeyError(msg)

    def by_role(self, role: Role) -> tuple[ServiceSpec, ...]:
        """Services of one role, in declaration order."""
        return tuple(s for s in self.services if s.role is role)
