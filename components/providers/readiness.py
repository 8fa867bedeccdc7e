"""Readiness of a new container: healthy, or up for its whole grace period, and never restarted.

Docker runs a container's first health check only after a whole interval (5 s in the specs), so
appstack also runs the same test itself (``exec``) every ``START_INTERVAL_S`` while it waits; on
Docker >= 25 the engine's ``start_interval`` does the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from components.providers.engine_base import EngineError
from components.providers.runner import log_tail, redact

POLL_S = 0.25
START_INTERVAL_S = 0.5


def _failure(container: Any, what: str, secrets: Sequence[str]) -> EngineError:
    try:
        logs = redact(container.logs(tail=80).decode(errors="replace"), secrets)
    except Exception as exc:  # the container may be gone already
        logs = f"(no log: {exc})"
    return EngineError(f"{what}; log tail:\n{log_tail(logs)}")


def _probe(container: Any, command: Sequence[str]) -> bool:
    """Run the health test inside the container; a container that just stopped is not ready."""
    import docker.errors

    try:
        return int(container.exec_run(list(command)).exit_code) == 0
    except docker.errors.APIError:
        return False


def wait_ready(container: Any, props: Mapping[str, Any], secrets: Sequence[str]) -> None:
    """Block until healthy, or, without a health check, until it stayed up its whole grace period.

    A restart counts as a failure in both cases: a crash-looping container under a restart policy
    is "running" most of the time, but its restart count gives it away.
    """
    name = props["name"]
    test = list((props.get("healthcheck") or {}).get("test") or [])
    if not test:
        # No check in the spec: the image's own HEALTHCHECK, when it has one, is the gate.
        container.reload()
        test = list((container.attrs["Config"].get("Healthcheck") or {}).get("Test") or [])
        test = [] if test[:1] == ["NONE"] else test
    timeout = float(props.get("wait_timeout_s") or 180)
    grace = float(props.get("grace_s") or 10)
    deadline = time.monotonic() + timeout
    has_health = bool(test)
    started = time.monotonic()
    next_probe = started
    while True:
        container.reload()
        state = container.attrs["State"]
        restarts = int(container.attrs.get("RestartCount") or 0)
        health = (state.get("Health") or {}).get("Status") if has_health else None
        if restarts or state.get("Restarting"):
            code = state.get("ExitCode")
            what = f"container {name} restarted {restarts} time(s): a crash loop (last exit {code})"
            raise _failure(container, what, secrets)
        if state.get("Status") in ("exited", "dead"):
            raise _failure(
                container, f"container {name} exited with {state.get('ExitCode')}", secrets
            )
        if health == "unhealthy":
            raise _failure(container, f"container {name} unhealthy", secrets)
        if has_health and health == "healthy":
            return
        if state.get("Running") and time.monotonic() >= next_probe:
            next_probe = time.monotonic() + START_INTERVAL_S
            command = test[1:] if test[:1] == ["CMD"] else ["sh", "-c", *test[1:2]]
            if test[:1] in (["CMD"], ["CMD-SHELL"]) and _probe(container, command):
                return
        if not has_health and state.get("Running") and time.monotonic() - started >= grace:
            return
        if time.monotonic() > deadline:
            want = "healthy" if has_health else "running"
            what = f"container {name} not {want} after {timeout:g}s (health: {health})"
            raise _failure(container, what, secrets)
        time.sleep(POLL_S)
