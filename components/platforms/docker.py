"""The Docker platform: one engine (local, or remote through ``DOCKER_HOST``/``dockerHost``).

Layout: an ``internal`` network (no route out, nothing published) that every workload joins under
its service name; an ``edge`` network that only the edge proxy (Caddy, the one published port) and
the public service it fronts join; an ``egress`` network for services that must reach Ollama. Data
stores keep their data in named volumes. Rollout follows DESIGN.md: data stores (health-gated, in
parallel), init tasks, backup + migration, then services in dependency order, the edge's switch to
the new public release, then the smoke test. No release deletes its predecessor first (see
``components/providers/container.py``). Engine objects are appstack's own dynamic resources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

from components import edge
from components.monitoring import Monitoring, MonitoringArgs
from components.platforms import PlatformArgs, rollout_order
from components.providers import engine
from components.providers.bootstrap import Bootstrap, bootstrap_args, with_owner_key
from components.providers.container import SECRETS_DIR
from components.providers.edge import EdgeRoute, EdgeRouteArgs
from components.providers.migration import Migration, migration_args
from components.providers.runner import Target
from components.providers.smoke import SmokeTest, smoke_args
from components.providers.task import OneOffTask, OneOffTaskArgs
from components.providers.window import token_of as window_token_of
from components.spec import EdgeSpec, Exposure, HealthCheck, Role, ServiceSpec, TlsMode

TYPE = "appstack:platforms:DockerApp"
# Health probes of HTTP services run inside their own image, which has Python (Haven's images do).
HTTP_PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)"


def health_test(check: HealthCheck) -> list[str]:
    """The Docker ``HEALTHCHECK`` test for a spec's health check."""
    if check.http_path:
        return ["CMD", "python3", "-c", HTTP_PROBE, check.http_path]
    return ["CMD", *check.command]


def secret_files(
    svc: ServiceSpec,
) -> tuple[dict[str, pulumi.Input[str]], dict[str, pulumi.Output[str]]]:
    """The container's env and its secret files: what the image reads as ``<KEY>_FILE`` is a file
    under ``/run/secrets`` (``components/providers/container.py``), so ``docker inspect`` shows
    only its path; the rest of the secret env stays env (the image reads nothing else)."""
    env: dict[str, pulumi.Input[str]] = {**svc.env}
    files: dict[str, pulumi.Output[str]] = {}
    for key, value in svc.secret_env.items():
        if key in svc.file_env:
            files[key.lower()] = value
            env[f"{key}_FILE"] = f"{SECRETS_DIR}/{key.lower()}"
        else:
            env[key] = value
    return env, files


def rollout(svc: ServiceSpec) -> str:
    """How a release of ``svc`` overlaps the running one.

    Stateless services start first: the old one serves until the new one is healthy. A data store
    stops first (two servers on one volume would corrupt it), and so does a worker: two releases
    claiming the same queue at once could process a job with old and new code, so the old one
    stops (finishing its batch within the grace period) and is started again if the new one fails.
    """
    if svc.role in (Role.DATASTORE, Role.WORKER) or svc.volumes:
        return "stop-first"
    return "start-first"


class DockerApp(pulumi.ComponentResource):
    """An ``AppSpec`` deployed to one Docker engine."""

    public_url: pulumi.Output[str]
    images: pulumi.Output[Mapping[str, str]]
    networks: pulumi.Output[Mapping[str, str]]
    edge_ca: pulumi.Output[str]
    containers: dict[str, engine.Container]
    migration: Migration | None
    route: EdgeRoute | None
    smoke: SmokeTest | None
    monitoring: Monitoring | None
    bootstrap: Bootstrap | None
    secret_outputs: dict[str, pulumi.Output[str]]
    """Secrets the platform produced (the owner key its bootstrap issued), by output name."""

    def __init__(
        self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name = name
        self._settings = args.settings
        self._app = args.app
        self._prefix = args.settings.prefix
        self._host = args.settings.docker_host
        self._create_networks()
        self._volumes = self._create_volumes()
        self._images = self._create_images()
        self.containers = {}
        order = rollout_order(self._app)
        for svc in (s for s in order if s.role is Role.DATASTORE):
            self.containers[svc.name] = self._create_container(svc, [])
        tasks = self._create_init_tasks()
        self.migration = self._create_migration()
        gate: list[pulumi.Resource] = [self.migration] if self.migration else []
        self.bootstrap = self._create_bootstrap(gate)
        self.secret_outputs: dict[str, pulumi.Output[str]] = {}
        if self.bootstrap and self._app.bootstrap:
            self.secret_outputs[self._app.bootstrap.output] = self.bootstrap.owner_key
        for svc in (s for s in order if s.role is not Role.DATASTORE):
            own = [self.bootstrap] if self.bootstrap and self._bootstraps(svc) else []
            self.containers[svc.name] = self._create_container(svc, [*gate, *own])
        self.route = self._create_edge(self._app.edge) if self._app.edge else None
        after = [*self.containers.values(), *tasks, *([self.route] if self.route else [])]
        self.smoke = self._create_smoke(after)
        self.monitoring = self._create_monitoring()

        self.public_url = pulumi.Output.from_input(self._entry_url())
        refs: dict[str, pulumi.Input[str]] = {s.name: s.image for s in self._app.services}
        if self._app.edge:
            refs["caddy"] = self._app.edge.image
        self.images = pulumi.Output.from_input(refs)  # type: ignore[arg-type,assignment]
        self.networks = pulumi.Output.from_input(self._network_names)  # type: ignore[arg-type]
        self.edge_ca = self.route.ca_pem if self.route else pulumi.Output.from_input("")
        self.register_outputs(
            {
                "public_url": self.public_url,
                "images": self.images,
                "networks": self.networks,
                "edge_ca": self.edge_ca,
            }
        )

    def _bootstraps(self, svc: ServiceSpec) -> bool:
        return bool(self._app.bootstrap and self._app.bootstrap.service == svc.name)

    def _create_bootstrap(self, gate: Sequence[pulumi.Resource]) -> Bootstrap | None:
        """The owner credential, issued once by a throwaway container of the service's image."""
        spec = self._app.bootstrap
        if spec is None:
            return None
        svc = next(s for s in self._app.services if s.name == spec.service)
        return Bootstrap(
            f"{self._name}-bootstrap",
            bootstrap_args(
                spec,
                svc,
                self._images[svc.name].image_id,
                network=self.internal.name,
                name_prefix=self._prefix,
                labels=self._labels(),
                user=svc.user,
                docker_host=self._host,
                timeout_s=self._settings.deploy_timeout_s,
            ),
            opts=self._opts(depends_on=[*gate, *(self.containers[d] for d in svc.depends_on)]),
        )

    def _opts(self, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **kwargs)

    def _labels(self, service: str | None = None) -> dict[str, str]:
        labels = {engine.STACK_LABEL: self._settings.stack, "appstack.app": self._app.name}
        if service:
            labels["appstack.service"] = service
        return labels

    def _entry_url(self) -> str:
        if self._settings.public.url:  # appstack:public.url: where clients reach the entry
            return self._settings.public.url
        entry = self._app.entry
        host = "127.0.0.1" if entry.address in ("0.0.0.0", "::") else entry.address
        return f"{entry.scheme}://{entry.host or host}:{entry.port}"

    def _create_networks(self) -> None:
        def network(suffix: str, internal: bool = False) -> engine.Network:
            return engine.Network(
                f"{self._name}-{suffix}",
                network_name=f"{self._prefix}-{suffix}",
                internal=internal,
                labels=self._labels(),
                docker_host=self._host,
                opts=self._opts(),
            )

        self.internal = network("internal", internal=True)
        self.edge = network("edge")
        names: dict[str, str] = {"internal": f"{self._prefix}-internal",
                                 "edge": f"{self._prefix}-edge"}  # fmt: skip
        self.egress: engine.Network | None = None
        needs_egress = any(s.needs_egress for s in self._app.services)
        if needs_egress and self._settings.ollama.network is None:
            self.egress = network("egress")
            names["egress"] = f"{self._prefix}-egress"
        elif needs_egress:
            names["egress"] = self._settings.ollama.network or ""
        self._network_names = names

    def _create_volumes(self) -> dict[tuple[str, str], engine.Volume]:
        protect = self._settings.protect_volumes
        wanted = [(svc.name, vol.name) for svc in self._app.services for vol in svc.volumes]
        if self._app.migration is not None:
            wanted.append(("backups", ""))  # pre-migration dumps are data too
        volumes: dict[tuple[str, str], engine.Volume] = {}
        for owner, vol in wanted:
            suffix = f"{owner}-{vol}" if vol else owner
            volumes[(owner, vol)] = engine.Volume(
                f"{self._name}-{suffix}",
                volume_name=f"{self._prefix}-{suffix}",
                labels=self._labels(owner),
                docker_host=self._host,
                # Data outlives the stack where settings say so: `destroy` must not take it
                # (protect), and even an unprotected delete leaves the volume (retain).
                opts=self._opts(protect=protect, retain_on_delete=protect),
            )
        return volumes

    def _create_images(self) -> dict[str, engine.Image]:
        return {
            svc.name: engine.Image(
                f"{self._name}-{svc.name}-image", svc.image, self._host, opts=self._opts()
            )
            for svc in self._app.services
        }

    def _networks_for(self, svc: ServiceSpec) -> list[dict[str, Any]]:
        nets: list[dict[str, Any]] = [{"name": self.internal.name, "aliases": [svc.name]}]
        if svc.exposure is Exposure.PUBLIC:
            nets.append({"name": self.edge.name, "aliases": []})
        if svc.needs_egress:
            egress = self.egress.name if self.egress else self._settings.ollama.network
            nets.append({"name": egress, "aliases": []})
        return nets

    def _create_container(
        self, svc: ServiceSpec, gate: Sequence[pulumi.Resource]
    ) -> engine.Container:
        after = [self.containers[d] for d in svc.depends_on] + list(gate)
        health = None
        if svc.health:
            h = svc.health
            health = {
                "test": health_test(h),
                "interval_s": h.interval_s,
                "timeout_s": h.timeout_s,
                "retries": h.retries,
                "start_period_s": h.start_period_s,
            }
        mounts = [
            {"source": self._volumes[(svc.name, vol.name)].name, "target": vol.path}
            for vol in svc.volumes
        ]
        extra_hosts = {}
        if svc.needs_egress and self._settings.ollama.network is None:
            extra_hosts["host.docker.internal"] = "host-gateway"
        env, files = secret_files(svc)
        if self._bootstraps(svc) and self._app.bootstrap:
            env.pop(self._app.bootstrap.token_env, None)  # the bootstrap ran it: runbook step
        props: dict[str, Any] = {
            "name": f"{self._prefix}-{svc.name}",
            "image": svc.image,
            "image_id": self._images[svc.name].image_id,
            "command": list(svc.command),
            "env": env,
            "user": svc.user,
            "networks": self._networks_for(svc),
            "ports": [],
            "healthcheck": health,
            "restart": "unless-stopped",
            "memory_mb": svc.resources.memory_mb,
            "cpus": svc.resources.cpus,
            "read_only": svc.read_only_root,
            "tmpfs": {path: "rw,nosuid,nodev,size=64m" for path in svc.tmpfs},
            "security_opt": ["no-new-privileges:true"],
            "cap_add": list(svc.cap_add),
            "mounts": mounts,
            "labels": self._labels(svc.name),
            "extra_hosts": extra_hosts,
            "stop_timeout_s": 30,
            "docker_host": self._host,
            "rollout": rollout(svc),
            # The edge stops the public service's old release once it has switched away from it.
            "retired_by_edge": bool(self._app.edge and self._app.edge.upstream == svc.name),
            "wait_timeout_s": self._settings.deploy_timeout_s,
            "grace_s": 10,
        }
        if set(svc.secret_env) - set(svc.file_env):
            props["env"] = pulumi.Output.secret(props["env"])
        if files:
            props["secret_files"] = pulumi.Output.secret(files)
        # Health-gated creation beside the running release; the old one goes at the end.
        return engine.Container(
            f"{self._name}-{svc.name}", props, opts=self._opts(depends_on=after)
        )

    def _create_edge(self, spec: EdgeSpec) -> EdgeRoute:
        """Caddy on the published port(s), and its route to the public service's release."""
        entry = self._app.entry
        listen = edge.listens(spec, redirect=self._settings.public.tls_port is not None)
        https_port = self._settings.public.tls_port or entry.port
        ports = []
        if listen.https:
            ports.append({"internal": edge.HTTPS_PORT, "external": https_port, "ip": entry.address})
        if listen.http:
            plain = self._settings.public.port  # entry.port is the HTTPS one when TLS is on
            ports.append({"internal": edge.HTTP_PORT, "external": plain, "ip": entry.address})
        volume = engine.Volume(
            f"{self._name}-caddy-data",
            volume_name=f"{self._prefix}-caddy-data",
            labels=self._labels("caddy"),
            docker_host=self._host,
            # Its CA and certificates are keys clients trust: kept like the app's data.
            opts=self._opts(protect=self._settings.protect_volumes,
                            retain_on_delete=self._settings.protect_volumes),
        )  # fmt: skip
        image = engine.Image(f"{self._name}-caddy-image", spec.image, self._host, opts=self._opts())
        self._images["caddy"] = image
        props: dict[str, Any] = {
            "name": f"{self._prefix}-caddy",
            "image": spec.image,
            "image_id": image.image_id,
            "command": list(edge.COMMAND),
            "env": dict(edge.ENV),
            "user": None,
            "networks": [{"name": self.edge.name, "aliases": ["caddy"]}],
            "ports": ports,
            "healthcheck": {"test": ["CMD", *edge.HEALTH], "interval_s": 5, "timeout_s": 3,
                            "retries": 3, "start_period_s": 2},
            "restart": "unless-stopped",
            "memory_mb": spec.resources.memory_mb,
            "cpus": spec.resources.cpus,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=16m"},
            "security_opt": ["no-new-privileges:true"],
            "cap_add": list(edge.CAPABILITIES),
            "mounts": [{"source": volume.name, "target": edge.DATA_DIR}],
            "labels": self._labels("caddy"),
            "extra_hosts": {},
            "stop_timeout_s": 10,
            "docker_host": self._host,
            # One host port cannot be bound twice: the old edge stops, and starts again if the
            # new one fails. Its configuration rides on the volume, so the new one resumes it.
            "rollout": "stop-first",
            "wait_timeout_s": 60,
            "grace_s": 2,
        }  # fmt: skip
        caddy = engine.Container(f"{self._name}-caddy", props, opts=self._opts())
        self.containers["caddy"] = caddy
        upstream = self.containers[spec.upstream]
        target = pulumi.Output.concat(upstream.container_name, ":", str(spec.upstream_port))
        redirect = self._settings.public.tls_port if listen.http and listen.https else None
        metrics = self._settings.monitoring.enabled  # Prometheus scrapes the edge's listener
        token = self._window_token()
        caddyfile: pulumi.Output[str] = pulumi.Output.all(target, token).apply(
            lambda a: edge.caddyfile(
                spec, a[0], redirect_port=redirect, metrics=metrics, window_token=a[1] or None
            )
        )
        if spec.window:
            caddyfile = pulumi.Output.secret(caddyfile)  # it holds the window's token
        files: dict[str, pulumi.Output[str]] = {}
        if spec.tls is TlsMode.CERTIFICATE and spec.certificate and spec.private_key:
            files = {edge.CERT_FILE: spec.certificate, edge.KEY_FILE: spec.private_key}
        return EdgeRoute(
            f"{self._name}-edge-route",
            EdgeRouteArgs(
                container_id=caddy.container_id,
                upstream=target,
                health_path=spec.health_path,
                health_status=spec.health_status,
                caddyfile=caddyfile,
                files=files,
                internal_ca=spec.tls is TlsMode.INTERNAL,
                docker_host=self._host,
                retire={
                    "name": f"{self._prefix}-{spec.upstream}",
                    "labels": self._labels(spec.upstream),
                    "stop_timeout_s": 30,
                },
            ),
            opts=self._opts(depends_on=[caddy, upstream]),
        )

    def _window_token(self) -> pulumi.Output[str]:
        """The maintenance window's token ("" without a window): from the database password."""
        return window_token_of(self._app)

    def _window(self) -> dict[str, Any] | None:
        """The edge container the maintenance window opens at: its stable name and labels."""
        if not (self._app.edge and self._app.edge.window):
            return None
        return {"docker_host": self._host, "name": f"{self._prefix}-caddy",
                "labels": self._labels("caddy")}  # fmt: skip

    def _target(self) -> Target:
        db = self._app.migration.database if self._app.migration else None
        return Target(
            kind="docker",
            docker_host=self._host,
            network=f"{self._prefix}-internal",
            name_prefix=self._prefix,
            client_image=str(db.image) if db else "",
            db_host=db.service if db else "",
            db_port=db.port if db else 5432,
            db_name=db.database if db else "",
            db_user=db.user if db else "",
            backup_volume=f"{self._prefix}-backups",
        )

    def _create_init_tasks(self) -> list[pulumi.Resource]:
        tasks: list[pulumi.Resource] = []
        for task in self._app.init_tasks:
            owner = next((s.name for s in self._app.services if s.image == task.image), None)
            image = self._images[owner].image_id if owner else task.image
            tasks.append(
                OneOffTask(
                    f"{self._name}-{task.name}",
                    OneOffTaskArgs(
                        target=self._target(),
                        image=image,
                        command=list(task.command),
                        entrypoint=list(task.entrypoint) if task.entrypoint is not None else None,
                        env=dict(task.env),
                        secret_env=dict(task.secret_env),
                    ),
                    opts=self._opts(depends_on=[self.containers[a] for a in task.after]),
                )
            )
        return tasks

    def _create_migration(self) -> Migration | None:
        spec = self._app.migration
        if spec is None:
            return None
        source = next(s for s in self._app.services if s.image == spec.source_image)
        return Migration(
            f"{self._name}-migration",
            migration_args(
                spec,
                self._target(),
                self._images[source.name].image_id,
                [f"{self._prefix}-{q}" for q in spec.quiescent],
                self._window(),
            ),
            opts=self._opts(
                depends_on=[self.containers[spec.database.service], self._volumes[("backups", "")]]
            ),
        )

    def _create_monitoring(self) -> Monitoring | None:
        """Prometheus, Alertmanager and exporters beside the app (``appstack:monitoring``)."""
        if not self._settings.monitoring.enabled:
            return None
        return Monitoring(
            f"{self._name}-monitoring",
            MonitoringArgs(
                settings=self._settings.monitoring,
                app=self._app,
                stack=self._settings.stack,
                prefix=self._prefix,
                internal_network=self.internal.name,
                edge_network=self.edge.name,
                docker_host=self._host,
                deploy_timeout_s=self._settings.deploy_timeout_s,
                protect_volume=self._settings.protect_volumes,
            ),
            opts=self._opts(),
        )

    def _create_smoke(self, after: Sequence[pulumi.Resource]) -> SmokeTest | None:
        spec = self._app.smoke
        if spec is None:
            return None
        ca: pulumi.Input[str] = self.route.ca_pem if self.route else ""
        edge_spec = self._app.edge
        if edge_spec and edge_spec.tls is TlsMode.CERTIFICATE and edge_spec.certificate:
            ca = edge_spec.certificate
        window = self._window()
        headers = {edge.WINDOW_HEADER: self._window_token()} if window else {}
        if self.bootstrap:
            spec = with_owner_key(spec, self.bootstrap.owner_key)
        prune = None
        if self._settings.prune_images:
            refs = {s.name: s.image for s in self._app.services}
            if edge_spec:
                refs["caddy"] = edge_spec.image
            prune = {"docker_host": self._host, "images": refs}
        return SmokeTest(
            f"{self._name}-smoke",
            smoke_args(spec, self._entry_url(), ca, headers, window, prune),
            opts=self._opts(depends_on=list(after)),
        )
