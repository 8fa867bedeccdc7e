"""Docker Engine resources as dynamic providers: ``Image``, ``Network``, ``Volume``, ``Container``.

appstack talks to the Docker Engine API itself (the ``docker`` SDK, ``DOCKER_HOST`` honoured,
``ssh://`` included) instead of loading a provider plugin: a deploy needs nothing but the Pulumi
CLI, which keeps air-gapped hosts and offline machines first-class. Each resource is labelled
with its stack; a create that finds an object of the same name left by an interrupted update of
the same stack adopts (network, volume) or replaces (container) it, so a killed ``pulumi up``
converges on the next run without state surgery.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pulumi
from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
)

from components.providers.runner import log_tail, redact

STACK_LABEL = "appstack.stack"
STANDS_IN_LABEL = "appstack.stands-in"
"""A container that only stands in for another (a maintenance responder) yields its port."""


class EngineError(RuntimeError):
    """The Docker engine refused an operation; the message names the object."""


@contextmanager
def client(docker_host: str | None) -> Iterator[Any]:
    """A Docker client for ``docker_host`` (or the environment's ``DOCKER_HOST``), closed after."""
    import docker

    if docker_host:
        docker_client = docker.DockerClient(base_url=docker_host, timeout=120)
    else:
        docker_client = docker.from_env(timeout=120)
    try:
        yield docker_client
    finally:
        docker_client.close()


def _not_found(exc: Exception) -> bool:
    import docker.errors

    return isinstance(exc, docker.errors.NotFound)


def _labels(props: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (props.get("labels") or {}).items()}


def _same_stack(labels: Mapping[str, str] | None, props: Mapping[str, Any]) -> bool:
    want = _labels(props).get(STACK_LABEL)
    return bool(want) and (labels or {}).get(STACK_LABEL) == want


def _changed(olds: Mapping[str, Any], news: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if _norm(olds.get(k)) != _norm(news.get(k))]


def _norm(value: Any) -> Any:
    """Pulumi hands numbers back as floats and lists of dicts as-is: compare canonical forms."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _norm(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


# -- Image --------------------------------------------------------------------------------------


class ImageProvider(ResourceProvider):
    """Resolves an image reference to the image ID on the engine, pulling it if absent."""

    def _resolve(self, props: Mapping[str, Any]) -> dict[str, Any]:
        ref = str(props["ref"])
        with client(props.get("docker_host")) as docker_client:
            try:
                image = docker_client.images.get(ref)
            except Exception as exc:
                if not _not_found(exc):
                    raise
                try:
                    image = docker_client.images.pull(ref)
                except Exception as pull_exc:
                    msg = f"image {ref}: not on the engine and the pull failed: {pull_exc}"
                    raise EngineError(msg) from None
            return {
                "ref": ref,
                "docker_host": props.get("docker_host"),
                "image_id": image.id,
                "repo_digests": list(image.attrs.get("RepoDigests") or []),
            }

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A new reference is a new image."""
        changed = _changed(olds, news, ("ref", "docker_host"))
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Look the image up (pull when missing)."""
        outs = self._resolve(props)
        return CreateResult(id_=outs["image_id"], outs=outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Where the reference points now (a moved tag shows up on refresh)."""
        return ReadResult(id_=id_, outs=self._resolve(props) if props.get("ref") else props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Images are shared between stacks and may be built locally: never removed."""


class Image(Resource, module="docker", name="Image"):
    """An image reference resolved to the ID a container runs."""

    ref: pulumi.Output[str]
    image_id: pulumi.Output[str]
    repo_digests: pulumi.Output[list[str]]

    def __init__(
        self,
        name: str,
        ref: pulumi.Input[str],
        docker_host: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"ref": ref, "docker_host": docker_host, "image_id": None, "repo_digests": None}
        super().__init__(ImageProvider(), name, props, opts)


# -- Network ------------------------------------------------------------------------------------


class NetworkProvider(ResourceProvider):
    """A bridge network; ``internal`` ones have no route out."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Any change needs a new network (Docker cannot change one in place)."""
        changed = _changed(olds, news, ("name", "internal", "labels", "docker_host"))
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create the network, or adopt the one an interrupted update of this stack left."""
        name = str(props["name"])
        with client(props.get("docker_host")) as docker_client:
            for net in docker_client.networks.list(names=[name]):
                if net.name != name:
                    continue
                attrs = net.attrs
                if _same_stack(attrs.get("Labels"), props) and bool(attrs.get("Internal")) == bool(
                    props.get("internal")
                ):
                    return CreateResult(id_=net.id, outs={**props, "network_id": net.id})
                msg = f"network {name} already exists and is not this stack's: remove or rename it"
                raise EngineError(msg)
            net = docker_client.networks.create(
                name,
                driver="bridge",
                internal=bool(props.get("internal")),
                labels=_labels(props),
                check_duplicate=True,
            )
            return CreateResult(id_=net.id, outs={**props, "network_id": net.id})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The network if it still exists."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.networks.get(id_)
            except Exception as exc:
                if _not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
        return ReadResult(id_=id_, outs=props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Remove the network; one already gone is fine, anything else raises."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.networks.get(id_).remove()
            except Exception as exc:
                if not _not_found(exc):
                    raise


class Network(Resource, module="docker", name="Network"):
    """A Docker network."""

    name: pulumi.Output[str]
    network_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        network_name: str,
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
        docker_host: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "name": network_name,
            "internal": internal,
            "labels": dict(labels or {}),
            "docker_host": docker_host,
            "network_id": None,
        }
        super().__init__(NetworkProvider(), name, props, opts)


# -- Volume -------------------------------------------------------------------------------------


class VolumeProvider(ResourceProvider):
    """A named local volume."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A new name is a new volume; labels cannot change in place either."""
        changed = _changed(olds, news, ("name", "labels", "docker_host"))
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create the volume, or adopt this stack's volume of that name (its data is kept)."""
        name = str(props["name"])
        with client(props.get("docker_host")) as docker_client:
            try:
                existing = docker_client.volumes.get(name)
            except Exception as exc:
                if not _not_found(exc):
                    raise
            else:
                if _same_stack(existing.attrs.get("Labels"), props):
                    return CreateResult(id_=name, outs=props)
                msg = f"volume {name} already exists and is not this stack's: remove or rename it"
                raise EngineError(msg)
            docker_client.volumes.create(name=name, driver="local", labels=_labels(props))
        return CreateResult(id_=name, outs=props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The volume if it still exists."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.volumes.get(id_)
            except Exception as exc:
                if _not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
        return ReadResult(id_=id_, outs=props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Remove the volume and its data (only reached when the stack does not retain it)."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.volumes.get(id_).remove()
            except Exception as exc:
                if not _not_found(exc):
                    raise


class Volume(Resource, module="docker", name="Volume"):
    """A Docker named volume."""

    name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        volume_name: str,
        labels: Mapping[str, str] | None = None,
        docker_host: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"name": volume_name, "labels": dict(labels or {}), "docker_host": docker_host}
        super().__init__(VolumeProvider(), name, props, opts)


# -- Container ----------------------------------------------------------------------------------

CONTAINER_KEYS = (
    "name", "image", "image_id", "command", "env", "user", "networks", "ports", "healthcheck",
    "restart", "memory_mb", "cpus", "read_only", "tmpfs", "security_opt", "cap_add", "mounts",
    "labels", "extra_hosts", "stop_timeout_s", "docker_host",
)  # fmt: skip
"""Every input decides the container: Docker cannot change any of them in place."""
NANO = 1_000_000_000


def _create_kwargs(props: Mapping[str, Any]) -> dict[str, Any]:
    import docker.types

    nets = list(props.get("networks") or [])
    if not nets:
        msg = f"container {props['name']}: needs at least one network"
        raise EngineError(msg)
    hc = props.get("healthcheck")
    healthcheck = None
    if hc:
        healthcheck = {
            "test": list(hc["test"]),
            "interval": int(hc.get("interval_s", 5) * NANO),
            "timeout": int(hc.get("timeout_s", 3) * NANO),
            "retries": int(hc.get("retries", 3)),
            "start_period": int(hc.get("start_period_s", 0) * NANO),
        }
    ports = {
        f"{int(p['internal'])}/tcp": (str(p["ip"]), int(p["external"]))
        for p in props.get("ports") or []
    }
    mounts = [
        docker.types.Mount(target=str(m["target"]), source=str(m["source"]), type="volume")
        for m in props.get("mounts") or []
    ]
    env = {str(k): str(v) for k, v in (props.get("env") or {}).items()}
    first = nets[0]
    return {
        "image": str(props["image_id"]),
        "name": str(props["name"]),
        "command": list(props["command"]) if props.get("command") else None,
        "environment": env,
        "user": props.get("user") or None,
        "labels": _labels(props),
        "healthcheck": healthcheck,
        "ports": ports or None,
        "mounts": mounts,
        "restart_policy": {"Name": str(props.get("restart") or "unless-stopped")},
        "mem_limit": f"{int(props['memory_mb'])}m" if props.get("memory_mb") else None,
        "nano_cpus": int(float(props["cpus"]) * NANO) if props.get("cpus") else None,
        "read_only": bool(props.get("read_only")),
        "tmpfs": {str(k): str(v) for k, v in (props.get("tmpfs") or {}).items()} or None,
        "security_opt": list(props.get("security_opt") or []) or None,
        "cap_drop": ["ALL"],
        "cap_add": list(props.get("cap_add") or []) or None,
        "extra_hosts": {str(k): str(v) for k, v in (props.get("extra_hosts") or {}).items()}
        or None,
        "stop_signal": "SIGTERM",
        "network": str(first["name"]),
        "networking_config": {
            str(first["name"]): {"Aliases": list(first.get("aliases") or [])},
        },
        "detach": True,
    }


def _wait(container: Any, props: Mapping[str, Any], secrets: Sequence[str]) -> None:
    """Block until the container is healthy (or, without a health check, stays running)."""
    name = props["name"]
    deadline = time.monotonic() + float(props.get("wait_timeout_s") or 180)
    has_health = bool(props.get("healthcheck"))
    running_since: float | None = None
    while True:
        container.reload()
        state = container.attrs["State"]
        status = state.get("Health", {}).get("Status") if has_health else None
        if state.get("Status") in ("exited", "dead") or status == "unhealthy":
            logs = redact(container.logs(tail=80).decode(errors="replace"), secrets)
            why = f"exited with {state.get('ExitCode')}" if status != "unhealthy" else "unhealthy"
            msg = f"container {name} {why}; log tail:\n{log_tail(logs)}"
            raise EngineError(msg)
        if has_health and status == "healthy":
            return
        if not has_health and state.get("Running"):
            running_since = running_since or time.monotonic()
            if time.monotonic() - running_since >= 2:
                return
        if time.monotonic() > deadline:
            logs = redact(container.logs(tail=80).decode(errors="replace"), secrets)
            msg = (
                f"container {name} not {'healthy' if has_health else 'running'} after "
                f"{props.get('wait_timeout_s') or 180}s (health: {status}); log tail:\n"
                f"{log_tail(logs)}"
            )
            raise EngineError(msg)
        time.sleep(0.5)


def _remove(docker_client: Any, name_or_id: str, stop_timeout: int) -> None:
    try:
        container = docker_client.containers.get(name_or_id)
    except Exception as exc:
        if _not_found(exc):
            return
        raise
    if container.status == "running":
        container.stop(timeout=stop_timeout)
    container.remove(v=False, force=True)


class ContainerProvider(ResourceProvider):
    """A container, created on its networks, started, and gated on its health."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Any change replaces the container; the old one goes first (fixed names and ports)."""
        changed = _changed(olds, news, CONTAINER_KEYS)
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create, connect, start and wait; on failure remove it again and raise with its logs."""
        secrets = [str(v) for v in (props.get("env") or {}).values() if len(str(v)) >= 8]
        stop_timeout = int(props.get("stop_timeout_s") or 30)
        with client(props.get("docker_host")) as docker_client:
            self._clear_leftover(docker_client, props, stop_timeout)
            self._take_over_ports(docker_client, props)
            kwargs = _create_kwargs(props)
            container = docker_client.containers.create(**kwargs)
            try:
                for net in list(props.get("networks") or [])[1:]:
                    docker_client.networks.get(str(net["name"])).connect(
                        container, aliases=list(net.get("aliases") or []) or None
                    )
                container.start()
                _wait(container, props, secrets)
            except Exception:
                _remove(docker_client, container.id, 5)
                raise
            return CreateResult(id_=container.id, outs={**props, "container_id": container.id})

    @staticmethod
    def _clear_leftover(docker_client: Any, props: Mapping[str, Any], stop_timeout: int) -> None:
        """A container of this name from this stack that state lacks: an interrupted update."""
        name = str(props["name"])
        try:
            leftover = docker_client.containers.get(name)
        except Exception as exc:
            if _not_found(exc):
                return
            raise
        if not _same_stack(leftover.labels, props):
            msg = f"container {name} already exists and is not this stack's: remove or rename it"
            raise EngineError(msg)
        pulumi.log.warn(f"removing container {name} left by an interrupted update")
        _remove(docker_client, leftover.id, stop_timeout)

    @staticmethod
    def _take_over_ports(docker_client: Any, props: Mapping[str, Any]) -> None:
        """Remove this stack's stand-in that holds a host port this container publishes.

        When maintenance ends, the gateway's replacement needs the public port back before
        Pulumi would delete the responder (deletes of removed resources come last); the
        responder's own delete then finds it gone, which is fine.
        """
        wanted = {(str(p["ip"]), int(p["external"])) for p in props.get("ports") or []}
        if not wanted:
            return
        stack = _labels(props).get(STACK_LABEL)
        filters = {"label": [f"{STACK_LABEL}={stack}", f"{STANDS_IN_LABEL}=true"]}
        for other in docker_client.containers.list(all=True, filters=filters):
            bound = {
                (b.get("HostIp", ""), int(b.get("HostPort") or 0))
                for bindings in (other.attrs["HostConfig"].get("PortBindings") or {}).values()
                for b in bindings or []
            }
            if bound & wanted and other.name != props["name"]:
                pulumi.log.info(f"{props['name']} takes its port back from {other.name}")
                _remove(docker_client, other.id, 10)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The container if it still exists (a removed one shows as deleted on refresh)."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.containers.get(id_)
            except Exception as exc:
                if _not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
        return ReadResult(id_=id_, outs=props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Stop (grace period) and remove; volumes are separate resources and stay."""
        with client(props.get("docker_host")) as docker_client:
            _remove(docker_client, id_, int(props.get("stop_timeout_s") or 30))


class Container(Resource, module="docker", name="Container"):
    """A Docker container; ``env`` is a secret output (it carries credentials)."""

    name: pulumi.Output[str]
    container_id: pulumi.Output[str]

    def __init__(
        self, name: str, props: Mapping[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        unknown = set(props) - set(CONTAINER_KEYS) - {"wait_timeout_s"}
        if unknown:
            msg = f"container {name}: unknown properties {sorted(unknown)}"
            raise ValueError(msg)
        secret = pulumi.ResourceOptions(additional_secret_outputs=["env"])
        super().__init__(
            ContainerProvider(),
            name,
            {**props, "container_id": None},
            pulumi.ResourceOptions.merge(opts, secret),
        )
