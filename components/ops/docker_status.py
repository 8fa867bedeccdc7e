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
        # A stopped container keeps its last health status: its state is the answer then.
        "health": (health.get("Status") if state.get("Status") == "running" else None)
        or state.get("Status", "?"),
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


def _summary(body: str) -> str:
    """``ok`` / ``degraded (storage ok, llm error)``: a health answer's status and named checks."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:80]
    if not isinstance(data, Mapping):
        return str(data)[:80]
    checks = data.get("checks")
    named = ""
    if isinstance(checks, Mapping):
        named = ", ".join(
            f"{name} {c.get('status') if isinstance(c, Mapping) else c}"
            for name, c in sorted(checks.items())
        )
    status = str(data.get("status", ""))
    return f"{status} ({named})" if named else status


def app_health(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The app's own health answers, asked once at its public entry as its smoke test does.

    Needs an export with secrets (the smoke test's bearer keys): Engramia's deep health per
    check, Haven's health. Each answer: path, HTTP status, the status and named checks it gave.
    """
    import httpx

    from components.ops.stack import plaintext
    from components.providers.smoke import Check, tls_verify

    found = resources(deployment, SMOKE_TYPE)
    if not found:
        return []
    inputs = found[0].get("inputs") or {}
    secrets = {str(k): str(v) for k, v in (plaintext(inputs.get("secrets")) or {}).items()}
    headers = {str(k): str(v) for k, v in (plaintext(inputs.get("headers")) or {}).items()}
    base = str(inputs.get("base_url", "")).rstrip("/")
    answers = []
    with httpx.Client(verify=tls_verify(str(inputs.get("ca_pem") or "") or None)) as client:
        for raw in inputs.get("checks") or []:
            check = Check.parse(raw)
            if "health" not in check.path or check.expect_status != 200:
                continue
            sent = dict(headers)
            if check.bearer_key and check.bearer_key in secrets:
                sent["Authorization"] = f"Bearer {secrets[check.bearer_key]}"
            try:
                resp = client.get(base + check.path, headers=sent, timeout=check.timeout_s or 10)
                answers.append(
                    {
                        "check": check.name,
                        "path": check.path,
                        "status": resp.status_code,
                        "detail": _summary(resp.text),
                    }
                )
            except httpx.HTTPError as exc:
                answers.append({"check": check.name, "path": check.path, "status": None,
                                "detail": f"{type(exc).__name__}: {exc}"})  # fmt: skip
    return answers
