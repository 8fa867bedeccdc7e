"""``appstack logs``: a service's recent log lines, with every secret of the stack redacted.

The services and where they run come from the stack's state (the containers' ids and engine on
Docker); the secrets to redact are every secret value the state holds (generated or configured,
database URLs included), so a log line that echoes one prints ``***`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from components.ops.stack import CONTAINER_TYPE, OpsError, resources
from components.providers.runner import looks_secret, redact

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # noqa: S105 (a marker, not a secret)
"""The key Pulumi marks a secret value with in an exported deployment."""
MIN_SECRET_CHARS = 4
"""Shorter values (a port, "true") would redact half the log: they are not secrets worth it."""
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_time(value: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: a duration (``90s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time."""
    if not value:
        return None
    match = _DURATION.match(value.strip())
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        msg = f"--since {value!r}: give a duration (90s, 10m, 2h, 1d) or an ISO 8601 time"
        raise OpsError(msg, 2) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _leaves(value: Any, key: str = "") -> Iterator[str]:
    """The secret strings of a secret value: itself, or in a map (an environment) the values whose
    names look secret; a whole environment is marked secret, its ``ENGRAMIA_STORAGE=postgres``
    is not."""
    if isinstance(value, str):
        if not key or looks_secret(key):
            yield value
    elif isinstance(value, Mapping):
        for name, item in value.items():
            yield from _leaves(item, str(name))
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, key)


def secret_values(deployment: Any) -> list[str]:
    """Every secret value in an export made with ``--show-secrets``.

    Scalars marked secret (generated or configured secrets) whole; within a map marked secret,
    the values whose names look secret (passwords, tokens, keys, database URLs).
    """
    import json

    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if node.get(SECRET_SIG) and "plaintext" in node:
                try:
                    plain = json.loads(str(node["plaintext"]))
                except ValueError:
                    plain = node["plaintext"]
                found.update(v for v in _leaves(plain) if len(v) >= MIN_SECRET_CHARS)
                return
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(deployment)
    return sorted(found, key=len, reverse=True)


def docker_services(deployment: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Service name -> ``{container_id, docker_host, name}`` of the stack's containers."""
    out = {}
    for res in resources(deployment, CONTAINER_TYPE):
        outs = res.get("outputs") or {}
        labels = outs.get("labels") or {}
        service = labels.get("appstack.service") or str(outs.get("name", "")).rsplit("-", 1)[-1]
        out[service] = {
            "container_id": outs.get("container_id"),
            "docker_host": outs.get("docker_host"),
            "name": outs.get("container_name") or outs.get("name"),
        }
    return out


def pick_services(known: Sequence[str], wanted: str | None) -> list[str]:
    """All services, or the one named (an unknown name is bad input, naming the known ones)."""
    if wanted is None:
        return sorted(known)
    if wanted not in known:
        msg = f"unknown service {wanted!r}; this stack runs: {', '.join(sorted(known))}"
        raise OpsError(msg, 2)
    return [wanted]


def docker_logs(service: Mapping[str, Any], tail: int | None, since: datetime | None) -> str:
    """The container's log (stdout and stderr, in order) as text."""
    from components.providers.engine_base import client, not_found

    kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "timestamps": True}
    if tail is not None:
        kwargs["tail"] = tail
    if since is not None:
        kwargs["since"] = since
    with client(service.get("docker_host")) as docker_client:
        try:
            container = docker_client.containers.get(str(service["container_id"]))
        except Exception as exc:
            if not_found(exc):
                return f"(container {service.get('name')} is gone: `pulumi up` recreates it)\n"
            raise
        return bytes(container.logs(**kwargs)).decode("utf-8", "replace")


def prefixed(service: str, text: str, secrets: Sequence[str], width: int) -> str:
    """Each line of ``text`` redacted and prefixed with the service's name."""
    lines = redact(text, secrets).splitlines()
    return "".join(f"{service:<{width}} | {line}\n" for line in lines)


def kubectl_logs_args(kind: str, name: str, tail: int | None, since: datetime | None) -> list[str]:
    """``kubectl logs`` arguments for every pod of one workload, each line prefixed by its pod."""
    args = ["logs", f"{kind.lower()}/{name}", "--all-pods=true", "--all-containers=true",
            "--prefix=true", "--timestamps=true", "--ignore-errors=true"]  # fmt: skip
    if tail is not None:
        args.append(f"--tail={tail}")
    if since is not None:
        args.append(f"--since-time={since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}")
    return args


def kube_logs(
    workload: Any, kube_context: str | None, tail: int | None, since: datetime | None
) -> str:
    """The workload's pods' log lines through ``kubectl`` (the stack's context)."""
    from components.providers.k8s_runner import KubectlError, kubectl

    args = kubectl_logs_args(workload.kind, workload.name, tail, since)
    try:
        return kubectl(workload.namespace, kube_context, *args).stdout
    except KubectlError as exc:
        return f"(no logs: {exc})\n"
