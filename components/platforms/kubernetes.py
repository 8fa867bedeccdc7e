"""The Kubernetes platform: one namespace per stack on the cluster of a kubeconfig context.

Layout: a Namespace named by ``appstack:kubernetes.namespace`` (the stack name is in it, so two
stacks share a cluster); a Secret per workload for its secret env (containers read them through
``secretKeyRef``: no secret value sits in a pod spec); data stores as StatefulSets (1 replica) on
explicitly declared, protectable PersistentVolumeClaims; app services as Deployments with probes,
limits, a hardened security context and capacity-keeping rolling updates; ClusterIP Services named
after each service (the names the specs' URLs use); one Ingress, for the public service; a
default-deny NetworkPolicy plus exactly the edges the topology needs. Rollout follows DESIGN.md:
data stores, init Jobs, migration (a dynamic resource whose runner runs Jobs through ``kubectl``),
services in dependency order, smoke test against the Ingress URL. pulumi-kubernetes waits for each
StatefulSet/Deployment/Job to be ready, which is the health gate.

With ``appstack:kubernetes.renderManifestsTo`` the provider writes YAML instead of talking to a
cluster; the migration and the smoke test need a cluster, so they are skipped (and a note says so).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import edge
from components.platforms import PlatformArgs, rollout_order
from components.providers.k8s_runner import TASK_LABEL, TASK_LABEL_VALUE
from components.providers.migration import Migration, migration_args
from components.providers.runner import Target
from components.providers.smoke import SmokeTest, smoke_args
from components.settings import NS, ConfigError
from components.spec import AppSpec, Exposure, HealthCheck, InitTask, Role, ServiceSpec

TYPE = "appstack:platforms:KubernetesApp"
NAME_LABEL = "app.kubernetes.io/name"
SERVICE_UID = 10001
"""uid of app services (Haven's images run as any uid)."""
DATASTORE_UIDS = {"postgres": 999, "qdrant": 1000, "minio": 1000}
"""The uid each official data-store image owns its data as (fsGroup too)."""
INIT_TASK_COMPONENT = "init-task"
BACKUPS_CLAIM = "backups"
TMPFS_SIZE = "64Mi"
RENDER_NOTE = (
    "render mode (appstack:kubernetes.renderManifestsTo): manifests are written to {dir}; the "
    "Migration and SmokeTest resources need a cluster and were skipped"
)
_ENV_HOST = r"(?<![A-Za-z0-9.-]){name}(?=:[0-9]+|/|$)"
_CLUSTER_HOST = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?\.?$")


# The pod's root is read-only: Caddy writes its file, config and data under the /tmp emptyDir.
EDGE_COMMAND = (
    "sh",
    "-c",
    'printf "%s" "$CADDYFILE" > /tmp/Caddyfile'
    " && exec caddy run --config /tmp/Caddyfile --adapter caddyfile",
)


def with_edge_service(app: AppSpec, replicas: int) -> AppSpec:
    """The app with its edge as one more Deployment: Ingress -> Caddy -> the public service.

    TLS ends at the Ingress, so Caddy serves plain HTTP; a rolling update of the upstream keeps
    its Service answering, so the Caddyfile names the Service, and a change of it (maintenance)
    rolls Caddy's pods like any env change.
    """
    if app.edge is None:
        return app
    spec = app.edge
    upstream = app.service(spec.upstream)
    target = f"{upstream.name}:{upstream.port}"
    caddy = ServiceSpec(
        name="caddy",
        image=spec.image,
        port=edge.HTTP_PORT,
        command=EDGE_COMMAND,
        env={
            "CADDYFILE": edge.caddyfile(spec, target, serve_tls=False),
            "XDG_DATA_HOME": "/tmp/data",
            "XDG_CONFIG_HOME": "/tmp/config",
        },
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


def check_settings(args: PlatformArgs) -> None:
    """Settings that only the topology can judge; raise one ``ConfigError`` naming each key."""
    k = args.settings.kubernetes
    if k is None:
        msg = f"{NS}:kubernetes: the kubernetes platform needs kubernetes settings"
        raise ConfigError(msg)
    errors = []
    for name, wanted in sorted(k.pdb_min_available.items()):
        svc = next((s for s in args.app.services if s.name == name), None)
        count = replicas(svc) if svc else 0
        if svc is not None and wanted >= count:
            errors.append(
                f"{NS}:kubernetes.pdbMinAvailable.{name}: minAvailable {wanted} with {count} "
                "replica(s) makes a PodDisruptionBudget impossible (data stores run 1 replica)"
            )
    if errors:
        msg = "invalid stack configuration:\n  " + "\n  ".join(errors)
        raise ConfigError(msg)


class KubernetesApp(pulumi.ComponentResource):
    """An ``AppSpec`` deployed to one namespace of a Kubernetes cluster."""

    public_url: pulumi.Output[str]
    images: pulumi.Output[Mapping[str, str]]
    networks: pulumi.Output[Mapping[str, str]]
    edge_ca: pulumi.Output[str]
    workloads: dict[str, pulumi.CustomResource]
    migration: Migration | None
    smoke: SmokeTest | None

    def __init__(
        self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        check_settings(args)
        super().__init__(TYPE, name, None, opts)
        assert args.settings.kubernetes is not None  # check_settings made sure
        self._name = name
        self._settings = args.settings
        self._k = args.settings.kubernetes
        self._app = with_edge_service(args.app, args.settings.replicas("caddy"))
        self._ns_name = self._k.namespace
        self._render = self._k.render_to is not None
        self._provider = k8s.Provider(
            f"{name}-k8s",
            context=self._k.kubeconfig_context,
            render_yaml_to_directory=self._k.render_to,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._namespace = self._create_namespace()
        self.ns: pulumi.Output[str] = self._namespace.metadata.name
        self._secrets = self._create_secrets()
        self._policies = self._create_network_policies()
        self._claims = self._create_claims()
        self._create_services()
        self.workloads = {}
        order = rollout_order(self._app)
        for svc in (s for s in order if s.role is Role.DATASTORE):
            self.workloads[svc.name] = self._create_statefulset(svc)
        tasks = [self._create_init_job(t) for t in self._app.init_tasks]
        self.migration = None if self._render else self._create_migration()
        gate: list[pulumi.Resource] = [self.migration] if self.migration else []
        for svc in (s for s in order if s.role is not Role.DATASTORE):
            self.workloads[svc.name] = self._create_deployment(svc, gate)
        self._create_pdbs()
        ingress = self._create_ingress()
        after = [*self.workloads.values(), *tasks, ingress]
        self.smoke = None if self._render else self._create_smoke(after)
        outputs: dict[str, Any] = {}
        if self._render:
            note = RENDER_NOTE.format(dir=self._k.render_to)
            pulumi.log.warn(note, resource=self)
            pulumi.export("kubernetesNote", note)
            outputs["note"] = note

        self.public_url = pulumi.Output.from_input(self._entry_url())
        refs: dict[str, pulumi.Input[str]] = {s.name: s.image for s in self._app.services}
        self.images = pulumi.Output.from_input(refs)  # type: ignore[arg-type,assignment]
        self.networks = pulumi.Output.from_input(
            {"namespace": self.ns, "ingressNamespace": self._k.ingress_namespace}
        )  # type: ignore[arg-type,assignment]
        # TLS ends at the Ingress, whose certificate comes from `kubernetes.tlsSecret`.
        self.edge_ca = pulumi.Output.from_input("")
        self.register_outputs(
            {
                "public_url": self.public_url,
                "images": self.images,
                "networks": self.networks,
                **outputs,
            }
        )

    # -- helpers -----------------------------------------------------------------------------

    def _opts(self, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=self._provider, **kwargs)

    def _labels(self, name: str | None = None) -> dict[str, str]:
        labels = {
            "app.kubernetes.io/part-of": self._app.name,
            "app.kubernetes.io/instance": self._ns_name,
            "app.kubernetes.io/managed-by": "pulumi",
        }
        if name:
            labels[NAME_LABEL] = name
        return labels

    def _meta(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": self.ns, "labels": self._labels(name), **extra}

    def _entry_url(self) -> str:
        scheme = "https" if self._k.tls else "http"
        return f"{scheme}://{self._k.ingress_host}"

    def _uid(self, svc: ServiceSpec) -> int:
        if svc.user and svc.user.split(":", 1)[0].isdigit():
            return int(svc.user.split(":", 1)[0])
        return DATASTORE_UIDS.get(svc.name, SERVICE_UID)

    def _owner(self, image: pulumi.Input[str]) -> ServiceSpec | None:
        return next((s for s in self._app.services if s.image == image), None)

    # -- namespace, secrets, network policies, storage, services ----------------------------

    def _create_namespace(self) -> Any:
        protect = self._settings.protect_volumes
        return k8s.core.v1.Namespace(
            f"{self._name}-namespace",
            metadata={"name": self._ns_name, "labels": self._labels()},
            # Deleting a namespace deletes the PVCs in it: keep it wherever the volumes are kept.
            opts=self._opts(retain_on_delete=protect),
        )

    def _secret(self, owner: str, values: Mapping[str, pulumi.Input[str]]) -> Any:
        return k8s.core.v1.Secret(
            f"{self._name}-{owner}-env",
            metadata=self._meta(f"{owner}-env"),
            type="Opaque",
            string_data=pulumi.Output.secret(dict(values)),  # type: ignore[arg-type]
            opts=self._opts(),
        )

    def _create_secrets(self) -> dict[str, Any]:
        owners: list[tuple[str, Mapping[str, pulumi.Input[str]]]] = [
            (s.name, s.secret_env) for s in self._app.services
        ]
        owners += [(t.name, t.secret_env) for t in self._app.init_tasks]
        return {owner: self._secret(owner, env) for owner, env in owners if env}

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

    def _claim(self, claim: str, owner: str) -> Any:
        protect = self._settings.protect_volumes
        spec: dict[str, Any] = {
            "access_modes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self._k.storage_size}},
        }
        if self._k.storage_class:
            spec["storage_class_name"] = self._k.storage_class
        labels = {**self._labels(claim), "appstack.io/owner": owner}
        # A WaitForFirstConsumer class binds only once a pod mounts the claim: waiting for
        # "Bound" before creating that pod would never end.
        annotations = {"pulumi.com/skipAwait": "true"}
        return k8s.core.v1.PersistentVolumeClaim(
            f"{self._name}-pvc-{claim}",
            metadata={
                "name": claim,
                "namespace": self.ns,
                "labels": labels,
                "annotations": annotations,
            },
            spec=spec,
            # Data outlives the stack where settings say so: `destroy` must not take it
            # (protect), and even an unprotected delete leaves the claim (retain).
            opts=self._opts(protect=protect, retain_on_delete=protect),
        )

    def _create_claims(self) -> dict[str, Any]:
        claims = {
            f"{svc.name}-{vol.name}": self._claim(f"{svc.name}-{vol.name}", svc.name)
            for svc in self._app.services
            for vol in svc.volumes
        }
        if self._app.migration is not None:
            # Pre-migration dumps are data too.
            claims[BACKUPS_CLAIM] = self._claim(BACKUPS_CLAIM, "migration")
        return claims

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

    # -- workloads ---------------------------------------------------------------------------

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

    # -- migration, ingress, smoke -----------------------------------------------------------

    def _target(self) -> Target:
        spec = self._app.migration
        db = spec.database if spec else None
        uid = self._uid(self._app.service(db.service)) if db else SERVICE_UID
        return Target(
            kind="kubernetes",
            namespace=self._ns_name,
            context=self._k.kubeconfig_context,
            name_prefix=self._settings.prefix,
            client_image=str(db.image) if db else "",
            db_host=db.service if db else "",
            db_port=db.port if db else 5432,
            db_name=db.database if db else "",
            db_user=db.user if db else "",
            backup_volume=BACKUPS_CLAIM,
            run_as_user=uid,
        )

    def _create_migration(self) -> Migration | None:
        spec = self._app.migration
        if spec is None:
            return None
        return Migration(
            f"{self._name}-migration",
            # Quiescent names are Deployment names: the runner scales them to 0 and back.
            migration_args(spec, self._target(), spec.source_image, spec.quiescent),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    self.workloads[spec.database.service],
                    self._claims[BACKUPS_CLAIM],
                    *self._policies,
                ],
            ),
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

    def _create_smoke(self, after: Sequence[pulumi.Resource]) -> SmokeTest | None:
        spec = self._app.smoke
        if spec is None:
            return None
        return SmokeTest(
            f"{self._name}-smoke",
            smoke_args(spec, self._entry_url()),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
