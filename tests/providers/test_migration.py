"""Migration provider against a real PostgreSQL, through the LocalRunner."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from components.providers.migration import MigrationProvider
from components.providers.postgres import (
    ADVISORY_LOCK_KEY,
    NO_TRANSACTION_MARKER,
    Conn,
    DatabaseUnreachableError,
    MigrationError,
    list_backups,
    read_releases,
    restore_backup,
)
from components.providers.runner import LocalRunner
from tests.providers.conftest import Db, free_port, migration_props

V1_FILES = ["init.sql", "migrations/v2_001_item_note.sql"]


def _ledger(db: Db) -> dict[str, str]:
    out = db.sql("SELECT name || '=' || how FROM appstack_schema_ledger ORDER BY name")
    return dict(line.split("=", 1) for line in out.splitlines())


def test_empty_database_runs_init_and_baselines_migrations(db: Db) -> None:
    outs = MigrationProvider().create(migration_props(db, "v1")).outs or {}
    assert outs["applied"] == ["init.sql"]
    assert outs["baselined"] == ["migrations/v2_001_item_note.sql"]
    assert outs["pending_before"] == 2
    assert outs["backup_id"] == ""
    assert any("empty database" in n for n in outs["notes"])
    assert _ledger(db) == {"init.sql": "init", "migrations/v2_001_item_note.sql": "baselined"}
    assert {"items", "chunks", "appstack_schema_ledger"} <= db.tables()
    assert [row["name"] for row in outs["ledger"]] == V1_FILES
    assert len(outs["schema_checksum"]) == 64
    assert db.backup_files() == []


def test_rerun_with_nothing_pending_applies_nothing_and_takes_no_backup(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    again = provider.update("id", first, migration_props(db, "v1")).outs or {}
    assert again["applied"] == []
    assert again["baselined"] == []
    assert again["pending_before"] == 0
    assert again["backup_id"] == ""
    assert db.backup_files() == []
    assert again["schema_checksum"] == first["schema_checksum"]


def test_new_file_is_applied_alone_after_a_restorable_backup(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    db.sql("INSERT INTO items (name, note) VALUES ('kept', 'before v2')")
    outs = provider.update("id", first, migration_props(db, "v2")).outs or {}
    assert outs["applied"] == ["migrations/v2_002_tags.sql"]
    assert outs["pending_before"] == 1
    assert outs["backup_id"].startswith("test-haven-")
    assert outs["backup_id"].endswith("-v2.dump")
    assert db.backup_files() == [outs["backup_id"], outs["backup_id"] + ".sha256"]
    assert _ledger(db)["migrations/v2_002_tags.sql"] == "applied"
    assert any("init.sql differs" in n for n in outs["notes"])
    assert db.sql("SELECT label FROM tags") == "default"
    db.sql("INSERT INTO items (name) VALUES ('after v2')")

    runner = LocalRunner(str(db.workdir))
    assert list_backups(runner, db.target) == [outs["backup_id"]]
    restore_backup(runner, db.target, db.password, outs["backup_id"])
    assert "tags" not in db.tables()
    assert db.sql("SELECT name || ':' || note FROM items ORDER BY id") == "kept:before v2"
    assert "migrations/v2_002_tags.sql" not in _ledger(db)


def test_failing_file_rolls_back_alone_and_names_the_file(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    with pytest.raises(MigrationError) as err:
        provider.update("id", first, migration_props(db, "v3_failing"))
    message = str(err.value)
    assert "migrations/v2_003_broken.sql" in message
    assert "no_such_function_appstack" in message
    assert "migrations/v2_002_tags.sql" in message  # applied before it
    assert db.password not in message
    ledger = _ledger(db)
    assert ledger["migrations/v2_002_tags.sql"] == "applied"
    assert "migrations/v2_003_broken.sql" not in ledger
    assert "broken_partial" not in db.tables()
    assert db.sql("SELECT count(*) FROM items WHERE name = 'from broken'") == "0"
    assert len(db.backup_files()) == 2  # the dump and its checksum


def test_edited_applied_file_is_refused_before_anything_runs(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    with pytest.raises(MigrationError, match=r"migrations/v2_001_item_note\.sql"):
        provider.update("id", first, migration_props(db, "v1_edited"))
    assert db.backup_files() == []


def test_ledger_ahead_of_release_is_refused(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    second = provider.update("id", first, migration_props(db, "v2")).outs or {}
    with pytest.raises(MigrationError, match=r"ahead of this release.*restore a backup"):
        provider.update("id", second, migration_props(db, "v1"))


def test_existing_database_without_ledger_needs_a_baseline(db: Db) -> None:
    init = Path(__file__).parent / "fixtures" / "v1" / "init.sql"
    db.app_sql(init.read_text())
    db.sql("INSERT INTO items (name) VALUES ('legacy')")
    provider = MigrationProvider()
    with pytest.raises(MigrationError, match=r"no appstack_schema_ledger.*baseline"):
        provider.create(migration_props(db, "v2"))
    assert "appstack_schema_ledger" not in db.tables()
    props = migration_props(db, "v2", baseline="v2_001_item_note.sql")
    outs = provider.create(props).outs or {}
    assert outs["baselined"] == V1_FILES
    assert outs["applied"] == ["migrations/v2_002_tags.sql"]
    assert outs["backup_id"] != ""
    assert _ledger(db) == {
        "init.sql": "baselined",
        "migrations/v2_001_item_note.sql": "baselined",
        "migrations/v2_002_tags.sql": "applied",
    }
    assert db.sql("SELECT name FROM items") == "legacy"


def test_unknown_baseline_is_refused(db: Db) -> None:
    db.app_sql("CREATE TABLE legacy (id int)")
    with pytest.raises(MigrationError, match=r"baseline 'v9_999\.sql' names no file"):
        MigrationProvider().create(migration_props(db, "v2", baseline="v9_999.sql"))


def test_unreachable_database_fails_within_the_deadline_naming_host_and_port(db: Db) -> None:
    port = free_port()
    target = {**db.target.to_dict(), "db_port": port}
    props = migration_props(db, "v1", target=target, connect_deadline_s=3)
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachableError, match=f"127.0.0.1:{port}.*within 3s"):
        MigrationProvider().create(props)
    assert time.monotonic() - started < 3 + 6


def test_quiescent_containers_are_stopped_and_restarted_even_on_failure(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1", quiescent=["worker"])).outs or {}
    runner = LocalRunner(str(db.workdir))
    start, stop = ("start", ["worker"]), ("stop", ["worker"])
    # Started first (a killed run may have left it stopped), then stopped around the work.
    assert runner.recorded_calls() == [start, stop, start]
    provider.update("id", first, migration_props(db, "v1", quiescent=["worker"]))
    assert runner.recorded_calls()[3:] == [start]  # nothing pending: started, never stopped
    with pytest.raises(MigrationError):
        provider.update("id", first, migration_props(db, "v3_failing", quiescent=["worker"]))
    assert runner.recorded_calls()[4:] == [start, stop, start]


def _schema(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(root)


def _copy_schema(name: str, dest: Path, extra: dict[str, str]) -> str:
    src = Path(__file__).parent / "fixtures" / name
    files = {p.relative_to(src).as_posix(): p.read_text() for p in src.rglob("*.sql")}
    return _schema(dest, {**files, **extra})


def _hold(db: Db, sql: str, seconds: float) -> subprocess.Popen[bytes]:
    """A superuser session that runs ``sql`` then sleeps ``seconds`` (holding what it took)."""
    server = db.server
    argv = ["psql", "-X", "-q", "-U", "postgres", "-h", server.socket_dir, "-p", str(server.port)]
    argv += ["-d", db.name, "-c", sql, "-c", f"SELECT pg_sleep({seconds})"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _release(db: Db, holder: subprocess.Popen[bytes]) -> None:
    """End a holding session now (killing psql alone leaves its backend asleep, lock held)."""
    db.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE 'SELECT pg_sleep%' AND datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    holder.wait(timeout=30)


def _wait_for(db: Db, query: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while db.sql(query) in ("", "0", "f"):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for: {query}")
        time.sleep(0.05)


ADVISORY_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "  # noqa: S608
    f"AND ((classid::bigint << 32) | objid::bigint) = {ADVISORY_LOCK_KEY}"
)
ADVISORY_WAITING = ADVISORY_HELD.replace("AND granted", "AND NOT granted")


def test_migration_waits_for_the_advisory_lock_of_another_migration(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    holder = _hold(db, f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})", 3)
    try:
        _wait_for(db, ADVISORY_HELD)
        started = time.monotonic()
        outs = provider.update("id", first, migration_props(db, "v2")).outs or {}
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=30)
    assert outs["applied"] == ["migrations/v2_002_tags.sql"]
    assert waited >= 2.0, f"applied after {waited:.1f}s: it did not wait for the lock"


def test_a_migration_that_lost_the_race_applies_nothing_and_fails_cleanly(db: Db) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    holder = _hold(db, f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})", 2)
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            provider.update("id", first, migration_props(db, "v2"))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    try:
        _wait_for(db, ADVISORY_HELD)
        thread = threading.Thread(target=racer)
        thread.start()
        _wait_for(db, ADVISORY_WAITING, 30)
        # The winner of the race records its run while the loser waits for the lock.
        db.sql(
            "INSERT INTO appstack_schema_ledger (name, checksum, how) "
            "VALUES ('migrations/v2_002_tags.sql', 'other-run', 'applied')"
        )
        thread.join(timeout=60)
    finally:
        holder.wait(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], MigrationError), errors
    assert "another migration changed this database" in str(errors[0])
    assert "nothing applied" in str(errors[0])
    assert "tags" not in db.tables()
    assert _ledger(db)["migrations/v2_002_tags.sql"] == "applied"
    assert db.sql("SELECT checksum FROM appstack_schema_ledger WHERE name LIKE '%tags%'") == (
        "other-run"
    )


def test_statements_give_up_after_lock_timeout_naming_the_file_and_key(
    db: Db, tmp_path: Path
) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    alter = "ALTER TABLE items ADD COLUMN colour text;\n"
    schema = _copy_schema("v1", tmp_path / "schema", {"migrations/v2_009_colour.sql": alter})
    holder = _hold(db, "BEGIN; LOCK TABLE items IN ACCESS SHARE MODE;", 20)
    try:
        _wait_for(db, "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass")
        props = migration_props(db, "v1", schema_path=schema, lock_timeout="500ms")
        started = time.monotonic()
        with pytest.raises(MigrationError) as err:
            provider.update("id", first, props)
        took = time.monotonic() - started
    finally:
        _release(db, holder)
    message = str(err.value)
    assert "migrations/v2_009_colour.sql" in message
    assert "lock timeout" in message
    assert "appstack:migrationLockTimeout" in message
    assert took < 10, f"took {took:.1f}s: lock_timeout did not apply"
    assert "migrations/v2_009_colour.sql" not in _ledger(db)
    again = provider.update("id", first, props).outs or {}  # the lock is gone: it applies
    assert again["applied"] == ["migrations/v2_009_colour.sql"]


def test_lock_timeout_input_is_validated(db: Db) -> None:
    failures = MigrationProvider().check({}, migration_props(db, "v1", lock_timeout="5 sec"))
    assert [(f.property, "500ms, 5s or 2min" in f.reason) for f in failures.failures] == [
        ("lock_timeout", True)
    ]


CONCURRENT_INDEX = "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_name_idx ON items (name);\n"


def test_a_file_marked_no_transaction_runs_outside_one(db: Db, tmp_path: Path) -> None:
    provider = MigrationProvider()
    first = provider.create(migration_props(db, "v1")).outs or {}
    unmarked = _copy_schema("v1", tmp_path / "a", {"migrations/v2_010_idx.sql": CONCURRENT_INDEX})
    with pytest.raises(MigrationError, match="cannot run inside a transaction block"):
        provider.update("id", first, migration_props(db, "v1", schema_path=unmarked))
    marked_text = f"-- builds the index without blocking writes\n{NO_TRANSACTION_MARKER}\n"
    marked = _copy_schema(
        "v1", tmp_path / "b", {"migrations/v2_010_idx.sql": marked_text + CONCURRENT_INDEX}
    )
    outs = provider.update("id", first, migration_props(db, "v1", schema_path=marked)).outs or {}
    assert outs["applied"] == ["migrations/v2_010_idx.sql"]
    assert db.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_name_idx'::regclass")
    assert _ledger(db)["migrations/v2_010_idx.sql"] == "applied"


def test_init_sql_may_not_carry_the_no_transaction_marker(db: Db, tmp_path: Path) -> None:
    init = (Path(__file__).parent / "fixtures" / "v1" / "init.sql").read_text()
    schema = _schema(tmp_path / "s", {"init.sql": f"{NO_TRANSACTION_MARKER}\n{init}"})
    with pytest.raises(MigrationError, match="only migration files may"):
        MigrationProvider().create(migration_props(db, "v1", schema_path=schema))
    assert db.tables() == set()


def test_diff_reruns_on_image_change_and_ignores_password_change(db: Db) -> None:
    provider = MigrationProvider()
    props = migration_props(db, "v1")
    olds = provider.create(props).outs or {}
    same = provider.diff("id", olds, dict(props))
    assert same.changes is False
    password_only = provider.diff("id", olds, {**props, "db_password": "another-password"})
    assert password_only.changes is False
    image = provider.diff("id", olds, {**props, "source_image": "appstack.local/haven:next"})
    assert image.changes is True
    assert image.replaces == []
    assert provider.diff("id", olds, {**props, "schema_version": "abc"}).changes is True
    assert provider.diff("id", olds, {**props, "baseline": "v2_001_item_note.sql"}).changes
    assert provider.diff("id", olds, {**props, "keep_backups": 9}).changes is False
    moved = {**props["target"], "db_name": "other"}
    assert provider.diff("id", olds, {**props, "target": moved}).changes is True


def test_password_never_appears_in_outputs(db: Db) -> None:
    provider = MigrationProvider()
    props = migration_props(db, "v1", secret_env={"EXTRA_TOKEN": "tok-" + db.password})
    outs = provider.create(props).outs or {}
    db.sql("INSERT INTO items (name) VALUES ('x')")
    outs2 = provider.update("id", outs, migration_props(db, "v2")).outs or {}
    for o in (outs, outs2):
        dumped = json.dumps(o)
        assert db.password not in dumped
        assert "db_password" not in o
        assert "secret_env" not in o


def test_command_mode_records_revisions_and_backs_up_first(db: Db) -> None:
    db.app_sql("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    db.sql("INSERT INTO alembic_version VALUES ('rev1')")
    props = migration_props(
        db,
        "v1",
        mode="command",
        command=["sh", "-c", 'psql -X -q -v ON_ERROR_STOP=1 -c "$UPGRADE_SQL"'],
        env={"UPGRADE_SQL": "UPDATE alembic_version SET version_num = 'rev2'"},
        secret_env={"ENGRAMIA_DATABASE_URL": "postgresql+psycopg2://app:x@h/db"},
    )
    outs = MigrationProvider().create(props).outs or {}
    assert outs["revision_before"] == "rev1"
    assert outs["revision_after"] == "rev2"
    assert outs["backup_id"] != ""
    assert "postgresql+psycopg2" not in json.dumps(outs)


def test_command_mode_failure_raises_with_redacted_log(db: Db) -> None:
    db.app_sql("CREATE TABLE t (id int)")
    props = migration_props(
        db,
        "v1",
        mode="command",
        command=["sh", "-c", 'echo "connecting with $PGPASSWORD"; exit 3'],
    )
    with pytest.raises(MigrationError, match="exited 3") as err:
        MigrationProvider().create(props)
    assert db.password not in str(err.value)
    assert "connecting with ***" in str(err.value)


def test_check_reports_bad_inputs(db: Db) -> None:
    provider = MigrationProvider()
    bad = migration_props(db, "v1", mode="flyway", keep_backups=0)
    failures = {f.property for f in provider.check({}, bad).failures}
    assert failures == {"mode", "keep_backups"}
    target = {**db.target.to_dict(), "kind": "nomad"}
    failures = {
        f.property for f in provider.check({}, migration_props(db, "v1", target=target)).failures
    }
    assert failures == {"target"}
    assert provider.check({}, migration_props(db, "v1")).failures == []


def test_backups_are_pruned_to_keep(db: Db) -> None:
    from components.providers.postgres import take_backup

    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int)")
    ids = [take_backup(runner, db.target, db.password, f"r{i}", keep=2) for i in range(3)]
    assert len(set(ids)) == 3
    assert list_backups(runner, db.target) == sorted(ids[1:], reverse=True)


def test_pgvector_extension_when_installed(db: Db) -> None:
    if not db.server.has_pgvector:
        pytest.skip(
            "SKIPPED LOUDLY: pgvector is not installed for PostgreSQL 15 "
            "(Debian bookworm has no postgresql-15-pgvector package); the vector init.sql "
            "path is only exercised by the Docker test against appstack.local/postgres-pgvector"
        )
    db.sql("CREATE EXTENSION vector")
    assert db.sql("SELECT '[1,2]'::vector") == "[1,2]"


def test_each_run_with_work_leaves_a_release_record_next_to_the_ledger(db: Db) -> None:
    provider = MigrationProvider()
    runner = LocalRunner(str(db.workdir))
    conn = Conn(db.target, db.password)
    assert read_releases(runner, conn) == []  # no table yet: no records, no error
    first = provider.create(migration_props(db, "v1")).outs or {}
    db.sql("INSERT INTO items (name) VALUES ('x')")
    second = provider.update("id", first, migration_props(db, "v2")).outs or {}
    provider.update("id", second, migration_props(db, "v2"))  # nothing pending: no record
    records = read_releases(runner, conn)
    assert [(r.release, r.backup_id, r.applied) for r in records] == [
        ("v1", "", ("init.sql",)),
        ("v2", second["backup_id"], ("migrations/v2_002_tags.sql",)),
    ]
    assert records[1].ledger == tuple(row["name"] for row in second["ledger"])
    assert records[1].ran_at.replace("Z", "+00:00") == second["ran_at"]
    restore_backup(runner, db.target, db.password, second["backup_id"])
    assert "tags" not in db.tables()
    assert read_releases(runner, conn) == records, "a restore must keep the release records"
