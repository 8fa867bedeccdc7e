"""The Kubernetes platform: one namespace per stack on the cluster of a kubeconfig context.

Layout: a Namespace named by ``appstack:kubernetes.namespace`` (the stack name is in it, so two
stacks share a cluster); a Secret per workload for its secret env (containers read them through
``secretKeyRef``: no secret value sits in a pod spec); data stores as StatefulSets (1 replica) on
explicitly declared, protectable PersistentVolumeClaims; app services as Deployments with probes,
limits, a hardened security context and capacity-keeping rolling updates; ClusterIP Services named
after each service (the names the specs' URLs use); one Ingress, for the public service; a
default-deny NetworkPolicy plus exactly the edges the topology needs. Rollout follows DESIGN.md:
data stores, init Jobs, migration (a dynamic resource whose runner runs Jobs through ``kubectl``),
services in dependency order, smoke test against the Ingress URL. With ``appstack:monitoring``,
Prometheus, Alertmanager and the exporters beside them (k8s_monitoring.py). pulumi-kubernetes
waits for each StatefulSet/Deployment/Job to be ready, which is the health gate.

With ``appstack:kubernetes.renderManifestsTo`` the provider writes YAML instead of talking to a
cluster; the migration and the smoke test need a cluster, so they are skipped (and a note says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import edge
from components.monitoring.operator import operator_wanted
from components.platforms import PlatformArgs, rollout_order
from components.platforms.k8s_base import BACKUPS_CLAIM, NAME_LABEL, SERVICE_UID
from components.platforms.k8s_monitoring import MonitoringParts
from components.platforms.k8s_networking import (  # noqa: F401  (the module's public names)
    Networking,
    egress_peer,
    service_edges,
    split_host_port,
)
from components.platforms.k8s_storage import Storage
from components.platforms.k8s_workloads import (  # noqa: F401  (the module's public names)
    Workloads,
    probe,
    replicas,
    with_edge_service,
)
from components.providers.bootstrap import Bootstrap, bootstrap_args, with_owner_key
from components.providers.migration import Migration, migration_args
from components.providers.runner import Target
from components.providers.smoke import SmokeTest, smoke_args
from components.providers.window import kubernetes_window
from components.providers.window import token_of as window_token_of
from components.settings import NS, ConfigError
from components.spec import AppSpec, Role, ServiceSpec

TYPE = "appstack:platforms:KubernetesApp"
EDGE = "caddy"
"""The edge's Deployment (and container) name (``with_edge_service``)."""
RENDER_NOTE = (
    "render mode (appstack:kubernetes.renderManifestsTo): manifests are written to {dir}; the "
    "Migration and SmokeTest resources need a cluster and were skipped"
)
SKIP_TASKS_NOTE = (
    "appstack:kubernetes.skipClusterTasks is true: the steps that need a running container were "
    "NOT declared ({steps}); nothing checked that the database is migrated, that the init tasks "
    "did their work or that the entry point answers. Meant only for clusters whose nodes run no "
    "containers (kwok)"
)


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


class KubernetesApp(MonitoringParts, Workloads, Networking, Storage, pulumi.ComponentResource):
    """An ``AppSpec`` deployed to one namespace of a Kubernetes cluster."""

    public_url: pulumi.Output[str]
    images: pulumi.Output[Mapping[str, str]]
    networks: pulumi.Output[Mapping[str, str]]
    edge_ca: pulumi.Output[str]
    workloads: dict[str, pulumi.CustomResource]
    monitoring: dict[str, pulumi.CustomResource]
    """The monitoring's Deployments by name (``appstack:monitoring``; empty when off)."""
    migration: Migration | None
    smoke: SmokeTest | None
    bootstrap: Bootstrap | None
    secret_outputs: dict[str, pulumi.Output[str]]
    """Secrets the platform produced (the owner key its bootstrap issued), by output name."""

    def __init__(
        self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        check_settings(args)
        # Asks the cluster (kubectl) for the operator's CRDs: before any resource exists.
        self._operator = operator_wanted(args.settings)
        super().__init__(TYPE, name, None, opts)
        assert args.settings.kubernetes is not None  # check_settings made sure
        self._name = name
        self._settings = args.settings
        self._k = args.settings.kubernetes
        self._monitored = args.app
        metrics = args.settings.monitoring.enabled  # the monitoring scrapes the edge's listener
        self._window_token = window_token_of(args.app)
        self._has_window = bool(args.app.edge and args.app.edge.window and args.app.migration)
        self._app = with_edge_service(
            _without_bootstrap_token(args.app),
            args.settings.replicas("caddy"),
            metrics,
            self._window_token if self._has_window else None,
        )
        self._ns_name = self._k.namespace
        self._render = self._k.render_to is not None
        # The Migration and the SmokeTest need a cluster to run on: none in render mode. On a
        # cluster whose nodes run no containers (kwok) settings skip them and the init Jobs.
        self._run_tasks = not self._render and not self._k.skip_cluster_tasks
        self._provider = k8s.Provider(
            f"{name}-k8s",
            # The plugin refuses a kubeconfig beside renderYamlToDirectory, and the SDK fills it
            # from $KUBECONFIG when it is None: render mode must say "none" explicitly.
            kubeconfig="" if self._render else None,
            context=None if self._render else self._k.kubeconfig_context,
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
        self.monitoring = self._create_monitoring()
        skip = self._k.skip_cluster_tasks
        tasks = [] if skip else [self._create_init_job(t) for t in self._app.init_tasks]
        self.migration = self._create_migration() if self._run_tasks else None
        gate: list[pulumi.Resource] = [self.migration] if self.migration else []
        self.bootstrap = self._create_bootstrap(gate) if self._run_tasks else None
        self.secret_outputs: dict[str, pulumi.Output[str]] = {}
        if self.bootstrap and self._app.bootstrap:
            self.secret_outputs[self._app.bootstrap.output] = self.bootstrap.owner_key
        for svc in (s for s in order if s.role is not Role.DATASTORE):
            own = [self.bootstrap] if self.bootstrap and self._bootstraps(svc) else []
            self.workloads[svc.name] = self._create_deployment(svc, [*gate, *own])
        self._create_pdbs()
        ingress = self._create_ingress()
        after = [*self.workloads.values(), *tasks, ingress]
        self.smoke = self._create_smoke(after) if self._run_tasks else None
        outputs: dict[str, Any] = {}
        note = self._skipped_note()
        if note:
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

    def _skipped_note(self) -> str:
        """Why steps were left out (render mode, skipClusterTasks), or empty."""
        if self._render:
            return RENDER_NOTE.format(dir=self._k.render_to)
        if self._run_tasks:
            return ""
        steps = [
            *(["Migration"] if self._app.migration else []),
            *(["Bootstrap"] if self._app.bootstrap else []),
            *(f"init Job {t.name}" for t in self._app.init_tasks),
            *(["SmokeTest"] if self._app.smoke else []),
        ]
        return SKIP_TASKS_NOTE.format(steps=", ".join(steps) or "none in this app")

    def _entry_url(self) -> str:
        scheme = "https" if self._k.tls else "http"
        return f"{scheme}://{self._k.ingress_host}"

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
        if not self._k.skip_cluster_tasks:
            owners += [(t.name, t.secret_env) for t in self._app.init_tasks]
        return {owner: self._secret(owner, env) for owner, env in owners if env}

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
            migration_args(spec, self._target(), spec.source_image, spec.quiescent, self._window()),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    self.workloads[spec.database.service],
                    self._claims[BACKUPS_CLAIM],
                    *self._policies,
                ],
            ),
        )

    def _create_smoke(self, after: Sequence[pulumi.Resource]) -> SmokeTest | None:
        spec = self._app.smoke
        if spec is None:
            return None
        window = self._window()
        headers = {edge.WINDOW_HEADER: self._window_token} if window else {}
        if self.bootstrap:
            spec = with_owner_key(spec, self.bootstrap.owner_key)
        return SmokeTest(
            f"{self._name}-smoke",
            smoke_args(spec, self._entry_url(), headers=headers, window=window),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )

    # -- the runbook's window and bootstrap --------------------------------------------------

    def _window(self) -> dict[str, Any] | None:
        """The edge's pods the maintenance window opens at (``window.py``), or None."""
        if not self._has_window:
            return None
        selector = f"{NAME_LABEL}={EDGE}"
        return kubernetes_window(self._ns_name, self._k.kubeconfig_context, selector, EDGE)

    def _bootstraps(self, svc: ServiceSpec) -> bool:
        return bool(self._app.bootstrap and self._app.bootstrap.service == svc.name)

    def _create_bootstrap(self, gate: Sequence[pulumi.Resource]) -> Bootstrap | None:
        """The owner credential, issued once by a Job whose pod runs the service's image as a
        native sidecar with the token (``providers/bootstrap.py``); the Deployment never has it."""
        spec = self._app.bootstrap
        if spec is None:
            return None
        svc = self._app.service(spec.service)
        target = {"kind": "kubernetes", "namespace": self._ns_name,
                  "context": self._k.kubeconfig_context, "run_as_user": self._uid(svc)}  # fmt: skip
        return Bootstrap(
            f"{self._name}-bootstrap",
            bootstrap_args(
                spec,
                svc,
                svc.image,
                network="",
                name_prefix=self._settings.prefix,
                target=target,
                timeout_s=self._settings.deploy_timeout_s,
            ),
            # The task pods' NetworkPolicy lets the Job reach the database.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*gate, *self._policies]),
        )


def _without_bootstrap_token(app: AppSpec) -> AppSpec:
    """``app`` whose bootstrapped service never gets the bootstrap token (the runbook's "remove
    the env var after first use", from the start): the Bootstrap Job holds it, nothing else."""
    spec = app.bootstrap
    if spec is None:
        return app
    services = tuple(
        replace(s, secret_env={k: v for k, v in s.secret_env.items() if k != spec.token_env})
        if s.name == spec.service
        else s
        for s in app.services
    )
    return replace(app, services=services)
