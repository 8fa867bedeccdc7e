"""Engramia in db auth mode through a real `pulumi up`: the bootstrap token's lifecycle, automated.

The stack is ``Pulumi.engramia-dev.yaml`` with ``authMode: db`` (prod's default), on its own port:
the first deploy bootstraps (a throwaway container of the API's image with the token serves
``POST /v1/keys/bootstrap`` once), the owner key is an encrypted stack output, and the running
API never had the token in its environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import _require_engines, cleanup
from tests.e2e.stack import Stack, docker

pytestmark = pytest.mark.e2e
PORT = 18495


@pytest.fixture(scope="module")
def engdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Engramia's dev stack in db auth mode, monitoring off (not what this file is about)."""
    _require_engines()
    tmp: Path = tmp_path_factory.mktemp("engramia-db")
    config = {"appstack:engramia": {"authMode": "db"}, "appstack:monitoring": {"enabled": False}}
    stack = Stack.create(tmp, "engdb", PORT, config, base="engramia-dev")
    try:
        yield stack
    finally:
        cleanup(stack, app="engramia")


def test_first_deploy_bootstraps_and_the_api_never_holds_the_token(engdb: Stack) -> None:
    result = engdb.up(check=False)
    assert result.code == 0, result.text[-4000:]
    assert "bootstrap: POST /v1/keys/bootstrap answered 201" in result.text
    owner = engdb.outputs(secrets=True)["engramiaOwnerKey"]
    assert owner.startswith("engramia_sk_")
    assert "engramia_sk_" not in engdb.outputs()["engramiaOwnerKey"], "encrypted at rest"
    # The owner key authenticates: db auth mode takes keys from the database only.
    assert engdb.get("/v1/health", token=owner).status_code == 200
    created = httpx.post(
        engdb.url("/v1/memories"),
        headers={"Authorization": f"Bearer {owner}"},
        json={"content": "by the owner"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    api = engdb.containers()["api"]
    env = dict(e.split("=", 1) for e in api["Config"]["Env"])
    assert env["ENGRAMIA_AUTH_MODE"] == "db"
    assert "ENGRAMIA_BOOTSTRAP_TOKEN" not in env
    # The throwaway container is gone; the endpoint is closed for good (503 without the token).
    left = docker("ps", "-aq", "--filter", "label=appstack.task=bootstrap", check=False)
    assert left == ""
    closed = httpx.post(
        engdb.url("/v1/keys/bootstrap"), json={"bootstrap_token": "anything"}, timeout=10
    )
    assert closed.status_code == 503
    smoke = engdb.resource_outputs("engdb-engramia-smoke")
    assert smoke["passed"] == ["version", "deep-health", "health-unauthorized"]


def test_a_second_deploy_keeps_the_key_and_calls_nothing(engdb: Stack) -> None:
    before = engdb.outputs(secrets=True)["engramiaOwnerKey"]
    result = engdb.up(check=False)
    assert result.code == 0, result.text[-4000:]
    assert "bootstrap:" not in result.text
    assert engdb.outputs(secrets=True)["engramiaOwnerKey"] == before
    assert engdb.get("/v1/health", token=before).status_code == 200
