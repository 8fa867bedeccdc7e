"""The runbook's maintenance window on Docker: a file on the edge's volume (``components/edge.py``).

The migration opens it when it has pending work on a database with data (Engramia's runbook:
maintenance on, backup, migrate), the smoke test closes it once the new release passed (smoke,
maintenance off). Both act through ``exec`` in the running edge container, so the file lands on
the edge's volume and outlives a replacement of the container; Caddy tests it on each request.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pulumi

from components import edge
from components.providers.container import predecessors
from components.providers.engine_base import EngineError, client, exec_in

_OPEN = f'mkdir -p "$(dirname {edge.WINDOW_FILE})" && date -u +%FT%TZ > {edge.WINDOW_FILE}'
_CLOSE = f"if [ -e {edge.WINDOW_FILE} ]; then rm -f {edge.WINDOW_FILE} && echo closed; fi"


def _edges(docker_client: Any, window: Mapping[str, Any]) -> list[Any]:
    """The stack's running edge containers (``window``: the edge's stable name and labels)."""
    return predecessors(docker_client, window, "")


def _sh(container: Any, script: str) -> str:
    code, out = exec_in(container, ["sh", "-c", script])
    if code != 0:
        msg = f"maintenance window: `{script}` failed in {container.name} ({code}): {out.strip()}"
        raise EngineError(msg)
    return out.strip()


def open_window(docker_host: str | None, window: Mapping[str, Any]) -> str:
    """Open the window at every running edge; the time it opened, or "" with no edge running."""
    with client(docker_host) as docker_client:
        found = _edges(docker_client, window)
        for container in found:
            _sh(container, _OPEN)
    if not found:
        return ""
    opened = datetime.now(UTC).isoformat(timespec="seconds")
    pulumi.log.info(f"maintenance window open at the edge ({edge.WINDOW_FILE}) since {opened}")
    return opened


def close_window(docker_host: str | None, window: Mapping[str, Any]) -> bool:
    """Close the window at every running edge; whether one was open."""
    with client(docker_host) as docker_client:
        closed = [c.name for c in _edges(docker_client, window) if _sh(c, _CLOSE) == "closed"]
    if closed:
        pulumi.log.info(f"maintenance window closed at the edge ({', '.join(closed)})")
    return bool(closed)


def is_open(docker_host: str | None, window: Mapping[str, Any]) -> bool:
    """Whether the window file exists at a running edge."""
    check = f"[ -e {edge.WINDOW_FILE} ] && echo open || true"
    with client(docker_host) as docker_client:
        return any(_sh(c, check) == "open" for c in _edges(docker_client, window))
