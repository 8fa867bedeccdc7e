"""The ``Migration`` dynamic resource: back up, quiesce, migrate, record what was applied."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.providers.backup_store import StoreConfig, Taken, take_and_ship
from components.providers.postgres import (
    DEFAULT_LOCK_TIMEOUT,
    Conn,
    DbState,
    MigrationError,
    ReleaseRecord,
    apply_plan,
    check_lock_timeout,
    load_schema,
    pg_env,
    plan_migration,
    query_state,
    record_release,
    schema_checksum,
)
from components.providers.runner import (
    Runner,
    Target,
    Task,
    TaskError,
    log_tail,
    runner_for,
    sweep_leftover_tasks,
)
from components.providers.window import close_window, open_window
from components.spec import MigrationSpec

MODES = ("sql-dir", "command")
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
"""The value Pulumi sends for an input that is not known yet (preview)."""

RERUN_KEYS = ("mode", "source_image", "schema_path", "schema_version", "command", "baseline")
"""Inputs whose change re-runs the migration (plus the database the target names)."""
TARGET_IDENTITY = ("kind", "docker_host", "db_host", "db_port", "db_name")
ECHOED_KEYS = (
    *RERUN_KEYS,
    "target",
    "env",
    "keep_backups",
    "quiescent",
    "release",
    "connect_deadline_s",
    "task_timeout_s",
    "lock_timeout",
    "heads_command",
    "downgrade_command",
    "window",
    "backup_store",
)
"""Non-secret inputs copied into the outputs, so that ``diff`` can compare against them."""
SECRET_KEYS = ("db_password", "secret_env", "backup_store_secrets")


@dataclass(frozen=True)
class MigrationInputs:
    """The provider's parsed inputs."""

    target: Target
    mode: str
    source_image: str
    password: str
    schema_path: str = "/app/schema"
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)
    baseline: str | None = None
    keep_backups: int = 5
    quiescent: tuple[str, ...] = ()
    release: str = ""
    connect_deadline_s: float = 30.0
    task_timeout_s: float = 1800.0
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT
    heads_command: tuple[str, ...] = ()
    window: Mapping[str, Any] | None = None
    """The edge to open the maintenance window at (its name and labels), Docker only."""
    store: StoreConfig | None = None
    """The off-host store each backup is shipped to (``appstack:backups``)."""

    @classmethod
    def parse(cls, props: Mapping[str, Any]) -> MigrationInputs:
        """Inputs from the provider's property bag."""
        return cls(
            target=Target.from_dict(props["target"]),
            mode=str(props.get("mode") or "sql-dir"),
            source_image=str(props.get("source_image") or ""),
            password=str(props.get("db_password") or ""),
            schema_path=str(props.get("schema_path") or "/app/schema"),
            command=tuple(str(c) for c in props.get("command") or ()),
            env={str(k): str(v) for k, v in (props.get("env") or {}).items()},
            secret_env={str(k): str(v) for k, v in (props.get("secret_env") or {}).items()},
            baseline=props.get("baseline") or None,
            keep_backups=int(props.get("keep_backups") or 5),
            quiescent=tuple(str(n) for n in props.get("quiescent") or ()),
            release=str(props.get("release") or ""),
            connect_deadline_s=float(props.get("connect_deadline_s") or 30.0),
            task_timeout_s=float(props.get("task_timeout_s") or 1800.0),
            lock_timeout=str(props.get("lock_timeout") or DEFAULT_LOCK_TIMEOUT),
            heads_command=tuple(str(c) for c in props.get("heads_command") or ()),
            window=dict(props["window"]) if props.get("window") else None,
            store=StoreConfig.from_inputs(
                props.get("backup_store"), props.get("backup_store_secrets")
            ),
        )

    @property
    def release_label(self) -> str:
        """The label backups carry: the release, else the image tag."""
        return self.release or self.source_image.rsplit(":", 1)[-1].rsplit("@", 1)[-1]

    def conn(self) -> Conn:
        """Connection settings for database tasks."""
        return Conn(self.target, self.password, self.connect_deadline_s, self.task_timeout_s)


def _known(value: object) -> bool:
    return not (isinstance(value, str) and value == UNKNOWN)


def _check_failures(news: Mapping[str, Any]) -> list[CheckFailure]:
    """Validation of the inputs that are known (previews may leave some unknown)."""
    failures: list[CheckFailure] = []
    mode = news.get("mode", "sql-dir")
    if _known(mode) and mode not in MODES:
        failures.append(CheckFailure("mode", f"mode {mode!r} is not one of {', '.join(MODES)}"))
    if _known(mode) and mode == "command" and not news.get("command"):
        failures.append(CheckFailure("command", "mode 'command' needs a command"))
    target = news.get("target")
    if not isinstance(target, Mapping):
        if _known(target):
            failures.append(CheckFailure("target", "target must be a dict (Target.to_dict())"))
    elif all(_known(v) for v in target.values()):
        try:
            Target.from_dict(target)
        except (TypeError, ValueError) as exc:
            failures.append(CheckFailure("target", str(exc)))
    keep = news.get("keep_backups", 5)
    if _known(keep) and (not isinstance(keep, int | float) or keep < 1):
        failures.append(CheckFailure("keep_backups", f"keep_backups must be >= 1, got {keep!r}"))
    if not news.get("source_image"):
        failures.append(CheckFailure("source_image", "source_image is required"))
    lock_timeout = news.get("lock_timeout") or DEFAULT_LOCK_TIMEOUT
    if _known(lock_timeout):
        try:
            check_lock_timeout(str(lock_timeout))
        except ValueError as exc:
            failures.append(CheckFailure("lock_timeout", str(exc)))
    return failures


def _restart(runner: Runner, names: Sequence[str], notes: list[str]) -> None:
    missing = runner.start_containers(names)
    if missing:
        notes.append(f"quiescent containers not found to restart: {missing}")


class MigrationProvider(ResourceProvider):
    """Runs an app's migration inside the target; a migration cannot be un-run."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate mode, target, keep_backups and the command before anything runs."""
        return CheckResult(news, _check_failures(news))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Re-run (update in place) only when what decides the migration changed."""
        changed = [k for k in RERUN_KEYS if _norm(olds.get(k)) != _norm(news.get(k))]
        old_t, new_t = olds.get("target") or {}, news.get("target") or {}
        if (
            not isinstance(new_t, Mapping)
            or not isinstance(old_t, Mapping)
            or any(_norm(old_t.get(k)) != _norm(new_t.get(k)) for k in TARGET_IDENTITY)
        ):
            changed.append("target")
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Plan, back up when needed, quiesce, migrate; raise on any failure."""
        args = MigrationInputs.parse(props)
        outs = _migrate(args, props)
        return CreateResult(f"{args.target.name_prefix}-{args.target.db_name}-migration", outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Same as create: the plan decides what is left to do."""
        return UpdateResult(_migrate(MigrationInputs.parse(news), news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Leave the database alone: a migration cannot be un-run (restore a backup instead)."""


def _norm(value: Any) -> Any:
    """Compare lists and tuples alike, and None like an empty value."""
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if value not in (None, "") else None


def _recover(args: MigrationInputs, runner: Runner) -> list[str]:
    """Undo what a killed run may have left: its task containers, and stopped quiescent services.

    A run killed between stopping the quiescent services and starting them again left them
    stopped, and the next plan may have nothing pending: so they are started first, always (a
    running one is left as it is); the ones with pending work are stopped again just below.
    """
    notes: list[str] = []
    swept = sweep_leftover_tasks(runner)
    if swept:
        notes.append(f"removed task containers a killed run left: {swept}")
    if args.quiescent:
        missing = runner.start_containers(args.quiescent)
        found = [n for n in args.quiescent if n not in missing]
        if found:
            notes.append(f"quiescent containers started (if a killed run left them): {found}")
    return notes


def _migrate(args: MigrationInputs, props: Mapping[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    runner = runner_for(args.target)
    recovered = _recover(args, runner)
    conn = args.conn()
    state = query_state(runner, conn)
    if args.mode == "sql-dir":
        result = _run_sql_dir(args, runner, conn, state)
    else:
        result = _run_command(args, runner, conn, state)
    outs: dict[str, Any] = {k: props[k] for k in ECHOED_KEYS if k in props}
    outs.update(result)
    outs["notes"] = [*recovered, *result["notes"]]
    outs["duration_s"] = round(time.monotonic() - started, 3)
    outs["ran_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if (
        result["applied"]
        or result["backup_id"]
        or result["revision_before"] != result["revision_after"]
    ):
        record = ReleaseRecord(
            ran_at=outs["ran_at"],
            release=args.release_label,
            source_image=args.release or args.source_image,
            backup_id=result["backup_id"],
            backup_sha256=result.get("backup_sha256") or "",
            applied=tuple(result["applied"]),
            ledger=tuple(row["name"] for row in result["ledger"]),
            revision=result["revision_after"],
        )
        try:
            record_release(runner, conn, record)
        except (TaskError, MigrationError) as exc:  # the migration itself is done: say so
            outs["notes"].append(f"could not record the release in appstack.releases: {exc}")
    for key in SECRET_KEYS:
        outs.pop(key, None)
    return outs


def _quiesced_backup(
    args: MigrationInputs, runner: Runner, state: DbState, notes: list[str]
) -> Taken | None:
    """Back up a database that has something to lose (off the host too, when a store is
    configured); say so when it does not."""
    if state.empty:
        notes.append("empty database: nothing to back up")
        return None
    taken = take_and_ship(
        runner,
        args.target,
        args.password,
        args.release_label,
        args.keep_backups,
        args.store,
        connect_deadline_s=args.connect_deadline_s,
    )
    if taken.shipped and args.store is not None:
        stack = args.target.stack or args.target.name_prefix
        kept = "kept" if taken.local else "removed"
        dropped = list(taken.pruned) or "none"
        notes.append(f"backup {taken.name} shipped to {args.store.where(stack, taken.name)} "
                     f"(local copy {kept}; retention dropped {dropped})")  # fmt: skip
    return taken


def _with_quiescence(args: MigrationInputs, runner: Runner, notes: list[str], work: Any) -> Any:
    """Stop the quiescent containers, run ``work``, start them again (also on failure)."""
    if not args.quiescent:
        return work()
    try:
        missing = runner.stop_containers(args.quiescent)
        if missing:
            notes.append(f"quiescent containers not found (not stopped): {missing}")
        result = work()
    except BaseException as exc:
        try:
            _restart(runner, args.quiescent, notes)
        except Exception as restart_exc:
            exc.add_note(f"restarting {list(args.quiescent)} also failed: {restart_exc}")
        raise
    _restart(runner, args.quiescent, notes)
    return result


def _run_sql_dir(
    args: MigrationInputs, runner: Runner, conn: Conn, state: DbState
) -> dict[str, Any]:
    files = load_schema(runner.read_image_dir(args.source_image, args.schema_path))
    plan = plan_migration(files, state, args.baseline)
    notes: list[str] = list(plan.notes)
    taken: Taken | None = None
    applied: list[str] = []
    if plan.has_work:

        def work() -> list[str]:
            nonlocal taken
            taken = _quiesced_backup(args, runner, state, notes)
            return apply_plan(runner, conn, plan, args.lock_timeout)

        applied = _with_quiescence(args, runner, notes, work)
        state = query_state(runner, conn)
    else:
        notes.append("nothing pending: no backup, nothing stopped")
    baselined = [f.name for f in plan.baselined]
    if plan.init is not None:
        applied = [plan.init.name, *applied]
    return {
        "applied": applied,
        "baselined": baselined,
        "pending_before": len(plan.pending) + len(plan.baselined) + (1 if plan.init else 0),
        "ledger": [row.to_dict() for row in state.ledger],
        "schema_checksum": schema_checksum(files),
        "backup_id": taken.name if taken else "",
        "backup_sha256": taken.sha256 if taken else "",
        "revision_before": "",
        "revision_after": "",
        "window_opened": "",
        "notes": notes,
    }


_HEAD = re.compile(r"^\s*([0-9A-Za-z_]+) \(head\)", re.MULTILINE)


def _heads(args: MigrationInputs, runner: Runner, env: Mapping[str, str]) -> list[str]:
    """The image's head revision(s), from ``heads_command`` (``alembic heads``)."""
    task = Task(
        name="migrate-heads",
        image=args.source_image,
        command=list(args.heads_command),
        env=dict(env),
        network=args.target.network or None,
        timeout_s=min(args.task_timeout_s, 300.0),
        secret_keys=("PGPASSWORD", *args.secret_env),
    )
    try:
        logs = runner.run(task).logs
    except TaskError as exc:
        msg = f"{list(args.heads_command)} failed in {args.source_image}: {exc}"
        raise MigrationError(msg) from None
    heads = _HEAD.findall(logs)
    if not heads:
        msg = f"{list(args.heads_command)} printed no '<revision> (head)' line:\n{log_tail(logs)}"
        raise MigrationError(msg)
    return heads


def _result(
    state: DbState, after: DbState, taken: Taken | None, notes: list[str], opened: str
) -> dict[str, Any]:
    return {
        "applied": [],
        "baselined": [],
        "pending_before": 0,
        "ledger": [],
        "schema_checksum": "",
        "backup_id": taken.name if taken else "",
        "backup_sha256": taken.sha256 if taken else "",
        "revision_before": state.revision or "",
        "revision_after": after.revision or "",
        "window_opened": opened,
        "notes": notes,
    }


def _run_command(
    args: MigrationInputs, runner: Runner, conn: Conn, state: DbState
) -> dict[str, Any]:
    notes: list[str] = []
    taken: Taken | None = None
    # libpq (psql, psycopg2 under alembic) reads PGOPTIONS: the command's statements get the
    # lock_timeout too. The advisory lock is the sql-dir engine's (it owns the session).
    lock_option = f"-c lock_timeout={args.lock_timeout}"
    env = {**pg_env(args.target, args.password), "PGOPTIONS": lock_option, **args.env}
    env.update(args.secret_env)
    if args.heads_command and not state.empty:
        heads = _heads(args, runner, env)
        if state.revision in heads:
            notes.append(f"revision {state.revision} is the image's head: nothing pending, "
                         "no maintenance window, no backup")  # fmt: skip
            return _result(state, state, None, notes, "")
        notes.append(f"revision {state.revision or '(none)'} -> head {', '.join(heads)}")
    task = Task(
        name="migrate-command",
        image=args.source_image,
        command=list(args.command),
        env=env,
        network=args.target.network or None,
        timeout_s=args.task_timeout_s,
        secret_keys=("PGPASSWORD", *args.secret_env),
    )
    opened = ""
    if args.window and not state.empty:  # the runbook: maintenance on before the backup
        opened = open_window(args.target.docker_host or None, args.window)
        notes.append(f"maintenance window opened at {opened}" if opened else "no edge running")

    def work() -> None:
        nonlocal taken
        taken = _quiesced_backup(args, runner, state, notes)
        try:
            runner.run(task)
        except TaskError as exc:
            msg = f"migration command {list(args.command)} failed: {exc}"
            raise MigrationError(msg) from None

    try:
        _with_quiescence(args, runner, notes, work)
    except Exception as exc:
        if not opened:
            raise
        # The running release serves on, its data as it was: the window must not outlive this.
        try:
            close_window(args.target.docker_host or None, args.window or {})
            said = "the maintenance window was closed: the running release serves"
        except Exception as close_exc:
            said = f"closing the maintenance window also failed: {close_exc}"
        raise MigrationError(f"{exc}\n{said}") from exc
    return _result(state, query_state(runner, conn), taken, notes, opened)


@dataclass(frozen=True)
class MigrationArgs:
    """Inputs of a ``Migration``; only ``db_password`` and ``secret_env`` are secret."""

    target: pulumi.Input[Mapping[str, Any]]
    source_image: pulumi.Input[str]
    db_password: pulumi.Input[str]
    mode: str = "sql-dir"
    schema_path: str = "/app/schema"
    schema_version: pulumi.Input[str] = ""
    """Opaque re-run trigger for the migration set (e.g. ``schema_checksum_of_dir``)."""
    command: Sequence[str] = ()
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    baseline: str | None = None
    keep_backups: int = 5
    quiescent: Sequence[str] = ()
    release: pulumi.Input[str] = ""
    connect_deadline_s: float = 30.0
    task_timeout_s: float = 1800.0
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT
    """PostgreSQL ``lock_timeout`` of migration statements (``appstack:migrationLockTimeout``)."""
    heads_command: Sequence[str] = ()
    downgrade_command: Sequence[str] = ()
    """Not run here: kept in the state for ``appstack rollback``."""
    window: Mapping[str, Any] | None = None
    """The edge container's name and labels: open the maintenance window there (Docker)."""
    backup_store: Mapping[str, Any] | None = None
    """Where backups go off the host (``BackupStoreSpec.plain``); no credentials."""
    backup_store_secrets: pulumi.Input[Mapping[str, str]] | None = None
    """The store's access key, secret key and encryption key: a secret input."""


def stack_target(target: Target) -> Target:
    """``target`` naming the program's stack, which labels its task containers."""
    return target if target.stack else dataclasses.replace(target, stack=pulumi.get_stack())


def migration_args(
    spec: MigrationSpec,
    target: Target,
    source_image: pulumi.Input[str],
    quiescent: Sequence[str],
    window: Mapping[str, Any] | None = None,
) -> MigrationArgs:
    """A ``Migration``'s inputs for an app's ``MigrationSpec`` on one platform's target.

    ``source_image`` is what decides a re-run (the resolved image ID where the platform has one);
    ``quiescent`` names the platform's objects for the spec's quiescent services.
    """
    return MigrationArgs(
        target=stack_target(target).to_dict(),
        mode=spec.mode,
        source_image=source_image,
        release=spec.source_image,
        schema_path=spec.schema_path,
        command=list(spec.command),
        env=dict(spec.env),
        secret_env=dict(spec.secret_env),
        baseline=spec.baseline,
        keep_backups=spec.keep_backups,
        quiescent=list(quiescent),
        db_password=spec.database.password,
        lock_timeout=spec.lock_timeout,
        heads_command=list(spec.heads_command),
        downgrade_command=list(spec.downgrade_command),
        window=window,
        backup_store=spec.backup_store.plain if spec.backup_store else None,
        backup_store_secrets=spec.backup_store.secrets if spec.backup_store else None,
    )


class Migration(Resource, module="ops", name="Migration"):
    """An app's schema migration on every release whose image or migration set changed."""

    applied: pulumi.Output[list[str]]
    baselined: pulumi.Output[list[str]]
    pending_before: pulumi.Output[int]
    ledger: pulumi.Output[list[dict[str, str]]]
    schema_checksum: pulumi.Output[str]
    backup_id: pulumi.Output[str]
    backup_sha256: pulumi.Output[str]
    duration_s: pulumi.Output[float]
    revision_before: pulumi.Output[str]
    revision_after: pulumi.Output[str]
    ran_at: pulumi.Output[str]
    window_opened: pulumi.Output[str]
    notes: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: MigrationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props: dict[str, Any] = {
            "target": args.target,
            "mode": args.mode,
            "source_image": args.source_image,
            "schema_path": args.schema_path,
            "schema_version": args.schema_version,
            "command": list(args.command),
            "env": dict(args.env),
            "secret_env": pulumi.Output.secret(dict(args.secret_env)),
            "db_password": pulumi.Output.secret(args.db_password),
            "baseline": args.baseline,
            "keep_backups": args.keep_backups,
            "quiescent": list(args.quiescent),
            "release": args.release,
            "connect_deadline_s": args.connect_deadline_s,
            "task_timeout_s": args.task_timeout_s,
            "lock_timeout": args.lock_timeout,
            "heads_command": list(args.heads_command),
            "downgrade_command": list(args.downgrade_command),
            "window": dict(args.window) if args.window else None,
            "backup_store": dict(args.backup_store) if args.backup_store else None,
            # The store's credentials and key: a secret input, never in outputs (SECRET_KEYS).
            "backup_store_secrets": pulumi.Output.secret(args.backup_store_secrets or {}),
            **dict.fromkeys(
                (
                    "applied",
                    "baselined",
                    "pending_before",
                    "ledger",
                    "schema_checksum",
                    "backup_id",
                    "backup_sha256",
                    "duration_s",
                    "revision_before",
                    "revision_after",
                    "ran_at",
                    "window_opened",
                    "notes",
                )
            ),
        }
        super().__init__(MigrationProvider(), name, props, opts)
