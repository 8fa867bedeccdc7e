"""``appstack backup list | take | verify``, and MinIO's bucket measured around a rollback.

``verify`` restores a dump into a throwaway Postgres (the stack's own image, on its internal
network, a random password, removed whatever happens) after checking the dump against the sha256
recorded beside it, then counts the rows of every table: a backup is only as good as its restore.
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from components.apps.haven import MC_ALIAS
from components.ops.stack import MIGRATION_TYPE, OpsError, Pulumi, plaintext, resources
from components.providers.backup_store import (
    StoreConfig,
    StoredBackup,
    Taken,
    fetch,
    stored,
    take_and_ship,
)
from components.providers.postgres import (
    CHECKSUM_SUFFIX,
    FROM_FETCHED,
    MARK,
    PSQL,
    BackupFile,
    Conn,
    MigrationError,
    backup_files,
    fetched_files,
    markers,
    read_releases,
)
from components.providers.runner import (
    OWNER_LABEL,
    TASK_LABEL,
    Runner,
    Target,
    Task,
    TaskError,
    log_tail,
    owner_id,
    runner_for,
)

HELP = "the stack's database backups: list them, take one, verify one by restoring it aside"
MAIN_TABLES = {"haven": ("documents", "chunks"), "engramia": ("memories", "api_keys")}
"""The tables a restored backup of each app must hold (their row counts are what matters)."""
TASK_TYPE = "pulumi-python:dynamic/ops:OneOffTask"
VERIFY_USER = "verify"
# Exit codes of the verify task: the dump is gone, its checksum differs, pg_restore refused it.
NO_BACKUP, BAD_CHECKSUM, RESTORE_FAILED = 4, 5, 6

VERIFY_SH = f"""f="$BACKUP_DIR/$BACKUP_ID"
if [ ! -f "$f" ]; then echo "{MARK}NOBACKUP:$BACKUP_ID"; exit {NO_BACKUP}; fi
got=$(sha256sum "$f" | cut -d' ' -f1)
want=""
if [ -f "$f{CHECKSUM_SUFFIX}" ]; then want=$(cut -d' ' -f1 "$f{CHECKSUM_SUFFIX}"); fi
echo "{MARK}CHECKSUM:$want:$got"
if [ -n "$want" ] && [ "$want" != "$got" ]; then exit {BAD_CHECKSUM}; fi
if ! pg_restore --no-owner --no-acl --exit-on-error -d "$PGDATABASE" "$f" 2>"$WORK/err"; then
  echo "{MARK}RESTOREFAILED"; cat "$WORK/err"; exit {RESTORE_FAILED}
fi
{PSQL.format(file="count.sql")}"""

COUNT_SQL = f"""\\set ON_ERROR_STOP on
SELECT format('SELECT %L || count(*) FROM %I.%I', '{MARK}ROWS:' || tablename || ':',
              schemaname, tablename)
  FROM pg_catalog.pg_tables WHERE schemaname = 'public' ORDER BY tablename \\gexec
"""  # noqa: S608 - module constants only; psql quotes each table name (%I)


@dataclass(frozen=True)
class Verified:
    """What a verify found: the backup, its checksum and every restored table's row count."""

    name: str
    sha256: str
    recorded: bool
    """Whether a checksum was recorded beside the dump (backups before checksums have none)."""
    rows: dict[str, int]


def pick_backup(files: Sequence[BackupFile], name: str | None) -> BackupFile:
    """The named backup, or the newest; ``OpsError`` (exit 2) when there is none."""
    if not files:
        msg = "neither the backup volume nor the bucket holds a backup of this stack"
        raise OpsError(msg, 2)
    if not name:
        return files[0]
    for f in files:
        if f.name == name:
            return f
    msg = f"no backup {name!r} in the backup volume or the bucket (newest: {files[0].name})"
    raise OpsError(msg, 2)


def store_of(stack: Pulumi) -> StoreConfig | None:
    """The off-host store the stack's Migration ships backups to (None: none configured)."""
    found = resources(stack.export(secrets=True), MIGRATION_TYPE)
    inputs = (found[0].get("inputs") or {}) if found else {}
    secret = plaintext(inputs.get("backup_store_secrets"))
    return StoreConfig.from_inputs(inputs.get("backup_store"), secret)


def _stack_of(target: Target) -> str:
    return target.stack or target.name_prefix


def everywhere(runner: Runner, target: Target, store: StoreConfig | None) -> list[BackupFile]:
    """Every backup of the stack, newest first, with where it lives: local, bucket or both."""
    local = {f.name: f for f in backup_files(runner, target)}
    remote: dict[str, StoredBackup] = {}
    if store is not None:
        try:
            remote = {b.name: b for b in stored(store, _stack_of(target))}
        except MigrationError as exc:
            raise OpsError(str(exc)) from None
    out = []
    for name in sorted({*local, *remote}, reverse=True):
        f, b = local.get(name), remote.get(name)
        where = "local+bucket" if f and b else "local" if f else "bucket"
        size = f.size if f else b.size if b else 0
        sha256 = (f.sha256 if f else "") or (b.sha256 if b else "")
        out.append(BackupFile(name, size, sha256, where))
    return out


def recorded_sha256(runner: Runner, target: Target, password: str, name: str) -> str:
    """The sha256 the release records hold for a backup ("" when none does)."""
    records = read_releases(runner, Conn(target, password))
    return next((r.backup_sha256 for r in records if r.backup_id == name), "")


def from_store(
    runner: Runner, target: Target, password: str, store: StoreConfig | None, name: str
) -> bytes | None:
    """A backup's dump from the bucket when the volume lacks it (None: the volume has it).

    The dump is decrypted and checked against its object's sha256 and its release record's.
    """
    if any(f.name == name for f in backup_files(runner, target)):
        return None
    if store is None:
        msg = f"backup {name} is not in volume {target.backup_volume} and no store is configured"
        raise OpsError(msg)
    try:
        return fetch(store, _stack_of(target), name,
                     recorded_sha256(runner, target, password, name))  # fmt: skip
    except MigrationError as exc:
        raise OpsError(str(exc)) from None


def judge(logs: str, name: str, exit_code: int | None, app: str) -> Verified:
    """Read a verify task's log; ``OpsError`` naming the backup when it cannot be trusted."""
    sums = markers(logs, "CHECKSUM")
    want, _, got = (sums[-1] if sums else "::").partition(":")
    if exit_code == BAD_CHECKSUM:
        msg = f"backup {name} is corrupt: its sha256 is {got}, {want} was recorded when taken"
        raise OpsError(msg)
    if exit_code == RESTORE_FAILED:
        said = logs.split(f"{MARK}RESTOREFAILED", 1)[-1].strip()
        msg = f"backup {name} does not restore: pg_restore said:\n{log_tail(said, 10)}"
        raise OpsError(msg)
    if exit_code == NO_BACKUP:
        msg = f"backup {name} is not in the backup volume"
        raise OpsError(msg, 2)
    if exit_code:
        msg = f"verify of backup {name} failed (exit {exit_code}):\n{log_tail(logs, 10)}"
        raise OpsError(msg)
    rows = {}
    for raw in markers(logs, "ROWS"):
        table, _, count = raw.rpartition(":")
        rows[table] = int(count)
    missing = [t for t in MAIN_TABLES.get(app, ()) if t not in rows]
    if missing:
        msg = f"backup {name} restores without {app}'s table(s) {missing} (it has {sorted(rows)})"
        raise OpsError(msg)
    return Verified(name, got, bool(want), rows)


@contextmanager
def scratch_postgres(target: Target, password: str) -> Iterator[Target]:
    """A throwaway Postgres of the stack's image on its internal network; removed on exit.

    Yields the target that reaches it. Labelled as a task of the stack, so a killed run leaves it
    to the next run's sweep.
    """
    from components.apps.common import POSTGRES_UID
    from components.providers.engine_base import client

    name = f"{target.name_prefix}-verify-db-{secrets.token_hex(3)}"
    labels = {TASK_LABEL: "verify-db", "appstack.prefix": target.name_prefix,
              OWNER_LABEL: owner_id()}  # fmt: skip
    if target.stack:
        labels["appstack.stack"] = target.stack
    env = {"POSTGRES_USER": VERIFY_USER, "POSTGRES_DB": VERIFY_USER, "POSTGRES_PASSWORD": password}
    with client(target.docker_host) as docker_client:
        container = docker_client.containers.run(
            target.client_image, name=name, detach=True, environment=env,
            network=target.network or None, labels=labels, cap_drop=["ALL"],
            user=POSTGRES_UID, tmpfs={"/tmp": "", "/var/run/postgresql": ""},
            security_opt=["no-new-privileges"],
        )  # fmt: skip
        try:
            yield replace(target, db_host=name, db_port=5432, db_name=VERIFY_USER,
                          db_user=VERIFY_USER)  # fmt: skip
        finally:
            container.remove(force=True, v=True)


def verify(runner: Runner, target: Target, app: str, name: str | None,
           store: StoreConfig | None = None, db_password: str = "") -> Verified:  # fmt: skip
    """Check the backup's checksum, restore it into a scratch Postgres, count its tables' rows.

    A backup only the bucket holds is downloaded (decrypted, its sha256 checked) first.
    """
    if target.kind != "docker":
        msg = f"backup verify runs on Docker stacks only (this stack's tasks run on {target.kind})"
        raise OpsError(msg, 2)
    chosen = pick_backup(everywhere(runner, target, store), name)
    files = {"count.sql": COUNT_SQL.encode()}
    script = VERIFY_SH
    if chosen.where == "bucket":
        data = from_store(runner, target, db_password, store, chosen.name)
        files.update(fetched_files(chosen.name, data or b""))
        script = FROM_FETCHED + VERIFY_SH
    password = secrets.token_urlsafe(24)
    with scratch_postgres(target, password) as scratch:
        conn = Conn(scratch, password, connect_deadline_s=60.0)
        task = conn.task(runner, "verify", script, files, env={"BACKUP_ID": chosen.name},
                         backups=True)  # fmt: skip
        try:
            return judge(conn.run(runner, task), chosen.name, 0, app)
        except TaskError as exc:
            return judge(exc.logs, chosen.name, exc.exit_code, app)
        except MigrationError as exc:
            msg = f"verify of backup {chosen.name}: the scratch Postgres never answered: {exc}"
            raise OpsError(msg) from None


def describe(files: Sequence[BackupFile]) -> list[str]:
    """One line per backup: id, size, recorded sha256, where it lives."""
    return [f"{f.name}  {f.size:>12} bytes  sha256 {f.sha256 or '(none recorded)'}  [{f.where}]"
            for f in files]  # fmt: skip


def take(runner: Runner, target: Target, password: str, label: str, keep: int,
         store: StoreConfig | None, protect: Sequence[str] = ()) -> Taken:  # fmt: skip
    """A backup into the volume and, with a store, the bucket (``OpsError`` when it fails)."""
    try:
        return take_and_ship(runner, target, password, label, keep, store, protect)
    except (MigrationError, TaskError) as exc:
        raise OpsError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``backup``'s own arguments (``--stack``, ``--cwd`` and ``--json`` are every command's)."""
    parser.add_argument("action", choices=("list", "take", "verify"))
    parser.add_argument("name", nargs="?", help="verify: the backup id (default: the newest)")
    parser.add_argument("--label", default="manual", help="take: the id's label (manual)")


def run(args: argparse.Namespace, access: tuple[Any, ...], keep: int,
        say: Callable[[str], None], store: StoreConfig | None = None) -> int:  # fmt: skip
    """``appstack backup ACTION`` with the stack's database access (``cli._db_access``)."""
    runner, target, password, _quiescent, app = access
    try:
        if args.action == "verify":
            say("restoring into a throwaway Postgres on the stack's internal network")
            _print_verified(verify(runner, target, app, args.name, store, password), args.json)
            return 0
        taken = ""
        if args.action == "take":
            bucket = f" and {store.where(_stack_of(target))}" if store else ""
            say(f"pg_dump of {target.db_name} into {target.backup_volume}{bucket} "
                f"(newest {keep} kept locally)")  # fmt: skip
            taken = take(runner, target, password, args.label, keep, store).name
        files = [f for f in everywhere(runner, target, store) if f.name == taken or not taken]
    except (MigrationError, TaskError) as exc:
        raise OpsError(str(exc)) from None
    if args.json:
        print(json.dumps([asdict(f) for f in files], indent=2))
    else:
        print("\n".join(describe(files)) or "(no backups)")
    return 0


def _print_verified(found: Verified, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(found), indent=2))
        return
    print(f"backup {found.name}: sha256 {found.sha256} "
          f"{'matches the recorded one' if found.recorded else '(none recorded)'}")  # fmt: skip
    for table, count in sorted(found.rows.items()):
        print(f"  {table:<32} {count:>10} rows")
    print(f"backup {found.name} restores: {len(found.rows)} tables")


# -- MinIO around a rollback --------------------------------------------------------------------

MC_DU = MC_ALIAS + ' && mc du --json "haven/$MINIO_BUCKET"'


@dataclass(frozen=True)
class Usage:
    """A bucket's object count and total size."""

    bucket: str
    objects: int
    size: int

    def __str__(self) -> str:
        return f"minio {self.bucket}: {self.objects} objects, {self.size} bytes"


def parse_du(output: str, bucket: str) -> Usage:
    """The last ``mc du --json`` line of ``output`` as a ``Usage``."""
    for line in reversed(output.splitlines()):
        if line.strip().startswith("{"):
            row = json.loads(line)
            if row.get("status") == "success":
                return Usage(bucket, int(row.get("objects") or 0), int(row.get("size") or 0))
    msg = f"mc du gave no usage of bucket {bucket}: {log_tail(output, 5)}"
    raise OpsError(msg)


def bucket_task(deployment: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state of the task that made the stack's MinIO bucket (None: no MinIO, or not Docker)."""
    for res in resources(deployment, TASK_TYPE):
        if "MINIO_BUCKET" in (res.get("inputs", {}).get("env") or {}):
            return res
    return None


def bucket_usage(stack: Pulumi) -> Usage | None:
    """The stack's bucket as MinIO counts it now, through ``mc`` in MinIO's image on the stack's
    internal network (None when the stack has no MinIO bucket task)."""
    res = bucket_task(stack.export(secrets=True))
    if res is None:
        return None
    inputs = res["inputs"]
    target = Target.from_dict(inputs["target"])
    env = {str(k): str(v) for k, v in (inputs.get("env") or {}).items()}
    secret_env = {str(k): str(v) for k, v in (plaintext(inputs.get("secret_env")) or {}).items()}
    task = Task(name="bucket-usage", image=str(inputs["image"]), command=[MC_DU],
                entrypoint=["sh", "-c"], env={**env, **secret_env}, network=target.network or None,
                timeout_s=120.0, secret_keys=tuple(secret_env))  # fmt: skip
    try:
        logs = runner_for(target).run(task).logs
    except TaskError as exc:
        msg = f"could not count the objects of bucket {env.get('MINIO_BUCKET')}: {exc}"
        raise OpsError(msg) from None
    return parse_du(logs, env["MINIO_BUCKET"])


def compare(before: Usage | None, after: Usage | None) -> list[str]:
    """What to tell the operator about the bucket across a rollback (a loud line if it moved)."""
    if before is None or after is None:
        return []
    lines = [f"{before} before", f"{after} after"]
    if (before.objects, before.size) != (after.objects, after.size):
        lines.append(
            f"WARNING: bucket {before.bucket} changed during the rollback "
            f"({after.objects - before.objects:+d} objects, {after.size - before.size:+d} bytes): "
            "a rollback must not touch MinIO; check the bucket against the restored database"
        )
    return lines


def measure(stack: Pulumi, say: Callable[[str], None]) -> Usage | None:
    """``bucket_usage``, or None, said aloud, when MinIO cannot be counted (never blocks)."""
    try:
        return bucket_usage(stack)
    except OpsError as exc:
        say(f"WARNING: {exc}")
        return None


def report(stack: Pulumi, before: Usage | None, say: Callable[[str], None]) -> None:
    """Count the bucket again and tell the operator how it compares with ``before``."""
    if before is None:
        return
    for line in compare(before, measure(stack, say)):
        say(line)
