"""Off-host backups: ``appstack:backups`` validation, retention selection, encryption."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from components.providers.backup_store import (
    ENCRYPTED_MAGIC,
    StoreConfig,
    StoreError,
    backup_time,
    decrypt,
    encrypt,
    parse_key,
    select_prunable,
)
from components.settings import ConfigError
from tests.unit.harness import SECRET_VALUES, Program, run, unwrap

KEY_B64 = base64.b64encode(bytes(range(32))).decode()
STORE = {"endpoint": "http://127.0.0.1:9000", "bucket": "db-backups", "prefix": "off"}
CREDS = {"backupStoreAccessKey": "s3cretStoreAccess", "backupStoreSecretKey": "s3cretStoreKey"}


def _backups(**fields: Any) -> dict[str, Any]:
    return {"appstack:backups": {"store": dict(STORE), **fields}}


BAD: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    ("missing bucket", {"appstack:backups": {"store": {"endpoint": STORE["endpoint"]}}}, CREDS,
     "appstack:backups.store.bucket: is required"),
    ("endpoint not a url", {"appstack:backups": {"store": {**STORE, "endpoint": "minio:9000"}}},
     CREDS, "appstack:backups.store.endpoint: 'minio:9000' is not an http(s) URL"),
    ("negative count", _backups(retention={"count": -1}), CREDS,
     "appstack:backups.retention.count: -1 is out of range"),
    ("age not a number", _backups(retention={"maxAgeDays": "month"}), CREDS,
     "appstack:backups.retention.maxAgeDays: must be an integer"),
    ("short key", _backups(), {**CREDS, "backupEncryptionKey": "c2hvcnQ="},
     "appstack:backupEncryptionKey: must be 32 random bytes"),
    ("missing secret key", _backups(), {"backupStoreAccessKey": "s3cretOnlyAccess"},
     "appstack:backupStoreSecretKey: is required with appstack:backups.store"),
    ("unknown field", _backups(ttl=3), CREDS, "appstack:backups.ttl: unknown field"),
    ("keepLocal false without store", {"appstack:backups": {"keepLocal": False}}, {},
     "appstack:backups.keepLocal: false needs backups.store"),
    ("credentials without store", {}, CREDS,
     "appstack:backupStoreAccessKey: is set but appstack:backups.store is not"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "overrides", "secrets", "expected"), BAD,
                         ids=[c[0] for c in BAD])  # fmt: skip
def test_bad_backup_config_names_the_key_and_creates_nothing(
    label: str, overrides: dict[str, Any], secrets: dict[str, str], expected: str
) -> None:
    attempt = Program()
    with pytest.raises(ConfigError) as err:
        run("dev", overrides=overrides, secrets=secrets, into=attempt)
    assert expected in str(err.value), f"{label}: {err.value}"
    assert attempt.resources == []
    for value in secrets.values():
        assert value not in str(err.value), "a secret value must never reach an error"


def test_plaintext_store_credentials_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        run("dev", overrides=_backups(), secrets={"backupStoreSecretKey": "k"},
            plain={"backupStoreAccessKey": "visible"})  # fmt: skip
    assert "appstack:backupStoreAccessKey: is set in plaintext" in str(err.value)


def test_the_store_reaches_the_migration_with_its_credentials_secret() -> None:
    secrets = {**CREDS, "backupEncryptionKey": KEY_B64}
    program = run("dev", overrides=_backups(keepLocal=True, retention={"count": 4}),
                  secrets=secrets)  # fmt: skip
    migration = program.named("dev-haven-migration")
    assert migration.inputs["backup_store"] == {
        **STORE, "region": "us-east-1", "keep_local": True, "count": 4, "max_age_days": 0,
    }  # fmt: skip
    assert migration.is_secret("backup_store_secrets")
    assert unwrap(migration.raw["backup_store_secrets"]) == {
        "access_key": "s3cretStoreAccess", "secret_key": "s3cretStoreKey",
        "encryption_key": KEY_B64,
    }  # fmt: skip
    assert not migration.is_secret("backup_store"), "only the credentials are secret"
    plain = str(migration.raw["backup_store"])
    assert all(v not in plain for v in secrets.values())


def test_without_a_store_the_migration_gets_none() -> None:
    migration = run("dev").named("dev-haven-migration")
    assert migration.inputs.get("backup_store") is None
    assert unwrap(migration.raw.get("backup_store_secrets")) in ({}, None)
    staging = run("staging", secrets=SECRET_VALUES).named("staging-haven-migration")
    assert staging.inputs.get("backup_store") is None


def _names(*stamps: str) -> list[str]:
    return [f"s-haven-{s}-rel.dump" for s in stamps]


NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_retention_keeps_the_newest_count_and_drops_the_rest() -> None:
    names = _names("20261125T100000Z", "20261124T100000Z", "20261123T100000Z", "20261122T100000Z")
    assert select_prunable(names, 2, 0, set(), NOW) == names[2:]
    assert select_prunable(list(reversed(names)), 2, 0, set(), NOW) == names[2:]
    assert select_prunable(names, 0, 0, set(), NOW) == []


def test_retention_drops_by_age_but_never_the_newest() -> None:
    names = _names("20261120T100000Z", "20261101T100000Z", "20261001T100000Z")
    assert select_prunable(names, 0, 10, set(), NOW) == names[1:]
    assert select_prunable(names[1:], 0, 10, set(), NOW) == names[2:], "the newest always stays"


def test_retention_never_drops_a_backup_history_needs() -> None:
    names = _names("20261125T100000Z", "20261124T100000Z", "20261001T100000Z", "20260901T100000Z")
    protected = {names[2], names[3]}
    assert select_prunable(names, 1, 30, protected, NOW) == [names[1]]


def test_backup_time_reads_the_stamp_of_the_id() -> None:
    assert backup_time("s3b-haven-20261125T101112Z-0.2.0.dump") == datetime(
        2026, 11, 25, 10, 11, 12, tzinfo=UTC
    )
    assert backup_time("not-a-backup.dump") is None


def test_keys_are_32_bytes_as_hex_or_base64() -> None:
    assert parse_key(KEY_B64) == bytes(range(32))
    assert parse_key(bytes(range(32)).hex()) == bytes(range(32))
    for bad in ("", "abc", base64.b64encode(b"x" * 16).decode(), "g" * 64):
        with pytest.raises(ValueError, match="32 random bytes"):
            parse_key(bad)


def test_encryption_round_trips_and_a_wrong_key_or_name_fails_clearly() -> None:
    dump = b"PGDMP" + bytes(1000)
    sealed = encrypt(dump, parse_key(KEY_B64), "a.dump")
    assert sealed.startswith(ENCRYPTED_MAGIC) and b"PGDMP" not in sealed
    assert decrypt(sealed, parse_key(KEY_B64), "a.dump") == dump
    with pytest.raises(StoreError, match=r"a\.dump in the bucket cannot be decrypted"):
        decrypt(sealed, bytes(32), "a.dump")
    with pytest.raises(StoreError, match="cannot be decrypted"):
        decrypt(sealed, parse_key(KEY_B64), "b.dump")  # bound to its name: no swapping objects
    with pytest.raises(StoreError, match="cannot be decrypted"):
        decrypt(sealed[:-5], parse_key(KEY_B64), "a.dump")


def test_store_config_from_state_and_object_keys() -> None:
    assert StoreConfig.from_inputs(None, {"access_key": "a"}) is None
    store = StoreConfig.from_inputs(
        {**STORE, "keep_local": False, "count": 3.0}, {"access_key": "a", "secret_key": "b"}
    )
    assert store is not None and store.count == 3 and store.secret_key == "b"
    assert store.key("s3b", "x.dump") == "off/s3b/x.dump"
    assert StoreConfig("http://h", "b", prefix="").key("s", "x.dump") == "s/x.dump"
