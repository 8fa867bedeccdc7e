"""What every Docker engine resource shares: the client, stack labels and canonical diffs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

STACK_LABEL = "appstack.stack"
NAME_LABEL = "appstack.name"
"""A container's stable name (``<stack>-<app>-<service>``); its physical name is per release."""


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


def not_found(exc: Exception) -> bool:
    """Whether the engine answered 404."""
    import docker.errors

    return isinstance(exc, docker.errors.NotFound)


def labels_of(props: Mapping[str, Any]) -> dict[str, str]:
    """The ``labels`` input as strings."""
    return {str(k): str(v) for k, v in (props.get("labels") or {}).items()}


def same_stack(labels: Mapping[str, str] | None, props: Mapping[str, Any]) -> bool:
    """Whether an object found on the engine carries this resource's stack label."""
    want = labels_of(props).get(STACK_LABEL)
    return bool(want) and (labels or {}).get(STACK_LABEL) == want


def changed(olds: Mapping[str, Any], news: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The keys whose canonical values differ."""
    return [k for k in keys if norm(olds.get(k)) != norm(news.get(k))]


def norm(value: Any) -> Any:
    """Pulumi hands numbers back as floats and lists of dicts as-is: compare canonical forms."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): norm(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    return value


def exec_in(
    container: Any, cmd: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Run ``cmd`` inside a running container (``docker exec``): exit code and combined output."""
    result = container.exec_run(list(cmd), environment=dict(env or {}), demux=False)
    return int(result.exit_code), (result.output or b"").decode("utf-8", "replace")
