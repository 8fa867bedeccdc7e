"""A Docker container as a dynamic resource, released without taking the running one down.

Every replacement is create-before-delete (the diff never asks Pulumi to delete first): the new
container gets a physical name of its own (``<name>-<hash of its inputs>``), joins its networks
under the service's aliases beside its predecessor, and must prove itself healthy before Pulumi
moves on; the predecessor is deleted only at the end of the update. How the two overlap is the
``rollout`` input, chosen per role by the platform:

- ``start-first``: the predecessor keeps serving while the new one starts (stateless services),
  and is stopped (gracefully, SIGTERM) once the new one is healthy, so that what runs next (the
  services that depend on it, the smoke test) meets the new release only, as after a Kubernetes
  rolling update. The edge's upstream is the exception (``retired_by_edge``): its predecessor
  keeps serving until the edge has switched to the new one (``EdgeRoute``).
- ``stop-first``: the predecessor is stopped (not removed) first, because two of them must not
  run at once: a data store on one volume, a worker that claims jobs, the edge that holds a host
  port. If the new one never gets healthy it is removed and the predecessor started again.

Either way a failed release leaves the running one as it was and the update fails naming the
container, with the redacted tail of its log.

Secret files (``secret_files``: file name -> value) reach the container as files under
``/run/secrets``, never through its environment, labels or mounts' names, so ``docker inspect``
shows none of them. Docker has no secrets outside swarm; the ways in were weighed so:

- a tmpfs mount (``HostConfig.Tmpfs``) is empty at every start: files put there before the start
  are hidden by the mount, files written after it race the entrypoint that reads them, and a
  restart by the engine (restart policy, a daemon restart) would come up without them;
- a tmpfs-backed named volume loses its files when the engine unmounts it between the write and
  the start;
- a bind mount of a host file needs the host's file system, which a remote engine
  (``ssh://``) does not give.

So each release gets a small named volume of its own (``<physical name>-secrets``), filled before
the container exists: a throwaway, never-started container of the same image mounts it and takes
the files through the engine's archive API (mode 0400, owned by the container's uid), and the
release mounts it read-only at ``/run/secrets``. It works on any engine, local or remote, survives
restarts, and goes with its release (``delete``, or a failed create). On the host the files sit in
the engine's volume directory, readable by root only, like the rest of the engine's state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.providers.engine_base import (
    NAME_LABEL,
    STACK_LABEL,
    EngineError,
    changed,
    client,
    labels_of,
    not_found,
    same_stack,
)
from components.providers.readiness import START_INTERVAL_S, wait_ready

CONTAINER_KEYS = (
    "name", "image", "image_id", "command", "env", "user", "networks", "ports", "healthcheck",
    "restart", "memory_mb", "cpus", "read_only", "tmpfs", "security_opt", "cap_add", "mounts",
    "labels", "extra_hosts", "stop_timeout_s", "docker_host", "secret_files",
)  # fmt: skip
"""Inputs that decide the container: Docker cannot change any of them in place."""
OPTIONAL_KEYS = ("secret_files",)
"""Inputs left out of the physical name while empty: releases made before them keep their name."""
SECRETS_DIR = "/run/secrets"
"""Where a release's secret files are mounted (read-only), as Docker's own secrets are."""
TUNING_KEYS = ("rollout", "wait_timeout_s", "grace_s", "retired_by_edge")
"""Inputs that only steer how a container is rolled out: updated in place."""
ROLLOUTS = ("start-first", "stop-first")
NANO = 1_000_000_000
# Docker >= 25 (API 1.44) runs health checks this often while a container starts.
START_INTERVAL_API = (1, 44)


def physical_name(props: Mapping[str, Any]) -> str:
    """``<name>-<8 hex>``: unique per release, the same for the same inputs (a retry adopts)."""
    decided = {
        k: props.get(k)
        for k in CONTAINER_KEYS
        if k != "docker_host" and (k not in OPTIONAL_KEYS or props.get(k))
    }
    digest = hashlib.sha256(json.dumps(decided, sort_keys=True, default=str).encode())
    return f"{props['name']}-{digest.hexdigest()[:8]}"


def _api_at_least(docker_client: Any, wanted: tuple[int, int]) -> bool:
    version = str(docker_client.api.api_version)
    major, _, minor = version.partition(".")
    return (int(major), int(minor or 0)) >= wanted


def _healthcheck(props: Mapping[str, Any], fast_start: bool) -> dict[str, Any] | None:
    hc = props.get("healthcheck")
    if not hc:
        return None
    wait = float(props.get("wait_timeout_s") or 180)
    check = {
        "Test": list(hc["test"]),
        "Interval": int(float(hc.get("interval_s", 5)) * NANO),
        "Timeout": int(float(hc.get("timeout_s", 3)) * NANO),
        "Retries": int(hc.get("retries", 3)),
        "StartPeriod": int(float(hc.get("start_period_s", 0)) * NANO),
    }
    if fast_start:
        # Failures inside the start period do not count, successes do: probe fast for as long
        # as appstack would wait, then fall back to the spec's interval and retries.
        check["StartPeriod"] = int(max(float(hc.get("start_period_s", 0)), wait) * NANO)
        check["StartInterval"] = int(START_INTERVAL_S * NANO)
    return check


def secrets_volume(name: str) -> str:
    """The volume holding the secret files of the release whose physical name is ``name``."""
    return f"{name}-secrets"


def _passwd_entry(api: Any, container_id: str, name: str) -> tuple[int, int] | None:
    """uid and gid of user ``name`` in the container's ``/etc/passwd`` (None: no such user)."""
    import io
    import tarfile

    try:
        stream, _ = api.get_archive(container_id, "/etc/passwd")
    except Exception as exc:
        if not_found(exc):
            return None
        raise
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile("passwd")
        lines = member.read().decode(errors="replace").splitlines() if member else []
    for line in lines:
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == name and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def _owner(api: Any, container_id: str, user: str) -> tuple[int, int]:
    """uid and gid the process of ``user`` (``uid[:gid]`` or a name, "" for root) runs as."""
    uid, _, gid = user.partition(":")
    if not uid:
        return 0, 0
    if uid.isdigit():
        return int(uid), int(gid) if gid.isdigit() else int(uid)
    entry = _passwd_entry(api, container_id, uid)
    if entry is None:
        msg = f"user {uid!r} is not in the image's /etc/passwd: its secret files need an owner"
        raise EngineError(msg)
    return entry[0], int(gid) if gid.isdigit() else entry[1]


def _secrets_tar(files: Mapping[str, Any], owner: tuple[int, int]) -> bytes:
    """An in-memory tar of ``files``: mode 0400, owned by ``owner``, no timestamps."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for file_name, value in sorted(files.items()):
            data = str(value).encode()
            info = tarfile.TarInfo(str(file_name))
            info.size, info.mode, (info.uid, info.gid) = len(data), 0o400, owner
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_secrets(docker_client: Any, props: Mapping[str, Any], name: str) -> None:
    """Fill the release's secrets volume through a never-started container of its image.

    The files belong to the user the release runs as (``user``, else the image's ``USER``).
    """
    files = props.get("secret_files") or {}
    if not files:
        return
    volume = secrets_volume(name)
    labels = {**labels_of(props), NAME_LABEL: str(props["name"])}
    docker_client.volumes.create(volume, labels=labels)
    api = docker_client.api
    host = api.create_host_config(binds={volume: {"bind": SECRETS_DIR, "mode": "rw"}},
                                  network_mode="none")  # fmt: skip
    # Named after its release, with no service label: a writer a killed update left is removed
    # here, and is never taken for a release of the service.
    writer_name = f"{volume}-writer"
    try:
        api.remove_container(writer_name, force=True)
    except Exception as exc:
        if not not_found(exc):
            raise
    writer = api.create_container(
        str(props["image_id"]), command=["true"], name=writer_name,
        labels={STACK_LABEL: labels.get(STACK_LABEL, "")}, host_config=host,
    )  # fmt: skip
    try:
        user = props.get("user") or api.inspect_container(writer["Id"])["Config"].get("User")
        owner = _owner(api, writer["Id"], str(user or ""))
        if not api.put_archive(writer["Id"], SECRETS_DIR, _secrets_tar(files, owner)):
            msg = f"container {props['name']}: the engine refused its secret files"
            raise EngineError(msg)
    finally:
        api.remove_container(writer["Id"], force=True)


def remove_secrets(docker_client: Any, name: str) -> None:
    """Remove a release's secrets volume; one never made, or already gone, is fine."""
    try:
        docker_client.volumes.get(secrets_volume(name)).remove(force=True)
    except Exception as exc:
        if not not_found(exc):
            raise


def _host_config(docker_client: Any, props: Mapping[str, Any], name: str) -> Any:
    import docker.types

    ports = {
        f"{int(p['internal'])}/tcp": [(str(p["ip"]), int(p["external"]))]
        for p in props.get("ports") or []
    }
    mounts = [
        docker.types.Mount(target=str(m["target"]), source=str(m["source"]), type="volume")
        for m in props.get("mounts") or []
    ]
    if props.get("secret_files"):
        mounts.append(
            docker.types.Mount(SECRETS_DIR, secrets_volume(name), type="volume", read_only=True)
        )
    extra_hosts = {str(k): str(v) for k, v in (props.get("extra_hosts") or {}).items()}
    return docker_client.api.create_host_config(
        port_bindings=ports or None,
        mounts=mounts,
        restart_policy={"Name": str(props.get("restart") or "unless-stopped")},
        mem_limit=f"{int(props['memory_mb'])}m" if props.get("memory_mb") else None,
        nano_cpus=int(float(props["cpus"]) * NANO) if props.get("cpus") else None,
        read_only=bool(props.get("read_only")),
        tmpfs={str(k): str(v) for k, v in (props.get("tmpfs") or {}).items()} or None,
        security_opt=list(props.get("security_opt") or []) or None,
        cap_drop=["ALL"],
        cap_add=list(props.get("cap_add") or []) or None,
        extra_hosts=extra_hosts or None,
        network_mode=str(props["networks"][0]["name"]),
    )


def _create(docker_client: Any, props: Mapping[str, Any], name: str) -> Any:
    """Create (not start) the container through the low-level API, which takes StartInterval."""
    nets = list(props.get("networks") or [])
    if not nets:
        msg = f"container {props['name']}: needs at least one network"
        raise EngineError(msg)
    api = docker_client.api
    first = nets[0]
    ports = [int(p["internal"]) for p in props.get("ports") or []]
    config = api.create_container_config(
        image=str(props["image_id"]),
        command=list(props["command"]) if props.get("command") else None,
        environment={str(k): str(v) for k, v in (props.get("env") or {}).items()},
        user=props.get("user") or None,
        labels={**labels_of(props), NAME_LABEL: str(props["name"])},
        ports=ports or None,
        stop_signal="SIGTERM",
        host_config=_host_config(docker_client, props, name),
        networking_config=api.create_networking_config(
            {
                str(first["name"]): api.create_endpoint_config(
                    aliases=list(first.get("aliases") or [])
                )
            }
        ),
    )
    health = _healthcheck(props, _api_at_least(docker_client, START_INTERVAL_API))
    if health:
        config["Healthcheck"] = health
    write_secrets(docker_client, props, name)
    created = api.create_container_from_config(config, name=name)
    container = docker_client.containers.get(created["Id"])
    for net in nets[1:]:
        docker_client.networks.get(str(net["name"])).connect(
            container, aliases=list(net.get("aliases") or []) or None
        )
    return container


def remove(docker_client: Any, name_or_id: str, stop_timeout: int) -> None:
    """Stop (grace period) and remove, with its secrets volume; a container already gone is fine."""
    try:
        container = docker_client.containers.get(name_or_id)
    except Exception as exc:
        if not_found(exc):
            return
        raise
    if container.status in ("running", "restarting"):
        container.stop(timeout=stop_timeout)
    container.remove(v=False, force=True)
    remove_secrets(docker_client, container.name)


def _bound_ports(container: Any) -> set[tuple[str, int]]:
    bindings = container.attrs["HostConfig"].get("PortBindings") or {}
    return {
        (b.get("HostIp", ""), int(b.get("HostPort") or 0))
        for bs in bindings.values()
        for b in bs or []
    }


def _others_running(docker_client: Any, props: Mapping[str, Any], new_name: str) -> list[Any]:
    """Running containers of this container's stack, but ``new_name``."""
    stack = labels_of(props).get(STACK_LABEL)
    if not stack:
        return []
    filters = {"label": f"{STACK_LABEL}={stack}", "status": "running"}
    return [c for c in docker_client.containers.list(filters=filters) if c.name != new_name]


def _same_service(other: Any, props: Mapping[str, Any]) -> bool:
    """A release of this service: by label, or by the name stacks deployed before had."""
    return bool(other.labels.get(NAME_LABEL) == props["name"] or other.name == props["name"])


def predecessors(docker_client: Any, props: Mapping[str, Any], new_name: str) -> list[Any]:
    """Running releases of this service but ``new_name``."""
    return [c for c in _others_running(docker_client, props, new_name) if _same_service(c, props)]


def _in_the_way(docker_client: Any, props: Mapping[str, Any], new_name: str) -> list[Any]:
    """Running containers of this stack the new one cannot run beside.

    Its predecessors when the rollout is stop-first, and whatever holds a host port it publishes
    (the old gateway when the edge first takes over the public port).
    """
    wanted = {(str(p["ip"]), int(p["external"])) for p in props.get("ports") or []}
    stop_first = props.get("rollout") == "stop-first"
    return [
        other
        for other in _others_running(docker_client, props, new_name)
        if (stop_first and _same_service(other, props)) or (wanted and _bound_ports(other) & wanted)
    ]


class ContainerProvider(ResourceProvider):
    """A container, created beside its predecessor, started, and gated on its health."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> Any:
        """The rollout must be one appstack knows."""
        from pulumi.dynamic import CheckResult

        rollout = news.get("rollout") or "start-first"
        if rollout not in ROLLOUTS:
            msg = f"container {news.get('name')}: rollout {rollout!r} is not one of {ROLLOUTS}"
            raise ValueError(msg)
        return CheckResult(news, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A changed input replaces, always create-before-delete; a stopped one is drift."""
        # An optional input absent (a release made before it) is the same as empty.
        olds = {**olds, **{k: olds.get(k) or None for k in OPTIONAL_KEYS}}
        news = {**news, **{k: news.get(k) or None for k in OPTIONAL_KEYS}}
        replaces = changed(olds, news, CONTAINER_KEYS)
        if olds.get("state") not in (None, "running"):
            replaces.append("state")
        tuning = changed(olds, news, TUNING_KEYS)
        return DiffResult(
            changes=bool(replaces or tuning), replaces=replaces, delete_before_replace=False
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Start the new release beside (or, stop-first, instead of) the running one."""
        values = [*(props.get("env") or {}).values(), *(props.get("secret_files") or {}).values()]
        secrets = [str(v) for v in values if len(str(v)) >= 8]
        stop_timeout = int(props.get("stop_timeout_s") or 30)
        name = physical_name(props)
        with client(props.get("docker_host")) as docker_client:
            self._clear_leftover(docker_client, props, name, stop_timeout)
            stopped = _in_the_way(docker_client, props, name)
            for other in stopped:
                pulumi.log.info(
                    f"{props['name']}: stopping {other.name} first ({props.get('rollout')})"
                )
                other.stop(timeout=stop_timeout)
            container = None
            try:
                container = _create(docker_client, props, name)
                container.start()
                wait_ready(container, props, secrets)
                if props.get("rollout") != "stop-first" and not props.get("retired_by_edge"):
                    for old in predecessors(docker_client, props, name):
                        pulumi.log.info(f"{props['name']}: {name} is healthy, stopping {old.name}")
                        old.stop(timeout=stop_timeout)
            except Exception as exc:
                if container is not None:
                    remove(docker_client, container.id, 5)
                else:
                    remove_secrets(docker_client, name)
                restarted = self._restart(stopped)
                kept = f"started {', '.join(restarted)} again" if restarted else "untouched"
                msg = f"{exc}\nthe running release of {props['name']} was kept ({kept})"
                raise EngineError(msg) from exc
            outs = {**props, "container_id": container.id, "container_name": name}
            return CreateResult(id_=container.id, outs={**outs, **_observed(container)})

    @staticmethod
    def _restart(stopped: Sequence[Any]) -> list[str]:
        names = []
        for other in stopped:
            other.start()
            names.append(other.name)
        return names

    @staticmethod
    def _clear_leftover(docker_client: Any, props: Mapping[str, Any], name: str, stop: int) -> None:
        """A container of this very release from this stack that state lacks: an interrupted up."""
        try:
            leftover = docker_client.containers.get(name)
        except Exception as exc:
            if not_found(exc):
                return
            raise
        if not same_stack(leftover.labels, props):
            msg = f"container {name} already exists and is not this stack's: remove or rename it"
            raise EngineError(msg)
        # Same inputs, same name: a leftover of an interrupted update, or the recorded release
        # itself when it is replaced for having stopped (refresh drift).
        pulumi.log.warn(f"removing container {name}: same release, stopped or left by an update")
        remove(docker_client, leftover.id, stop)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Only rollout tuning changed: record it, the container stays."""
        kept = {k: olds.get(k) for k in ("container_id", "container_name", "state", "health")}
        return UpdateResult(outs={**news, **kept})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """What the engine has now: its state, health and image (refresh shows drift)."""
        with client(props.get("docker_host")) as docker_client:
            try:
                container = docker_client.containers.get(id_)
            except Exception as exc:
                if not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
            return ReadResult(id_=id_, outs={**props, **_observed(container)})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Stop (grace period) and remove, with its secrets; data volumes are resources and stay."""
        with client(props.get("docker_host")) as docker_client:
            remove(docker_client, id_, int(props.get("stop_timeout_s") or 30))
            if props.get("container_name"):  # gone already: its secrets volume may not be
                remove_secrets(docker_client, str(props["container_name"]))


def _observed(container: Any) -> dict[str, Any]:
    container.reload()
    state = container.attrs["State"]
    return {
        "state": str(state.get("Status")),
        "health": (state.get("Health") or {}).get("Status"),
        "image_id": container.attrs.get("Image"),
    }


class Container(Resource, module="docker", name="Container"):
    """A Docker container; ``env`` and ``secret_files`` are secret outputs (credentials)."""

    name: pulumi.Output[str]
    container_id: pulumi.Output[str]
    container_name: pulumi.Output[str]
    """The physical name of the running release (unique per release)."""

    def __init__(
        self, name: str, props: Mapping[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        unknown = set(props) - set(CONTAINER_KEYS) - set(TUNING_KEYS)
        if unknown:
            msg = f"container {name}: unknown properties {sorted(unknown)}"
            raise ValueError(msg)
        secret = pulumi.ResourceOptions(additional_secret_outputs=["env", "secret_files"])
        super().__init__(
            ContainerProvider(),
            name,
            {**props, "container_id": None, "container_name": None, "state": None, "health": None},
            pulumi.ResourceOptions.merge(opts, secret),
        )
