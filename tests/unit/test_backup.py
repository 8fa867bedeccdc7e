"""`appstack backup`'s pure parts: choosing a backup, judging a verify, MinIO's usage."""

from __future__ import annotations

import pytest

from components.ops.backup import (
    BAD_CHECKSUM,
    RESTORE_FAILED,
    TASK_TYPE,
    Usage,
    bucket_task,
    compare,
    judge,
    parse_du,
    pick_backup,
)
from components.ops.cli import parser
from components.ops.stack import OpsError
from components.providers.postgres import BackupFile

NEW = BackupFile("s-haven-20260102T000000Z-b.dump", 2048, "b" * 64)
OLD = BackupFile("s-haven-20260101T000000Z-a.dump", 1024, "")
GOOD_LOG = (
    f"APPSTACK:CHECKSUM:{'a' * 64}:{'a' * 64}\n"
    "APPSTACK:ROWS:chunks:6\nAPPSTACK:ROWS:documents:3\nAPPSTACK:ROWS:appstack_schema_ledger:5\n"
)


def test_the_newest_backup_is_verified_unless_one_is_named() -> None:
    assert pick_backup([NEW, OLD], None) == NEW
    assert pick_backup([NEW, OLD], OLD.name) == OLD


@pytest.mark.parametrize(("files", "name"), [([], None), ([NEW], "s-haven-nope.dump")])
def test_no_backup_to_verify_is_bad_input(files: list[BackupFile], name: str | None) -> None:
    with pytest.raises(OpsError) as err:
        pick_backup(files, name)
    assert err.value.code == 2


def test_a_good_restore_reports_every_table_with_its_rows() -> None:
    found = judge(GOOD_LOG, NEW.name, 0, "haven")
    assert found.rows == {"chunks": 6, "documents": 3, "appstack_schema_ledger": 5}
    assert found.recorded and found.sha256 == "a" * 64


def test_a_backup_without_a_recorded_checksum_still_verifies_by_restoring() -> None:
    log = GOOD_LOG.replace(f"CHECKSUM:{'a' * 64}:", "CHECKSUM::")
    assert not judge(log, OLD.name, 0, "haven").recorded


@pytest.mark.parametrize(
    ("log", "code", "message"),
    [
        (f"APPSTACK:CHECKSUM:{'a' * 64}:{'b' * 64}\n", BAD_CHECKSUM, "is corrupt"),
        ("APPSTACK:CHECKSUM::x\nAPPSTACK:RESTOREFAILED\npg_restore: error: bad", RESTORE_FAILED,
         "does not restore: pg_restore said:\npg_restore: error: bad"),
        (GOOD_LOG.replace("APPSTACK:ROWS:chunks:6\n", ""), 0, "without haven's table(s) ['chunks']"),
    ],
)  # fmt: skip
def test_a_backup_that_cannot_be_trusted_fails_naming_it(log: str, code: int, message: str) -> None:
    with pytest.raises(OpsError) as err:
        judge(log, NEW.name, code, "haven")
    assert err.value.code == 1
    assert f"backup {NEW.name} " in str(err.value) and message in str(err.value)


def test_engramia_backups_must_hold_memories_and_api_keys() -> None:
    with pytest.raises(OpsError, match=r"\['memories', 'api_keys'\]"):
        judge(GOOD_LOG, NEW.name, 0, "engramia")


def test_mc_du_output_is_read_as_objects_and_bytes() -> None:
    out = 'Added `haven`\n{"status":"success","prefix":"haven-files","size":11,"objects":2}\n'
    assert parse_du(out, "haven-files") == Usage("haven-files", 2, 11)
    with pytest.raises(OpsError, match="no usage of bucket haven-files"):
        parse_du("mc: <ERROR> Unable to stat", "haven-files")


def test_a_bucket_unchanged_by_a_rollback_is_reported_before_and_after() -> None:
    lines = compare(Usage("b", 2, 11), Usage("b", 2, 11))
    assert lines == ["minio b: 2 objects, 11 bytes before", "minio b: 2 objects, 11 bytes after"]


def test_a_bucket_changed_by_a_rollback_is_a_loud_warning() -> None:
    lines = compare(Usage("b", 2, 11), Usage("b", 1, 5))
    assert lines[-1].startswith("WARNING: bucket b changed during the rollback (-1 objects, -6")
    assert compare(None, Usage("b", 1, 5)) == []


def test_the_bucket_task_is_found_in_the_stack_state() -> None:
    bucket = {"type": TASK_TYPE, "inputs": {"env": {"MINIO_BUCKET": "haven-files"}}}
    other = {"type": TASK_TYPE, "inputs": {"env": {}}}
    assert bucket_task({"deployment": {"resources": [other, bucket]}}) == bucket
    assert bucket_task({"deployment": {"resources": [other]}}) is None


def test_backup_subcommands_parse() -> None:
    args = parser().parse_args(["backup", "verify", NEW.name, "--stack", "dev"])
    assert (args.command, args.action, args.name) == ("backup", "verify", NEW.name)
    assert parser().parse_args(["backup", "take", "--stack", "dev"]).label == "manual"
    with pytest.raises(SystemExit):
        parser().parse_args(["backup", "drop", "--stack", "dev"])
