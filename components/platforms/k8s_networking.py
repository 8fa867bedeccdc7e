"""Networking of the Kubernetes platform: ClusterIP Services, NetworkPolicies, the Ingress.

Policies: ``default-deny`` and ``allow-dns`` for the whole namespace, then one ``allow-<peer>``
per pod group holding exactly its edges (``service_edges``), in both directions; egress to
outside hosts (Ollama) as tight as a NetworkPolicy can say it (``egress_peer``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.platforms.k8s_base import INIT_TASK_COMPONENT, NAME_LABEL, KubernetesParts
from components.providers.k8s_runner import TASK_LABEL, TASK_LABEL_VALUE
from components.spec import AppSpec, ServiceSpec

_ENV_HOST = r"(?<![A-Za-z0-9.-]){name}(?=:[0-9]+|/|$)"
_CLUSTER_HOST = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?\.?$")


def service_edges(app: AppSpec) -> dict[str, set[str]]:
    """For each workload, the services (with a port) it connects to.

    Edges are ``depends_on`` plus every service named as a host in a plain env value
    (``http://search:8080``, ``minio:9000``). Secret env (``DATABASE_URL``) is not read: the
    services it names are in ``depends_on`` already.
    """
    ported = {s.name for s in app.services if s.port}
    edges: dict[str, set[str]] = {}
    for svc in app.services:
        targets = set(svc.depends_on)
        for value in svc.env.values():
            if not isinstance(value, str):
                continue
            for name in ported:
                if re.search(_ENV_HOST.format(name=re.escape(name)), value):
                    targets.add(name)
        edges[svc.name] = {t for t in targets if t in ported and t != svc.name}
    return edges


def split_host_port(entry: str) -> tuple[str, list[int]]:
    """``host[:port]`` of an egress entry; without a port both 80 and 443 are allowed."""
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host.strip("[]"), [int(port)]
    return entry.strip("[]"), [80, 443]


def egress_peer(host: str) -> tuple[str, list[dict[str, Any]]]:
    """How a NetworkPolicy can name an outside host: (kind, ``to`` peers).

    An IP becomes an ipBlock /32 (/128); ``<svc>.<ns>.svc.cluster.local`` the namespace
    ``<ns>``; any other name cannot be resolved by a NetworkPolicy, so the rule is port-only
    (kind ``port-only``: any destination on that port; docs/kubernetes.md).
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "ip", [{"ip_block": {"cidr": f"{ip}/{ip.max_prefixlen}"}}]
    match = _CLUSTER_HOST.match(host)
    if match:
        selector = {"match_labels": {"kubernetes.io/metadata.name": match.group(2)}}
        return "namespace", [{"namespace_selector": selector}]
    return "port-only", []


class Networking(KubernetesParts):
    """Services, NetworkPolicies and the Ingress of a ``KubernetesApp``."""

    def _peers(self) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
        """Every pod group that talks (selector by peer name) and every client -> server edge."""
        peers = {s.name: {NAME_LABEL: s.name} for s in self._app.services}
        edges = [(c, s) for c, servers in service_edges(self._app).items() for s in servers]
        for task in self._app.init_tasks:
            peers[task.name] = {NAME_LABEL: task.name, TASK_LABEL: INIT_TASK_COMPONENT}
            edges += [(task.name, s) for s in task.after if self._app.service(s).port]
        if self._app.migration is not None:
            peers["tasks"] = {TASK_LABEL: TASK_LABEL_VALUE}
            edges.append(("tasks", self._app.migration.database.service))
        return peers, sorted(set(edges))

    def _external_egress(self, svc: ServiceSpec) -> list[dict[str, Any]]:
        rules = []
        for entry in svc.egress_hosts if svc.needs_egress else ():
            host, ports = split_host_port(entry)
            _kind, to = egress_peer(host)
            rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": p} for p in ports]}
            if to:
                rule["to"] = to
            rules.append(rule)
        return rules

    def _create_network_policies(self) -> list[pulumi.CustomResource]:
        def policy(name: str, spec: dict[str, Any]) -> pulumi.CustomResource:
            return k8s.networking.v1.NetworkPolicy(
                f"{self._name}-netpol-{name}",
                metadata=self._meta(name),
                spec=spec,
                opts=self._opts(),
            )

        both = ["Ingress", "Egress"]
        kube_dns = {
            "namespace_selector": {"match_labels": {"kubernetes.io/metadata.name": "kube-system"}},
            "pod_selector": {"match_labels": {"k8s-app": "kube-dns"}},
        }
        dns_ports = [{"protocol": proto, "port": 53} for proto in ("UDP", "TCP")]
        policies = [
            policy("default-deny", {"pod_selector": {}, "policy_types": both}),
            policy(
                "allow-dns",
                {
                    "pod_selector": {},
                    "policy_types": ["Egress"],
                    "egress": [{"to": [kube_dns], "ports": dns_ports}],
                },
            ),
        ]
        peers, edges = self._peers()
        ports = {s.name: s.port for s in self._app.services if s.port}
        for peer, selector in peers.items():
            ingress: list[dict[str, Any]] = [
                {
                    "from_": [{"pod_selector": {"match_labels": peers[client]}}],
                    "ports": [{"protocol": "TCP", "port": ports[peer]}],
                }
                for client, server in edges
                if server == peer
            ]
            if peer == self._app.entry.service:
                controller = {"kubernetes.io/metadata.name": self._k.ingress_namespace}
                ingress.append(
                    {
                        "from_": [{"namespace_selector": {"match_labels": controller}}],
                        "ports": [{"protocol": "TCP", "port": ports[peer]}],
                    }
                )
            egress: list[dict[str, Any]] = [
                {
                    "to": [{"pod_selector": {"match_labels": peers[server]}}],
                    "ports": [{"protocol": "TCP", "port": ports[server]}],
                }
                for client, server in edges
                if client == peer
            ]
            if peer in {s.name for s in self._app.services}:
                egress += self._external_egress(self._app.service(peer))
            spec = {
                "pod_selector": {"match_labels": selector},
                "policy_types": both,
                "ingress": ingress,
                "egress": egress,
            }
            policies.append(policy(f"allow-{peer}", spec))
        return policies

    def _create_services(self) -> None:
        for svc in self._app.services:
            if not svc.port:
                continue
            k8s.core.v1.Service(
                f"{self._name}-svc-{svc.name}",
                metadata=self._meta(svc.name),
                spec={
                    "type": "ClusterIP",
                    "selector": {NAME_LABEL: svc.name},
                    "ports": [{"protocol": "TCP", "port": svc.port, "target_port": svc.port}],
                },
                opts=self._opts(),
            )

    def _create_ingress(self) -> pulumi.CustomResource:
        entry = self._app.service(self._app.entry.service)
        backend = {"service": {"name": entry.name, "port": {"number": entry.port}}}
        spec: dict[str, Any] = {
            "ingress_class_name": self._k.ingress_class,
            "rules": [
                {
                    "host": self._k.ingress_host,
                    "http": {"paths": [{"path": "/", "path_type": "Prefix", "backend": backend}]},
                }
            ],
        }
        if self._k.tls:
            spec["tls"] = [{"hosts": [self._k.ingress_host], "secret_name": self._k.tls_secret}]
        return k8s.networking.v1.Ingress(
            f"{self._name}-ingress",
            metadata=self._meta(entry.name),
            spec=spec,
            opts=self._opts(),
        )
