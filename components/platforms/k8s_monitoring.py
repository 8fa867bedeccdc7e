"""Monitoring on the Kubernetes platform (``appstack:monitoring``): the Docker component's parts as
plain objects in the stack's namespace, and the prometheus-operator's objects where it runs.

- ``prometheus`` (Deployment, ``Recreate``: one TSDB on one claim), its config and the rule files
  (``components/monitoring/rules``, rendered by ``config.rule_files``) in two ConfigMaps, bearer
  credentials in the Secret ``prometheus-credentials`` mounted as files; ``alertmanager``;
  ``postgres-exporter`` (its DSN from the Secret ``postgres-exporter-env``); ``blackbox`` for
  Engramia's deep health when a static key exists. ClusterIP Services only: nothing leaves the
  cluster (``kubectl port-forward svc/prometheus 9090``).
- Each scrape job has a headless Service ``metrics-<job>`` (named port ``metrics``, label
  ``appstack.io/scrape``): Prometheus resolves it to every replica (``dns_sd_configs``), and a
  ServiceMonitor selects it.
- NetworkPolicies add exactly the monitoring's edges to the namespace's default-deny: Prometheus
  to each job's pods, the exporter to Postgres, blackbox to the API; with the operator's objects,
  its namespace (``monitoring.operatorNamespace``) to each job's pods too.
- With the CRDs (``monitoring.operator``): one PrometheusRule per rule file, one ServiceMonitor
  per job. The plain Prometheus stays: the operator's Prometheus picks objects by its own
  selectors, which the stack cannot see, and the alerts must not depend on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.monitoring import config, operator, targets
from components.platforms.k8s_base import NAME_LABEL, TMPFS_SIZE
from components.platforms.k8s_monitoring_wiring import CREDENTIALS_SECRET, MonitoringWiring
from components.platforms.k8s_storage import Storage
from components.platforms.k8s_workloads import Workloads
from components.spec import AppSpec

MONITORING_UID = 65534
"""nobody: the user of the local images (tools/images) and of the official ones."""
PROMETHEUS_CLAIM = "prometheus-data"
TSDB_PATH = "/prometheus"
CONFIG_MOUNT = f"{config.CONFIG_DIR}/config"
RESOURCES = {"cpu": "500m", "memory": "256Mi"}
BINARIES = {
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "postgres-exporter": ("prometheus-postgres-exporter", "postgres_exporter"),
    "blackbox": ("prometheus-blackbox-exporter", "blackbox_exporter"),
}
"""The server's binary: Debian's name (the local images), else the official image's."""

PORTS = {
    "prometheus": config.PROMETHEUS_PORT,
    "alertmanager": config.ALERTMANAGER_PORT,
    "postgres-exporter": config.POSTGRES_EXPORTER_PORT,
    "blackbox": config.BLACKBOX_PORT,
}
IMAGE_KEYS = {
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "postgres-exporter": "postgresExporter",
    "blackbox": "blackboxExporter",
}


def binary_command(names: tuple[str, ...]) -> list[str]:
    """``sh -c`` running the first of ``names`` on PATH with the container's args."""
    found = " || ".join(f"command -v {n}" for n in names)
    script = (
        f'bin=$({found}) || {{ echo "none of {" ".join(names)} in the image" >&2; exit 127; }}'
        '; exec "$bin" "$@"'
    )
    return ["sh", "-c", script, names[0]]


def config_hash(files: Mapping[str, str]) -> str:
    """A digest of a pod's configuration: in its template, a change rolls the pod."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:16]


class MonitoringParts(MonitoringWiring, Workloads, Storage):
    """Prometheus, Alertmanager and the exporters of a ``KubernetesApp``."""

    _monitored: AppSpec
    """The app as its spec says (with its edge), which the scrape jobs are read from."""

    def _create_monitoring(self) -> dict[str, pulumi.CustomResource]:
        """Every monitoring object; the Deployments by name (empty when monitoring is off)."""
        m = self._settings.monitoring
        if not m.enabled:
            return {}
        jobs = targets.scrapes(self._monitored, m)
        creds = targets.credentials(self._monitored, jobs)
        secret = self._mon_secret(CREDENTIALS_SECRET, dict(creds)) if creds else None
        deployments: dict[str, pulumi.CustomResource] = {}
        deep_key = targets.deep_health_key(self._monitored)
        probes: list[dict[str, Any]] = []
        if deep_key is not None:
            deployments["blackbox"] = self._create_blackbox(deep_key)
            api = self._app.service("api")
            probes = config.blackbox_job(f"api:{api.port}", m.scrape_interval)
        deployments["postgres-exporter"] = self._create_postgres_exporter()
        deployments["alertmanager"] = self._create_alertmanager()
        rules = config.rule_files(self._app.name, m.stalled_after)
        deployments["prometheus"] = self._create_prometheus(jobs, probes, rules, secret)
        for name in deployments:
            self._mon_service(name, name, PORTS[name])
        for job in jobs:
            self._mon_service(f"metrics-{job.job}", job.service, job.port, job.job)
        self._create_monitoring_policies(jobs, "blackbox" in deployments)
        if self._operator:
            self._create_operator_objects(jobs, rules, secret)
        return deployments

    # -- objects shared by the parts ---------------------------------------------------------

    def _mon_secret(self, name: str, values: Mapping[str, pulumi.Input[str]]) -> Any:
        return k8s.core.v1.Secret(
            f"{self._name}-{name}",
            metadata={"name": name, "namespace": self.ns, "labels": self._mon_labels(name)},
            type="Opaque",
            string_data=pulumi.Output.secret(dict(values)),  # type: ignore[arg-type]
            opts=self._opts(),
        )

    def _config_map(self, name: str, data: Mapping[str, str]) -> Any:
        return k8s.core.v1.ConfigMap(
            f"{self._name}-{name}",
            metadata={"name": name, "namespace": self.ns, "labels": self._mon_labels(name)},
            data=dict(data),
            opts=self._opts(),
        )

    def _mon_service(self, name: str, pods: str, port: int, job: str | None = None) -> Any:
        """A ClusterIP Service, or for a scrape job a headless one (every replica a target)."""
        labels = self._mon_labels(name)
        spec: dict[str, Any] = {
            "selector": {NAME_LABEL: pods},
            "ports": [
                {"name": operator.METRICS_PORT_NAME, "protocol": "TCP", "port": port,
                 "target_port": port}
            ],
        }  # fmt: skip
        if job is not None:
            labels[operator.SCRAPE_LABEL] = job
            spec["cluster_ip"] = "None"
        else:
            spec["type"] = "ClusterIP"
        return k8s.core.v1.Service(
            f"{self._name}-svc-{name}",
            metadata={"name": name, "namespace": self.ns, "labels": labels},
            spec=spec,
            opts=self._opts(),
        )

    def _mon_deployment(
        self,
        name: str,
        args: list[str],
        volumes: Mapping[str, dict[str, Any]],
        files: Mapping[str, str],
        *,
        env: list[dict[str, Any]] | None = None,
        ready_path: str = "/-/ready",
        after: list[pulumi.Resource] | None = None,
        recreate: bool = False,
    ) -> pulumi.CustomResource:
        """One server's Deployment: ``volumes`` maps a mount path to its volume source."""
        port = PORTS[name]
        mounts = [{"name": f"v{i}", "mount_path": path} for i, path in enumerate(volumes)]
        pod_volumes = [{"name": f"v{i}", **src} for i, src in enumerate(volumes.values())]
        check = {"http_get": {"port": port, "path": ready_path}, "period_seconds": 10}
        container: dict[str, Any] = {
            "name": name,
            "image": self._settings.monitoring.images[IMAGE_KEYS[name]],
            "command": binary_command(BINARIES[name]),
            "args": args,
            "env": env or [],
            "ports": [{"container_port": port, "protocol": "TCP"}],
            "resources": {"requests": RESOURCES, "limits": RESOURCES},
            "security_context": self._container_security(True),
            "volume_mounts": mounts,
            "readiness_probe": {**check, "failure_threshold": 3},
            "liveness_probe": {**check, "failure_threshold": 6, "initial_delay_seconds": 30},
        }
        labels = self._mon_labels(name)
        template = {
            "metadata": {
                "labels": labels,
                "annotations": {"appstack.io/config-hash": config_hash(files)},
            },
            "spec": {
                "automount_service_account_token": False,
                "enable_service_links": False,
                "security_context": self._pod_security(MONITORING_UID),
                "containers": [container],
                "volumes": pod_volumes,
            },
        }
        # one TSDB on one claim: the old pod must be gone before the new one opens it
        strategy = {"type": "Recreate"} if recreate else {"type": "RollingUpdate"}
        return k8s.apps.v1.Deployment(
            f"{self._name}-{name}",
            metadata={"name": name, "namespace": self.ns, "labels": labels},
            spec={
                "replicas": 1,
                "selector": {"match_labels": {NAME_LABEL: name}},
                "strategy": strategy,
                "template": template,
            },
            opts=self._opts(depends_on=[*(after or []), *self._policies]),
        )

    @staticmethod
    def _files_volume(
        kind: str, name: pulumi.Input[str], mode: int | None = None
    ) -> dict[str, Any]:
        source: dict[str, Any] = {"secret_name" if kind == "secret" else "name": name}
        if mode is not None:
            source["default_mode"] = mode
        return {kind: source}

    # -- the servers -------------------------------------------------------------------------

    def _create_prometheus(
        self,
        jobs: list[targets.Scrape],
        probes: list[dict[str, Any]],
        rules: Mapping[str, str],
        secret: Any,
    ) -> pulumi.CustomResource:
        m = self._settings.monitoring
        scrape = [
            config.Target(
                job.job,
                f"metrics-{job.job}:{job.port}",
                job.path,
                job.labels,
                f"{config.SECRETS_DIR}/{job.credential}" if job.credential else None,
                dns=True,
            )
            for job in jobs
        ]
        text = config.prometheus_yml(
            scrape, sorted(rules), m.scrape_interval, self._settings.stack, self._app.name
        )
        text = config.with_jobs(text, probes)
        conf = self._config_map("prometheus-config", {"prometheus.yml": text})
        rule_map = self._config_map("prometheus-rules", rules)
        claim = self._claim(PROMETHEUS_CLAIM, "prometheus")
        self._claims[PROMETHEUS_CLAIM] = claim
        volumes: dict[str, dict[str, Any]] = {
            CONFIG_MOUNT: self._files_volume("config_map", conf.metadata.name),
            f"{config.CONFIG_DIR}/rules": self._files_volume("config_map", rule_map.metadata.name),
            TSDB_PATH: {"persistent_volume_claim": {"claim_name": claim.metadata.name}},
        }
        if secret is not None:
            volumes[config.SECRETS_DIR] = self._files_volume("secret", secret.metadata.name, 0o440)
        args = [
            f"--config.file={CONFIG_MOUNT}/prometheus.yml",
            f"--storage.tsdb.path={TSDB_PATH}",
            f"--storage.tsdb.retention.time={m.retention}",
            f"--web.listen-address=:{config.PROMETHEUS_PORT}",
        ]
        files = {"prometheus.yml": text, **rules}
        return self._mon_deployment("prometheus", args, volumes, files, recreate=True)

    def _create_alertmanager(self) -> pulumi.CustomResource:
        text = config.alertmanager_yml()
        conf = self._config_map("alertmanager-config", {"alertmanager.yml": text})
        volumes = {
            CONFIG_MOUNT: self._files_volume("config_map", conf.metadata.name),
            "/tmp": {"empty_dir": {"medium": "Memory", "size_limit": TMPFS_SIZE}},
        }
        args = [
            f"--config.file={CONFIG_MOUNT}/alertmanager.yml",
            "--storage.path=/tmp/alertmanager",  # silences live as long as the pod
            f"--web.listen-address=:{config.ALERTMANAGER_PORT}",
            "--cluster.listen-address=",  # one replica: no gossip port
        ]
        return self._mon_deployment("alertmanager", args, volumes, {"alertmanager.yml": text})

    def _create_postgres_exporter(self) -> pulumi.CustomResource:
        db = self._app.migration.database if self._app.migration else None
        if db is None:
            msg = f"monitoring: app {self._app.name} has no database to export"
            raise ValueError(msg)
        queries = config.queries_yml(self._app.name, self._settings.monitoring.storage_budget_bytes)
        conf = self._config_map("postgres-exporter-queries", {"queries.yml": queries})
        dsn: dict[str, pulumi.Input[str]] = {
            "DATA_SOURCE_URI": f"{db.service}:{db.port}/{db.database}?sslmode=disable",
            "DATA_SOURCE_USER": db.user,
            "DATA_SOURCE_PASS": db.password,
        }
        secret = self._mon_secret("postgres-exporter-env", dsn)
        env = [
            {"name": k, "value_from": {"secret_key_ref": {"name": secret.metadata.name, "key": k}}}
            for k in sorted(dsn)
        ]
        args = [
            f"--extend.query-path={CONFIG_MOUNT}/queries.yml",
            f"--web.listen-address=:{config.POSTGRES_EXPORTER_PORT}",
        ]
        volumes = {CONFIG_MOUNT: self._files_volume("config_map", conf.metadata.name)}
        return self._mon_deployment(
            "postgres-exporter",
            args,
            volumes,
            {"queries.yml": queries},
            env=env,
            ready_path="/",
            after=[self.workloads[db.service]],
        )

    def _create_blackbox(self, key: pulumi.Output[str]) -> pulumi.CustomResource:
        key_name = "engramia-api-key"
        text = config.blackbox_yml(f"{config.SECRETS_DIR}/{key_name}")
        conf = self._config_map("blackbox-config", {"blackbox.yml": text})
        secret = self._mon_secret("blackbox-credentials", {key_name: key})
        volumes = {
            CONFIG_MOUNT: self._files_volume("config_map", conf.metadata.name),
            config.SECRETS_DIR: self._files_volume("secret", secret.metadata.name, 0o440),
        }
        args = [
            f"--config.file={CONFIG_MOUNT}/blackbox.yml",
            f"--web.listen-address=:{config.BLACKBOX_PORT}",
        ]
        return self._mon_deployment(
            "blackbox", args, volumes, {"blackbox.yml": text}, ready_path="/-/healthy"
        )
