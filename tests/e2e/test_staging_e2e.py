"""Staging's path on a shared state backend: Haven's stack `stg` with its state in S3.

The backend is Pulumi's `s3://` URL served by the MinIO built here (`appstack.local/minio`, plain
docker on 127.0.0.1 with a port of its own; endpoint, path-style and plain-HTTP options in the
URL). No `file://` backend exists for the stack, so `appstack deploy`, `history` and `rollback`
must work without checkpoint files: history from `pulumi stack history --json` and the release
records in the app's database, deploy's outcome from the engine's `--event-log`.

Release A = Haven 0.1.0. Release B = gateway and catalog 0.2.0 (catalog's image carries the new
migration v2_003). Release C = B with a gateway whose search regressed (0.2.1-badsearch).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import cleanup
from tests.e2e.stack import ROOT, Stack, docker, start_ollama, wait_http

pytestmark = pytest.mark.e2e
PORT = 18585
S3_PORT = 18586
URL = f"http://127.0.0.1:{PORT}"
MINIO = "appstack-stg-state-minio"
BUCKET = "appstack-state"


def _minio_image() -> str:
    images = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]["appstack:images"]
    spec = images["minio"]
    return f"{spec['registry']}/{spec['repository']}:{spec['tag']}"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """MinIO on 127.0.0.1:S3_PORT with a bucket for Pulumi's state; the env that reaches it."""
    user, password = "stg-" + secrets.token_hex(4), secrets.token_hex(16)
    docker("rm", "-f", MINIO, check=False)
    docker("run", "-d", "--name", MINIO, "-p", f"127.0.0.1:{S3_PORT}:9000",
           "-e", f"MINIO_ROOT_USER={user}", "-e", f"MINIO_ROOT_PASSWORD={password}",
           _minio_image())  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{S3_PORT}/minio/health/live")
        docker("exec", MINIO, "appstack-mkbucket", BUCKET, "http://127.0.0.1:9000")
        yield {
            "PULUMI_BACKEND_URL": (
                f"s3://{BUCKET}?endpoint=127.0.0.1:{S3_PORT}"
                "&disableSSL=true&s3ForcePathStyle=true&region=us-east-1"
            ),
            "AWS_ACCESS_KEY_ID": user,
            "AWS_SECRET_ACCESS_KEY": password,
            "AWS_REGION": "us-east-1",
        }
    finally:
        docker("rm", "-f", MINIO, check=False)


@pytest.fixture(scope="module")
def stg(tmp_path_factory: pytest.TempPathFactory, s3: dict[str, str]) -> Iterator[Stack]:
    """Stack `stg` (Haven, dev defaults) whose state lives in the S3 bucket only."""
    from tests.e2e.conftest import _require_engines

    _require_engines()
    tmp: Path = tmp_path_factory.mktemp("stg")
    public = {"address": "127.0.0.1", "port": PORT, "url": URL}
    stack = Stack.create(tmp, "stg", PORT, {"appstack:public": public})
    # Stack.create made the stack on a scratch file backend: move to S3 and drop that one.
    stack.pulumi("stack", "rm", "--yes", "--force", "--preserve-config", "stg", check=True)
    stack.env.update(s3)
    stack.pulumi("stack", "init", "stg", check=True)
    ollama = "appstack-stg-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        yield stack
    finally:
        cleanup(stack, ollama)


def _token(stack: Stack) -> str:
    out = stack.pulumi("stack", "output", "authToken", "--show-secrets", "--stack", "stg")
    assert out.code == 0, out.text
    return out.stdout.strip()


def _version(stack: Stack) -> str:
    return str(httpx.get(f"{URL}/v1/healthz", timeout=10).json()["version"])


def test_a_remote_engine_without_public_url_fails_preview_naming_the_key(stg: Stack) -> None:
    stg.pulumi("config", "set", "--stack", "stg", "appstack:dockerHost", "ssh://deploy@stg.invalid")
    stg.pulumi("config", "set", "--stack", "stg", "appstack:public",
               json.dumps({"address": "0.0.0.0", "port": PORT}), check=True)  # fmt: skip
    try:
        out = stg.pulumi("preview", "--stack", "stg")
        assert out.code != 0
        assert "appstack:public.url: is required when the Docker engine is remote" in out.text
        assert "dockerHost=ssh://deploy@stg.invalid" in out.text
    finally:
        stg.pulumi("config", "rm", "--stack", "stg", "appstack:dockerHost", check=True)
        stg.set_config("appstack:public", {"address": "127.0.0.1", "port": PORT, "url": URL})


def test_deploy_a_on_the_s3_backend_with_a_public_url_and_a_secret_token(
    stg: Stack, s3: dict[str, str]
) -> None:
    out = stg.appstack("deploy")
    assert out.code == 0, out.text
    alias = f"http://{s3['AWS_ACCESS_KEY_ID']}:{s3['AWS_SECRET_ACCESS_KEY']}@127.0.0.1:9000"
    objects = docker("exec", "-e", f"MC_HOST_s={alias}", MINIO, "mc", "ls", "--recursive",
                     f"s/{BUCKET}")  # fmt: skip
    assert "stacks/appstack/stg.json" in objects, objects
    outputs = stg.outputs()
    assert outputs["publicUrl"] == URL
    assert outputs["authToken"] == "[secret]"
    smoke = stg.resource_outputs("::stg-haven-smoke")
    assert smoke["base_url"] == URL
    token = _token(stg)
    assert httpx.get(f"{URL}/v1/search?q=hello", timeout=10).status_code == 401
    search = httpx.get(
        f"{URL}/v1/search?q=hello", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert search.status_code == 200
    assert token not in json.dumps(stg.export())


def test_deploy_b_then_history_from_the_s3_backend_and_the_database(stg: Stack) -> None:
    stg.psql(
        "insert into documents (title) values ('written under A');"
        "insert into chunks (document_id, content, embedding_status)"
        " select id, 'in flight', 'processing' from documents"
    )
    stg.set_images("0.2.0", ("gateway", "catalog"))
    out = stg.appstack("deploy")
    assert out.code == 0, out.text
    history = stg.appstack("history", "--json")
    assert history.code == 0, history.text
    entries = json.loads(history.stdout)
    assert [e["number"] for e in entries] == [2, 1]
    assert entries[0]["images"]["gateway"] == "appstack.local/haven-gateway:0.2.0"
    assert entries[1]["images"]["gateway"] == "appstack.local/haven-gateway:0.1.0"
    assert entries[0]["migration"]["applied"] == ["migrations/v2_003_collections.sql"]
    assert entries[0]["migration"]["backup_id"].startswith("stg-haven-")
    assert entries[1]["migration"]["applied"] == ["init.sql"]
    assert "migrations/v2_003_collections.sql" not in entries[1]["migration"]["ledger"]


def test_deploy_whose_smoke_fails_rolls_back_to_the_last_good_release(stg: Stack) -> None:
    stg.set_images("0.2.1-badsearch", ("gateway",))
    out = stg.appstack("deploy")
    assert out.code == 4, out.text
    assert "search-authorized" in out.stderr
    assert _version(stg) == "0.2.0"
    token = _token(stg)
    search = httpx.get(
        f"{URL}/v1/search?q=hello", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert search.status_code == 200


def test_a_failure_before_the_smoke_test_is_not_rolled_back(stg: Stack) -> None:
    entries_before = len(json.loads(stg.appstack("history", "--json").stdout))
    stg.set_images("0.3.0-broken", ("catalog",))
    try:
        out = stg.appstack("deploy")
        assert out.code == 1, out.text
        assert "failed before its smoke tests" in out.stderr
        entries = json.loads(stg.appstack("history", "--json").stdout)
        assert len(entries) == entries_before + 1, "one failed update, no rollback update"
        assert _version(stg) == "0.2.0"
    finally:
        stg.set_images("0.2.0", ("catalog",))


def test_rollback_with_restore_brings_back_a_from_the_s3_backend(stg: Stack) -> None:
    out = stg.appstack("rollback", "--to", "1", "--yes", "--restore-backup")
    assert out.code == 0, out.text
    deadline = time.monotonic() + 30
    while _version(stg) != "0.1.0" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _version(stg) == "0.1.0"
    tables = stg.psql("select tablename from pg_tables where schemaname='public'").split()
    assert "collections" not in tables, "the schema is A's again"
    assert "written under A" in stg.psql("select title from documents")
    assert "processing" not in stg.psql("select embedding_status from chunks")
