"""Backups against a real PostgreSQL, through the LocalRunner: checksums, and what pruning spares."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from components.ops import cli
from components.providers.backup_store import read_dump, take_and_ship
from components.providers.postgres import (
    Conn,
    MigrationError,
    ReleaseRecord,
    backup_files,
    list_backups,
    record_release,
    restore_backup,
    take_backup,
)
from components.providers.runner import LocalRunner
from tests.providers.conftest import Db


def _volume(db: Db) -> Path:
    return db.workdir / "volumes" / "backups"


def test_each_backup_records_its_sha256_beside_it(db: Db) -> None:
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    name = take_backup(runner, db.target, db.password, "r1", keep=3)
    dump = (_volume(db) / name).read_bytes()
    digest = hashlib.sha256(dump).hexdigest()
    assert (_volume(db) / f"{name}.sha256").read_text() == f"{digest}  {name}\n"
    [found] = backup_files(runner, db.target)
    assert (found.name, found.size, found.sha256) == (name, len(dump), digest)


def test_pruning_removes_a_dump_with_its_checksum_and_spares_the_protected_one(db: Db) -> None:
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int)")
    first = take_backup(runner, db.target, db.password, "r1", keep=1)
    second = take_backup(runner, db.target, db.password, "r2", keep=1, protect=first)
    assert list_backups(runner, db.target) == [second, first]
    third = take_backup(runner, db.target, db.password, "r3", keep=1)
    assert list_backups(runner, db.target) == [third]
    assert sorted(p.name for p in _volume(db).iterdir()) == [third, f"{third}.sha256"]


def test_a_rollback_restore_never_prunes_the_backup_it_restores(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five newer backups fill the rollback's retention (max(5, workers + 5)): the restore point,
    older than all of them, would be the one its fresh backup prunes."""
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    taken = take_backup(runner, db.target, db.password, "a", keep=10)
    restore_point = "test-haven-20200101T000000Z-a.dump"
    (_volume(db) / taken).rename(_volume(db) / restore_point)
    for year in range(2021, 2026):
        (_volume(db) / f"test-haven-{year}0101T000000Z-b.dump").write_bytes(b"newer")
    db.app_sql("INSERT INTO t VALUES (2)")
    access: tuple[Any, ...] = (runner, db.target, db.password, [], "haven")
    monkeypatch.setattr(cli, "_db_access", lambda _stack: access)
    monkeypatch.setattr(cli, "APPS_WITH_CHUNKS", ())
    monkeypatch.setattr(cli.backup, "store_of", lambda _stack: None)  # no off-host store
    fresh = cli._restore(None, restore_point)  # type: ignore[arg-type]
    kept = list_backups(runner, db.target)
    assert restore_point in kept and fresh in kept
    assert "test-haven-20210101T000000Z-b.dump" not in kept, "retention still prunes the rest"
    assert db.sql("SELECT count(*) FROM t") == "1", "the restore point came back"


def test_a_corrupt_backup_is_refused_before_anything_is_restored(db: Db) -> None:
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    name = take_backup(runner, db.target, db.password, "r1", keep=3)
    dump = _volume(db) / name
    data = bytearray(dump.read_bytes())
    data[-1] ^= 0xFF
    dump.write_bytes(bytes(data))
    db.app_sql("INSERT INTO t VALUES (2)")
    with pytest.raises(MigrationError, match=f"backup {name} is corrupt"):
        restore_backup(runner, db.target, db.password, name)
    assert db.sql("SELECT count(*) FROM t") == "2", "nothing restored"


def test_the_volume_never_prunes_a_backup_a_release_record_names(db: Db) -> None:
    """``take_and_ship`` without a store: the volume's ``keep`` spares what history needs."""
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    needed = take_and_ship(runner, db.target, db.password, "r1", keep=1, store=None)
    assert needed.local and not needed.shipped
    assert needed.sha256 == hashlib.sha256((_volume(db) / needed.name).read_bytes()).hexdigest()
    record = ReleaseRecord("2026-11-26T00:00:00Z", "r1", "img", needed.name, ("a.sql",), (), "",
                           needed.sha256)  # fmt: skip
    record_release(runner, Conn(db.target, db.password), record)
    time.sleep(1.1)  # backup ids carry the second they were taken
    other = take_and_ship(runner, db.target, db.password, "r2", keep=1, store=None)
    time.sleep(1.1)
    newest = take_and_ship(runner, db.target, db.password, "r3", keep=1, store=None)
    kept = list_backups(runner, db.target)
    assert kept == [newest.name, needed.name], f"{other.name} goes, the recorded one stays"


def test_a_restore_takes_the_dump_as_a_file_when_the_volume_lacks_it(db: Db) -> None:
    """What a restore from the bucket does once the dump is downloaded and checked."""
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    name = take_backup(runner, db.target, db.password, "r1", keep=3)
    data = (_volume(db) / name).read_bytes()
    for path in _volume(db).iterdir():
        path.unlink()
    db.app_sql("INSERT INTO t VALUES (2)")
    restore_backup(runner, db.target, db.password, name, data=data)
    assert db.sql("SELECT count(*) FROM t") == "1", "the dump handed over was restored"
    with pytest.raises(MigrationError, match=f"backup {name} is corrupt"):
        restore_backup(runner, db.target, db.password, name, data=data[:-10] + bytes(10),
                       sha256=hashlib.sha256(data).hexdigest())  # fmt: skip


def test_a_dump_is_read_out_of_the_volume_through_a_task(db: Db) -> None:
    """Runners without an archive API (local, Kubernetes) print the dump in base64."""
    runner = LocalRunner(str(db.workdir))
    db.app_sql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5000)")
    name = take_backup(runner, db.target, db.password, "r1", keep=3)
    data, sha256 = read_dump(runner, db.target, name)
    assert data == (_volume(db) / name).read_bytes() and data.startswith(b"PGDMP")
    assert sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(MigrationError, match=r"backup nope\.dump is not in volume"):
        read_dump(runner, db.target, "nope.dump")
