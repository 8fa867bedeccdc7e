"""Typed, validated stack settings, read once from ``pulumi.Config``.

Every problem with the configuration is collected and raised as one ``ConfigError`` that names each
key at fault, before any resource is declared: a bad ``Pulumi.<stack>.yaml`` fails
``pulumi preview`` and touches nothing.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pulumi
from pulumi.runtime.config import get_config, is_config_secret

from components import config_reference
from components.backup_settings import BACKUP_SECRETS, BackupSettings, parse_backups

NS = "appstack"

# One defaults table: what differs between kinds of stack when Pulumi.<stack>.yaml is silent.
ENVIRONMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {
        "platform": "docker",
        "generateSecrets": True,
        "protectVolumes": False,
        "public": {"address": "127.0.0.1", "port": 8080},
        "keepBackups": 3,
        # Dev runs images built on this machine: a pruned one could not be pulled back.
        "pruneImages": False,
        "replicas": 1,
        "engramiaAuthMode": "env",
        "monitoring": True,
    },
    "staging": {
        "platform": "docker",
        "generateSecrets": False,
        "protectVolumes": True,
        "public": {"address": "0.0.0.0", "port": 8080},
        "keepBackups": 7,
        "pruneImages": True,
        "replicas": 1,
        "engramiaAuthMode": "db",
        "monitoring": True,
    },
    "prod": {
        "platform": "kubernetes",
        "generateSecrets": False,
        "protectVolumes": True,
        "public": {"address": "0.0.0.0", "port": 443},
        "keepBackups": 14,
        "pruneImages": True,
        "replicas": 2,
        "engramiaAuthMode": "db",
        "monitoring": False,  # on only when configured
    },
}

# The images and secrets each app needs; secrets are config keys under the `appstack` namespace.
APP_IMAGES: dict[str, tuple[str, ...]] = {
    "haven": ("gateway", "catalog", "search", "worker", "postgres", "qdrant", "minio", "caddy"),
    "engramia": ("api", "postgres", "caddy"),
}
TLS_MODES = ("off", "internal", "acme", "certificate")
# The edge's certificate and key when `public.tls` is `certificate` (PEM, `--secret`).
TLS_SECRETS = ("tlsCertificate", "tlsKey")
APP_SECRETS: dict[str, tuple[str, ...]] = {
    "haven": (
        "authToken",
        "catalogToken",
        "searchToken",
        "postgresPassword",
        "minioAccessKey",
        "minioSecretKey",
        "hostAgentSecret",
    ),
    "engramia": ("postgresPassword", "apiKeys", "bootstrapToken", "metricsToken"),
}
# Secrets an app reads when present and runs without (never generated).
APP_OPTIONAL_SECRETS: dict[str, tuple[str, ...]] = {
    "haven": TLS_SECRETS,
    "engramia": ("openaiApiKey", "stripeSecretKey", "stripeWebhookSecret", *TLS_SECRETS),
}

# Engramia's ENGRAMIA_AUTH_MODE values appstack deploys. Engramia also takes auto (db whenever a
# database is configured, which it always is here: say db), dev (no auth at all) and oidc (needs an
# identity provider appstack does not configure); anything else it silently treats as auto.
ENGRAMIA_AUTH_MODES = ("env", "db")
ENGRAMIA_RATE_LIMITS = {"default": 60, "expensive": 10, "perKey": 120}
"""Requests per minute (per IP and path; ``expensive``: LLM paths; ``perKey``: per API key)."""
ENGRAMIA_DEEP_CHECKS = ("storage", "migration", "llm", "embedding", "stripe")
"""The named checks of ``/v1/health/deep`` (DESIGN.md)."""
ENGRAMIA_REQUIRED_CHECKS = ("storage", "migration")
"""Deep checks the smoke test requires ``ok`` by default; the others are tolerated (a normal
install has no reachable LLM, embedding or Stripe provider, DESIGN.md)."""

_REGISTRY = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?$"
)
_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_K8S_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$")
_SIZE = re.compile(r"^[1-9][0-9]*(?:Mi|Gi|Ti)$")


class ConfigError(pulumi.RunError):
    """Stack configuration is invalid; the message names every key at fault."""


@dataclass(frozen=True)
class ImageRef:
    """An image reference split into parts, pinned by tag or digest (never ``latest``)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """The reference a container engine pulls: ``registry/repository:tag`` or ``@digest``."""
        base = f"{self.registry}/{self.repository}" if self.registry else self.repository
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"


@dataclass(frozen=True)
class PublicEndpoint:
    """Where the public entry point is published (Docker) or served (Kubernetes Ingress)."""

    address: str
    port: int
    tls_port: int | None = None
    """With TLS on: HTTPS is published here and ``port`` only redirects to it."""
    tls: str = "off"
    """off | internal (the edge's own CA) | acme | certificate (``tlsCertificate``/``tlsKey``)."""
    host: str | None = None
    """The DNS name clients use: the certificate's name (``localhost`` when TLS is internal)."""
    acme_email: str | None = None
    url: str | None = None
    """Where clients reach the entry (``appstack:public.url``): the smoke test probes it and
    ``publicUrl`` shows it. Required when the Docker engine is remote."""


@dataclass(frozen=True)
class ServiceOverrides:
    """Per-service replicas and resource limits."""

    replicas: int
    memory_mb: int | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class OllamaSettings:
    """Ollama is outside the stack: its URL, and optionally a Docker network it is reached on."""

    url: str
    network: str | None = None
    embedding_model: str = "nomic-embed-text"


@dataclass(frozen=True)
class WorkerSettings:
    """Haven's embedding worker tuning."""

    type: str = "embedding"
    poll_interval_s: int = 5
    batch_size: int = 16


@dataclass(frozen=True)
class EngramiaSettings:
    """Engramia's own knobs: how its API authenticates, and its rate limits (requests/minute)."""

    auth_mode: str = "env"
    rate_limit_default: int = ENGRAMIA_RATE_LIMITS["default"]
    rate_limit_expensive: int = ENGRAMIA_RATE_LIMITS["expensive"]
    rate_limit_per_key: int = ENGRAMIA_RATE_LIMITS["perKey"]
    required_checks: tuple[str, ...] = ENGRAMIA_REQUIRED_CHECKS
    """Deep-health checks the smoke test requires ``ok`` (``deepHealth.required``)."""


# The monitoring images a stack runs unless `appstack:monitoring.images` names others (built here
# by `tools/images.sh build monitoring` from Debian's packages).
MONITORING_IMAGES = {
    "prometheus": "appstack.local/prometheus:2.53.3",
    "alertmanager": "appstack.local/alertmanager:0.28.1",
    "postgresExporter": "appstack.local/postgres-exporter:0.17.1",
    "blackboxExporter": "appstack.local/blackbox-exporter:0.26.0",
}
_DURATION = re.compile(r"^[1-9][0-9]*(?:s|m|h|d)$")
_BYTES = {"Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclass(frozen=True)
class MonitoringSettings:
    """``appstack:monitoring``: Prometheus, Alertmanager and exporters beside the app."""

    enabled: bool = False
    stalled_after: str = "10m"
    """How long a chunk may sit in ``processing`` before the stall alert fires."""
    storage_budget_bytes: int = 10 * 2**30
    scrape_interval: str = "15s"
    retention: str = "15d"
    prometheus_port: int | None = None
    """Publish Prometheus on 127.0.0.1:<port> (off unless set)."""
    qdrant_metrics: bool = True
    """Scrape Qdrant's /metrics (the real image serves them; the local double does not)."""
    minio_metrics: bool = True
    images: Mapping[str, str] = field(default_factory=lambda: dict(MONITORING_IMAGES))
    operator: str = "auto"
    """Kubernetes: PrometheusRule/ServiceMonitor objects too: ``auto`` (when the cluster serves
    the prometheus-operator's CRDs), ``true`` (required), ``false``."""
    operator_namespace: str = "monitoring"
    """Kubernetes: namespace of the operator's Prometheus, let in to scrape the targets."""
    operator_labels: Mapping[str, str] = field(default_factory=dict)
    """Kubernetes: labels on the PrometheusRule/ServiceMonitor objects (the operator's
    Prometheus selects them by label, e.g. ``release: kube-prometheus-stack``)."""


@dataclass(frozen=True)
class KubernetesSettings:
    """Kubernetes-only settings: namespace, ingress, storage, and the offline render mode."""

    namespace: str
    ingress_class: str = "nginx"
    ingress_host: str = "haven.example.com"
    tls_secret: str | None = None
    tls: bool = False
    storage_class: str | None = None
    storage_size: str = "10Gi"
    render_to: str | None = None
    kubeconfig_context: str | None = None
    ingress_namespace: str = "ingress-nginx"
    """Namespace of the ingress controller: the only source allowed to reach the public service."""
    pdb_min_available: Mapping[str, int] = field(default_factory=dict)
    """Per-service PodDisruptionBudget minAvailable (default: replicas - 1 when replicas >= 2)."""
    skip_cluster_tasks: bool = False
    """Declare no step that needs a container to run (Migration, init Jobs, SmokeTest): only for
    clusters whose nodes run none (kwok); the update warns that they were skipped."""


@dataclass(frozen=True)
class Settings:
    """Everything the program reads from config, validated."""

    project: str
    stack: str
    environment: str
    app: str
    platform: str
    images: Mapping[str, ImageRef]
    public: PublicEndpoint
    overrides: Mapping[str, ServiceOverrides]
    ollama: OllamaSettings
    worker: WorkerSettings
    qdrant_collection: str
    minio_bucket: str
    generate_secrets: bool
    protect_volumes: bool
    keep_backups: int
    prune_images: bool
    """After a smoke-tested release, remove older images of its repositories (Docker), keeping
    the previous release's for a rollback."""
    maintenance: bool
    migration_baseline: str | None
    deploy_timeout_s: int
    """How long a new release may take to become healthy before it is given up (Docker)."""
    docker_host: str | None
    secrets: Mapping[str, pulumi.Output[str]]
    """Secrets given in config (always secret Outputs)."""
    missing_secrets: tuple[str, ...]
    """Required secrets absent from config: generated when ``generate_secrets``."""
    kubernetes: KubernetesSettings | None = None
    extra_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    engramia: EngramiaSettings = field(default_factory=EngramiaSettings)
    migration_lock_timeout: str = "5s"
    """PostgreSQL ``lock_timeout`` of migration statements (``appstack:migrationLockTimeout``)."""
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    backups: BackupSettings = field(default_factory=BackupSettings)
    """The off-host store of backups (``appstack:backups``, components/backup_settings.py)."""

    @property
    def prefix(self) -> str:
        """Physical-name prefix: the stack name first, so two stacks can share an engine."""
        return f"{self.stack}-{self.app}"

    def replicas(self, service: str) -> int:
        """Replica count of a service."""
        return self.overrides[service].replicas


# Every top-level `appstack:` key the settings read (secrets are listed per app above). A key in
# config that is none of these is a typo or a leftover, refused by name before anything is
# deployed (`tests/unit/test_settings.py` checks this table against what the code reads).
CONFIG_KEYS = tuple(dict.fromkeys(key.top for key in config_reference.KEYS))
"""Every top-level ``appstack:`` key, from the configuration reference (README's table)."""


class TrackedConfig(pulumi.Config):
    """A ``pulumi.Config`` that remembers which top-level keys were read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.read: set[str] = set()

    def _get(self, key: str, use: Any = None, instead_of: Any = None) -> str | None:
        self.read.add(key.split(".", 1)[0])
        return super()._get(key, use, instead_of)


def known_keys() -> set[str]:
    """Every top-level key of the `appstack:` namespace, secrets of every app included."""
    secrets = {k for keys in (*APP_SECRETS.values(), *APP_OPTIONAL_SECRETS.values()) for k in keys}
    secrets.update(BACKUP_SECRETS)
    return set(CONFIG_KEYS) | secrets


def configured_keys() -> set[str]:
    """The top-level `appstack:` keys the stack's configuration sets."""
    from pulumi.runtime.config import CONFIG, get_config_env

    every = {**get_config_env(), **CONFIG.get()}
    prefix = f"{NS}:"
    return {k[len(prefix) :].split(".", 1)[0] for k in every if k.startswith(prefix)}


def _check_unknown_keys(r: _Reader) -> None:
    import difflib

    known = known_keys()
    for key in sorted(configured_keys() - known):
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {NS}:{close[0]}?" if close else f"known: {', '.join(sorted(known))}"
        r.fail(key, f"unknown key ({hint})")


class _Reader:
    """Reads raw config values and collects every error before raising once."""

    def __init__(self, config: pulumi.Config) -> None:
        self.config = config
        self.errors: list[str] = []

    def fail(self, key: str, problem: str) -> None:
        self.errors.append(f"{NS}:{key}: {problem}")

    def obj(self, key: str, default: Any = None) -> Any:
        try:
            value = self.config.get_object(key)
        except Exception as exc:  # a value that is not JSON/YAML of the expected shape
            self.fail(key, f"is not a valid object ({exc})")
            return default
        return default if value is None else value

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self.config.get(key)
        return default if value is None else value

    def bool_(self, key: str, default: bool) -> bool:
        raw = self.config.get(key)
        if raw is None:
            return default
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        self.fail(key, f"must be true or false, got {raw!r}")
        return default

    def int_(self, key: str, value: Any, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.fail(key, f"must be an integer in [{low}, {high}], got {value!r}")
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(key, f"must be an integer in [{low}, {high}], got {value!r}")
            return None
        if not low <= number <= high:
            self.fail(key, f"{number} is out of range [{low}, {high}]")
            return None
        return number


def _parse_image(r: _Reader, service: str, raw: Any) -> ImageRef | None:
    key = f"images.{service}"
    if isinstance(raw, str):
        return _parse_image_string(r, key, raw)
    if not isinstance(raw, dict):
        r.fail(key, "must be an object {registry, repository, tag | digest} or a reference")
        return None
    unknown = set(raw) - {"registry", "repository", "tag", "digest"}
    if unknown:
        r.fail(key, f"unknown fields {sorted(unknown)}")
    registry = str(raw.get("registry", ""))
    repository = str(raw.get("repository", ""))
    tag = raw.get("tag")
    digest = raw.get("digest")
    return _check_image(r, key, registry, repository, tag, digest)


def _parse_image_string(r: _Reader, key: str, ref: str) -> ImageRef | None:
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
    registry, _, repository = ref.partition("/")
    if not repository or ("." not in registry and ":" not in registry and registry != "localhost"):
        r.fail(key, f"reference {ref!r} must start with a registry host (e.g. ghcr.io/org/app)")
        return None
    return _check_image(r, key, registry, repository, tag, digest)


def _check_image(
    r: _Reader, key: str, registry: str, repository: str, tag: Any, digest: Any
) -> ImageRef | None:
    before = len(r.errors)
    if registry and not _REGISTRY.match(registry):
        r.fail(f"{key}.registry", f"{registry!r} is not a registry host[:port]")
    if not _REPOSITORY.match(repository):
        r.fail(f"{key}.repository", f"{repository!r} is not a valid repository path")
    if tag is not None and digest is not None:
        r.fail(key, "sets both a tag and a digest: pin by one of them")
    elif tag is None and digest is None:
        r.fail(key, "has no tag or digest: pin the image (`latest` is not allowed)")
    elif tag is not None:
        tag = str(tag)
        if tag == "latest":
            r.fail(f"{key}.tag", "`latest` is not allowed: pin a version or a digest")
        elif not _TAG.match(tag):
            r.fail(f"{key}.tag", f"{tag!r} is not a valid tag")
    elif not _DIGEST.match(str(digest)):
        r.fail(f"{key}.digest", f"{digest!r} is not sha256:<64 hex>")
    if len(r.errors) != before:
        return None
    return ImageRef(registry, repository, tag, str(digest) if digest is not None else None)


def _parse_public(r: _Reader, defaults: Mapping[str, Any]) -> PublicEndpoint:
    raw = {**defaults, **(r.obj("public", {}) or {})}
    unknown = set(raw) - {"address", "port", "tlsPort", "tls", "host", "acmeEmail", "url"}
    if unknown:
        r.fail("public", f"unknown fields {sorted(unknown)}")
    address = str(raw.get("address"))
    try:
        ipaddress.ip_address(address)
    except ValueError:
        r.fail("public.address", f"{address!r} is not an IP address")
    port = r.int_("public.port", raw.get("port"), 1, 65535) or 0
    tls_port = None
    if raw.get("tlsPort") is not None:
        tls_port = r.int_("public.tlsPort", raw.get("tlsPort"), 1, 65535)
        if tls_port is not None and tls_port == port:
            r.fail("public.tlsPort", f"{tls_port} is already used by appstack:public.port")
    tls = str(raw.get("tls", "off"))
    if tls not in TLS_MODES:
        r.fail("public.tls", f"{tls!r} is not one of {', '.join(TLS_MODES)}")
        tls = "off"
    host = raw.get("host")
    if host is not None and not _DNS_NAME.match(str(host)):
        r.fail("public.host", f"{host!r} is not a DNS name")
    if tls == "acme" and host is None:
        r.fail("public.host", "is required with public.tls acme: the name ACME certifies")
    email = raw.get("acmeEmail")
    if tls == "acme" and not email:
        r.fail("public.acmeEmail", "is required with public.tls acme")
    elif email is not None and "@" not in str(email):
        r.fail("public.acmeEmail", f"{email!r} is not an e-mail address")
    if tls == "off" and tls_port is not None:
        r.fail("public.tlsPort", "is set but public.tls is off")
    if tls != "off" and host is None:
        host = "localhost"
    url = _parse_public_url(r, raw.get("url"))
    return PublicEndpoint(
        address,
        port,
        tls_port,
        tls,
        str(host) if host else None,
        str(email) if email else None,
        url,
    )


def _parse_public_url(r: _Reader, raw: Any) -> str | None:
    """``appstack:public.url``: an ``http(s)://host[:port][/path]`` URL, without its last slash."""
    if raw is None:
        return None
    url = str(raw).strip()
    parsed = urlparse(url)
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        r.fail("public.url", f"{url!r} has a bad port")
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        r.fail("public.url", f"{url!r} is not an http:// or https:// URL with a host")
        return None
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        r.fail("public.url", f"{url!r} must not carry credentials, a query or a fragment")
        return None
    return url.rstrip("/")


REMOTE_ENGINE_SCHEMES = ("ssh", "tcp", "http", "https")


def _check_remote_entry(r: _Reader, settings: Settings, env_docker_host: str | None) -> None:
    """A remote engine publishes its port on another machine: the entry URL cannot be guessed."""
    if settings.platform != "docker" or settings.public.url:
        return
    host = settings.docker_host or env_docker_host or ""
    scheme = urlparse(host).scheme
    if scheme in REMOTE_ENGINE_SCHEMES:
        key = "dockerHost" if settings.docker_host else "DOCKER_HOST"
        r.fail(
            "public.url",
            f"is required when the Docker engine is remote ({key}={host}): the URL clients and "
            "the smoke test reach the entry at, e.g. http://staging.example.com:8080",
        )


_LOCK_TIMEOUT = re.compile(r"^[1-9][0-9]*(ms|s|min)$")


def _parse_lock_timeout(r: _Reader) -> str:
    """``appstack:migrationLockTimeout``: PostgreSQL's lock_timeout for migration statements."""
    value = (r.str_("migrationLockTimeout", "5s") or "").strip()
    if not _LOCK_TIMEOUT.match(value):
        r.fail(
            "migrationLockTimeout",
            f"{value!r} is not a duration like 500ms, 5s or 2min (how long a migration statement "
            "may wait for a table lock before it fails)",
        )
        return "5s"
    return value


def _check_platform_limits(r: _Reader, settings: Settings) -> None:
    """What the chosen platform cannot do, named by key before anything is deployed."""
    if settings.public.tls == "certificate":
        for key in TLS_SECRETS:
            if key not in settings.secrets:
                r.fail(key, "is required with public.tls certificate (PEM, set with --secret)")
    if settings.platform != "docker":
        _check_prod_replicas(r, settings)
        return
    for name, override in settings.overrides.items():
        if override.replicas > 1:
            r.fail(
                f"services.{name}.replicas",
                f"{override.replicas}: the Docker platform runs one container per service "
                "(its releases overlap instead); use the kubernetes platform to scale out",
            )


PROD_MIN_REPLICAS = {"engramia": {"api": 2}}
"""Replicas a prod stack on Kubernetes must keep (Engramia's runbook: the API >= 2, DESIGN.md)."""


def _check_prod_replicas(r: _Reader, settings: Settings) -> None:
    if settings.environment != "prod":
        return
    for name, least in PROD_MIN_REPLICAS.get(settings.app, {}).items():
        have = settings.replicas(name)
        if have < least:
            r.fail(
                f"services.{name}.replicas",
                f"{have}: prod keeps at least {least} replicas of {settings.app}'s {name} "
                "(a rolling update or a node loss would leave none serving)",
            )


def _parse_overrides(r: _Reader, app: str, default_replicas: int) -> dict[str, ServiceOverrides]:
    raw = r.obj("services", {}) or {}
    known = APP_IMAGES.get(app, ())
    if not isinstance(raw, dict):
        r.fail("services", "must be an object keyed by service name")
        raw = {}
    for name in raw:
        if name not in known:
            r.fail(f"services.{name}", f"unknown service {name!r}; known: {', '.join(known)}")
    result: dict[str, ServiceOverrides] = {}
    for name in known:
        entry = raw.get(name, {}) or {}
        if not isinstance(entry, dict):
            r.fail(f"services.{name}", "must be an object")
            entry = {}
        unknown = set(entry) - {"replicas", "memoryMb", "cpus"}
        if unknown:
            r.fail(f"services.{name}", f"unknown fields {sorted(unknown)}")
        replicas = r.int_(
            f"services.{name}.replicas", entry.get("replicas", default_replicas), 1, 100
        )
        memory = entry.get("memoryMb")
        memory_mb = r.int_(f"services.{name}.memoryMb", memory, 16, 1 << 20) if memory else None
        cpus = entry.get("cpus")
        if cpus is not None and (
            isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus <= 0
        ):
            r.fail(f"services.{name}.cpus", f"must be a positive number, got {cpus!r}")
            cpus = None
        result[name] = ServiceOverrides(replicas or 1, memory_mb, cpus)
    return result


def _parse_ollama(r: _Reader) -> OllamaSettings:
    raw = r.obj("ollama", {}) or {}
    url = str(raw.get("url", "http://host.docker.internal:11434"))
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        r.fail("ollama.url", f"{url!r} must be an http(s) URL with a host")
    network = raw.get("network")
    model = str(raw.get("embeddingModel", "nomic-embed-text"))
    return OllamaSettings(url.rstrip("/"), str(network) if network else None, model)


def _parse_worker(r: _Reader) -> WorkerSettings:
    raw = r.obj("worker", {}) or {}
    kind = str(raw.get("type", "embedding"))
    if kind not in ("embedding", "intents", "both"):
        r.fail("worker.type", f"{kind!r} is not one of embedding, intents, both")
    poll = r.int_("worker.pollInterval", raw.get("pollInterval", 5), 1, 3600) or 5
    batch = r.int_("worker.batchSize", raw.get("batchSize", 16), 1, 10000) or 16
    return WorkerSettings(kind, poll, batch)


def _parse_engramia(r: _Reader, app: str, default_mode: str) -> EngramiaSettings:
    raw = r.obj("engramia", {}) or {}
    if not isinstance(raw, dict):
        r.fail("engramia", "must be an object {authMode, rateLimits, requiredChecks}")
        raw = {}
    if raw and app != "engramia":
        r.fail("engramia", f"is set but appstack:app is {app!r}")
    unknown = set(raw) - {"authMode", "rateLimits", "requiredChecks"}
    if unknown:
        r.fail("engramia", f"unknown fields {sorted(unknown)}")
    mode = str(raw.get("authMode", default_mode))
    if mode not in ENGRAMIA_AUTH_MODES:
        r.fail(
            "engramia.authMode",
            f"{mode!r} is not one of {', '.join(ENGRAMIA_AUTH_MODES)} (Engramia would treat an "
            "unknown mode as auto, which with a database ignores ENGRAMIA_API_KEYS)",
        )
        mode = default_mode
    limits = raw.get("rateLimits", {}) or {}
    if not isinstance(limits, dict):
        r.fail("engramia.rateLimits", "must be an object {default, expensive, perKey}")
        limits = {}
    unknown = set(limits) - set(ENGRAMIA_RATE_LIMITS)
    if unknown:
        r.fail("engramia.rateLimits", f"unknown fields {sorted(unknown)}")
    # Engramia reads each with int() at start-up: `120/minute` would crash the API container.
    value = {
        name: r.int_(f"engramia.rateLimits.{name}", limits.get(name, default), 1, 1_000_000)
        or default
        for name, default in ENGRAMIA_RATE_LIMITS.items()
    }
    required = raw.get("requiredChecks", list(ENGRAMIA_REQUIRED_CHECKS))
    if not isinstance(required, list) or not all(isinstance(c, str) for c in required):
        r.fail("engramia.requiredChecks", f"must be a list of check names, got {required!r}")
        required = list(ENGRAMIA_REQUIRED_CHECKS)
    bad = [c for c in required if c not in ENGRAMIA_DEEP_CHECKS]
    if bad:
        r.fail(
            "engramia.requiredChecks",
            f"{bad} not among deep health's checks {', '.join(ENGRAMIA_DEEP_CHECKS)}",
        )
    return EngramiaSettings(
        mode, value["default"], value["expensive"], value["perKey"], tuple(required)
    )


def _parse_secrets(
    r: _Reader, app: str, generate: bool, environment: str
) -> tuple[dict[str, pulumi.Output[str]], tuple[str, ...]]:
    given: dict[str, pulumi.Output[str]] = {}
    missing: list[str] = []
    required = APP_SECRETS.get(app, ())
    for key in required + APP_OPTIONAL_SECRETS.get(app, ()):
        full = f"{NS}:{key}"
        if get_config(full) is None:
            if key in required:
                missing.append(key)
            continue
        if not is_config_secret(full):
            r.fail(key, f"is set in plaintext; set it with `pulumi config set --secret {key}`")
            continue
        value = r.config.get_secret(key)
        if value is not None:
            given[key] = value
    if missing and not generate:
        r.fail(
            missing[0] if len(missing) == 1 else f"{{{','.join(missing)}}}",
            f"required secret(s) {', '.join(missing)} missing on a {environment} stack "
            "(it does not generate secrets); set each with `pulumi config set --secret KEY`",
        )
    return given, tuple(missing)


def _parse_kubernetes(r: _Reader, stack: str, app: str) -> KubernetesSettings:
    raw = r.obj("kubernetes", {}) or {}
    if not isinstance(raw, dict):
        r.fail("kubernetes", "must be an object")
        raw = {}
    known = {
        "namespace", "ingressClass", "ingressHost", "tls", "tlsSecret",
        "storageClass", "storageSize", "renderManifestsTo", "context",
        "ingressNamespace", "pdbMinAvailable", "skipClusterTasks",
    }  # fmt: skip
    unknown = set(raw) - known
    if unknown:
        r.fail("kubernetes", f"unknown fields {sorted(unknown)}")

    def label(key: str, default: str) -> str:
        value = str(raw.get(key, default))
        if not _DNS_NAME.match(value) or "." in value or len(value) > 63:
            r.fail(f"kubernetes.{key}", f"{value!r} is not a DNS-1123 label")
        return value

    namespace = label("namespace", f"{stack}-{app}")
    ingress_namespace = label("ingressNamespace", "ingress-nginx")
    ingress_class = str(raw.get("ingressClass", "nginx"))
    if not _K8S_NAME.match(ingress_class):
        r.fail("kubernetes.ingressClass", f"{ingress_class!r} is not a valid IngressClass name")
    host = str(raw.get("ingressHost", f"{app}.example.com"))
    if not _DNS_NAME.match(host) or "." not in host:
        r.fail("kubernetes.ingressHost", f"{host!r} is not a DNS name")
    storage_class = raw.get("storageClass")
    if storage_class is not None and not _K8S_NAME.match(str(storage_class)):
        r.fail("kubernetes.storageClass", f"{storage_class!r} is not a valid StorageClass name")
    size = str(raw.get("storageSize", "10Gi"))
    if not _SIZE.match(size):
        r.fail("kubernetes.storageSize", f"{size!r} must look like 10Gi (Mi, Gi or Ti)")
    tls = _flag(r, raw, "tls")
    skip_tasks = _flag(r, raw, "skipClusterTasks")
    tls_secret = raw.get("tlsSecret")
    if tls and not tls_secret:
        r.fail("kubernetes.tlsSecret", "is required when kubernetes.tls is true")
    elif tls_secret and not _K8S_NAME.match(str(tls_secret)):
        r.fail("kubernetes.tlsSecret", f"{tls_secret!r} is not a valid Secret name")
    render_to = raw.get("renderManifestsTo")
    context = raw.get("context")

    # A PodDisruptionBudget must leave room for one eviction: minAvailable < replicas. Replicas
    # are parsed again here (errors in them are already reported by the main parse).
    environment = r.str_("environment", stack if stack in ENVIRONMENT_DEFAULTS else None)
    env_defaults = ENVIRONMENT_DEFAULTS.get(environment or "", ENVIRONMENT_DEFAULTS["dev"])
    replicas = _parse_overrides(_Reader(r.config), app, env_defaults["replicas"])
    pdb_raw = raw.get("pdbMinAvailable", {}) or {}
    pdb: dict[str, int] = {}
    if not isinstance(pdb_raw, dict):
        r.fail("kubernetes.pdbMinAvailable", "must be an object keyed by service name")
        pdb_raw = {}
    for service, value in pdb_raw.items():
        key = f"kubernetes.pdbMinAvailable.{service}"
        if service not in replicas:
            r.fail(key, f"unknown service {service!r}; known: {', '.join(replicas)}")
            continue
        number = r.int_(key, value, 1, 100)
        if number is None:
            continue
        count = replicas[service].replicas
        if number >= count:
            r.fail(
                key,
                f"minAvailable {number} with {count} replica(s) makes a PodDisruptionBudget "
                f"impossible (no pod could ever be evicted); raise appstack:services.{service}"
                f".replicas above {number} or lower it",
            )
            continue
        pdb[service] = number
    return KubernetesSettings(
        namespace=namespace,
        ingress_class=ingress_class,
        ingress_host=host,
        tls_secret=str(tls_secret) if tls_secret else None,
        tls=tls,
        storage_class=str(storage_class) if storage_class else None,
        storage_size=size,
        render_to=str(render_to) if render_to else None,
        kubeconfig_context=str(context) if context else None,
        ingress_namespace=ingress_namespace,
        pdb_min_available=pdb,
        skip_cluster_tasks=skip_tasks,
    )


_MONITORING_KEYS = (
    "enabled", "stalledAfter", "storageBudget", "scrapeInterval", "retention", "prometheusPort",
    "qdrantMetrics", "minioMetrics", "images", "operator", "operatorNamespace", "operatorLabels",
)  # fmt: skip
MONITORING_OPERATOR = ("auto", "true", "false")


def _parse_monitoring(r: _Reader, default: bool, platform: str) -> MonitoringSettings:
    """``appstack:monitoring``: true/false, or an object of the fields above."""
    raw = r.obj("monitoring", None)
    if raw is None or isinstance(raw, bool):
        enabled = default if raw is None else raw
        raw = {}
    elif isinstance(raw, str) and raw.lower() in ("true", "false"):
        enabled, raw = raw.lower() == "true", {}
    elif isinstance(raw, dict):
        enabled = raw.get("enabled", default)
        if isinstance(enabled, str) and enabled.lower() in ("true", "false"):
            enabled = enabled.lower() == "true"
        if not isinstance(enabled, bool):
            r.fail("monitoring.enabled", f"must be true or false, got {enabled!r}")
            enabled = False
    else:
        r.fail("monitoring", "must be true, false or an object {enabled, stalledAfter, ...}")
        return MonitoringSettings()
    for key in sorted(set(raw) - set(_MONITORING_KEYS)):
        r.fail(f"monitoring.{key}", f"unknown field; known: {', '.join(_MONITORING_KEYS)}")
    operator = str(raw.get("operator", "auto")).lower()
    if operator not in MONITORING_OPERATOR:
        r.fail("monitoring.operator", f"must be one of auto, true, false; got {operator!r}")
        operator = "auto"
    operator_ns = raw.get("operatorNamespace", MonitoringSettings.operator_namespace)
    if not isinstance(operator_ns, str) or not _K8S_NAME.match(operator_ns):
        r.fail("monitoring.operatorNamespace", f"must be a namespace name, got {operator_ns!r}")
        operator_ns = MonitoringSettings.operator_namespace
    operator_labels = raw.get("operatorLabels") or {}
    if not isinstance(operator_labels, dict) or not all(
        isinstance(k, str) and _K8S_NAME.match(k.rpartition("/")[2]) and isinstance(v, str)
        for k, v in operator_labels.items()
    ):
        r.fail(
            "monitoring.operatorLabels", f"must map label names to strings, got {operator_labels!r}"
        )
        operator_labels = {}
    if raw.get("prometheusPort") is not None and platform == "kubernetes":
        r.fail(
            "monitoring.prometheusPort",
            "publishes on the Docker host; on kubernetes Prometheus stays in the cluster "
            "(kubectl port-forward svc/prometheus 9090)",
        )
        raw = {k: v for k, v in raw.items() if k != "prometheusPort"}

    def duration(key: str, fallback: str) -> str:
        value = raw.get(key, fallback)
        if not isinstance(value, str) or not _DURATION.match(value):
            r.fail(
                f"monitoring.{key}", f"must be a duration like 30s, 10m, 2h or 15d, got {value!r}"
            )
            return fallback
        return value

    def flag(key: str) -> bool:
        value = raw.get(key, True)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            r.fail(f"monitoring.{key}", f"must be true or false, got {value!r}")
            return True
        return value

    budget = MonitoringSettings.storage_budget_bytes
    raw_budget = raw.get("storageBudget")
    if raw_budget is not None:
        text = str(raw_budget)
        if not _SIZE.match(text):
            r.fail("monitoring.storageBudget", f"{text!r} must look like 512Mi, 10Gi or 1Ti")
        else:
            budget = int(text[:-2]) * _BYTES[text[-2:]]
    port = None
    if raw.get("prometheusPort") is not None:
        port = r.int_("monitoring.prometheusPort", raw["prometheusPort"], 1024, 65535)
    images = dict(MONITORING_IMAGES)
    raw_images = raw.get("images", {}) or {}
    if not isinstance(raw_images, dict):
        r.fail("monitoring.images", "must be an object keyed by " + ", ".join(MONITORING_IMAGES))
        raw_images = {}
    for name, ref in raw_images.items():
        if name not in MONITORING_IMAGES:
            r.fail(
                f"monitoring.images.{name}", f"unknown image; known: {', '.join(MONITORING_IMAGES)}"
            )
            continue
        if not isinstance(ref, str):
            r.fail(f"monitoring.images.{name}", f"must be an image reference, got {ref!r}")
            continue
        parsed = _parse_image_string(r, f"monitoring.images.{name}", ref)
        if parsed is not None:
            images[name] = parsed.ref
    return MonitoringSettings(
        enabled=enabled,
        stalled_after=duration("stalledAfter", MonitoringSettings.stalled_after),
        storage_budget_bytes=budget,
        scrape_interval=duration("scrapeInterval", MonitoringSettings.scrape_interval),
        retention=duration("retention", MonitoringSettings.retention),
        prometheus_port=port,
        qdrant_metrics=flag("qdrantMetrics"),
        minio_metrics=flag("minioMetrics"),
        images=images,
        operator=operator,
        operator_namespace=operator_ns,
        operator_labels=dict(operator_labels),
    )


def _flag(r: _Reader, raw: Mapping[str, Any], key: str) -> bool:
    """A boolean field of ``appstack:kubernetes`` (also as text), false when absent."""
    value = raw.get(key, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        r.fail(f"kubernetes.{key}", f"must be true or false, got {value!r}")
        return False
    return value


def load(
    config: pulumi.Config | None = None,
    stack: str | None = None,
    project: str | None = None,
    check_extra: Callable[[Settings], list[str]] | None = None,
) -> Settings:
    """Read and validate the stack's settings; raise one ``ConfigError`` naming every bad key."""
    stack = stack or pulumi.get_stack()
    project = project or pulumi.get_project()
    r = _Reader(config or TrackedConfig(NS))
    _check_unknown_keys(r)

    environment = r.str_("environment", stack if stack in ENVIRONMENT_DEFAULTS else None)
    if environment not in ENVIRONMENT_DEFAULTS:
        r.fail("environment", f"{environment!r} is not one of {', '.join(ENVIRONMENT_DEFAULTS)}")
        environment = "dev"
    defaults = ENVIRONMENT_DEFAULTS[environment]

    app = r.str_("app", "haven") or "haven"
    if app not in APP_IMAGES:
        r.fail("app", f"{app!r} is not one of {', '.join(APP_IMAGES)}")
        app = "haven"
    platform = r.str_("platform", defaults["platform"]) or "docker"
    if platform not in ("docker", "kubernetes"):
        r.fail("platform", f"{platform!r} is not one of docker, kubernetes")

    raw_images = r.obj("images", {}) or {}
    images: dict[str, ImageRef] = {}
    if not isinstance(raw_images, dict):
        r.fail("images", "must be an object keyed by service name")
        raw_images = {}
    for name in raw_images:
        if name not in APP_IMAGES[app]:
            r.fail(
                f"images.{name}", f"unknown service {name!r}; known: {', '.join(APP_IMAGES[app])}"
            )
    for name in APP_IMAGES[app]:
        if name not in raw_images:
            r.fail(f"images.{name}", "is required: pin the image of every service")
            continue
        image = _parse_image(r, name, raw_images[name])
        if image is not None:
            images[name] = image

    generate = r.bool_("generateSecrets", defaults["generateSecrets"])
    secrets, missing = _parse_secrets(r, app, generate, environment)
    keep = r.int_("keepBackups", r.obj("keepBackups", defaults["keepBackups"]), 1, 1000)
    settings = Settings(
        project=project,
        stack=stack,
        environment=environment,
        app=app,
        platform=platform,
        images=images,
        public=_parse_public(r, defaults["public"]),
        # Docker runs one container per service whatever the environment's default says.
        overrides=_parse_overrides(r, app, defaults["replicas"] if platform != "docker" else 1),
        ollama=_parse_ollama(r),
        worker=_parse_worker(r),
        qdrant_collection=r.str_("qdrantCollection", "haven_chunks") or "haven_chunks",
        minio_bucket=r.str_("minioBucket", "haven-files") or "haven-files",
        generate_secrets=generate,
        protect_volumes=r.bool_("protectVolumes", defaults["protectVolumes"]),
        keep_backups=keep or 1,
        prune_images=r.bool_("pruneImages", defaults["pruneImages"]),
        maintenance=r.bool_("maintenance", False),
        migration_baseline=r.str_("migrationBaseline"),
        deploy_timeout_s=r.int_("deployTimeout", r.obj("deployTimeout", 180), 10, 3600) or 180,
        docker_host=r.str_("dockerHost"),
        secrets=secrets,
        missing_secrets=missing,
        kubernetes=_parse_kubernetes(r, stack, app) if platform == "kubernetes" else None,
        engramia=_parse_engramia(r, app, defaults["engramiaAuthMode"]),
        migration_lock_timeout=_parse_lock_timeout(r),
        monitoring=_parse_monitoring(r, defaults.get("monitoring", False), platform),
        backups=parse_backups(r),
    )
    _check_platform_limits(r, settings)
    _check_remote_entry(r, settings, os.environ.get("DOCKER_HOST"))
    if check_extra is not None:
        r.errors.extend(check_extra(settings))
    if r.errors:
        msg = "invalid stack configuration:\n  " + "\n  ".join(r.errors)
        raise ConfigError(msg)
    return settings
