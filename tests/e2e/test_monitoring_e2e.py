"""The monitoring component with a real dev stack: targets up, rules loaded, alerts firing for real.

Prometheus is queried from inside its own container (``docker exec ... promtool query``): nothing
of the monitoring is published. The stack's budget is tiny (1 MiB) so the storage alert fires, and a
chunk is held in ``processing`` so the stall alert fires within a shortened window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _require_engines, cleanup
from tests.e2e.stack import Stack, docker, start_ollama

PORT = 18686
MONITORING = ("prometheus", "alertmanager", "postgres-exporter")
# Prometheus' own jobs for Haven on this machine: Qdrant's local double serves no /metrics
# (the real image does), so its job is configured off here.
JOBS = {"prometheus", "postgres", "alertmanager", "edge", "minio"}


@pytest.fixture(scope="module")
def mon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dev Haven stack with monitoring on, a short scrape interval and small thresholds."""
    _require_engines()
    tmp: Path = tmp_path_factory.mktemp("monitoring")
    config = {
        "appstack:deployTimeout": "90",
        "appstack:monitoring": {
            "scrapeInterval": "5s",
            "stalledAfter": "15s",
            "storageBudget": "1Mi",
            "qdrantMetrics": False,
        },
    }
    stack = Stack.create(tmp, "mon", PORT, config)
    ollama = f"appstack-{stack.name}-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        stack.up()
        yield stack
    finally:
        cleanup(stack, ollama)


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query, run by promtool inside the Prometheus container."""
    out = docker(
        "exec", stack.containers()["prometheus"]["Id"],
        "promtool", "query", "instant", "-o", "json", "http://127.0.0.1:9090", expr,
    )  # fmt: skip
    return json.loads(out or "[]")  # type: ignore[no-any-return]


def wait_for(stack: Stack, expr: str, deadline_s: float) -> list[dict[str, Any]]:
    """Poll ``expr`` until it returns a series; fail with the last answer after the deadline."""
    end = time.monotonic() + deadline_s
    result: list[dict[str, Any]] = []
    while time.monotonic() < end:
        result = query(stack, expr)
        if result:
            return result
        time.sleep(3)
    pytest.fail(f"{expr!r} returned nothing within {deadline_s}s; alerts: {query(stack, 'ALERTS')}")


def test_monitoring_containers_run_healthy_and_publish_nothing(mon: Stack) -> None:
    running = mon.containers()
    for name in MONITORING:
        state = running[name]["State"]
        assert state["Running"] and state["Health"]["Status"] == "healthy", (name, state)
        assert not running[name]["HostConfig"]["PortBindings"], f"{name} publishes a port"
    published = {n for n, c in running.items() if c["HostConfig"]["PortBindings"]}
    assert published == {"caddy"}
    prom_nets = set(running["prometheus"]["NetworkSettings"]["Networks"])
    assert prom_nets == {"mon-haven-internal", "mon-haven-edge"}
    for name in ("alertmanager", "postgres-exporter"):
        assert set(running[name]["NetworkSettings"]["Networks"]) == {"mon-haven-internal"}


def test_no_credential_in_the_prometheus_config(mon: Stack) -> None:
    prom = mon.containers()["prometheus"]["Id"]
    text = docker("exec", prom, "cat", "/etc/appstack/prometheus.yml")
    assert "credentials_file" in text and "/run/secrets/minio-token" in text
    assert "Bearer ey" not in text and '"credentials":' not in text
    environ = docker("exec", prom, "cat", "/proc/1/environ")
    assert "APPSTACK_SECRET" not in environ, "the server runs without the secrets in its env"


def test_every_target_is_up(mon: Stack) -> None:
    mon.get("/v1/healthz")  # at least one request through the edge
    result = wait_for(mon, f'count(up{{job=~"{"|".join(sorted(JOBS))}"}} == 1) == {len(JOBS)}', 90)
    assert result
    down = query(mon, "up == 0")
    assert down == [], f"targets down: {down}"
    jobs = {r["metric"]["job"] for r in query(mon, "up")}
    assert jobs == JOBS


def test_rules_are_loaded(mon: Stack) -> None:
    groups = wait_for(mon, "prometheus_rule_group_rules", 60)
    names = {r["metric"]["rule_group"].rsplit(";", 1)[-1] for r in groups}
    assert names == {
        "appstack-edge", "appstack-haven", "appstack-storage", "appstack-targets",
    }  # fmt: skip


def test_edge_requests_are_counted_per_service(mon: Stack) -> None:
    for _ in range(5):
        assert mon.get("/v1/healthz").status_code == 200
    series = wait_for(mon, 'caddy_http_request_duration_seconds_count{code="200"}', 60)
    assert {(s["metric"]["app"], s["metric"]["service"]) for s in series} == {("haven", "gateway")}


def test_storage_over_budget_fires(mon: Stack) -> None:
    firing = wait_for(mon, 'ALERTS{alertname="DatabaseOverBudget",alertstate="firing"}', 150)
    assert firing[0]["metric"]["datname"] == "haven"
    # and it reached Alertmanager
    am = mon.containers()["alertmanager"]["Id"]
    out = docker("exec", am, "amtool", "alert", "query", "--alertmanager.url=http://127.0.0.1:9093")
    assert "DatabaseOverBudget" in out
    # and the operator's status shows it, with each service's health and the last smoke test
    status = mon.appstack("status", "--json")
    assert status.code == 0, status.text
    report = json.loads(status.stdout)
    assert "DatabaseOverBudget" in [a["alert"] for a in report["alerts"]]
    services = {s["name"]: s for s in report["services"]}
    assert services["mon-haven-gateway"]["health"] == "healthy"
    assert all(s["restarts"] == 0 for s in services.values()), services
    assert report["smoke"]["passed"] and report["smoke"]["checked_at"]
    text = mon.appstack("status").stdout
    assert "alerts firing: " in text and "DatabaseOverBudget" in text


def test_a_chunk_held_in_processing_fires_the_stall_alert(mon: Stack) -> None:
    assert query(mon, 'ALERTS{alertname="HavenChunksStalled"}') == []
    mon.psql(
        "INSERT INTO documents (title) VALUES ('stalled-e2e');"
        "INSERT INTO chunks (document_id, content, embedding_status) "
        "SELECT id, 'held', 'processing' FROM documents WHERE title = 'stalled-e2e'"
    )
    wait_for(mon, "haven_chunks_processing > 0", 60)
    firing = wait_for(mon, 'ALERTS{alertname="HavenChunksStalled",alertstate="firing"}', 150)
    assert firing


def test_a_burst_of_5xx_through_the_edge_fires_the_5xx_alert(mon: Stack) -> None:
    assert query(mon, 'ALERTS{alertname="EdgeHigh5xxRate"}') == []
    token = mon.outputs(secrets=True)["authToken"]
    # Search answers 500 when Ollama is unreachable (DESIGN.md): stop the stand-in outside the stack
    docker("stop", f"appstack-{mon.name}-ollama")
    try:
        # Spread over several scrapes (5 s): a series' first sample is not an increase to
        # Prometheus, so a burst that fits between two scrapes could never show in rate().
        codes = []
        end = time.monotonic() + 25
        while time.monotonic() < end:
            codes.append(mon.get("/v1/search?q=hello", token=token).status_code)
            time.sleep(0.3)
        assert sum(c >= 500 for c in codes) >= 0.9 * len(codes), codes
        wait_for(mon, 'appstack:edge_5xx:rate5m{service="gateway"} > 0', 60)
        firing = wait_for(mon, 'ALERTS{alertname="EdgeHigh5xxRate",alertstate="firing"}', 200)
        assert (firing[0]["metric"]["app"], firing[0]["metric"]["service"]) == ("haven", "gateway")
    finally:
        docker("start", f"appstack-{mon.name}-ollama")
