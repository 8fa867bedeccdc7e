"""``appstack:backups``: the off-host store of database backups, parsed and validated.

```yaml
appstack:backups:
  store: {endpoint: https://s3.example.com, bucket: db-backups, prefix: appstack, region: eu-1}
  keepLocal: false          # default false with a store (the bucket is the copy), true without
  retention: {count: 14, maxAgeDays: 30}
```
with the store's credentials as secrets ``appstack:backupStoreAccessKey`` and
``appstack:backupStoreSecretKey``, and optionally ``appstack:backupEncryptionKey`` (32 random
bytes, base64 or hex): dumps are then AES-256-GCM encrypted before they leave the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pulumi
from pulumi.runtime.config import get_config, is_config_secret

if TYPE_CHECKING:
    from components.settings import _Reader
    from components.spec import BackupStoreSpec

BACKUP_SECRETS = ("backupStoreAccessKey", "backupStoreSecretKey", "backupEncryptionKey")
"""Secret config keys of the store: access key, secret key (both required with a store), and
the optional client-side encryption key."""
_FIELDS = ("store", "keepLocal", "retention")
_STORE_FIELDS = ("endpoint", "bucket", "prefix", "region")
_RETENTION_FIELDS = ("count", "maxAgeDays")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_REGION = re.compile(r"^[a-z0-9-]{1,32}$")


@dataclass(frozen=True)
class BackupSettings:
    """Where backups go besides the stack's volume, how long they stay, with what secrets."""

    endpoint: str = ""
    bucket: str = ""
    prefix: str = "appstack"
    region: str = "us-east-1"
    keep_local: bool = True
    count: int = 0
    """Newest backups kept in the bucket (0: no count limit)."""
    max_age_days: int = 0
    """Bucket backups older than this many days are dropped (0: no age limit)."""
    access_key: pulumi.Output[str] | None = None
    secret_key: pulumi.Output[str] | None = None
    encryption_key: pulumi.Output[str] | None = None

    @property
    def has_store(self) -> bool:
        """Whether backups are shipped off the host."""
        return bool(self.bucket)

    def store_spec(self) -> BackupStoreSpec | None:
        """The ``Migration``'s view of the store: plain settings and one secret of credentials."""
        from components.spec import BackupStoreSpec

        if not self.has_store:
            return None
        plain = {"endpoint": self.endpoint, "bucket": self.bucket, "prefix": self.prefix,
                 "region": self.region, "keep_local": self.keep_local, "count": self.count,
                 "max_age_days": self.max_age_days}  # fmt: skip
        creds = pulumi.Output.all(
            access_key=self.access_key or "",
            secret_key=self.secret_key or "",
            encryption_key=self.encryption_key or "",
        )
        return BackupStoreSpec(plain=plain, secrets=pulumi.Output.secret(creds))


def _secret(r: _Reader, key: str, required: bool) -> pulumi.Output[str] | None:
    """A secret store key: refused in plaintext, required when ``required``."""
    full = f"appstack:{key}"
    if get_config(full) is None:
        if required:
            r.fail(key, "is required with appstack:backups.store; set it with "
                   f"`pulumi config set --secret {key}`")  # fmt: skip
        return None
    if not is_config_secret(full):
        r.fail(key, f"is set in plaintext; set it with `pulumi config set --secret {key}`")
        return None
    return r.config.get_secret(key)


def _fields(r: _Reader, key: str, raw: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        r.fail(key, f"must be an object {{{', '.join(known)}}}")
        return {}
    for name in sorted(set(raw) - set(known)):
        r.fail(f"{key}.{name}", f"unknown field; known: {', '.join(known)}")
    return raw


def _parse_store(r: _Reader, raw: Any) -> dict[str, str]:
    store = _fields(r, "backups.store", raw, _STORE_FIELDS)
    endpoint = str(store.get("endpoint") or "")
    url = urlparse(endpoint)
    if not endpoint:
        r.fail("backups.store.endpoint", "is required: the S3-compatible endpoint's URL")
    elif url.scheme not in ("http", "https") or not url.hostname or url.query or url.username:
        r.fail("backups.store.endpoint", f"{endpoint!r} is not an http(s) URL with a host")
    bucket = str(store.get("bucket") or "")
    if not bucket:
        r.fail("backups.store.bucket", "is required: the bucket backups are written to")
    elif not _BUCKET.match(bucket):
        r.fail("backups.store.bucket", f"{bucket!r} is not an S3 bucket name (3-63 of a-z0-9.-)")
    prefix = str(store.get("prefix", "appstack")).strip("/")
    if prefix and not _PREFIX.match(prefix):
        r.fail("backups.store.prefix", f"{prefix!r} must be path segments of A-Za-z0-9._-")
    region = str(store.get("region") or "us-east-1")
    if not _REGION.match(region):
        r.fail("backups.store.region", f"{region!r} is not a region name like eu-central-1")
    return {"endpoint": endpoint, "bucket": bucket, "prefix": prefix, "region": region}


def _keep_local(r: _Reader, raw: dict[str, Any], has_store: bool) -> bool:
    value = raw.get("keepLocal", not has_store)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        r.fail("backups.keepLocal", f"must be true or false, got {value!r}")
        return True
    if not value and not has_store:
        r.fail("backups.keepLocal", "false needs backups.store: the volume is the only copy")
        return True
    return value


def parse_backups(r: _Reader) -> BackupSettings:
    """``appstack:backups`` and the store's secrets; every problem reported naming its key."""
    from components.providers.backup_store import parse_key

    raw = r.obj("backups", {}) or {}
    raw = _fields(r, "backups", raw, _FIELDS)
    has_store = "store" in raw
    store = _parse_store(r, raw["store"]) if has_store else {}
    keep_local = _keep_local(r, raw, has_store)
    retention = _fields(r, "backups.retention", raw.get("retention", {}) or {}, _RETENTION_FIELDS)
    if retention and not has_store:
        r.fail("backups.retention", "applies to the bucket: it needs backups.store "
               "(the volume keeps appstack:keepBackups)")  # fmt: skip
    count = r.int_("backups.retention.count", retention.get("count", 0), 0, 10_000) or 0
    days = r.int_("backups.retention.maxAgeDays", retention.get("maxAgeDays", 0), 0, 36_500) or 0
    for key in BACKUP_SECRETS:
        if not has_store and get_config(f"appstack:{key}") is not None:
            r.fail(key, "is set but appstack:backups.store is not")
    if not has_store:
        return BackupSettings()
    encryption = _secret(r, "backupEncryptionKey", required=False)
    raw_key = get_config("appstack:backupEncryptionKey")
    if encryption is not None and raw_key is not None:
        try:
            parse_key(raw_key)
        except ValueError as exc:
            r.fail("backupEncryptionKey", str(exc))
    return BackupSettings(
        **store,
        keep_local=keep_local,
        count=count,
        max_age_days=days,
        access_key=_secret(r, "backupStoreAccessKey", required=True),
        secret_key=_secret(r, "backupStoreSecretKey", required=True),
        encryption_key=encryption,
    )
