"""How the monitoring on Kubernetes connects: its NetworkPolicies (added to the namespace's
default-deny) and, where the cluster serves their CRDs, the prometheus-operator's objects."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import pulumi_kubernetes as k8s

from components.monitoring import config, operator, targets
from components.platforms.k8s_base import NAME_LABEL, KubernetesParts

COMPONENT_LABEL = "app.kubernetes.io/component"
CREDENTIALS_SECRET = "prometheus-credentials"  # noqa: S105 - a Secret's name


class MonitoringWiring(KubernetesParts):
    """The monitoring's policies and operator objects of a ``KubernetesApp``."""

    _operator: bool
    """Declare PrometheusRule/ServiceMonitor objects (``operator.operator_wanted``)."""

    def _mon_labels(self, name: str) -> dict[str, str]:
        return {**self._labels(name), COMPONENT_LABEL: "monitoring"}

    # -- network policies --------------------------------------------------------------------

    def _create_monitoring_policies(self, jobs: list[targets.Scrape], blackbox: bool) -> None:
        """Exactly the monitoring's connections, added to the namespace's default-deny."""
        edges = [("prometheus", job.service, job.port) for job in jobs]
        db = self._app.migration.database if self._app.migration else None
        if db is not None:
            edges.append(("postgres-exporter", db.service, db.port))
        if blackbox:
            edges.append(("prometheus", "blackbox", config.BLACKBOX_PORT))
            edges.append(("blackbox", "api", self._app.service("api").port or 0))
        edges = sorted(set(edges))
        scraped = {(job.service, job.port) for job in jobs}
        outside = self._settings.monitoring.operator_namespace if self._operator else None
        servers = sorted({(server, port) for _, server, port in edges})
        for server, port in servers:
            ingress: list[dict[str, Any]] = [
                {
                    "from_": [{"pod_selector": {"match_labels": {NAME_LABEL: client}}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
                for client, s, p in edges
                if (s, p) == (server, port)
            ]
            if outside and (server, port) in scraped:
                ns = {"kubernetes.io/metadata.name": outside}
                ingress.append(
                    {
                        "from_": [{"namespace_selector": {"match_labels": ns}}],
                        "ports": [{"protocol": "TCP", "port": port}],
                    }
                )
            self._mon_policy(
                f"monitoring-to-{server}-{port}",
                {
                    "pod_selector": {"match_labels": {NAME_LABEL: server}},
                    "policy_types": ["Ingress"],
                    "ingress": ingress,
                },
            )
        for client in sorted({c for c, _, _ in edges}):
            egress = [
                {
                    "to": [{"pod_selector": {"match_labels": {NAME_LABEL: server}}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
                for c, server, port in edges
                if c == client
            ]
            self._mon_policy(
                f"monitoring-from-{client}",
                {
                    "pod_selector": {"match_labels": {NAME_LABEL: client}},
                    "policy_types": ["Egress"],
                    "egress": egress,
                },
            )

    def _mon_policy(self, name: str, spec: dict[str, Any]) -> None:
        k8s.networking.v1.NetworkPolicy(
            f"{self._name}-netpol-{name}",
            metadata={"name": name, "namespace": self.ns, "labels": self._mon_labels(name)},
            spec=spec,
            opts=self._opts(),
        )

    # -- the prometheus-operator's objects ---------------------------------------------------

    def _create_operator_objects(
        self, jobs: list[targets.Scrape], rules: Mapping[str, str], secret: Any
    ) -> None:
        m = self._settings.monitoring
        for file_name, text in sorted(rules.items()):
            spec = {"groups": operator.rule_groups(text)}
            self._operator_object("PrometheusRule", PurePosixPath(file_name).stem, spec, [])
        secret_name = CREDENTIALS_SECRET if secret is not None else None
        after = [secret] if secret is not None else []
        for job in jobs:
            spec = operator.service_monitor_spec(job, m.scrape_interval, self._ns_name, secret_name)
            self._operator_object("ServiceMonitor", job.job, spec, after)

    def _operator_object(
        self, kind: str, what: str, spec: dict[str, Any], after: list[Any]
    ) -> None:
        """One ``monitoring.coreos.com/v1`` object named ``appstack-<what>``."""
        name = f"appstack-{what}"
        labels = {**self._mon_labels(name), **self._settings.monitoring.operator_labels}
        k8s.apiextensions.CustomResource(
            f"{self._name}-{kind.lower()}-{what}",
            api_version=operator.API_VERSION,
            kind=kind,
            metadata={"name": name, "namespace": self.ns, "labels": labels},
            spec=spec,
            opts=self._opts(depends_on=after),
        )
