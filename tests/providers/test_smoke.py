"""SmokeTest provider against a real local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from components.providers.smoke import RUN_NOTE, SmokeTestProvider
from tests.providers.conftest import free_port

TOKEN = "smoke-token-7f3a9c"


class _Handler(BaseHTTPRequestHandler):
    flaky_calls = 0

    def log_message(self, *_args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any] | str) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/ok":
            self._send(200, {"status": "ok", "checks": {"storage": {"status": "ok"}}})
        elif self.path == "/auth":
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                self._send(200, {"status": "ok"})
            else:
                self._send(401, {"detail": f"bad token {self.headers.get('Authorization')}"})
        elif self.path == "/fail":
            self._send(500, f"internal error while using {TOKEN}\n" + "x" * 500)
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, {"status": "ok"})
        elif self.path == "/flaky":
            type(self).flaky_calls += 1
            self._send(200 if self.flaky_calls >= 3 else 503, {"status": "warming"})
        else:
            self._send(404, {"detail": "not found"})


@pytest.fixture
def base_url() -> Iterator[str]:
    _Handler.flaky_calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _props(base_url: str, checks: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "checks": checks,
        "secrets": {"gateway": TOKEN},
        "deadline_s": 5.0,
        "timeout_s": 1.0,
        "run": RUN_NOTE,
        **extra,
    }


def test_all_checks_pass_and_outputs_hold_no_secret(base_url: str) -> None:
    checks = [
        {"name": "health", "path": "/ok", "expect_json": {"checks.storage.status": "ok"}},
        {"name": "search", "path": "/auth", "bearer_key": "gateway"},
        {"name": "unauth", "path": "/auth", "expect_status": 401},
    ]
    outs = SmokeTestProvider().create(_props(base_url, checks)).outs or {}
    assert outs["passed"] == ["health", "search", "unauth"]
    assert set(outs["latencies"]) == {"health", "search", "unauth"}
    assert outs["checked_at"]
    assert outs["run"].startswith("ran at ")
    assert TOKEN not in json.dumps(outs)
    assert "secrets" not in outs


def test_failing_check_is_retried_until_it_passes(base_url: str) -> None:
    outs = SmokeTestProvider().create(_props(base_url, [{"name": "flaky", "path": "/flaky"}]))
    assert (outs.outs or {})["attempts"] >= 3


def test_one_message_lists_every_failing_check_with_secrets_redacted(base_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    checks = [
        {"name": "health", "path": "/ok"},
        {"name": "server-error", "path": "/fail"},
        {"name": "wrong-json", "path": "/ok", "expect_json": {"status": "degraded"}},
        {"name": "slow", "path": "/slow"},
        {"name": "needs-auth", "path": "/auth"},
        {"name": "search", "path": "/auth", "bearer_key": "gateway", "expect_status": 204},
    ]
    started = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        SmokeTestProvider().update(
            "id", {}, _props(base_url, checks, deadline_s=2.0, timeout_s=0.5)
        )
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert "5 of 6 checks" in message
    assert "health" not in message.replace("needs-auth", "")
    assert "server-error: GET /fail -> status 500 (expected 200)" in message
    assert "internal error while using ***" in message
    assert "x" * 201 not in message  # body cut at 200 characters
    assert "json 'status' = 'ok' (expected 'degraded')" in message
    assert "slow: GET /slow -> timed out after" in message
    assert "needs-auth: GET /auth -> status 401 (expected 200)" in message
    assert "search: GET /auth -> status 200 (expected 204)" in message
    assert " ms]" in message
    assert TOKEN not in message
    assert elapsed < 2.0 + 0.5 + 1.5

    with pytest.raises(RuntimeError, match="down: GET /v1/healthz -> connection error"):
        SmokeTestProvider().create(
            _props(dead, [{"name": "down", "path": "/v1/healthz"}], deadline_s=1.0)
        )


def test_diff_always_reports_a_change() -> None:
    provider = SmokeTestProvider()
    props = _props("http://x", [{"name": "a", "path": "/"}])
    olds = {**props, "run": "ran at 2025-01-01T00:00:00+00:00"}
    result = provider.diff("id", olds, props)
    assert result.changes is True
    assert result.replaces == []
    assert provider.check({}, {**props, "run": "x"}).inputs["run"] == RUN_NOTE


def test_check_refuses_unknown_bearer_key_and_duplicate_names() -> None:
    checks = [
        {"name": "a", "path": "/", "bearer_key": "missing"},
        {"name": "a", "path": "/x"},
    ]
    reasons = [f.reason for f in SmokeTestProvider().check({}, _props("http://x", checks)).failures]
    assert any("bearer_key 'missing'" in r for r in reasons)
    assert any("repeat" in r for r in reasons)


def test_a_slow_check_gets_its_own_timeout_even_at_the_deadline(base_url: str) -> None:
    checks = [
        {"name": "quick", "path": "/ok"},
        {"name": "deep", "path": "/slow", "timeout_s": 3.0},
    ]
    # The test's timeout (0.5 s) and deadline (1 s) are shorter than /slow's 1.5 s answer: only
    # the check's own timeout lets it pass.
    outs = SmokeTestProvider().create(_props(base_url, checks, deadline_s=1.0, timeout_s=0.5))
    assert (outs.outs or {})["passed"] == ["quick", "deep"]
    assert (outs.outs or {})["latencies"]["deep"] >= 1400
    with pytest.raises(RuntimeError, match="deep: GET /slow -> timed out after"):
        SmokeTestProvider().create(
            _props(base_url, [{"name": "deep", "path": "/slow"}], deadline_s=1.0, timeout_s=0.5)
        )
