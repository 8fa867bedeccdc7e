"""Workloads of the Kubernetes platform: StatefulSets, Deployments, PDBs and init Jobs.

Pods: probes from the spec's health check, requests = limits, non-root with seccomp and no
capabilities, read-only roots where the spec allows; Deployments roll with ``maxUnavailable 0``.
The edge (Caddy) is one more Deployment in front of the public service (``with_edge_service``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import edge
from components.platforms.k8s_base import (
    INIT_TASK_COMPONENT,
    NAME_LABEL,
    SERVICE_UID,
    TMPFS_SIZE,
    KubernetesParts,
)
from components.providers.k8s_runner import TASK_LABEL
from components.spec import (
    AppSpec,
    EdgeSpec,
    Exposure,
    HealthCheck,
    InitTask,
    Role,
    ServiceSpec,
)

# The pod's root is read-only: Caddy writes its file, config and data under the /tmp emptyDir.
EDGE_COMMAND = (
    "sh",
    "-c",
    'printf "%s" "$CADDYFILE" > /tmp/Caddyfile'
    " && exec caddy run --config /tmp/Caddyfile --adapter caddyfile",
)


CADDYFILE_DIGEST = "APPSTACK_CADDYFILE_SHA256"
"""Plain env of an edge whose Caddyfile a Secret holds: its digest, so a change rolls the pods."""


def _edge_config(
    spec: EdgeSpec, target: str, metrics: bool, token: pulumi.Output[str] | None
) -> tuple[dict[str, pulumi.Input[str]], dict[str, pulumi.Output[str]], tuple[str, ...]]:
    """The edge's plain env, secret env and emptyDir paths.

    Without a window the Caddyfile is plain env. With one it holds the window's token: it goes in
    the edge's Secret, a digest of it in the plain env (a Secret's change alone would roll no
    pod), and the window file gets the emptyDir ``/data/appstack``.
    """
    env: dict[str, pulumi.Input[str]] = {"XDG_DATA_HOME": "/tmp/data",
                                         "XDG_CONFIG_HOME": "/tmp/config"}  # fmt: skip
    if not (spec.window and token is not None):
        env["CADDYFILE"] = edge.caddyfile(spec, target, serve_tls=False, metrics=metrics)
        return env, {}, ("/tmp",)
    text = token.apply(
        lambda t: edge.caddyfile(spec, target, serve_tls=False, metrics=metrics, window_token=t)
    )
    caddyfile: pulumi.Output[str] = pulumi.Output.secret(text)
    # A one-way digest of a file whose secret part is a 160-bit token reveals nothing of it: it
    # stays plain, or the whole Deployment spec would be one opaque secret in state and previews.
    digest = caddyfile.apply(lambda t: hashlib.sha256(t.encode()).hexdigest())
    env[CADDYFILE_DIGEST] = pulumi.Output.unsecret(digest)
    window_dir = edge.WINDOW_FILE.rsplit("/", 1)[0]
    return env, {"CADDYFILE": caddyfile}, ("/tmp", window_dir)


def with_edge_service(
    app: AppSpec,
    replicas: int,
    metrics: bool = False,
    window_token: pulumi.Output[str] | None = None,
) -> AppSpec:
    """The app with its edge as one more Deployment: Ingress -> Caddy -> the public service.

    TLS ends at the Ingress, so Caddy serves plain HTTP; a rolling update of the upstream keeps
    its Service answering, so the Caddyfile names the Service, and a change of it (maintenance)
    rolls Caddy's pods like any env change. ``metrics``: Caddy's metrics listener for the
    monitoring (``edge.METRICS_PORT``). ``window_token``: the runbook's maintenance window
    (``components/providers/window.py``), for an edge spec that has one.
    """
    if app.edge is None:
        return app
    spec = app.edge
    upstream = app.service(spec.upstream)
    target = f"{upstream.name}:{upstream.port}"
    env, secret_env, tmpfs = _edge_config(spec, target, metrics, window_token)
    caddy = ServiceSpec(
        name="caddy",
        image=spec.image,
        port=edge.HTTP_PORT,
        command=EDGE_COMMAND,
        env=env,
        secret_env=secret_env,
        tmpfs=tmpfs,
        health=HealthCheck(command=edge.HEALTH),
        exposure=Exposure.PUBLIC,
        replicas=replicas,
        resources=spec.resources,
        depends_on=(upstream.name,),
        cap_add=edge.CAPABILITIES,
    )
    services = tuple(
        replace(s, exposure=Exposure.INTERNAL) if s.name == upstream.name else s
        for s in app.services
    )
    return replace(
        app, services=(*services, caddy), entry=replace(app.entry, service="caddy"), edge=None
    )


def quantity_cpu(cpus: float) -> str:
    """CPUs as a Kubernetes quantity in millicores."""
    return f"{round(cpus * 1000)}m"


def probe(check: HealthCheck, failure_threshold: int) -> dict[str, Any]:
    """A probe from a spec's health check: httpGet from its URL's port/path, else exec."""
    timing = {
        "initial_delay_seconds": check.start_period_s,
        "period_seconds": check.interval_s,
        "timeout_seconds": check.timeout_s,
        "failure_threshold": failure_threshold,
    }
    if check.http_path:
        match = re.match(r"^https?://[^/:]+(?::([0-9]+))?(/.*)?$", check.http_path)
        if not match or not match.group(1):
            msg = f"health check URL {check.http_path!r} has no port"
            raise ValueError(msg)
        http = {"port": int(match.group(1)), "path": match.group(2) or "/"}
        return {"http_get": http, **timing}
    return {"exec_": {"command": list(check.command)}, **timing}


def replicas(svc: ServiceSpec) -> int:
    """Replicas a workload runs: data stores are single-replica StatefulSets."""
    return 1 if svc.role is Role.DATASTORE else svc.replicas


class Workloads(KubernetesParts):
    """The StatefulSets, Deployments, PodDisruptionBudgets and init Jobs of a ``KubernetesApp``."""

    def _env(
        self, owner: str, env: Mapping[str, pulumi.Input[str]], secret: Sequence[str]
    ) -> list[dict[str, Any]]:
        plain: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
        refs: list[dict[str, Any]] = [
            {
                "name": k,
                "value_from": {
                    "secret_key_ref": {"name": self._secrets[owner].metadata.name, "key": k}
                },
            }
            for k in sorted(secret)
        ]
        return plain + refs

    def _pod_security(self, uid: int) -> dict[str, Any]:
        return {
            "run_as_non_root": True,
            "run_as_user": uid,
            "run_as_group": uid,
            "fs_group": uid,
            "seccomp_profile": {"type": "RuntimeDefault"},
        }

    @staticmethod
    def _container_security(read_only_root: bool, cap_add: Sequence[str] = ()) -> dict[str, Any]:
        # The spec's cap_add serves Docker entrypoints that start as root and chown; here every
        # container starts as its non-root uid (fsGroup owns the volume). Only NET_BIND_SERVICE is
        # kept where a spec asks for it: an image may carry it as a file capability (Caddy's).
        kept = [c for c in cap_add if c == "NET_BIND_SERVICE"]
        return {
            "allow_privilege_escalation": False,
            "capabilities": {"drop": ["ALL"], **({"add": kept} if kept else {})},
            "read_only_root_filesystem": read_only_root,
            "run_as_non_root": True,
        }

    def _pod_template(self, svc: ServiceSpec) -> dict[str, Any]:
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        for i, path in enumerate(svc.tmpfs):
            volumes.append(
                {"name": f"tmp-{i}", "empty_dir": {"medium": "Memory", "size_limit": TMPFS_SIZE}}
            )
            mounts.append({"name": f"tmp-{i}", "mount_path": path})
        for vol in svc.volumes:
            claim = self._claims[f"{svc.name}-{vol.name}"]
            volumes.append(
                {"name": vol.name, "persistent_volume_claim": {"claim_name": claim.metadata.name}}
            )
            mounts.append({"name": vol.name, "mount_path": vol.path})
        memory = f"{svc.resources.memory_mb}Mi"
        amount = {"cpu": quantity_cpu(svc.resources.cpus), "memory": memory}
        container: dict[str, Any] = {
            "name": svc.name,
            "image": svc.image,
            "env": self._env(svc.name, svc.env, list(svc.secret_env)),
            "resources": {"requests": amount, "limits": amount},
            "security_context": self._container_security(svc.read_only_root, svc.cap_add),
            "volume_mounts": mounts,
        }
        if svc.command:
            container["args"] = list(svc.command)  # the image's entrypoint stays, as on Docker
        if svc.port:
            container["ports"] = [{"container_port": svc.port, "protocol": "TCP"}]
        if svc.health:
            container["readiness_probe"] = probe(svc.health, 3)
            container["liveness_probe"] = probe(svc.health, svc.health.retries)
        return {
            "metadata": {"labels": self._labels(svc.name)},
            "spec": {
                "automount_service_account_token": False,
                # Service links would inject POSTGRES_PORT=tcp://... and the like into every pod.
                "enable_service_links": False,
                "security_context": self._pod_security(self._uid(svc)),
                "containers": [container],
                "volumes": volumes,
            },
        }

    def _after(self, svc: ServiceSpec) -> list[pulumi.Resource]:
        return [self.workloads[d] for d in svc.depends_on]

    def _create_statefulset(self, svc: ServiceSpec) -> pulumi.CustomResource:
        return k8s.apps.v1.StatefulSet(
            f"{self._name}-{svc.name}",
            metadata=self._meta(svc.name),
            spec={
                "service_name": svc.name,
                "replicas": replicas(svc),
                "selector": {"match_labels": {NAME_LABEL: svc.name}},
                "update_strategy": {"type": "RollingUpdate"},
                "template": self._pod_template(svc),
            },
            opts=self._opts(depends_on=[*self._after(svc), *self._policies]),
        )

    def _create_deployment(
        self, svc: ServiceSpec, gate: Sequence[pulumi.Resource]
    ) -> pulumi.CustomResource:
        return k8s.apps.v1.Deployment(
            f"{self._name}-{svc.name}",
            metadata=self._meta(svc.name),
            spec={
                "replicas": replicas(svc),
                "selector": {"match_labels": {NAME_LABEL: svc.name}},
                # Keep capacity: a new pod must be ready before an old one goes.
                "strategy": {
                    "type": "RollingUpdate",
                    "rolling_update": {"max_unavailable": 0, "max_surge": 1},
                },
                "template": self._pod_template(svc),
            },
            opts=self._opts(depends_on=[*self._after(svc), *gate, *self._policies]),
        )

    def _create_pdbs(self) -> None:
        for svc in self._app.services:
            wanted = self._k.pdb_min_available.get(svc.name)
            count = replicas(svc)
            if wanted is None and count < 2:
                continue
            k8s.policy.v1.PodDisruptionBudget(
                f"{self._name}-pdb-{svc.name}",
                metadata=self._meta(svc.name),
                spec={
                    "min_available": wanted if wanted is not None else count - 1,
                    "selector": {"match_labels": {NAME_LABEL: svc.name}},
                },
                opts=self._opts(),
            )

    def _create_init_job(self, task: InitTask) -> pulumi.CustomResource:
        owner = self._owner(task.image)
        uid = self._uid(owner) if owner else SERVICE_UID
        labels = {**self._labels(task.name), TASK_LABEL: INIT_TASK_COMPONENT}
        # The root filesystem is read-only: tools that keep state in $HOME get /tmp.
        env = self._env(task.name, {"HOME": "/tmp", **task.env}, list(task.secret_env))
        container: dict[str, Any] = {
            "name": task.name,
            "image": task.image,
            "args": list(task.command),
            "env": env,
            "security_context": self._container_security(True),
            "resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "volume_mounts": [{"name": "tmp", "mount_path": "/tmp"}],
        }
        if task.entrypoint is not None:
            container["command"] = list(task.entrypoint)
        return k8s.batch.v1.Job(
            f"{self._name}-{task.name}",
            metadata={**self._meta(task.name), "labels": labels},
            spec={
                "backoff_limit": 3,  # idempotent (mc mb --ignore-existing): retrying is safe
                "active_deadline_seconds": 300,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restart_policy": "Never",
                        "automount_service_account_token": False,
                        "enable_service_links": False,
                        "security_context": self._pod_security(uid),
                        "containers": [container],
                        "volumes": [
                            {
                                "name": "tmp",
                                "empty_dir": {"medium": "Memory", "size_limit": TMPFS_SIZE},
                            }
                        ],
                    },
                },
            },
            # A Job's template is immutable and its name fixed: a change replaces it, and the old
            # Job must be gone before the new one can take the name.
            opts=self._opts(
                depends_on=[*(self.workloads[a] for a in task.after), *self._policies],
                delete_before_replace=True,
            ),
        )
