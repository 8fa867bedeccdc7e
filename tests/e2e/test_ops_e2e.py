"""The operator CLI on a real stack: history, rollback with data, deploy's rollback, maintenance.

Release A = Haven 0.1.0. Release B = gateway and catalog 0.2.0 (catalog's image carries the new
migration v2_003). Release C = A with a gateway whose search regressed (0.2.1-badsearch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.ops.stack import plaintext
from tests.e2e.conftest import cleanup
from tests.e2e.stack import ROOT, Result, Stack, start_ollama, wait_http

pytestmark = pytest.mark.e2e
APPSTACK = [sys.executable, "-m", "components.ops.cli"]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh stack `ops` for the operator tests."""
    from tests.e2e.conftest import _require_engines

    _require_engines()
    tmp: Path = tmp_path_factory.mktemp("ops")
    stack = Stack.create(tmp, "ops", 18282, {})
    ollama = "appstack-ops-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        yield stack
    finally:
        cleanup(stack, ollama)


def appstack(stack: Stack, *args: str) -> Result:
    """Run the `appstack` CLI on ``stack``."""
    return stack.appstack(*args)


def token(stack: Stack) -> str:
    """The generated AUTH_TOKEN, as an operator with the passphrase reads it."""
    for res in stack.export(secrets=True)["deployment"]["resources"]:
        if res["urn"].endswith("::ops-haven-authToken"):
            return str(plaintext(res["outputs"]["value"]))
    raise AssertionError("no authToken")


def ids(stack: Stack) -> dict[str, str]:
    """Container IDs by service."""
    return {n: c["Id"] for n, c in stack.containers().items()}


def test_deploy_release_a_then_b(ops: Stack) -> None:
    first = appstack(ops, "deploy")
    assert first.code == 0, first.text
    ops.psql(
        "insert into documents (title) values ('written under A');"
        "insert into chunks (document_id, content, embedding_status)"
        " select id, 'in flight', 'processing' from documents"
    )
    ops.set_images("0.2.0", ("gateway", "catalog"))
    second = appstack(ops, "deploy")
    assert second.code == 0, second.text
    assert "collections" in ops.psql("select tablename from pg_tables where schemaname='public'")


def test_history_lists_updates_newest_first_with_images_and_backups(ops: Stack) -> None:
    out = appstack(ops, "history", "--json")
    assert out.code == 0, out.text
    entries = json.loads(out.stdout)
    assert [e["number"] for e in entries] == [2, 1]
    assert entries[0]["images"]["gateway"] == "appstack.local/haven-gateway:0.2.0"
    assert entries[1]["images"]["gateway"] == "appstack.local/haven-gateway:0.1.0"
    assert entries[0]["migration"]["backup_id"].startswith("ops-haven-")
    assert entries[0]["migration"]["applied"] == ["migrations/v2_003_collections.sql"]
    text = appstack(ops, "history")
    assert text.code == 0 and text.stdout.splitlines()[0].split()[0] == "2"


def test_rollback_without_restore_refuses_and_changes_nothing(ops: Stack) -> None:
    before_ids, before_config = ids(ops), ops.pulumi("config", "--json", check=True).stdout
    out = appstack(ops, "rollback", "--to", "1", "--yes")
    assert out.code == 3, out.text
    assert "--restore-backup" in out.stderr and "v2_003" in out.stderr
    assert ids(ops) == before_ids
    assert ops.pulumi("config", "--json", check=True).stdout == before_config


def test_rollback_needs_confirmation(ops: Stack) -> None:
    before = ids(ops)
    out = appstack(ops, "rollback", "--to", "1", "--restore-backup")
    assert out.code == 3 and "--yes" in out.stderr, out.text
    assert ids(ops) == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("rollback", "--to", "99", "--yes"), 2, "out of range"),
        (("rollback", "--to", "first", "--yes"), 2, "neither an entry number"),
    ],
)
def test_bad_rollback_input_is_refused(
    ops: Stack, args: tuple[str, ...], code: int, message: str
) -> None:
    before = ids(ops)
    out = appstack(ops, *args)
    assert out.code == code and message in out.stderr, out.text
    assert ids(ops) == before


def test_unknown_stack_is_refused(ops: Stack) -> None:
    env = dict(ops.env)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [*APPSTACK, "status", "--stack", "nope"],
        cwd=ops.workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown stack 'nope'" in proc.stderr


def test_rollback_with_restore_brings_back_a_images_schema_and_data(ops: Stack) -> None:
    out = appstack(ops, "rollback", "--to", "1", "--yes", "--restore-backup")
    assert out.code == 0, out.text
    assert ops.get("/v1/healthz").json()["version"] == "0.1.0"
    tables = ops.psql("select tablename from pg_tables where schemaname='public'").split()
    assert "collections" not in tables, "the schema is A's again"
    ledger = ops.psql("select name from appstack_schema_ledger").split()
    assert "migrations/v2_003_collections.sql" not in ledger
    assert "written under A" in ops.psql("select title from documents")
    assert "processing" not in ops.psql("select embedding_status from chunks")
    assert ops.get("/v1/search?q=hello", token=token(ops)).status_code == 200
    assert "resetting" in out.stderr or "restored" in out.stderr


def test_rollback_to_a_failed_entry_is_refused(ops: Stack) -> None:
    ops.set_images("0.3.0-broken", ("catalog",))
    assert ops.up(check=False).code != 0
    ops.set_images("0.1.0", ("catalog",))
    failed = [e for e in json.loads(appstack(ops, "history", "--json").stdout)
              if e["result"] == "failed"]  # fmt: skip
    assert failed
    out = appstack(ops, "rollback", "--to", str(failed[0]["number"]), "--yes")
    assert out.code == 2 and "failed" in out.stderr, out.text


def test_deploy_with_failing_smoke_rolls_back_to_the_last_good_release(ops: Stack) -> None:
    ops.set_images("0.2.1-badsearch", ("gateway",))
    out = appstack(ops, "deploy")
    assert out.code == 4, out.text
    assert "search-authorized" in out.stderr
    assert ops.get("/v1/healthz").json()["version"] == "0.1.0"
    assert ops.get("/v1/search?q=hello", token=token(ops)).status_code == 200


def test_maintenance_on_then_off(ops: Stack) -> None:
    on = appstack(ops, "maintenance", "on")
    assert on.code == 0, on.text
    assert ops.get("/v1/healthz").status_code == 200
    assert ops.get("/v1/search?q=hello", token=token(ops)).status_code == 503
    assert ops.get("/v1/documents").status_code == 503
    off = appstack(ops, "maintenance", "off")
    assert off.code == 0, off.text
    wait_http(ops.url("/v1/healthz"))
    assert ops.get("/v1/search?q=hello", token=token(ops)).status_code == 200


def test_status_reports_services_and_migration(ops: Stack) -> None:
    out = appstack(ops, "status", "--json")
    assert out.code == 0, out.text
    report = json.loads(out.stdout)
    health = {s["name"]: s["health"] for s in report["services"]}
    assert health["ops-haven-gateway"] == "healthy"
    assert health["ops-haven-worker"] in ("healthy", "running")  # image may bring its own check
    assert "init.sql" in report["migration"]["ledger"]
