"""The Engramia contract image (``appstack.local/engramia``) against DESIGN.md, with plain docker.

Each test runs the image as appstack does (uid 1001, read-only root, tmpfs /tmp, /app/tmp and
/data, no capabilities) beside a PostgreSQL with pgvector, on a network of their own, and speaks
to it on an ephemeral 127.0.0.1 port. What the stack tests take for granted is proved here: the
auth modes, bootstrap, maintenance, rate limits, metrics, deep health, the driver in the URL, and
alembic migrations that go up and down.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import _require_engines
from tests.e2e.stack import docker

pytestmark = pytest.mark.e2e
PREFIX = "appstack-engimg"
IMAGE = "appstack.local/engramia:{tag}"
POSTGRES = "appstack.local/postgres-pgvector:17"
PASSWORD = "engimg-" + secrets.token_hex(6)
HARDENED = (
    "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/app/tmp", "--tmpfs", "/data",
    "--user", "1001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
)  # fmt: skip


@dataclass(frozen=True)
class Db:
    """The test network and its PostgreSQL; each test gets a database of its own."""

    network: str
    container: str

    def create(self, name: str) -> str:
        """A fresh database; returns its psycopg2 URL as the API sees it."""
        self.psql("postgres", f"CREATE DATABASE {name}")
        return f"postgresql+psycopg2://engramia:{PASSWORD}@pg:5432/{name}"

    def psql(self, database: str, query: str) -> str:
        """One statement through ``docker exec``."""
        return docker(
            "exec", self.container, "psql", "-U", "engramia", "-d", database, "-At",
            "-v", "ON_ERROR_STOP=1", "-c", query,
        )  # fmt: skip


@pytest.fixture(scope="module")
def db() -> Iterator[Db]:
    """A network and a PostgreSQL 17 with pgvector, removed at the end."""
    _require_engines()
    network, container = f"{PREFIX}-net", f"{PREFIX}-pg"
    _remove_all()
    docker("network", "create", "--label", f"{PREFIX}=1", network)
    docker("run", "-d", "--name", container, "--label", f"{PREFIX}=1", "--network", network,
           "--network-alias", "pg", "-e", "POSTGRES_USER=engramia",
           "-e", f"POSTGRES_PASSWORD={PASSWORD}", "-e", "POSTGRES_DB=engramia", POSTGRES)  # fmt: skip
    ready = ["docker", "exec", container, "pg_isready", "-q", "-h", "127.0.0.1", "-U", "engramia"]
    end = time.monotonic() + 90
    while subprocess.run(ready, capture_output=True, check=False).returncode != 0:
        assert time.monotonic() < end, "postgres did not get ready"
        time.sleep(0.5)
    try:
        yield Db(network, container)
    finally:
        _remove_all()


def _remove_all() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={PREFIX}=1", check=False).split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)
    docker("network", "rm", f"{PREFIX}-net", check=False)


def alembic(db: Db, tag: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``alembic ARGS`` in the image's working directory, as appstack's migration task runs it."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", db.network, "--label", f"{PREFIX}=1",
         "-e", f"ENGRAMIA_DATABASE_URL={url}", IMAGE.format(tag=tag), "alembic", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Api:
    """One running API container and its URL on 127.0.0.1."""

    container: str
    base: str

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        """GET with an optional bearer key."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.base + path, headers=headers, timeout=30)

    def post(
        self, path: str, body: Mapping[str, object], token: str | None = None
    ) -> httpx.Response:
        """POST a JSON body with an optional bearer key."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.base + path, json=dict(body), headers=headers, timeout=30)


def start_api(db: Db, env: Mapping[str, str], tag: str = "0.6.2") -> Api:
    """Run the API hardened as appstack runs it; wait until it answers."""
    name = f"{PREFIX}-api-{secrets.token_hex(3)}"
    args = ["run", "-d", "--name", name, "--label", f"{PREFIX}=1", "--network", db.network,
            "-p", "127.0.0.1::8000", *HARDENED]  # fmt: skip
    for key, value in {"ENGRAMIA_DOUBLE_PROBE_SECONDS": "0.2", **env}.items():
        args += ["-e", f"{key}={value}"]
    docker(*args, IMAGE.format(tag=tag))
    port = docker("port", name, "8000/tcp").splitlines()[0].rsplit(":", 1)[-1]
    api = Api(name, f"http://127.0.0.1:{port}")
    end = time.monotonic() + 30
    while True:
        try:
            api.get("/v1/version")
            return api
        except httpx.HTTPError:
            state = docker("inspect", "-f", "{{.State.Running}}", name)
            assert state == "true", docker("logs", name, check=False)
            assert time.monotonic() < end, "the API did not answer"
            time.sleep(0.2)


def exit_of(db: Db, env: Mapping[str, str]) -> tuple[int, str]:
    """Run the API with ``env`` until it exits (10 s at most): its exit code and its output."""
    args = ["docker", "run", "--rm", "--network", db.network, "--label", f"{PREFIX}=1", *HARDENED]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    args += ["--stop-timeout", "1", IMAGE.format(tag="0.6.2")]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return -1, "still running after 10 s"
    return proc.returncode, proc.stdout + proc.stderr


def migrated(db: Db, name: str) -> str:
    """A database migrated to 0.6.2's head (004)."""
    url = db.create(name)
    up = alembic(db, "0.6.2", url, "upgrade", "head")
    assert up.returncode == 0, up.stderr[-2000:]
    return url


def test_version_is_public_and_reports_the_release(db: Db) -> None:
    api = start_api(db, {})
    body = api.get("/v1/version").json()
    assert body["app_version"] == "0.6.2" and body["api_version"] == "v1"
    assert body["git_commit"] not in ("", "unknown") and body["build_time"] != ""
    wrong = start_api(db, {}, tag="0.6.4-wrongversion")
    assert wrong.get("/v1/version").json()["app_version"] == "0.6.2", "a mis-tagged build"


def test_a_rate_limit_with_a_unit_crashes_the_process(db: Db) -> None:
    code, out = exit_of(db, {"ENGRAMIA_RATE_LIMIT_DEFAULT": "120/minute"})
    assert code not in (0, -1), out
    assert "invalid literal for int()" in out and "'120/minute'" in out


def test_a_url_naming_another_driver_crashes_the_process(db: Db) -> None:
    url = f"postgresql+psycopg://engramia:{PASSWORD}@pg:5432/engramia"
    code, out = exit_of(db, {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_DATABASE_URL": url})
    assert code not in (0, -1), out
    assert "psycopg" in out


def test_env_mode_takes_the_env_keys_and_nothing_else(db: Db) -> None:
    url = migrated(db, "envmode")
    api = start_api(db, {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_DATABASE_URL": url,
                         "ENGRAMIA_AUTH_MODE": "env", "ENGRAMIA_API_KEYS": "k-one, k-two"})  # fmt: skip
    assert api.get("/v1/health").status_code == 401
    assert api.get("/v1/health", token="k-three").status_code == 401
    assert api.get("/v1/health", token="k-two").status_code == 200
    boot = api.post("/v1/keys/bootstrap", {"bootstrap_token": "x"})
    assert boot.status_code == 503, "no key management without DB auth"


@pytest.mark.parametrize("mode", ["auto", "api_key"])
def test_auto_and_unknown_modes_mean_db_auth_with_a_database(db: Db, mode: str) -> None:
    url = migrated(db, f"auto_{mode}")
    api = start_api(db, {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_DATABASE_URL": url,
                         "ENGRAMIA_AUTH_MODE": mode, "ENGRAMIA_API_KEYS": "env-key"})  # fmt: skip
    assert api.get("/v1/health", token="env-key").status_code == 401, "env keys are ignored"


def test_db_mode_bootstrap_issues_one_owner_key(db: Db) -> None:
    url = migrated(db, "dbmode")
    env = {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_DATABASE_URL": url, "ENGRAMIA_AUTH_MODE": "db"}
    without = start_api(db, env)
    assert without.post("/v1/keys/bootstrap", {"bootstrap_token": "t"}).status_code == 503
    api = start_api(db, {**env, "ENGRAMIA_BOOTSTRAP_TOKEN": "boot-token"})
    assert api.post("/v1/keys/bootstrap", {"bootstrap_token": "wrong"}).status_code == 401
    first = api.post("/v1/keys/bootstrap", {"bootstrap_token": "boot-token"})
    assert first.status_code == 201, first.text
    key = first.json()["key"]
    assert first.json()["role"] == "owner"
    assert api.get("/v1/health", token=key).status_code == 200
    assert api.get("/v1/health", token=key + "x").status_code == 401
    stored = db.psql("dbmode", "SELECT key_hash FROM api_keys")
    assert key not in stored and len(stored) == 64, "only the sha256 of the key is stored"
    again = api.post("/v1/keys/bootstrap", {"bootstrap_token": "boot-token"})
    assert again.status_code == 409


def test_maintenance_spares_exactly_the_two_health_paths(db: Db) -> None:
    url = migrated(db, "maint")
    api = start_api(db, {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_DATABASE_URL": url,
                         "ENGRAMIA_AUTH_MODE": "env", "ENGRAMIA_API_KEYS": "k",
                         "ENGRAMIA_MAINTENANCE": "yes", "ENGRAMIA_METRICS": "true",
                         "ENGRAMIA_METRICS_TOKEN": "m"})  # fmt: skip
    for path in ("/v1/version", "/v1/memories", "/metrics", "/v1/health/", "/v1/healthz"):
        resp = api.get(path, token="k")
        assert (resp.status_code, resp.headers.get("Retry-After")) == (503, "3600"), path
    assert api.get("/v1/health").status_code == 401, "anonymous: 401, not 503"
    assert api.get("/v1/health", token="k").status_code == 200
    assert api.get("/v1/health/deep", token="k").json()["checks"]["storage"]["status"] == "ok"


def test_rate_limits_count_per_ip_and_path(db: Db) -> None:
    if time.time() % 60 > 45:  # the windows are whole minutes: stay inside one
        time.sleep(61 - time.time() % 60)
    api = start_api(db, {"ENGRAMIA_RATE_LIMIT_DEFAULT": "3", "ENGRAMIA_API_KEYS": "k"})
    statuses = [api.get("/v1/version").status_code for _ in range(3)]
    assert statuses == [200, 200, 429], "start_api's readiness GET was the first of the three"
    limited = api.get("/v1/version")
    assert limited.headers["Retry-After"] == "60"
    assert api.get("/v1/health").status_code == 401, "another path has its own window"
    other_ip = httpx.get(api.base + "/v1/version", headers={"X-Forwarded-For": "203.0.113.9"})
    assert other_ip.status_code == 200, "the client behind the proxy has its own window"
    per_key = start_api(db, {"ENGRAMIA_RATE_LIMIT_PER_KEY": "2", "ENGRAMIA_API_KEYS": "k"})
    calls = [per_key.get(path, token="k").status_code for path in ("/v1/health", "/v1/version")]
    assert calls == [200, 200]
    assert per_key.get("/v1/health", token="k").status_code == 429, "one window for all paths"


def test_metrics_need_their_token(db: Db) -> None:
    api = start_api(db, {"ENGRAMIA_METRICS": "true", "ENGRAMIA_METRICS_TOKEN": "m-token"})
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", token="wrong").status_code == 401
    ok = api.get("/metrics", token="m-token")
    assert ok.status_code == 200 and "engramia_requests_total" in ok.text
    assert start_api(db, {"ENGRAMIA_METRICS": "true"}).get("/metrics").status_code == 403
    assert start_api(db, {}).get("/metrics", token="m-token").status_code == 404


def test_deep_health_is_degraded_normally_and_503_only_when_every_check_fails(db: Db) -> None:
    url = migrated(db, "deep")
    env = {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_AUTH_MODE": "env", "ENGRAMIA_API_KEYS": "k"}
    api = start_api(db, {**env, "ENGRAMIA_DATABASE_URL": url})
    body = api.get("/v1/health/deep", token="k").json()
    assert body["status"] == "degraded"
    status = {name: check["status"] for name, check in body["checks"].items()}
    assert status == {"storage": "ok", "llm": "error", "embedding": "error",
                      "redis": "not_configured", "stripe": "not_configured", "migration": "ok"}  # fmt: skip
    assert all(
        "latency_ms" in c for c in body["checks"].values() if c["status"] != "not_configured"
    )
    old = start_api(db, {**env, "ENGRAMIA_DATABASE_URL": url}, tag="0.6.1")
    migration = old.get("/v1/health/deep", token="k").json()["checks"]["migration"]
    assert (migration["status"], migration["current_revision"], migration["expected_revision"]) == (
        "error", "004", "003",
    )  # fmt: skip
    gone = url.replace("@pg:5432", "@nowhere.invalid:5432")
    down = start_api(db, {**env, "ENGRAMIA_DATABASE_URL": gone})
    resp = down.get("/v1/health/deep", token="k")
    assert resp.status_code == 503 and resp.json()["status"] == "error", resp.text


def test_memories_survive_an_upgrade_and_the_downgrades_work(db: Db) -> None:
    url = db.create("updown")
    assert alembic(db, "0.6.1", url, "upgrade", "head").returncode == 0
    env = {"ENGRAMIA_STORAGE": "postgres", "ENGRAMIA_DATABASE_URL": url,
           "ENGRAMIA_AUTH_MODE": "env", "ENGRAMIA_API_KEYS": "k"}  # fmt: skip
    assert (
        start_api(db, env, "0.6.1").post("/v1/memories", {"content": "kept"}, "k").status_code
        == 201
    )
    up = alembic(db, "0.6.2", url, "upgrade", "head")
    assert up.returncode == 0 and "Running upgrade 003 -> 004" in up.stderr, up.stderr
    rows = start_api(db, env, "0.6.2").get("/v1/memories", token="k").json()["memories"]
    assert [(r["content"], r["tags"]) for r in rows] == [("kept", [])]
    columns = "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'memories'"
    at_004 = db.psql("updown", columns)
    assert "tags" in at_004 and "importance" not in at_004
    down = alembic(db, "0.6.2", url, "downgrade", "002")
    assert down.returncode == 0, down.stderr[-2000:]
    assert db.psql("updown", "SELECT version_num FROM alembic_version") == "002"
    at_002 = db.psql("updown", columns)
    assert "importance" in at_002 and "tags" not in at_002, (
        "003's dropped column is back, 004 undone"
    )
    assert db.psql("updown", "SELECT content FROM memories") == "kept"
    assert alembic(db, "0.6.2", url, "downgrade", "base").returncode == 0
    assert db.psql("updown", "SELECT to_regclass('public.memories') IS NULL") == "t"
    again = alembic(db, "0.6.2", url, "upgrade", "head")
    assert (
        again.returncode == 0
        and db.psql("updown", "SELECT version_num FROM alembic_version") == "004"
    )


def test_a_failing_revision_leaves_the_schema_and_the_version(db: Db) -> None:
    url = migrated(db, "broken")
    bad = alembic(db, "0.6.3-badmigration", url, "upgrade", "head")
    assert bad.returncode != 0 and 'column "weight" does not exist' in bad.stderr
    assert db.psql("broken", "SELECT version_num FROM alembic_version") == "004"
    assert db.psql("broken", "SELECT to_regclass('public.memory_links') IS NULL") == "t"


def test_sigterm_lets_the_api_exit_cleanly_at_once(db: Db) -> None:
    api = start_api(db, {})
    started = time.monotonic()
    docker("stop", "-t", "10", api.container)
    assert time.monotonic() - started < 5
    assert docker("inspect", "-f", "{{.State.ExitCode}}", api.container) == "0"
    assert '"message": "stopped"' in docker("logs", api.container)
