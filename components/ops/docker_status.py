"""``appstack status`` on Docker: each container as the engine has it now, the last smoke test
from the stack's state, and the alerts Prometheus has firing (when monitoring runs).

Each container: state and health, the restarts the engine counted, and the last health probe's
output when it failed (what the operator would otherwise dig out of ``docker inspect``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from components.ops.stack import CONTAINER_TYPE, SMOKE_TYPE, resources

PROBE_CHARS = 200
ALERTS_QUERY = 'ALERTS{alertstate="firing"}'


def container_row(name: str, image: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """One service's row from ``docker inspect``'s attributes."""
    state = attrs.get("State") or {}
    health = state.get("Health") or {}
    row: dict[str, Any] = {
        "name": name,
        "image": image,
        "health": health.get("Status") or state.get("Status", "?"),
        "restarts": int(attrs.get("RestartCount") or 0),
        "started_at": state.get("StartedAt", ""),
    }
    log = health.get("Log") or []
    if log and int(log[-1].get("ExitCode") or 0) != 0:
        row["last_probe"] = str(log[-1].get("Output") or "").strip()[:PROBE_CHARS]
    return row


def containers(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each container's row as the Docker engine reports it now."""
    from components.providers.engine import client

    rows = []
    for res in resources(deployment, CONTAINER_TYPE):
        out = res.get("outputs") or {}
        name, image = str(out.get("name")), str(out.get("image"))
        try:
            with client(out.get("docker_host")) as docker_client:
                attrs = docker_client.containers.get(out.get("container_id")).attrs
            rows.append(container_row(name, image, attrs))
        except Exception as exc:  # the engine's answer is the status: report it, don't crash
            rows.append({"name": name, "image": image, "health": f"unknown ({type(exc).__name__})",
                         "restarts": 0})  # fmt: skip
    return rows


def last_smoke(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """What the last smoke test that passed recorded (a failed one fails its update: history)."""
    found = resources(deployment, SMOKE_TYPE)
    if not found:
        return {}
    out = found[0].get("outputs") or {}
    return {
        "passed": list(out.get("passed") or []),
        "checked_at": out.get("checked_at") or "",
        "latencies_ms": dict(out.get("latencies") or {}),
    }


def parse_alerts(promtool_json: str) -> list[dict[str, str]]:
    """Firing alerts from ``promtool query instant -o json`` of ``ALERTS``."""
    try:
        data = json.loads(promtool_json or "[]")
    except ValueError:
        return []
    series = data if isinstance(data, list) else data.get("data", {}).get("result", [])
    alerts = []
    for item in series:
        metric = item.get("metric") or {}
        alerts.append({
            "alert": str(metric.get("alertname", "?")),
            "severity": str(metric.get("severity", "")),
            "labels": ",".join(f"{k}={v}" for k, v in sorted(metric.items())
                               if k not in ("__name__", "alertname", "alertstate", "severity")),
        })  # fmt: skip
    return alerts


def firing_alerts(deployment: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """Alerts firing in the stack's Prometheus; None when the stack runs no Prometheus."""
    from components.providers.engine import client

    for res in resources(deployment, CONTAINER_TYPE):
        out = res.get("outputs") or {}
        if (out.get("labels") or {}).get("appstack.service") != "prometheus":
            continue
        argv = ["promtool", "query", "instant", "-o", "json", "http://127.0.0.1:9090", ALERTS_QUERY]
        with client(out.get("docker_host")) as docker_client:
            container = docker_client.containers.get(out.get("container_id"))
            result = container.exec_run(argv, demux=True)
        stdout = (result.output[0] or b"").decode("utf-8", "replace") if result.output else ""
        if result.exit_code != 0:
            return [{"alert": "(prometheus did not answer)", "severity": "", "labels": ""}]
        return parse_alerts(stdout)
    return None
