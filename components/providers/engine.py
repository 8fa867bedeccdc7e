"""Docker Engine resources as dynamic providers: ``Image``, ``Network``, ``Volume``, ``Container``.

appstack talks to the Docker Engine API itself (the ``docker`` SDK, ``DOCKER_HOST`` honoured,
``ssh://`` included) instead of loading a provider plugin: a deploy needs nothing but the Pulumi
CLI, which keeps air-gapped hosts and offline machines first-class. Each resource is labelled
with its stack; a create that finds an object of the same name left by an interrupted update of
the same stack adopts (network, volume) or replaces (container) it, so a killed ``pulumi up``
converges on the next run without state surgery.
"""

from __future__ import annotations

from collections.abc import Mapping
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

# The container lives in its own module; these names stay importable from here because a dynamic
# provider's module path is part of every existing stack's state.
from components.providers.container import (  # noqa: F401
    CONTAINER_KEYS,
    Container,
    ContainerProvider,
)
from components.providers.engine_base import (  # noqa: F401
    NAME_LABEL,
    STACK_LABEL,
    EngineError,
    changed,
    client,
    labels_of,
    not_found,
    same_stack,
)

# -- Image --------------------------------------------------------------------------------------


class ImageProvider(ResourceProvider):
    """Resolves an image reference to the image ID on the engine, pulling it if absent."""

    def _resolve(self, props: Mapping[str, Any]) -> dict[str, Any]:
        ref = str(props["ref"])
        with client(props.get("docker_host")) as docker_client:
            try:
                image = docker_client.images.get(ref)
            except Exception as exc:
                if not not_found(exc):
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
        moved = changed(olds, news, ("ref", "docker_host"))
        return DiffResult(changes=bool(moved), replaces=moved, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Look the image up (pull when missing)."""
        outs = self._resolve(props)
        return CreateResult(id_=outs["image_id"], outs=outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Where the reference points on the engine now, never pulling (a moved tag is drift)."""
        if not props.get("ref"):
            return ReadResult(id_=id_, outs=props)
        with client(props.get("docker_host")) as docker_client:
            try:
                image = docker_client.images.get(str(props["ref"]))
            except Exception as exc:
                if not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
            outs = {
                **props,
                "image_id": image.id,
                "repo_digests": list(image.attrs.get("RepoDigests") or []),
            }
        return ReadResult(id_=image.id, outs=outs)

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
        """A new name or kind needs a new network; labels are only recorded (see ``update``)."""
        replaces = changed(olds, news, ("name", "internal", "docker_host"))
        relabel = changed(olds, news, ("labels",))
        # Delete first: the name is fixed, and Docker refuses a network containers are still on.
        return DiffResult(
            changes=bool(replaces or relabel), replaces=replaces, delete_before_replace=True
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Docker cannot relabel a network: keep it, record the labels the config now wants."""
        return UpdateResult(outs={**news, "network_id": olds.get("network_id")})

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create the network, or adopt the one an interrupted update of this stack left."""
        name = str(props["name"])
        with client(props.get("docker_host")) as docker_client:
            for net in docker_client.networks.list(names=[name]):
                if net.name != name:
                    continue
                attrs = net.attrs
                if same_stack(attrs.get("Labels"), props) and bool(attrs.get("Internal")) == bool(
                    props.get("internal")
                ):
                    return CreateResult(id_=net.id, outs={**props, "network_id": net.id})
                msg = f"network {name} already exists and is not this stack's: remove or rename it"
                raise EngineError(msg)
            net = docker_client.networks.create(
                name,
                driver="bridge",
                internal=bool(props.get("internal")),
                labels=labels_of(props),
                check_duplicate=True,
            )
            return CreateResult(id_=net.id, outs={**props, "network_id": net.id})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The network if it still exists."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.networks.get(id_)
            except Exception as exc:
                if not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
        return ReadResult(id_=id_, outs=props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Remove the network; one already gone is fine, anything else raises."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.networks.get(id_).remove()
            except Exception as exc:
                if not not_found(exc):
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
        """A new name is a new volume; a label change never replaces one (it holds data)."""
        replaces = changed(olds, news, ("name", "docker_host"))
        relabel = changed(olds, news, ("labels",))
        # Delete first: the name is fixed (protect/retain decide whether the data goes).
        return DiffResult(
            changes=bool(replaces or relabel), replaces=replaces, delete_before_replace=True
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Docker cannot relabel a volume: keep it and its data, record the new labels."""
        return UpdateResult(outs=news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create the volume, or adopt this stack's volume of that name (its data is kept)."""
        name = str(props["name"])
        with client(props.get("docker_host")) as docker_client:
            try:
                existing = docker_client.volumes.get(name)
            except Exception as exc:
                if not not_found(exc):
                    raise
            else:
                if same_stack(existing.attrs.get("Labels"), props):
                    return CreateResult(id_=name, outs=props)
                msg = f"volume {name} already exists and is not this stack's: remove or rename it"
                raise EngineError(msg)
            docker_client.volumes.create(name=name, driver="local", labels=labels_of(props))
        return CreateResult(id_=name, outs=props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The volume if it still exists."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.volumes.get(id_)
            except Exception as exc:
                if not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
        return ReadResult(id_=id_, outs=props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Remove the volume and its data (only reached when the stack does not retain it)."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.volumes.get(id_).remove()
            except Exception as exc:
                if not not_found(exc):
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
