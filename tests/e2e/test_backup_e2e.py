"""`appstack backup list | take | verify` on a real stack, and MinIO measured around a rollback.

Release A = Haven 0.1.0; release B = gateway and catalog 0.2.0 (a new migration, so a backup).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from components.apps.haven import MC_ALIAS
from components.ops.backup import bucket_task
from components.ops.stack import plaintext
from tests.e2e.conftest import haven_stack, seed_haven_rows
from tests.e2e.stack import Stack, docker

pytestmark = pytest.mark.e2e
STACK, PORT = "bak", 18989  # a name and port of their own: e2e files run side by side
VOLUME = f"{STACK}-haven-backups"
CLIENT_IMAGE = "appstack.local/postgres-pgvector:17"


@pytest.fixture(scope="module")
def bak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh Haven stack at release A, with rows written into its main tables."""
    with haven_stack(tmp_path_factory.mktemp(STACK), STACK, PORT) as stack:
        stack.up()
        seed_haven_rows(stack)
        yield stack


def _rows(text: str, table: str) -> int:
    match = re.search(rf"^\s+{table}\s+(\d+) rows$", text, re.MULTILINE)
    assert match, f"no row count of {table} in:\n{text}"
    return int(match.group(1))


def _in_volume(*command: str) -> str:
    """Run a command in the client image with the stack's backup volume at /b."""
    return docker("run", "--rm", "-v", f"{VOLUME}:/b", "--entrypoint", command[0], CLIENT_IMAGE,
                  *command[1:])  # fmt: skip


def _scratch_containers() -> str:
    return docker("ps", "-aq", "--filter", "label=appstack.task=verify-db",
                  "--filter", f"label=appstack.prefix={STACK}-haven")  # fmt: skip


def test_take_lists_the_backup_with_its_checksum_and_verify_counts_its_rows(bak: Stack) -> None:
    taken = bak.appstack("backup", "take")
    assert taken.code == 0, taken.text
    name, _size, _bytes, _sha, checksum = taken.stdout.split()[:5]
    assert name.startswith(f"{STACK}-haven-") and name.endswith("-manual.dump")
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    assert _in_volume("cat", f"/b/{name}.sha256").split()[0] == checksum

    listed = bak.appstack("backup", "list")
    assert listed.code == 0, listed.text
    assert f"{name} " in listed.stdout and checksum in listed.stdout

    verified = bak.appstack("backup", "verify")  # the newest: the one just taken
    assert verified.code == 0, verified.text
    assert f"backup {name}: sha256 {checksum} matches" in verified.stdout
    assert _rows(verified.stdout, "documents") == 3
    assert _rows(verified.stdout, "chunks") == 6
    assert _scratch_containers() == "", "the throwaway Postgres must be gone"


def test_verify_fails_on_a_truncated_backup_naming_it(bak: Stack) -> None:
    taken = bak.appstack("backup", "take", "--label", "to-truncate")
    assert taken.code == 0, taken.text
    name = taken.stdout.split()[0]
    _in_volume("truncate", "-s", "100", f"/b/{name}")

    corrupt = bak.appstack("backup", "verify", name)
    assert corrupt.code == 1, corrupt.text
    assert f"backup {name} is corrupt" in corrupt.stderr

    # Without its recorded checksum (a backup from before checksums), pg_restore catches it.
    _in_volume("rm", f"/b/{name}.sha256")
    unreadable = bak.appstack("backup", "verify", name)
    assert unreadable.code == 1, unreadable.text
    assert f"backup {name} does not restore" in unreadable.stderr
    assert _scratch_containers() == ""


def _put_object(stack: Stack, key: str, body: str) -> None:
    """Write one object into the stack's bucket, with MinIO's own `mc`, as Haven's gateway would."""
    res = bucket_task(stack.export(secrets=True))
    assert res is not None, "the stack has no bucket task"
    inputs = res["inputs"]
    env = {**inputs["env"], **plaintext(inputs["secret_env"])}
    flags = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    script = f'{MC_ALIAS} && printf %s "{body}" | mc pipe "haven/$MINIO_BUCKET/{key}"'
    docker("run", "--rm", "--network", f"{STACK}-haven-internal", *flags,
           "--entrypoint", "sh", str(inputs["image"]), "-c", script)  # fmt: skip


def test_rollback_reports_minio_object_count_before_and_after(bak: Stack) -> None:
    _put_object(bak, "a.txt", "hello")
    _put_object(bak, "b.txt", "world!")
    bak.set_images("0.2.0", ("gateway", "catalog"))
    bak.up()
    out = bak.appstack("rollback", "--to", "1", "--yes", "--restore-backup")
    assert out.code == 0, out.text
    assert "minio haven-files: 2 objects, 11 bytes before" in out.stderr, out.stderr
    assert "minio haven-files: 2 objects, 11 bytes after" in out.stderr, out.stderr
    assert "WARNING" not in out.stderr
    assert bak.get("/v1/healthz").json()["version"] == "0.1.0"
