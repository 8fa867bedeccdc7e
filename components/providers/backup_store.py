"""Backups shipped off the host: an S3-compatible bucket beside the stack's backup volume.

appstack's own process moves each dump: it reads the file out of the backup volume (Docker's
archive API; elsewhere a task prints it to its log in base64), encrypts it when a key is
configured (AES-256-GCM, the object's name as associated data), and puts it at
``<prefix>/<stack>/<backup id>`` with the plaintext's sha256 as object metadata. Nothing is
needed in the database image and a remote Docker host works the same. A restore downloads the
object, decrypts it, checks the sha256 (against the metadata and the release record) and hands
the dump to the restore task as a file: the local volume is not needed any more.

Retention, per stack, in the bucket and in the volume: keep the newest ``count``, drop what is
older than ``max_age_days``, and never drop a backup the stack's release records name (what
``appstack rollback --restore-backup`` restores) nor the one a rollback is about to restore.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from components.providers.postgres import (
    BACKUP_MOUNT,
    CHECKSUM_SUFFIX,
    MARK,
    Conn,
    MigrationError,
    backup_files,
    markers,
    read_releases,
    take_backup,
)
from components.providers.runner import (
    DockerRunner,
    Runner,
    Target,
    Task,
    TaskError,
)

ENCRYPTED_MAGIC = b"APPSTACK-AES256GCM-1\n"
"""First bytes of an encrypted object (a pg_dump starts with ``PGDMP``)."""
NONCE_BYTES = 12
SHA_META = "sha256"
"""Object metadata: sha256 of the plaintext dump (``x-amz-meta-sha256``)."""
ENC_META = "encryption"
_STAMP = re.compile(r"-(\d{8}T\d{6}Z)-")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class StoreError(MigrationError):
    """The bucket refused, lost or altered a backup; the message names the backup."""


def parse_key(text: str) -> bytes:
    """An AES-256 key from 64 hex digits or base64 of 32 bytes; ``ValueError`` otherwise."""
    value = text.strip()
    if _HEX_KEY.match(value):
        return bytes.fromhex(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        msg = "must be 32 random bytes as 64 hex digits or base64 (`openssl rand -base64 32`)"
        raise ValueError(msg)
    return raw


@dataclass(frozen=True)
class StoreConfig:
    """Where backups go off the host, with what credentials, and how long they stay."""

    endpoint: str
    bucket: str
    prefix: str = "appstack"
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""
    encryption_key: str = ""
    keep_local: bool = False
    count: int = 0
    """Newest backups kept in the bucket (0: no count limit)."""
    max_age_days: int = 0
    """Backups older than this are dropped from the bucket (0: no age limit)."""

    @classmethod
    def from_inputs(
        cls, plain: Mapping[str, Any] | None, secret: Mapping[str, Any] | None
    ) -> StoreConfig | None:
        """The provider/state form (``backup_store`` + secret ``backup_store_secrets``)."""
        if not plain:
            return None
        creds = dict(secret or {})
        return cls(
            endpoint=str(plain["endpoint"]),
            bucket=str(plain["bucket"]),
            prefix=str(plain.get("prefix") or ""),
            region=str(plain.get("region") or "us-east-1"),
            access_key=str(creds.get("access_key") or ""),
            secret_key=str(creds.get("secret_key") or ""),
            encryption_key=str(creds.get("encryption_key") or ""),
            keep_local=bool(plain.get("keep_local")),
            count=int(plain.get("count") or 0),
            max_age_days=int(plain.get("max_age_days") or 0),
        )

    def key(self, stack: str, name: str) -> str:
        """The object key of a backup: ``<prefix>/<stack>/<backup id>``."""
        return "/".join(p for p in (self.prefix.strip("/"), stack, name) if p)

    def where(self, stack: str, name: str = "") -> str:
        """``s3://bucket/key`` for messages."""
        return f"s3://{self.bucket}/{self.key(stack, name)}"

    def client(self) -> Any:
        """A boto3 S3 client for the endpoint (path-style: MinIO and most S3-compatibles)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key or None,
            aws_secret_access_key=self.secret_key or None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )


def encrypt(data: bytes, key: bytes, name: str) -> bytes:
    """``ENCRYPTED_MAGIC`` + nonce + AES-256-GCM ciphertext (tag included), bound to ``name``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(NONCE_BYTES)
    return ENCRYPTED_MAGIC + nonce + AESGCM(key).encrypt(nonce, data, name.encode())


def decrypt(blob: bytes, key: bytes, name: str) -> bytes:
    """The plaintext of ``encrypt``; ``StoreError`` when the key is wrong or the object altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(ENCRYPTED_MAGIC):
        msg = f"backup {name} in the bucket is not an appstack-encrypted object"
        raise StoreError(msg)
    body = blob[len(ENCRYPTED_MAGIC) :]
    nonce, sealed = body[:NONCE_BYTES], body[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, sealed, name.encode())
    except (InvalidTag, ValueError):
        msg = (
            f"backup {name} in the bucket cannot be decrypted: appstack:backupEncryptionKey is "
            "not the key it was encrypted with, or the object was altered (GCM tag mismatch)"
        )
        raise StoreError(msg) from None


def backup_time(name: str) -> datetime | None:
    """When a backup was taken, from the UTC stamp in its id."""
    found = _STAMP.search(name)
    if not found:
        return None
    return datetime.strptime(found.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def select_prunable(
    names: Sequence[str],
    count: int,
    max_age_days: int,
    protected: Collection[str],
    now: datetime | None = None,
) -> list[str]:
    """The backups a retention run removes, newest first.

    ``count`` (0: none) keeps the newest that many; ``max_age_days`` (0: none) drops older ones;
    a ``protected`` backup (named by a release record, or about to be restored) and the newest
    backup are never dropped, whatever their rank or age.
    """
    now = now or datetime.now(UTC)
    ordered = sorted(names, key=lambda n: (backup_time(n) or datetime.min.replace(tzinfo=UTC), n))
    ordered.reverse()
    out = []
    for rank, name in enumerate(ordered):
        if name in protected or rank == 0:
            continue
        taken = backup_time(name)
        too_many = count > 0 and rank >= count
        too_old = max_age_days > 0 and taken is not None and now - taken > timedelta(max_age_days)
        if too_many or too_old:
            out.append(name)
    return out


@dataclass(frozen=True)
class StoredBackup:
    """A backup object in the bucket: id, object size, plaintext sha256, whether encrypted."""

    name: str
    size: int
    sha256: str
    encrypted: bool


def _client_error(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or exc)


def ship(store: StoreConfig, stack: str, name: str, data: bytes, sha256: str) -> StoredBackup:
    """Put one dump into the bucket (encrypted when a key is set) and check it landed whole."""
    from botocore.exceptions import BotoCoreError, ClientError

    if hashlib.sha256(data).hexdigest() != sha256:
        msg = f"backup {name} differs from its recorded sha256 {sha256}: not shipped"
        raise StoreError(msg)
    encrypted = bool(store.encryption_key)
    body = encrypt(data, parse_key(store.encryption_key), name) if encrypted else data
    meta = {SHA_META: sha256, ENC_META: "aes-256-gcm" if encrypted else "none"}
    key = store.key(stack, name)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - transfer check
    client = store.client()
    try:
        # Content-MD5: the store refuses a body that arrived altered; the HEAD proves it is there.
        client.put_object(Bucket=store.bucket, Key=key, Body=body, Metadata=meta, ContentMD5=md5)
        head = client.head_object(Bucket=store.bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        msg = f"upload of backup {name} to {store.where(stack, name)} failed: {_client_error(exc)}"
        raise StoreError(msg) from None
    if int(head.get("ContentLength", -1)) != len(body) or head["Metadata"].get(SHA_META) != sha256:
        msg = f"backup {name} did not land whole at {store.where(stack, name)}"
        raise StoreError(msg)
    return StoredBackup(name, len(body), sha256, encrypted)


def fetch(store: StoreConfig, stack: str, name: str, expected_sha256: str = "") -> bytes:
    """Download, decrypt and check one backup; ``StoreError`` naming it when it cannot be trusted.

    ``expected_sha256`` is the checksum the release record holds (checked as well when given).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        obj = store.client().get_object(Bucket=store.bucket, Key=store.key(stack, name))
        blob = obj["Body"].read()
    except (BotoCoreError, ClientError) as exc:
        code = _client_error(exc)
        missing = code in ("NoSuchKey", "404")
        msg = f"backup {name} is {'not ' if missing else 'un'}readable in the bucket"
        raise StoreError(f"{msg} ({store.where(stack, name)}: {code})") from None
    recorded = str((obj.get("Metadata") or {}).get(SHA_META) or "")
    if blob.startswith(ENCRYPTED_MAGIC):
        if not store.encryption_key:
            msg = f"backup {name} in the bucket is encrypted: set appstack:backupEncryptionKey"
            raise StoreError(msg)
        data = decrypt(blob, parse_key(store.encryption_key), name)
    else:
        data = blob
    got = hashlib.sha256(data).hexdigest()
    checks = ((recorded, "its object metadata"), (expected_sha256, "the release record"))
    for want, source in checks:
        if want and want != got:
            msg = (
                f"backup {name} in the bucket is corrupt: its sha256 is {got}, {source} says "
                f"{want} ({store.where(stack, name)}); nothing restored"
            )
            raise StoreError(msg)
    return data


def stored(store: StoreConfig, stack: str) -> list[StoredBackup]:
    """The stack's backups in the bucket, newest first."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = store.client()
    root = store.key(stack, "")
    out = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=root + "/"
        )
        for page in pages:
            for item in page.get("Contents") or []:
                name = str(item["Key"])[len(root) + 1 :]
                if "/" in name or not name.endswith(".dump"):
                    continue
                head = client.head_object(Bucket=store.bucket, Key=item["Key"])
                meta = head.get("Metadata") or {}
                enc = meta.get(ENC_META, "none") != "none"
                out.append(StoredBackup(name, int(item["Size"]), meta.get(SHA_META, ""), enc))
    except (BotoCoreError, ClientError) as exc:
        msg = f"cannot list {store.where(stack)}: {_client_error(exc)}"
        raise StoreError(msg) from None
    return sorted(out, key=lambda b: (backup_time(b.name) or datetime.min.replace(tzinfo=UTC)),
                  reverse=True)  # fmt: skip


def prune(store: StoreConfig, stack: str, protected: Collection[str]) -> list[str]:
    """Apply the store's retention to the stack's objects; return the ids removed."""
    from botocore.exceptions import BotoCoreError, ClientError

    names = [b.name for b in stored(store, stack)]
    drop = select_prunable(names, store.count, store.max_age_days, protected)
    client = store.client()
    for name in drop:
        try:
            client.delete_object(Bucket=store.bucket, Key=store.key(stack, name))
        except (BotoCoreError, ClientError) as exc:
            msg = f"retention could not delete {store.where(stack, name)}: {_client_error(exc)}"
            raise StoreError(msg) from None
    return drop


# -- moving dumps out of (and around) the backup volume ------------------------------------------

_READ_SH = f"""f="$BACKUP_DIR/$BACKUP_ID"
if [ ! -f "$f" ]; then echo "{MARK}NOBACKUP:$BACKUP_ID"; exit 4; fi
echo "{MARK}BEGIN:"
base64 "$f"
echo "{MARK}END:"
"""


def read_dump(runner: Runner, target: Target, name: str) -> tuple[bytes, str]:
    """A dump out of the backup volume and the sha256 recorded beside it ("" when none)."""
    if isinstance(runner, DockerRunner):
        dump, sums = f"{BACKUP_MOUNT}/{name}", f"{BACKUP_MOUNT}/{name}{CHECKSUM_SUFFIX}"
        files = runner.read_files(target.client_image, (dump, sums),
                                  {target.backup_volume: BACKUP_MOUNT}, "read-backup")  # fmt: skip
        if dump not in files:
            msg = f"backup {name} is not in volume {target.backup_volume}"
            raise MigrationError(msg)
        data, line = files[dump], files.get(sums, b"").decode()
    else:
        data, line = _task_read(runner, target, name)
    return data, line.split()[0] if line.strip() else ""


def _task_read(runner: Runner, target: Target, name: str) -> tuple[bytes, str]:
    """Both files printed by a task (base64), for runners without an archive API."""
    script = _READ_SH + f'cat "$f{CHECKSUM_SUFFIX}" 2>/dev/null | sed "s/^/{MARK}SUM:/" || true\n'
    task = Task(
        name="read-backup", image=target.client_image, command=["sh", "-c", "set -eu\n" + script],
        env={"BACKUP_DIR": runner.mount_path(target.backup_volume, BACKUP_MOUNT),
             "BACKUP_ID": name},
        mounts=[(target.backup_volume, BACKUP_MOUNT)], network=target.network or None,
        timeout_s=600.0,
    )  # fmt: skip
    try:
        logs = runner.run(task).logs
    except TaskError as exc:
        if markers(exc.logs, "NOBACKUP"):
            msg = f"backup {name} is not in volume {target.backup_volume}"
            raise MigrationError(msg) from None
        raise
    lines = logs.splitlines()
    start, end = lines.index(f"{MARK}BEGIN:") + 1, lines.index(f"{MARK}END:")
    sums = markers(logs, "SUM")
    return base64.b64decode("".join(lines[start:end])), sums[-1] if sums else ""


def remove_local(runner: Runner, target: Target, names: Sequence[str]) -> None:
    """Delete dumps (and their checksum files) from the backup volume."""
    if not names:
        return
    task = Task(
        name="drop-backups", image=target.client_image,
        command=["sh", "-c", 'set -eu\ncd "$BACKUP_DIR"\nfor f in "$@"; do rm -f "$f" '
                 f'"$f{CHECKSUM_SUFFIX}"; done', "drop", *names],
        env={"BACKUP_DIR": runner.mount_path(target.backup_volume, BACKUP_MOUNT)},
        mounts=[(target.backup_volume, BACKUP_MOUNT)], network=target.network or None,
        timeout_s=120.0,
    )  # fmt: skip
    runner.run(task)


def needed_by_history(runner: Runner, conn: Conn) -> set[str]:
    """The backups the stack's release records name: what a rollback of its history restores."""
    return {r.backup_id for r in read_releases(runner, conn) if r.backup_id}


@dataclass(frozen=True)
class Taken:
    """A backup just taken: its id, sha256, and where it now lives."""

    name: str
    sha256: str
    local: bool
    shipped: bool
    pruned: tuple[str, ...] = ()


def take_and_ship(
    runner: Runner,
    target: Target,
    password: str,
    label: str,
    keep: int,
    store: StoreConfig | None,
    protect: Collection[str] = (),
    connect_deadline_s: float = 30.0,
) -> Taken:
    """``pg_dump`` into the volume, ship it to the store when there is one, apply retention.

    Neither the volume's nor the bucket's retention drops a backup the release records name or
    one in ``protect``. Without ``keep_local`` the local dump is removed once the bucket holds it
    whole. Raises (naming the backup) when the upload fails: a backup that only the host has is
    not what the configuration asked for.
    """
    conn = Conn(target, password, connect_deadline_s)
    keep_protected = {*protect, *needed_by_history(runner, conn)}
    name = take_backup(runner, target, password, label, keep=keep,
                       connect_deadline_s=connect_deadline_s, protect=keep_protected)  # fmt: skip
    if store is None:  # the checksum the backup task wrote beside it; the dump stays put
        sha256 = next((f.sha256 for f in backup_files(runner, target) if f.name == name), "")
        return Taken(name, sha256, local=True, shipped=False)
    data, sha256 = read_dump(runner, target, name)
    if not sha256:
        sha256 = hashlib.sha256(data).hexdigest()
    stack = target.stack or target.name_prefix
    ship(store, stack, name, data, sha256)
    pruned = prune(store, stack, {*keep_protected, name})
    if not store.keep_local:
        remove_local(runner, target, [name])
    return Taken(name, sha256, local=store.keep_local, shipped=True, pruned=tuple(pruned))
