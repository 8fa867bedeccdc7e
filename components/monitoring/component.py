"""The monitoring component on the Docker platform: Prometheus, Alertmanager and the exporters.

Containers (all on the stack's internal network, nothing published unless
``appstack:monitoring.prometheusPort`` says so):
- ``prometheus``: scrapes the edge's metrics listener (it also joins the edge network, where Caddy
  serves ``:2020/metrics``; the admin API stays on localhost), postgres-exporter, Qdrant and
  MinIO (Haven), Engramia's ``/metrics`` with its token, the blackbox exporter's deep-health
  probes (Engramia), Alertmanager; loads the rule files of ``components/monitoring/rules``.
  Its TSDB is on a volume of its own.
- ``alertmanager``: one route to a receiver with no integrations (operators add theirs).
- ``postgres-exporter``: the default metrics plus appstack's queries (database size against the
  budget; Haven's chunks in ``processing`` and ``failed``).
- ``blackbox`` (Engramia, when a static API key exists): probes ``/v1/health/deep``.

Config files travel in each container's env and a ``sh -c`` writes them to a tmpfs before it
``exec``s the server without those variables (no one-off task, no volume to keep in step: a config
change is an input change, so the container is replaced like any release). Credentials (the
metrics token, an API key, MinIO's bearer token, the database password) are written to mode-0400
files the servers read (``credentials_file``, ``DATA_SOURCE_PASS_FILE``); the container's env is a
secret output of the engine resource, as for every service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.monitoring import config, targets
from components.providers import engine
from components.settings import MonitoringSettings
from components.spec import AppSpec

TYPE = "appstack:monitoring:Monitoring"


def secret_file(path: str) -> str:
    """The secret file's name for ``path``, which must lie in ``config.SECRETS_DIR``."""
    folder, _, file_name = path.rpartition("/")
    if folder != config.SECRETS_DIR:
        msg = f"monitoring: credential file {path!r} is not in {config.SECRETS_DIR}"
        raise ValueError(msg)
    return file_name


@dataclass(frozen=True)
class MonitoringArgs:
    """Where the monitoring runs and what it watches."""

    settings: MonitoringSettings
    app: AppSpec
    stack: str
    prefix: str
    internal_network: pulumi.Input[str]
    edge_network: pulumi.Input[str]
    docker_host: str | None = None
    deploy_timeout_s: int = 180
    protect_volume: bool = False


class Monitoring(pulumi.ComponentResource):
    """Prometheus, Alertmanager and exporters for one stack on one Docker engine."""

    containers: dict[str, engine.Container]
    prometheus_container: pulumi.Output[str]
    rule_files: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name = name
        self._args = args
        self._app = args.app
        self.containers = {}
        creds: dict[str, pulumi.Output[str]] = {}
        scrape = self._targets(creds)
        self.containers["postgres-exporter"] = self._create_postgres_exporter()
        jobs: list[dict[str, Any]] = []
        deep_key = targets.deep_health_key(self._app)
        if deep_key is not None:
            self.containers["blackbox"] = self._create_blackbox(deep_key)
            api = self._app.service("api")
            jobs = config.blackbox_job(f"api:{api.port}", args.settings.scrape_interval)
        self.containers["alertmanager"] = self._create_alertmanager()
        rules = config.rule_files(self._app.name, args.settings.stalled_after)
        self.containers["prometheus"] = self._create_prometheus(scrape, jobs, rules, creds)
        self.prometheus_container = self.containers["prometheus"].container_name
        self.rule_files = pulumi.Output.from_input(sorted(rules))
        self.register_outputs(
            {"prometheus_container": self.prometheus_container, "rule_files": self.rule_files}
        )

    # -- what is scraped ---------------------------------------------------------------------

    def _targets(self, creds: dict[str, pulumi.Output[str]]) -> list[config.Target]:
        """Scrape jobs by container alias; their credentials go into ``creds`` (file -> secret)."""
        jobs = targets.scrapes(self._app, self._args.settings)
        values = targets.credentials(self._app, jobs)
        out = []
        for job in jobs:
            path = None
            if job.credential:
                path = f"{config.SECRETS_DIR}/{job.credential}"
                creds[path] = values[job.credential]
            address = f"{job.service}:{job.port}"
            out.append(config.Target(job.job, address, job.path, job.labels, credentials_file=path))
        return out

    # -- containers ----------------------------------------------------------------------------

    def _labels(self, service: str) -> dict[str, str]:
        return {
            engine.STACK_LABEL: self._args.stack,
            "appstack.app": self._app.name,
            "appstack.service": service,
            "appstack.component": "monitoring",
        }

    def _container(
        self,
        service: str,
        image_ref: str,
        argv: list[str],
        files: Mapping[str, str],
        secrets: Mapping[str, pulumi.Output[str]],
        *,
        edge_too: bool = False,
        ports: list[dict[str, Any]] | None = None,
        mounts: list[dict[str, Any]] | None = None,
        user: str | None = None,
        rollout: str = "start-first",
    ) -> engine.Container:
        """One monitoring container: files via env, written by ``sh -c`` at start; secrets as
        its secret files (``SECRETS_DIR``), out of ``docker inspect``'s sight."""
        a = self._args
        image = engine.Image(f"{self._name}-{service}-image", image_ref, a.docker_host,
                             opts=pulumi.ResourceOptions(parent=self))  # fmt: skip
        file_vars = {path: f"APPSTACK_FILE_{i}" for i, path in enumerate(files)}
        env: dict[str, pulumi.Input[str]] = {file_vars[p]: text for p, text in files.items()}
        secret_files = {secret_file(p): value for p, value in secrets.items()}
        networks: list[dict[str, Any]] = [{"name": a.internal_network, "aliases": [service]}]
        if edge_too:
            networks.append({"name": a.edge_network, "aliases": []})
        props: dict[str, Any] = {
            "name": f"{a.prefix}-{service}",
            "image": image_ref,
            "image_id": image.image_id,
            "command": config.writer_command(file_vars, argv),
            "env": env,
            "user": user,
            "networks": networks,
            "ports": ports or [],
            # None: the image's HEALTHCHECK gates the release (the local images probe /-/ready)
            "healthcheck": None,
            "restart": "unless-stopped",
            "memory_mb": 256,
            "cpus": 0.5,
            "read_only": True,
            "tmpfs": {config.CONFIG_DIR: "rw,nosuid,nodev,size=8m",
                      "/tmp": "rw,nosuid,nodev,size=16m"},
            "security_opt": ["no-new-privileges:true"],
            "cap_add": [],
            "mounts": mounts or [],
            "labels": self._labels(service),
            "extra_hosts": {},
            "stop_timeout_s": 10,
            "docker_host": a.docker_host,
            "rollout": rollout,
            "wait_timeout_s": a.deploy_timeout_s,
            "grace_s": 10,
        }  # fmt: skip
        if secret_files:
            props["secret_files"] = pulumi.Output.secret(secret_files)
        return engine.Container(
            f"{self._name}-{service}", props, opts=pulumi.ResourceOptions(parent=self)
        )

    def _create_postgres_exporter(self) -> engine.Container:
        db = self._app.migration.database if self._app.migration else None
        if db is None:
            msg = f"monitoring: app {self._app.name} has no database to export"
            raise ValueError(msg)
        queries = config.queries_yml(self._app.name, self._args.settings.storage_budget_bytes)
        query_path = f"{config.CONFIG_DIR}/queries.yml"
        pass_file = f"{config.SECRETS_DIR}/postgres-password"
        argv = [
            "env",
            f"DATA_SOURCE_URI={db.service}:{db.port}/{db.database}?sslmode=disable",
            f"DATA_SOURCE_USER={db.user}",
            f"DATA_SOURCE_PASS_FILE={pass_file}",
            "prometheus-postgres-exporter",
            f"--extend.query-path={query_path}",
            f"--web.listen-address=:{config.POSTGRES_EXPORTER_PORT}",
        ]
        return self._container(
            "postgres-exporter",
            self._args.settings.images["postgresExporter"],
            argv,
            {query_path: queries},
            {pass_file: db.password},
        )

    def _create_blackbox(self, key: pulumi.Output[str]) -> engine.Container:
        key_file = f"{config.SECRETS_DIR}/engramia-api-key"
        conf = f"{config.CONFIG_DIR}/blackbox.yml"
        argv = ["prometheus-blackbox-exporter", f"--config.file={conf}",
                f"--web.listen-address=:{config.BLACKBOX_PORT}"]  # fmt: skip
        return self._container(
            "blackbox",
            self._args.settings.images["blackboxExporter"],
            argv,
            {conf: config.blackbox_yml(key_file)},
            {key_file: key},
        )

    def _create_alertmanager(self) -> engine.Container:
        conf = f"{config.CONFIG_DIR}/alertmanager.yml"
        argv = [
            "prometheus-alertmanager",
            f"--config.file={conf}",
            "--storage.path=/tmp/alertmanager",  # silences live as long as the container
            f"--web.listen-address=:{config.ALERTMANAGER_PORT}",
            "--cluster.listen-address=",  # one instance: no gossip port
        ]
        return self._container(
            "alertmanager",
            self._args.settings.images["alertmanager"],
            argv,
            {conf: config.alertmanager_yml()},
            {},
        )

    def _create_prometheus(
        self,
        targets: list[config.Target],
        jobs: list[dict[str, Any]],
        rules: Mapping[str, str],
        creds: Mapping[str, pulumi.Output[str]],
    ) -> engine.Container:
        a = self._args
        text = config.prometheus_yml(
            targets, sorted(rules), a.settings.scrape_interval, a.stack, self._app.name
        )
        text = config.with_jobs(text, jobs)
        conf = f"{config.CONFIG_DIR}/prometheus.yml"
        files = {conf: text, **{f"{config.CONFIG_DIR}/rules/{n}": t for n, t in rules.items()}}
        volume = engine.Volume(
            f"{self._name}-prometheus-data",
            volume_name=f"{a.prefix}-prometheus-data",
            labels=self._labels("prometheus"),
            docker_host=a.docker_host,
            # the metrics' history is kept like the app's data where settings say so
            opts=pulumi.ResourceOptions(
                parent=self, protect=a.protect_volume, retain_on_delete=a.protect_volume
            ),
        )
        data = "/var/lib/prometheus/metrics2"
        argv = ["prometheus", f"--config.file={conf}", f"--storage.tsdb.path={data}",
                f"--storage.tsdb.retention.time={a.settings.retention}",
                f"--web.listen-address=:{config.PROMETHEUS_PORT}"]  # fmt: skip
        ports = []
        if a.settings.prometheus_port is not None:
            ports = [{"internal": config.PROMETHEUS_PORT, "external": a.settings.prometheus_port,
                      "ip": "127.0.0.1"}]  # fmt: skip
        return self._container(
            "prometheus",
            a.settings.images["prometheus"],
            argv,
            files,
            dict(creds),
            edge_too=True,
            ports=ports,
            mounts=[{"source": volume.name, "target": data}],
            user="prometheus",
            # one TSDB on one volume: two servers must not open it at once
            rollout="stop-first",
        )
