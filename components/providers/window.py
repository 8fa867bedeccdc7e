"""The runbook's maintenance window: a file at the edge (``components/edge.py``), on both platforms.

The migration opens it when it has pending work on a database with data (Engramia's runbook:
maintenance on, backup, migrate), the smoke test closes it once the new release passed (smoke,
maintenance off). Both act through ``exec`` in every running edge: on Docker the edge container
(the file lands on its volume and outlives a replacement of the container), on Kubernetes every
running pod of the edge's Deployment (``kubectl exec``; the file lands on the pod's emptyDir).
Caddy tests the file on each request. What is decided here is the same for both; only "run this
shell script at every edge" differs (``window["kind"]``: absent or ``docker``, or
``kubernetes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pulumi

from components import edge
from components.providers.container import predecessors
from components.providers.engine_base import EngineError, client, exec_in
from components.providers.k8s_runner import exec_in_pods
from components.spec import AppSpec

OPEN = f'mkdir -p "$(dirname {edge.WINDOW_FILE})" && date -u +%FT%TZ > {edge.WINDOW_FILE}'
CLOSE = f"if [ -e {edge.WINDOW_FILE} ]; then rm -f {edge.WINDOW_FILE} && echo closed; fi"
CHECK = f"[ -e {edge.WINDOW_FILE} ] && echo open || true"
KUBERNETES = "kubernetes"


def token_of(app: AppSpec) -> pulumi.Output[str]:
    """The window's token ("" without a window): derived from the database password."""
    spec, migration = app.edge, app.migration
    if not (spec and spec.window and migration):
        return pulumi.Output.from_input("")
    return pulumi.Output.from_input(migration.database.password).apply(edge.window_token)


def kubernetes_window(
    namespace: str, context: str | None, selector: str, container: str
) -> dict[str, Any]:
    """The ``window`` input naming the edge's pods on Kubernetes (by label, in one container)."""
    return {"kind": KUBERNETES, "namespace": namespace, "context": context,
            "selector": selector, "container": container}  # fmt: skip


def _docker_edges(docker_client: Any, window: Mapping[str, Any]) -> list[Any]:
    """The stack's running edge containers (``window``: the edge's stable name and labels)."""
    return predecessors(docker_client, window, "")


def _at_edges(
    docker_host: str | None, window: Mapping[str, Any], script: str
) -> list[tuple[str, str]]:
    """``sh -c script`` at every running edge: (edge, output) each; a failure raises."""
    if window.get("kind") == KUBERNETES:
        return exec_in_pods(
            str(window["namespace"]), window.get("context") or None, str(window["selector"]),
            str(window["container"]), ["sh", "-c", script],
        )  # fmt: skip
    done = []
    with client(docker_host) as docker_client:
        for container in _docker_edges(docker_client, window):
            code, out = exec_in(container, ["sh", "-c", script])
            if code != 0:
                msg = f"maintenance window: `{script}` failed in {container.name} ({code}): {out}"
                raise EngineError(msg.strip())
            done.append((str(container.name), out.strip()))
    return done


def open_window(docker_host: str | None, window: Mapping[str, Any]) -> str:
    """Open the window at every running edge; the time it opened, or "" with no edge running."""
    found = _at_edges(docker_host, window, OPEN)
    if not found:
        return ""
    opened = datetime.now(UTC).isoformat(timespec="seconds")
    where = ", ".join(name for name, _ in found)
    pulumi.log.info(f"maintenance window open at the edge ({where}) since {opened}")
    return opened


def close_window(docker_host: str | None, window: Mapping[str, Any]) -> bool:
    """Close the window at every running edge; whether one was open."""
    closed = [name for name, out in _at_edges(docker_host, window, CLOSE) if out == "closed"]
    if closed:
        pulumi.log.info(f"maintenance window closed at the edge ({', '.join(closed)})")
    return bool(closed)


def is_open(docker_host: str | None, window: Mapping[str, Any]) -> bool:
    """Whether the window file exists at a running edge."""
    return any(out == "open" for _, out in _at_edges(docker_host, window, CHECK))
