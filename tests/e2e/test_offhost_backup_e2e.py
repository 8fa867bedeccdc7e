"""Backups shipped off the host, to a MinIO built here standing in for an S3-compatible store.

The store is a container of its own, published on 127.0.0.1:18394 and outside the stack (as a
real off-host bucket would be); the stack (Haven, release A = 0.1.0) ships each backup there with
``keepLocal: false``, so the volume never holds one. Release B (gateway and catalog 0.2.0) has a
new migration, hence a pre-migration backup that its release record names.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Iterator

import pytest

from components.providers.backup_store import ENCRYPTED_MAGIC, StoreConfig
from tests.e2e.conftest import haven_stack, seed_haven_rows
from tests.e2e.stack import Stack, docker

pytestmark = pytest.mark.e2e
STACK, PORT, STORE_PORT = (
    "s3b",
    18393,
    18394,
)  # name and ports of their own (e2e files run side by side)
VOLUME = f"{STACK}-haven-backups"
CLIENT_IMAGE = "appstack.local/postgres-pgvector:17"
STORE_CONTAINER = f"appstack-{STACK}-offhost-minio"
BUCKET, PREFIX, COUNT = "s3b-offhost", "offhost", 2


def _minio_image() -> str:
    import yaml

    from tests.e2e.stack import ROOT

    image = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]["appstack:images"]
    return f"{image['minio']['registry']}/{image['minio']['repository']}:{image['minio']['tag']}"


@pytest.fixture(scope="module")
def store() -> Iterator[StoreConfig]:
    """A MinIO of its own on 127.0.0.1:18394, with an empty bucket; removed after."""
    user, password = f"{STACK}-store", secrets.token_hex(16)
    docker("rm", "-f", STORE_CONTAINER, check=False)
    docker("run", "-d", "--name", STORE_CONTAINER, "-p", f"127.0.0.1:{STORE_PORT}:9000",
           "-e", f"MINIO_ROOT_USER={user}", "-e", f"MINIO_ROOT_PASSWORD={password}",
           _minio_image(), "server", "/data", "--address", ":9000")  # fmt: skip
    config = StoreConfig(endpoint=f"http://127.0.0.1:{STORE_PORT}", bucket=BUCKET, prefix=PREFIX,
                         access_key=user, secret_key=password, count=COUNT)  # fmt: skip
    try:
        client = config.client()
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield config
    finally:
        docker("rm", "-f", "-v", STORE_CONTAINER, check=False)


@pytest.fixture(scope="module")
def s3b(tmp_path_factory: pytest.TempPathFactory, store: StoreConfig) -> Iterator[Stack]:
    """Haven at release A shipping its backups to ``store``, with rows in its main tables."""
    with haven_stack(tmp_path_factory.mktemp(STACK), STACK, PORT) as stack:
        stack.set_config("appstack:backups", {
            "store": {"endpoint": store.endpoint, "bucket": BUCKET, "prefix": PREFIX},
            "keepLocal": False, "retention": {"count": COUNT},
        })  # fmt: skip
        stack.set_config("appstack:backupStoreAccessKey", store.access_key, secret=True)
        stack.set_config("appstack:backupStoreSecretKey", store.secret_key, secret=True)
        stack.up()
        seed_haven_rows(stack)
        yield stack


def _objects(store: StoreConfig) -> dict[str, dict[str, str]]:
    """The stack's objects in the bucket: backup id -> metadata."""
    client = store.client()
    root = f"{PREFIX}/{STACK}/"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=root).get("Contents") or []
    return {
        o["Key"][len(root) :]: client.head_object(Bucket=BUCKET, Key=o["Key"])["Metadata"]
        for o in listed
    }


def _body(store: StoreConfig, name: str) -> bytes:
    got = store.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/{STACK}/{name}")
    return got["Body"].read()  # type: ignore[no-any-return]


def _local() -> list[str]:
    """The dumps in the stack's backup volume."""
    out = docker("run", "--rm", "-v", f"{VOLUME}:/b", "--entrypoint", "ls", CLIENT_IMAGE, "/b")
    return [n for n in out.split() if n.endswith(".dump")]


def _rows(text: str, table: str) -> int:
    match = re.search(rf"^\s+{table}\s+(\d+) rows$", text, re.MULTILINE)
    assert match, f"no row count of {table} in:\n{text}"
    return int(match.group(1))


def _take(stack: Stack, label: str) -> tuple[str, str]:
    taken = stack.appstack("backup", "take", "--label", label)
    assert taken.code == 0, taken.text
    name, _size, _bytes, _sha, checksum = taken.stdout.split()[:5]
    return name, checksum


def test_a_backup_lands_in_the_bucket_and_not_only_the_volume(
    s3b: Stack, store: StoreConfig
) -> None:
    name, checksum = _take(s3b, "first")
    objects = _objects(store)
    assert name in objects, f"{name} not in the bucket: {sorted(objects)}"
    assert objects[name]["sha256"] == checksum
    assert _body(store, name).startswith(b"PGDMP"), "no encryption key: the object is the dump"
    assert name not in _local(), "keepLocal false: the volume's copy goes once the bucket has it"

    listed = s3b.appstack("backup", "list")
    assert listed.code == 0, listed.text
    assert re.search(rf"^{re.escape(name)} .*sha256 {checksum}\s+\[bucket\]$", listed.stdout,
                     re.MULTILINE), listed.stdout  # fmt: skip

    verified = s3b.appstack("backup", "verify", name)
    assert verified.code == 0, verified.text
    assert f"backup {name}: sha256 {checksum} matches" in verified.stdout
    assert _rows(verified.stdout, "documents") == 3
    assert _rows(verified.stdout, "chunks") == 6


def test_verify_fails_on_a_truncated_object_naming_it(s3b: Stack, store: StoreConfig) -> None:
    name, checksum = _take(s3b, "to-truncate")
    body = _body(store, name)
    store.client().put_object(Bucket=BUCKET, Key=f"{PREFIX}/{STACK}/{name}", Body=body[:100],
                              Metadata=_objects(store)[name])  # fmt: skip
    corrupt = s3b.appstack("backup", "verify", name)
    assert corrupt.code == 1, corrupt.text
    assert f"backup {name} in the bucket is corrupt" in corrupt.stderr, corrupt.stderr
    assert checksum in corrupt.stderr


def test_rollback_restores_from_the_bucket_with_the_volume_gone(
    s3b: Stack, store: StoreConfig
) -> None:
    s3b.set_images("0.2.0", ("gateway", "catalog"))
    s3b.up()
    migration = s3b.resource_outputs("::s3b-haven-migration")
    pre_migration = migration["backup_id"]
    assert pre_migration, migration.get("notes")
    objects = _objects(store)
    assert pre_migration in objects, f"{pre_migration} not in the bucket: {sorted(objects)}"
    recorded = s3b.psql(
        f"select backup_sha256 from appstack.releases where backup_id = '{pre_migration}'"  # noqa: S608 - an id appstack made
    )
    assert recorded == objects[pre_migration]["sha256"] == migration["backup_sha256"]

    s3b.psql("insert into documents (title) values ('after the backup'), ('lost by rollback')")
    assert s3b.psql("select count(*) from documents") == "5"
    docker("volume", "rm", "-f", VOLUME)  # the host's copy of the backups is gone

    out = s3b.appstack("rollback", "--to", "1", "--yes", "--restore-backup")
    assert out.code == 0, out.text
    assert f"restoring {pre_migration} from the bucket" in out.stderr, out.stderr
    assert s3b.psql("select count(*) from documents") == "3", "the data of the backup is back"
    assert s3b.psql("select count(*) from chunks") == "6"
    assert s3b.get("/v1/healthz").json()["version"] == "0.1.0"


def test_retention_keeps_every_backup_history_needs_and_drops_the_others(
    s3b: Stack, store: StoreConfig
) -> None:
    needed = set(s3b.psql("select backup_id from appstack.releases where backup_id <> ''").split())
    assert needed, "release B's record names its pre-migration backup"
    named, _ = _take(s3b, "named")
    # A release that took `named` (as a migration run would record it): history needs it now.
    record = "insert into appstack.releases (ran_at, release, source_image, backup_id, applied, "
    s3b.psql(record + f"ledger, revision) values (now(), 'by-hand', '', '{named}', '[]', '[]', '')")
    others = [_take(s3b, f"m{i}")[0] for i in range(3)]
    kept = set(_objects(store))
    newest = set(others[-COUNT:])
    assert kept == {*needed, named, *newest}, (
        f"kept {sorted(kept)}; history needs {sorted({*needed, named})}, newest {sorted(newest)}"
    )
    assert others[0] not in kept


def test_encrypted_objects_are_not_dumps_yet_restore(s3b: Stack, store: StoreConfig) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    s3b.set_config("appstack:backupEncryptionKey", key, secret=True)
    s3b.up()  # the Migration's inputs (and so the CLI) get the key
    state = str(s3b.export())
    for secret in (key, store.secret_key, store.access_key):
        assert secret not in state, "the store's secrets must never be in the state in plaintext"
    name, checksum = _take(s3b, "sealed")
    body = _body(store, name)
    assert not body.startswith(b"PGDMP") and b"PGDMP" not in body[:4096]
    assert body.startswith(ENCRYPTED_MAGIC)
    assert _objects(store)[name] == {"sha256": checksum, "encryption": "aes-256-gcm"}

    verified = s3b.appstack("backup", "verify", name)
    assert verified.code == 0, verified.text
    assert f"backup {name}: sha256 {checksum} matches" in verified.stdout
    assert _rows(verified.stdout, "documents") == 3

    # Another key (a rotated or mistyped one): the object does not authenticate, nothing restores.
    s3b.set_config(
        "appstack:backupEncryptionKey", base64.b64encode(bytes(32)).decode(), secret=True
    )
    s3b.up()
    wrong = s3b.appstack("backup", "verify", name)
    assert wrong.code == 1, wrong.text
    assert f"backup {name} in the bucket cannot be decrypted" in wrong.stderr, wrong.stderr
