"""A real PostgreSQL 15 for provider tests (Debian's server binaries), one database per test."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.providers.runner import Target

PG_BIN = Path(os.environ.get("APPSTACK_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGVECTOR_CONTROL = Path("/usr/share/postgresql/15/extension/vector.control")
FIXTURES = Path(__file__).parent / "fixtures"
APP_USER = "app"
PSQL_ADMIN = ("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgServer:
    """The session's PostgreSQL: TCP on loopback for the app user, a socket for the superuser."""

    port: int
    socket_dir: str
    password: str
    has_pgvector: bool

    def admin(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the superuser; return psql's unaligned output."""
        proc = subprocess.run(
            [*PSQL_ADMIN, "-h", self.socket_dir, "-p", str(self.port), "-d", db, "-c", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            msg = f"admin SQL failed: {proc.stderr}"
            raise RuntimeError(msg)
        return proc.stdout.strip()


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse root: run them as the postgres user when we are root."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start a throwaway PostgreSQL 15 cluster for the whole session."""
    if not (PG_BIN / "initdb").exists() or not shutil.which("psql"):
        pytest.fail(
            f"PostgreSQL 15 server binaries not found in {PG_BIN} (or psql missing): "
            "apt-get install -y postgresql-15 postgresql-client-15 (make test-deps does it)"
        )
    has_vector = PGVECTOR_CONTROL.exists()
    if os.environ.get("APPSTACK_REQUIRE_PGVECTOR") == "1" and not has_vector:
        pytest.fail(f"pgvector is required but {PGVECTOR_CONTROL} is missing")
    base = Path(tempfile.mkdtemp(prefix="appstack-pg-"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data, sock = base / "data", base / "sock"
    password = "pw-" + secrets.token_hex(12)
    port = free_port()
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    subprocess.run(_as_postgres(["mkdir", "-p", str(sock)]), check=True)
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log")]
    subprocess.run(_as_postgres([*start, "-w", "start"]), check=True, capture_output=True)
    server = PgServer(port=port, socket_dir=str(sock), password=password, has_pgvector=has_vector)
    try:
        server.admin(f"CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{password}'")
        yield server
    finally:
        stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(_as_postgres(stop), check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Db:
    """One fresh database of the session's server, and a local target that reaches it."""

    server: PgServer
    name: str
    target: Target
    workdir: Path

    @property
    def password(self) -> str:
        """The app user's password (the secret that must never reach outputs)."""
        return self.server.password

    def sql(self, query: str) -> str:
        """Run SQL in this database as the superuser."""
        return self.server.admin(query, db=self.name)

    def app_sql(self, query: str) -> str:
        """Run SQL in this database as the app user (so it owns what it creates)."""
        return self.sql(f"SET ROLE {APP_USER};\n{query}")

    def tables(self) -> set[str]:
        """Tables in schema public."""
        out = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return set(out.split()) if out else set()

    def backup_files(self) -> list[str]:
        """Files in the backup volume (a local directory for the LocalRunner)."""
        path = self.workdir / "volumes" / "backups"
        return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.fixture
def db(pg_server: PgServer, tmp_path: Path) -> Iterator[Db]:
    """An empty database owned by the app user, dropped after the test."""
    name = "t_" + secrets.token_hex(5)
    pg_server.admin(f"CREATE DATABASE {name} OWNER {APP_USER}")
    target = Target(
        kind="local",
        name_prefix="test-haven",
        client_image="appstack.local/postgres-pgvector:17",
        db_host="127.0.0.1",
        db_port=pg_server.port,
        db_name=name,
        db_user=APP_USER,
        backup_volume="backups",
        workdir=str(tmp_path),
    )
    yield Db(server=pg_server, name=name, target=target, workdir=tmp_path)
    pg_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def migration_props(db: Db, schema: str, **extra: Any) -> dict[str, Any]:
    """Provider inputs for a sql-dir migration of ``db`` with fixture schema set ``schema``."""
    props: dict[str, Any] = {
        "target": db.target.to_dict(),
        "mode": "sql-dir",
        "source_image": f"appstack.local/haven:{schema}",
        "schema_path": str(FIXTURES / schema),
        "schema_version": "",
        "command": [],
        "env": {},
        "secret_env": {},
        "db_password": db.password,
        "baseline": None,
        "keep_backups": 3,
        "quiescent": [],
        "release": schema,
        "connect_deadline_s": 10,
        "task_timeout_s": 120,
    }
    props.update(extra)
    return props
