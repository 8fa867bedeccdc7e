"""The SQL-dir migration engine (Flyway-style ledger) and pg_dump backups, run through a Runner.

Every task runs psql/pg_dump/pg_restore in the target's client image (locally: the local
binaries). What Python parses from a task is a marker line ``APPSTACK:<KIND>:<value>``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from components.providers.runner import Runner, Target, Task, TaskError, log_tail

LEDGER = "appstack_schema_ledger"
INIT = "init.sql"
MIGRATIONS_DIR = "migrations"
BACKUP_MOUNT = "/backups"
MARK = "APPSTACK:"
UNREACHABLE_EXIT = 75
NO_TRANSACTION_MARKER = "-- appstack:no-transaction"
"""A line among a migration file's leading comments: run it outside a transaction."""
ADVISORY_LOCK_KEY = 0x61707073_7461636B & 0x7FFFFFFFFFFFFFFF
"""``pg_advisory_lock`` key that serializes migration work on one database ("appstack")."""
DEFAULT_LOCK_TIMEOUT = "5s"
_LOCK_TIMEOUT = re.compile(r"^[1-9][0-9]*(ms|s|min)$")

_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+\.sql$")
_BACKUP_ID = re.compile(r"^[a-z0-9][a-z0-9-]*-\d{8}T\d{6}Z-[A-Za-z0-9._-]*\.dump$")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

LEDGER_DDL = f"""CREATE TABLE IF NOT EXISTS public.{LEDGER} (
  name text PRIMARY KEY,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  how text NOT NULL CHECK (how IN ('init', 'baselined', 'applied'))
);"""


RELEASES_SCHEMA = "appstack"
RELEASES = f"{RELEASES_SCHEMA}.releases"
RELEASES_DDL = f"""CREATE SCHEMA IF NOT EXISTS {RELEASES_SCHEMA};
CREATE TABLE IF NOT EXISTS {RELEASES} (
  id bigserial PRIMARY KEY,
  ran_at timestamptz NOT NULL,
  release text NOT NULL,
  source_image text NOT NULL,
  backup_id text NOT NULL,
  applied jsonb NOT NULL,
  ledger jsonb NOT NULL,
  revision text NOT NULL
);
ALTER TABLE {RELEASES} ADD COLUMN IF NOT EXISTS backup_sha256 text NOT NULL DEFAULT '';"""
"""One row per migration run that did work, next to the ledger: what ``appstack history`` and
``rollback`` read on any state backend (Pulumi's checkpoints per update are not exportable from
a self-managed backend). Its own schema, left out of backups, so a restore keeps the records of
the releases after the backup it restores."""


class MigrationError(RuntimeError):
    """A migration was refused or failed; the message names the file or the cause."""


class DatabaseUnreachableError(MigrationError):
    """The database did not answer within the connect deadline."""


@dataclass(frozen=True)
class SchemaFile:
    """One schema file of a release: its ledger name, sha256 and content."""

    name: str
    checksum: str
    content: bytes

    @property
    def transactional(self) -> bool:
        """False when the file's leading comment lines hold ``NO_TRANSACTION_MARKER``."""
        for raw in self.content.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if not line:
                continue
            if not line.startswith("--"):
                return True
            if line.lower() == NO_TRANSACTION_MARKER:
                return False
        return True


def check_lock_timeout(value: str) -> str:
    """``value`` when it is a PostgreSQL duration like ``500ms``, ``5s`` or ``2min``."""
    if not _LOCK_TIMEOUT.match(value):
        msg = f"lock_timeout {value!r} is not a duration like 500ms, 5s or 2min"
        raise ValueError(msg)
    return value


@dataclass(frozen=True)
class LedgerRow:
    """One row of the schema ledger."""

    name: str
    checksum: str
    how: str

    def to_dict(self) -> dict[str, str]:
        """Plain dict form for provider outputs."""
        return {"name": self.name, "checksum": self.checksum, "how": self.how}


@dataclass(frozen=True)
class DbState:
    """What the database holds: app tables, the ledger, and an alembic revision if any."""

    tables: int
    has_ledger: bool
    ledger: tuple[LedgerRow, ...]
    revision: str | None

    @property
    def empty(self) -> bool:
        """No table but (maybe) an empty ledger: nothing to lose, nothing applied."""
        return self.tables == 0 and not self.ledger


@dataclass(frozen=True)
class Plan:
    """What a migration run will do: ``init``, ``baseline`` then apply, ``apply``, or nothing."""

    kind: str
    init: SchemaFile | None
    baselined: tuple[SchemaFile, ...]
    pending: tuple[SchemaFile, ...]
    notes: tuple[str, ...] = ()
    recorded: tuple[str, ...] = ()
    """Ledger names when the plan was made: rechecked under the migration lock."""

    @property
    def has_work(self) -> bool:
        """Whether anything will run or be recorded."""
        return self.kind != "none"


def load_schema(files: Mapping[str, bytes]) -> list[SchemaFile]:
    """``init.sql`` then ``migrations/*.sql`` in lexical order, each with its sha256."""
    if INIT not in files:
        msg = f"schema has no {INIT} (files: {sorted(files)[:10]})"
        raise MigrationError(msg)
    out = [_schema_file(INIT, files[INIT])]
    if not out[0].transactional:
        msg = f"{INIT} carries {NO_TRANSACTION_MARKER!r}: only migration files may (init.sql runs "
        msg += "in one transaction with the ledger)"
        raise MigrationError(msg)
    for rel in sorted(files):
        path = PurePosixPath(rel)
        if len(path.parts) != 2 or path.parts[0] != MIGRATIONS_DIR or path.suffix != ".sql":
            continue
        if not _FILE_NAME.match(path.name):
            msg = f"migration file name {rel!r} must match {_FILE_NAME.pattern}"
            raise MigrationError(msg)
        out.append(_schema_file(rel, files[rel]))
    return out


def _schema_file(name: str, content: bytes) -> SchemaFile:
    return SchemaFile(name=name, checksum=hashlib.sha256(content).hexdigest(), content=content)


def schema_checksum(files: Sequence[SchemaFile]) -> str:
    """One sha256 over every file's name and checksum: changes when any file changes."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.checksum}\n".encode())
    return digest.hexdigest()


def schema_checksum_of_dir(path: str) -> str:
    """The ``schema_checksum`` of a local schema directory (to pass as a re-run trigger)."""
    root = Path(path)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return schema_checksum(load_schema(files))


def _match_baseline(files: Sequence[SchemaFile], baseline: str) -> int:
    """Index of the file a baseline names (``migrations/x.sql`` or just ``x.sql``)."""
    for i, f in enumerate(files):
        if baseline in (f.name, PurePosixPath(f.name).name):
            return i
    msg = f"baseline {baseline!r} names no file of this release ({[f.name for f in files]})"
    raise MigrationError(msg)


def plan_migration(files: Sequence[SchemaFile], state: DbState, baseline: str | None) -> Plan:
    """Decide what to run; refuse (before anything runs) when the database and release disagree."""
    if state.empty:
        return Plan(kind="init", init=files[0], baselined=tuple(files[1:]), pending=())
    if not state.ledger:
        if not baseline:
            msg = (
                f"database has {state.tables} table(s) but no {LEDGER}: refusing to run "
                f"{INIT} on it; set the migration baseline to the last file already applied"
            )
            raise MigrationError(msg)
        last = _match_baseline(files, baseline)
        return Plan(
            kind="baseline",
            init=None,
            baselined=tuple(files[: last + 1]),
            pending=tuple(files[last + 1 :]),
        )
    by_name = {f.name: f for f in files}
    ahead = [row.name for row in state.ledger if row.name not in by_name]
    if ahead:
        msg = (
            f"database schema is ahead of this release: the ledger records {ahead}, which this "
            "release does not ship; restore a backup to roll back"
        )
        raise MigrationError(msg)
    changed = [row.name for row in state.ledger if by_name[row.name].checksum != row.checksum]
    # init.sql is the whole current schema and changes with every release that changes the
    # schema; it never runs again on a database that has a ledger, so only migrations must match.
    edited = [name for name in changed if name != INIT]
    notes = (f"{INIT} differs from the recorded one (expected: it never re-runs here)",)
    if edited:
        msg = (
            f"already-applied schema file(s) {edited} changed since they were recorded "
            "(checksum differs): refusing; ship a new migration file instead of editing one"
        )
        raise MigrationError(msg)
    recorded = {row.name for row in state.ledger}
    if INIT not in recorded:
        msg = f"the {LEDGER} lacks {INIT}: refusing to run it on a database that has data"
        raise MigrationError(msg)
    pending = tuple(f for f in files if f.name not in recorded)
    kind = "apply" if pending else "none"
    names = tuple(row.name for row in state.ledger)
    return Plan(kind, None, (), pending, notes if INIT in changed else (), names)


def pg_env(target: Target, password: str) -> dict[str, str]:
    """libpq environment for the target's database."""
    return {
        "PGHOST": target.db_host,
        "PGPORT": str(target.db_port),
        "PGDATABASE": target.db_name,
        "PGUSER": target.db_user,
        "PGPASSWORD": password,
        "PGCONNECT_TIMEOUT": "5",
    }


def wait_snippet(deadline_s: float) -> str:
    """POSIX sh that waits for pg_isready until a deadline, then prints a marker and exits."""
    seconds = max(1, math.ceil(deadline_s))
    return f"""end=$(( $(date +%s) + {seconds} ))
while ! pg_isready -q -t 2 >/dev/null 2>&1; do
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "{MARK}UNREACHABLE:$PGHOST:$PGPORT"
    exit {UNREACHABLE_EXIT}
  fi
  sleep 1
done
"""


def markers(logs: str, kind: str) -> list[str]:
    """Values of ``APPSTACK:<kind>:<value>`` lines, in order."""
    prefix = f"{MARK}{kind}:"
    return [
        line.strip()[len(prefix) :] for line in logs.splitlines() if line.strip().startswith(prefix)
    ]


@dataclass(frozen=True)
class Conn:
    """How tasks reach the database: target, password and timing."""

    target: Target
    password: str
    connect_deadline_s: float = 30.0
    task_timeout_s: float = 1800.0

    def task(
        self,
        runner: Runner,
        name: str,
        script: str,
        files: Mapping[str, bytes] | None = None,
        env: Mapping[str, str] | None = None,
        backups: bool = False,
    ) -> Task:
        """A client-image task that first waits for the database, then runs ``script``."""
        t = self.target
        mounts: list[tuple[str, str]] = []
        extra = dict(env or {})
        if backups:
            if not t.backup_volume:
                msg = "target.backup_volume is not set: backups need a volume"
                raise MigrationError(msg)
            mounts.append((t.backup_volume, BACKUP_MOUNT))
            extra["BACKUP_DIR"] = runner.mount_path(t.backup_volume, BACKUP_MOUNT)
        body = f"set -eu\n{wait_snippet(self.connect_deadline_s)}{script}"
        return Task(
            name=name,
            image=t.client_image,
            command=["sh", "-c", body],
            env={**pg_env(t, self.password), **extra},
            files=dict(files or {}),
            mounts=mounts,
            network=t.network or None,
            timeout_s=self.connect_deadline_s + self.task_timeout_s,
            secret_keys=("PGPASSWORD",),
        )

    def run(self, runner: Runner, task: Task) -> str:
        """Run a task; turn the unreachable marker into ``DatabaseUnreachable``."""
        try:
            return runner.run(task).logs
        except TaskError as exc:
            if exc.exit_code == UNREACHABLE_EXIT and markers(exc.logs, "UNREACHABLE"):
                msg = (
                    f"database {self.target.db_address} is unreachable: pg_isready got no "
                    f"answer within {self.connect_deadline_s:g}s"
                )
                raise DatabaseUnreachableError(msg) from None
            raise


PSQL = 'psql -X -q -At -v ON_ERROR_STOP=1 -f "$WORK/{file}"\n'

STATE_SQL = f"""\\set ON_ERROR_STOP on
SELECT '{MARK}TABLES:' || count(*) FROM pg_catalog.pg_tables
  WHERE schemaname = 'public' AND tablename <> '{LEDGER}';
SELECT to_regclass('public.{LEDGER}') IS NOT NULL AS appstack_has_ledger \\gset
\\if :appstack_has_ledger
SELECT '{MARK}LEDGER:' || json_build_object('name', name, 'checksum', checksum, 'how', how)::text
  FROM public.{LEDGER} ORDER BY name;
\\endif
SELECT to_regclass('public.alembic_version') IS NOT NULL AS appstack_has_alembic \\gset
\\if :appstack_has_alembic
SELECT '{MARK}REVISION:' || coalesce(string_agg(version_num::text, ',' ORDER BY version_num), '')
  FROM public.alembic_version;
\\endif
SELECT '{MARK}HASLEDGER:' || :'appstack_has_ledger';
"""  # noqa: S608 - built from module constants only


def query_state(runner: Runner, conn: Conn) -> DbState:
    """Read table count, ledger rows and alembic revision in one task."""
    task = conn.task(
        runner, "db-state", PSQL.format(file="state.sql"), {"state.sql": STATE_SQL.encode()}
    )
    logs = conn.run(runner, task)
    tables = markers(logs, "TABLES")
    if not tables:
        msg = f"could not read the database state; log tail:\n{log_tail(logs)}"
        raise MigrationError(msg)
    rows = tuple(LedgerRow(**json.loads(v)) for v in markers(logs, "LEDGER"))
    revisions = markers(logs, "REVISION")
    return DbState(
        tables=int(tables[-1]),
        has_ledger=markers(logs, "HASLEDGER") == ["t"],
        ledger=rows,
        revision=revisions[-1] if revisions else None,
    )


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ledger_insert(rows: Sequence[tuple[SchemaFile, str]]) -> str:
    values = ",\n  ".join(f"({_lit(f.name)}, {_lit(f.checksum)}, {_lit(how)})" for f, how in rows)
    return f"INSERT INTO public.{LEDGER} (name, checksum, how) VALUES\n  {values};\n"


def _lock_script(plan: Plan, lock_timeout: str) -> str:
    """psql: take the migration lock, then refuse when another run changed the ledger meanwhile.

    The advisory lock waits without a lock timeout (a concurrent migration may take minutes; the
    task's own timeout bounds it); the statements after it run with ``lock_timeout``.
    """
    expected = ",".join(sorted(plan.recorded))
    must_be_empty = "true" if plan.init is not None else "false"
    return f"""SET lock_timeout = 0;
SELECT pg_advisory_lock({ADVISORY_LOCK_KEY}) IS NULL AS appstack_locked \\gset
\\warn {MARK}LOCKED
SELECT to_regclass('public.{LEDGER}') IS NOT NULL AS appstack_has_ledger \\gset
\\if :appstack_has_ledger
SELECT coalesce(string_agg(name, ',' ORDER BY name COLLATE "C"), '') AS appstack_ledger_now
  FROM public.{LEDGER} \\gset
\\else
\\set appstack_ledger_now ''
\\endif
SELECT count(*) AS appstack_tables_now FROM pg_catalog.pg_tables
  WHERE schemaname = 'public' AND tablename <> '{LEDGER}' \\gset
SELECT :'appstack_ledger_now' = {_lit(expected)}
  AND (NOT {must_be_empty} OR :appstack_tables_now = 0) AS appstack_unchanged \\gset
\\if :appstack_unchanged
\\else
\\warn {MARK}CHANGED:ledger now [:appstack_ledger_now], :appstack_tables_now table(s)
DO $$ BEGIN RAISE EXCEPTION 'appstack: the database changed while waiting for the lock'; END $$;
\\endif
SET lock_timeout = {_lit(check_lock_timeout(lock_timeout))};
"""  # noqa: S608 - built from module constants and validated values only


def _apply_script(plan: Plan, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> str:
    """psql script: under the migration lock, init or baseline in one transaction, then one
    transaction per pending file (none for a file marked ``NO_TRANSACTION_MARKER``)."""
    parts = ["\\set ON_ERROR_STOP on\n", _lock_script(plan, lock_timeout)]
    if plan.init is not None:
        recorded = [(plan.init, "init"), *((f, "baselined") for f in plan.baselined)]
        parts.append(
            f"\\warn {MARK}BEGIN:{plan.init.name}\nBEGIN;\n\\ir schema/{plan.init.name}\n"
            f"{LEDGER_DDL}\n{_ledger_insert(recorded)}COMMIT;\n"
            f"\\warn {MARK}DONE:{plan.init.name}\n"
        )
    elif plan.baselined:
        rows = [(f, "baselined") for f in plan.baselined]
        parts.append(
            f"\\warn {MARK}BEGIN:baseline\nBEGIN;\n{LEDGER_DDL}\n{_ledger_insert(rows)}COMMIT;\n"
            f"\\warn {MARK}DONE:baseline\n"
        )
    for f in plan.pending:
        if not f.transactional:
            # Each statement commits on its own (CREATE INDEX CONCURRENTLY refuses a transaction
            # block); the ledger row is written once every statement succeeded.
            parts.append(
                f"\\warn {MARK}BEGIN:{f.name}\n\\ir schema/{f.name}\n"
                f"{_ledger_insert([(f, 'applied')])}\\warn {MARK}DONE:{f.name}\n"
            )
            continue
        parts.append(
            f"\\warn {MARK}BEGIN:{f.name}\nBEGIN;\n\\ir schema/{f.name}\n"
            f"{_ledger_insert([(f, 'applied')])}COMMIT;\n\\warn {MARK}DONE:{f.name}\n"
        )
    return "".join(parts)


def _psql_errors(logs: str, after_marker: str) -> str:
    """psql's error lines printed after ``after_marker``."""
    lines = logs.splitlines()
    start = max((i for i, line in enumerate(lines) if line.strip() == after_marker), default=0)
    errors = [
        line.strip()
        for line in lines[start:]
        if "ERROR:" in line or "FATAL:" in line or line.strip().startswith(("psql:", "DETAIL:"))
    ]
    return "\n".join(errors[:8]) or log_tail(logs, 10)


def apply_plan(
    runner: Runner, conn: Conn, plan: Plan, lock_timeout: str = DEFAULT_LOCK_TIMEOUT
) -> list[str]:
    """Run a plan under the migration lock; return the names it applied, or raise naming the
    file that failed (or saying that another migration changed the ledger meanwhile)."""
    if not plan.has_work:
        return []
    files = {"apply.sql": _apply_script(plan, lock_timeout).encode()}
    for f in [*([plan.init] if plan.init else []), *plan.pending]:
        files[f"schema/{f.name}"] = f.content
    task = conn.task(runner, "migrate", PSQL.format(file="apply.sql"), files)
    try:
        logs = conn.run(runner, task)
    except TaskError as exc:
        changed = markers(exc.logs, "CHANGED")
        if changed:
            msg = (
                "another migration changed this database while this one waited for the "
                f"migration lock ({changed[-1]}; planned against ledger "
                f"{list(plan.recorded)}): nothing applied; run the update again"
            )
            raise MigrationError(msg) from None
        began = markers(exc.logs, "BEGIN")
        done = set(markers(exc.logs, "DONE"))
        failed = next((name for name in began if name not in done), None)
        if failed is None:
            raise
        applied = [f.name for f in plan.pending if f.name in done]
        error = _psql_errors(exc.logs, f"{MARK}BEGIN:{failed}")
        what = "baseline of the ledger" if failed == "baseline" else f"schema file {failed}"
        marked = next((f for f in plan.pending if f.name == failed and not f.transactional), None)
        outcome = (
            "failed outside a transaction (it is marked no-transaction): statements before the "
            "failing one stay committed and it is not recorded; make it idempotent and re-run"
            if marked
            else "failed and its transaction was rolled back"
        )
        hint = (
            f" (it waited longer than lock_timeout {lock_timeout} for a lock: "
            "appstack:migrationLockTimeout)"
            if "lock timeout" in error
            else ""
        )
        msg = f"{what} {outcome}{hint}; applied before it: {applied or 'none'}. psql said:\n{error}"
        raise MigrationError(msg) from None
    done = set(markers(logs, "DONE"))
    return [f.name for f in plan.pending if f.name in done]


def backup_name(prefix: str, release: str, now: datetime | None = None) -> str:
    """``<prefix>-<UTC yyyymmddTHHMMSSZ>-<release>.dump`` (release made file-name safe)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    label = _LABEL_UNSAFE.sub("-", release).strip("-")[:60] or "release"
    return f"{prefix}-{stamp}-{label}.dump"


CHECKSUM_SUFFIX = ".sha256"
"""Beside each dump, its ``sha256sum`` line: written before the dump gets its name."""
_D = "[0-9]"
_BACKUP_PATTERN = f'"$BACKUP_PREFIX"-{_D * 8}T{_D * 6}Z-*.dump'

BACKUP_SH = f"""if [ -e "$BACKUP_DIR/$BACKUP_NAME" ]; then
  echo "{MARK}EXISTS:$BACKUP_NAME"
  exit 4
fi
pg_dump -Fc --exclude-schema=appstack -f "$BACKUP_DIR/$BACKUP_NAME.partial"
sum=$(sha256sum "$BACKUP_DIR/$BACKUP_NAME.partial" | cut -d' ' -f1)
printf '%s  %s\n' "$sum" "$BACKUP_NAME" > "$BACKUP_DIR/$BACKUP_NAME{CHECKSUM_SUFFIX}"
mv "$BACKUP_DIR/$BACKUP_NAME.partial" "$BACKUP_DIR/$BACKUP_NAME"
echo "{MARK}BACKUP:$BACKUP_NAME"
n=0
for f in $(ls -1 "$BACKUP_DIR" | sort -r); do
  case "$f" in
    {_BACKUP_PATTERN})
      # A backup a rollback is about to restore, or one the release records name, is never
      # pruned, nor counted (PROTECT: space-separated ids).
      case " ${{PROTECT:-}} " in *" $f "*) continue ;; esac
      n=$((n + 1))
      if [ "$n" -gt "$KEEP" ]; then
        rm -f "$BACKUP_DIR/$f" "$BACKUP_DIR/$f{CHECKSUM_SUFFIX}"; echo "{MARK}PRUNED:$f"
      fi
      ;;
  esac
done
"""

LIST_SH = f"""for f in $(ls -1 "$BACKUP_DIR" | sort -r); do
  case "$f" in {_BACKUP_PATTERN})
    sum=""
    if [ -f "$BACKUP_DIR/$f{CHECKSUM_SUFFIX}" ]; then
      sum=$(cut -d' ' -f1 "$BACKUP_DIR/$f{CHECKSUM_SUFFIX}")
    fi
    echo "{MARK}BACKUP:$f:$(wc -c < "$BACKUP_DIR/$f"):$sum" ;;
  esac
done
"""

# The dump is replayed as one psql transaction after emptying schema public, so objects created
# after the backup (a table a later migration added) go too and the old schema comes back whole.
RESTORE_SH = f"""f="$BACKUP_DIR/$BACKUP_ID"
if [ ! -f "$f" ]; then echo "{MARK}NOBACKUP:$BACKUP_ID"; exit 4; fi
if [ -f "$f{CHECKSUM_SUFFIX}" ] \
   && [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$(cut -d' ' -f1 "$f{CHECKSUM_SUFFIX}")" ]; then
  echo "{MARK}CORRUPT:$BACKUP_ID"; exit 4
fi
{{
  printf '%s\\n' 'BEGIN;' 'DROP SCHEMA IF EXISTS public CASCADE;' 'CREATE SCHEMA public;'
  pg_restore --clean --if-exists --no-owner --no-acl -f - "$f"
  printf '%s\\n' 'COMMIT;'
}} > "$WORK/restore.sql"
psql -X -q -v ON_ERROR_STOP=1 -f "$WORK/restore.sql" >/dev/null
echo "{MARK}RESTORED:$BACKUP_ID"
"""


def take_backup(
    runner: Runner,
    target: Target,
    password: str,
    release_label: str,
    keep: int,
    connect_deadline_s: float = 30.0,
    protect: str | Collection[str] = "",
) -> str:
    """``pg_dump -Fc`` into the backup volume, prune to the newest ``keep``; return the id.

    ``protect`` names backups the pruning must leave (one about to be restored, those the
    release records name).
    """
    if keep < 1:
        msg = f"keep_backups must be at least 1, got {keep}"
        raise ValueError(msg)
    conn = Conn(target, password, connect_deadline_s)
    for attempt in range(3):
        name = backup_name(target.name_prefix, release_label)
        kept = protect if isinstance(protect, str) else " ".join(sorted(protect))
        env = {"BACKUP_NAME": name, "BACKUP_PREFIX": target.name_prefix, "KEEP": str(keep),
               "PROTECT": kept}  # fmt: skip
        task = conn.task(runner, "backup", BACKUP_SH, env=env, backups=True)
        try:
            logs = conn.run(runner, task)
        except TaskError as exc:
            # Two backups in one second share a name: wait for the next second, never overwrite.
            if markers(exc.logs, "EXISTS") and attempt < 2:
                time.sleep(1.0)
                continue
            msg = f"backup of {target.db_name} at {target.db_address} failed: {exc}"
            raise MigrationError(msg) from None
        if markers(logs, "BACKUP") != [name]:
            msg = f"backup task did not report {name}; log tail:\n{log_tail(logs)}"
            raise MigrationError(msg)
        return name
    msg = "backup names kept colliding"
    raise MigrationError(msg)


def fetched_files(backup_id: str, data: bytes, sha256: str = "") -> dict[str, bytes]:
    """A dump fetched from the store and its checksum line (``sha256``, the recorded one, else
    the dump's own) as task files under ``FETCHED``: the task checks the dump against it."""
    line = f"{sha256 or hashlib.sha256(data).hexdigest()}  {backup_id}\n".encode()
    return {f"{FETCHED}/{backup_id}": data, f"{FETCHED}/{backup_id}{CHECKSUM_SUFFIX}": line}


FETCHED = "fetched"
FROM_FETCHED = f'BACKUP_DIR="$WORK/{FETCHED}"\n'
"""Prepended to a script: read the backup from the task's files instead of the volume."""


def restore_backup(
    runner: Runner,
    target: Target,
    password: str,
    backup_id: str,
    connect_deadline_s: float = 30.0,
    data: bytes | None = None,
    sha256: str = "",
) -> None:
    """Replace the database's public schema with a backup, in one transaction.

    ``data``: the dump itself (fetched from the off-host store), instead of the volume's file,
    checked against ``sha256`` (the recorded checksum) when given.
    """
    if not _BACKUP_ID.match(backup_id):
        msg = f"backup id {backup_id!r} is not a backup file name"
        raise ValueError(msg)
    conn = Conn(target, password, connect_deadline_s)
    if data is None:
        task = conn.task(runner, "restore", RESTORE_SH, env={"BACKUP_ID": backup_id}, backups=True)
    else:
        files = fetched_files(backup_id, data, sha256)
        env = {"BACKUP_ID": backup_id}
        task = conn.task(runner, "restore", FROM_FETCHED + RESTORE_SH, files, env=env)
    try:
        conn.run(runner, task)
    except TaskError as exc:
        if markers(exc.logs, "NOBACKUP"):
            msg = f"backup {backup_id} is not in volume {target.backup_volume}"
            raise MigrationError(msg) from None
        if markers(exc.logs, "CORRUPT"):
            msg = (
                f"backup {backup_id} is corrupt: its sha256 differs from the one recorded when it "
                "was taken; nothing restored (`appstack backup list` shows the others)"
            )
            raise MigrationError(msg) from None
        msg = f"restore of {backup_id} into {target.db_name} failed (rolled back): {exc}"
        raise MigrationError(msg) from None


@dataclass(frozen=True)
class BackupFile:
    """A dump in the backup volume: its id, size in bytes and recorded sha256 ("" if none)."""

    name: str
    size: int
    sha256: str
    where: str = "local"
    """Where it lives: ``local`` (the volume), ``bucket`` (the off-host store) or both."""


def backup_files(runner: Runner, target: Target) -> list[BackupFile]:
    """The dumps of this target's prefix in the backup volume, newest first."""
    if not target.backup_volume:
        msg = "target.backup_volume is not set: backups need a volume"
        raise MigrationError(msg)
    task = Task(
        name="list-backups",
        image=target.client_image,
        command=["sh", "-c", "set -eu\n" + LIST_SH],
        env={
            "BACKUP_DIR": runner.mount_path(target.backup_volume, BACKUP_MOUNT),
            "BACKUP_PREFIX": target.name_prefix,
        },
        mounts=[(target.backup_volume, BACKUP_MOUNT)],
        network=target.network or None,
        timeout_s=120.0,
    )
    out = []
    for raw in markers(runner.run(task).logs, "BACKUP"):
        name, size, sha256 = raw.rsplit(":", 2)
        out.append(BackupFile(name, int(size.strip() or 0), sha256))
    return out


def list_backups(runner: Runner, target: Target) -> list[str]:
    """Backup ids of this target's prefix in the backup volume, newest first."""
    return [f.name for f in backup_files(runner, target)]


@dataclass(frozen=True)
class ReleaseRecord:
    """A migration run that did work: when, which release, its backup, what it applied."""

    ran_at: str
    release: str
    source_image: str
    backup_id: str
    applied: tuple[str, ...]
    ledger: tuple[str, ...]
    revision: str
    backup_sha256: str = ""
    """sha256 of the backup's plaintext dump: what a restore from the off-host store checks."""

    def to_dict(self) -> dict[str, object]:
        """Plain dict form (JSON)."""
        return {
            "ran_at": self.ran_at,
            "release": self.release,
            "source_image": self.source_image,
            "backup_id": self.backup_id,
            "applied": list(self.applied),
            "ledger": list(self.ledger),
            "revision": self.revision,
            "backup_sha256": self.backup_sha256,
        }


def record_release(runner: Runner, conn: Conn, record: ReleaseRecord) -> None:
    """Write ``record`` into ``appstack.releases`` (created when missing)."""
    values = ", ".join(
        [
            _lit(record.ran_at) + "::timestamptz",
            _lit(record.release),
            _lit(record.source_image),
            _lit(record.backup_id),
            _lit(json.dumps(list(record.applied))) + "::jsonb",
            _lit(json.dumps(list(record.ledger))) + "::jsonb",
            _lit(record.revision),
            _lit(record.backup_sha256),
        ]
    )
    sql = (
        f"\\set ON_ERROR_STOP on\n{RELEASES_DDL}\n"
        f"INSERT INTO {RELEASES} (ran_at, release, source_image, backup_id, applied, "
        f"ledger, revision, backup_sha256) VALUES ({values});\n"
    )
    task = conn.task(runner, "record", PSQL.format(file="r.sql"), {"r.sql": sql.encode()})
    conn.run(runner, task)


READ_RELEASES_SQL = f"""\\set ON_ERROR_STOP on
SELECT to_regclass('{RELEASES}') IS NOT NULL AS appstack_has_releases \\gset
\\if :appstack_has_releases
SELECT '{MARK}RELEASE:' || json_build_object(
  'ran_at', to_char(ran_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'release', release, 'source_image', source_image, 'backup_id', backup_id,
  'applied', applied, 'ledger', ledger, 'revision', revision,
  'backup_sha256', backup_sha256)::text
  FROM {RELEASES} ORDER BY ran_at, id;
\\endif
"""  # noqa: S608 - module constants only


def read_releases(runner: Runner, conn: Conn) -> list[ReleaseRecord]:
    """Every recorded migration run, oldest first (none when the table does not exist yet)."""
    task = conn.task(
        runner, "releases", PSQL.format(file="r.sql"), {"r.sql": READ_RELEASES_SQL.encode()}
    )
    out = []
    for raw in markers(conn.run(runner, task), "RELEASE"):
        row = json.loads(raw)
        out.append(
            ReleaseRecord(
                ran_at=str(row["ran_at"]),
                release=str(row["release"]),
                source_image=str(row["source_image"]),
                backup_id=str(row["backup_id"]),
                applied=tuple(row["applied"] or ()),
                ledger=tuple(row["ledger"] or ()),
                revision=str(row["revision"]),
                backup_sha256=str(row.get("backup_sha256") or ""),
            )
        )
    return out
