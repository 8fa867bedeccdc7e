"""Releases that never take the running one down, through a real `pulumi up` on a real engine.

Each test watches the public entry (the edge on 127.0.0.1) from a second thread for the whole
update and counts every request that failed. The tests run in order on one stack.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import cleanup
from tests.e2e.stack import Result, Stack, Watch, docker, start_ollama

pytestmark = pytest.mark.e2e
PORT = 18282
NEVER_HEALTHY = {"repository": "ollama", "tag": "double"}
"""An image that runs, but never answers the gateway's health check (it serves Ollama's API)."""
CRASHES = {"repository": "postgres-pgvector", "tag": "17"}
"""As the worker, this image's entrypoint exits at once (no password, no capabilities): a loop."""


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dev-like Haven stack of its own; a new release may take 30 s to get healthy."""
    tmp: Path = tmp_path_factory.mktemp("release")
    stack = Stack.create(tmp, "rel", PORT, {"appstack:deployTimeout": "30"})
    ollama = f"appstack-{stack.name}-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        stack.up()
        yield stack
    finally:
        cleanup(stack, ollama)


def set_image(stack: Stack, service: str, repository: str, tag: str) -> None:
    """Point one service at a local image."""
    for key, value in (("repository", repository), ("tag", tag)):
        stack.pulumi(
            "config", "set", "--path", "--stack", stack.name,
            f"appstack:images.{service}.{key}", value, check=True,
        )  # fmt: skip


def up_watched(stack: Stack, interval_s: float = 0.05) -> tuple[Result, Watch]:
    """``pulumi up`` while the public health path is requested every ``interval_s``."""
    with Watch(stack.url("/v1/healthz"), interval_s) as watch:
        result = stack.up(check=False)
    return result, watch


def test_gateway_tag_change_under_load_drops_no_request(rel: Stack) -> None:
    old = rel.containers()["gateway"]["Id"]
    rel.set_images("0.2.0", ("gateway",))
    result, watch = up_watched(rel, interval_s=0.05)  # 20 requests/s for the whole update
    assert result.code == 0, result.text[-3000:]
    assert watch.failures == [], f"{len(watch.failures)} failed: {watch.failures[:5]}"
    assert watch.versions == {"0.1.0", "0.2.0"}, "the load saw the switch happen"
    assert watch.ok >= 20
    assert rel.containers()["gateway"]["Id"] != old
    assert len(rel.releases("gateway")) == 1, "the old release is removed once the new serves"


def test_never_healthy_gateway_fails_the_up_and_the_old_one_keeps_serving(rel: Stack) -> None:
    before = rel.containers()
    set_image(rel, "gateway", **NEVER_HEALTHY)
    result, watch = up_watched(rel, interval_s=0.1)
    assert result.code != 0
    assert "rel-haven-gateway not healthy after 30s" in result.text
    assert "the running release of rel-haven-gateway was kept (untouched)" in result.text
    assert watch.failures == [], f"{len(watch.failures)} failed: {watch.failures[:5]}"
    assert watch.ok >= 100, "the probe ran for the whole update"
    assert watch.versions == {"0.2.0"}
    after = rel.containers()
    assert {n: c["Id"] for n, c in after.items()} == {n: c["Id"] for n, c in before.items()}
    assert [c["Id"] for c in rel.releases("gateway")] == [before["gateway"]["Id"]]
    set_image(rel, "gateway", "haven-gateway", "0.2.0")


def test_crash_looping_worker_is_caught_and_the_old_one_started_again(rel: Stack) -> None:
    old = rel.containers()["worker"]
    set_image(rel, "worker", **CRASHES)
    result, watch = up_watched(rel, interval_s=0.1)
    assert result.code != 0
    assert "rel-haven-worker restarted" in result.text and "crash loop" in result.text
    assert f"started {old['Name'].lstrip('/')} again" in result.text
    assert watch.failures == []
    worker = rel.containers()["worker"]
    assert worker["Id"] == old["Id"], "the old worker is the one running"
    assert worker["State"]["Running"]
    assert len(rel.releases("worker")) == 1, "the crashing release was removed"
    set_image(rel, "worker", "haven-worker", "0.1.0")
    assert rel.up(check=False).code == 0


def test_refresh_reports_a_stopped_service_and_up_heals_it(rel: Stack) -> None:
    catalog = rel.containers()["catalog"]
    docker("stop", catalog["Id"])
    refresh = rel.pulumi("refresh", "--yes", "--skip-preview", "--diff", "--stack", rel.name)
    assert refresh.code == 0, refresh.text[-3000:]
    assert "rel-haven-catalog" in refresh.text and "exited" in refresh.text, refresh.text[-3000:]
    planned = {
        s["urn"].rsplit("::", 1)[-1]: s["op"]
        for s in rel.preview().get("steps", [])
        if s["op"] not in ("same",)
    }
    assert planned.get("rel-haven-catalog") in ("replace", "create-replacement"), planned
    rel.up()
    healed = rel.containers()["catalog"]
    assert healed["Id"] != catalog["Id"] and healed["State"]["Running"]


def test_tls_with_the_internal_ca(rel: Stack) -> None:
    rel.set_config("appstack:public", {"address": "127.0.0.1", "port": PORT, "tls": "internal"})
    rel.up()
    ca = rel.outputs()["edgeCaCertificate"]
    assert "BEGIN CERTIFICATE" in ca
    trusted = ssl.create_default_context(cadata=ca)
    url = f"https://localhost:{PORT}/v1/healthz"
    resp = httpx.get(url, verify=trusted, timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=10)  # the system's trust store does not know the stack's CA
    assert rel.outputs()["publicUrl"] == f"https://localhost:{PORT}"


def test_tls_with_a_certificate_from_secrets(rel: Stack, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    for name, path in (("tlsCertificate", cert), ("tlsKey", key)):
        # A multi-line value goes in on stdin, as an operator would pipe the file.
        subprocess.run(
            ["pulumi", "config", "set", "--secret", "--stack", rel.name, f"appstack:{name}",
             "--non-interactive"],
            cwd=rel.workdir, env=rel.env, stdin=path.open(), check=True, capture_output=True,
        )  # fmt: skip
    caddy = rel.containers()["caddy"]["Id"]
    rel.set_config("appstack:public", {"address": "127.0.0.1", "port": PORT, "tls": "certificate"})
    rel.up()
    resp = httpx.get(
        f"https://localhost:{PORT}/v1/healthz",
        verify=ssl.create_default_context(cafile=str(cert)),
        timeout=10,
    )
    assert resp.status_code == 200
    assert rel.containers()["caddy"]["Id"] == caddy, "the edge reloaded, it was not replaced"
    assert key.read_text().strip() not in rel.pulumi("stack", "export", "--stack", rel.name).text
