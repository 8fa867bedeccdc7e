"""``appstack``: the operator CLI (status, history, rollback, deploy, release, logs, backup,
maintenance).

Exit codes: 0 done; 1 a step failed; 2 bad input (unknown stack, entry out of range, entry that
failed); 3 refused (confirmation missing, or the schema moved and --restore-backup was not given);
4 ``deploy`` failed its smoke tests and rolled back; 5 ``deploy`` failed and could not roll back.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from components.ops import backup, release
from components.ops.stack import (
    MIGRATION_TYPE,
    Entry,
    OpsError,
    Pulumi,
    attach_releases,
    find_project,
    image_refs,
    migration_state,
    pick,
    plaintext,
    platform,
    read_events,
    resources,
    stale_locks,
)
from components.providers.postgres import pg_env

APPS_WITH_CHUNKS = ("haven",)
RESET_CHUNKS = "UPDATE chunks SET embedding_status='pending' WHERE embedding_status='processing'"


def say(message: str) -> None:
    """Progress for the operator, on stderr (stdout is for results and --json)."""
    print(f"appstack: {message}", file=sys.stderr, flush=True)


def _stack(args: argparse.Namespace) -> Pulumi:
    cwd = find_project(Path(args.cwd).resolve())
    stack = Pulumi(cwd, args.stack)
    if not stack.exists():
        msg = f"unknown stack {args.stack!r} (see `pulumi stack ls` in {cwd})"
        raise OpsError(msg, 2)
    return stack


def _project(stack: Pulumi) -> str:
    data = yaml.safe_load((stack.cwd / "Pulumi.yaml").read_text())
    return str(data["name"])


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") if seconds else "-"


# -- status / history ---------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Each service's image and health, the last migration, backup and smoke test, the alerts.

    Docker: each container as the engine has it (health, restarts, a failing probe's output), and
    the alerts firing in the stack's Prometheus. Kubernetes: each Deployment and StatefulSet as the
    cluster has it now (components/ops/kube.py).
    """
    from components.ops import docker_status

    stack = _stack(args)
    deployment, config = stack.export(secrets=True), stack.config()
    alerts = None
    if platform(config, args.stack) == "kubernetes":
        from components.ops import kube

        services = kube.read(kube.workloads(deployment), kube.context(config))
        lines = [kube.describe(svc) for svc in services]
    else:
        services = docker_status.containers(deployment)
        lines = [_docker_line(svc) for svc in services]
        alerts = docker_status.firing_alerts(deployment)
    report = {
        "stack": args.stack,
        "services": services,
        "migration": migration_state(deployment),
        "smoke": docker_status.last_smoke(deployment),
        "app_health": docker_status.app_health(deployment),
        "alerts": alerts,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for line in lines:
        print(line)
    mig = report["migration"]
    if mig:
        print(f"migration: {len(mig['ledger'])} files in ledger, last applied {mig['applied']}")
        print(f"last backup: {mig['backup_id'] or '(none)'}  ran at {mig['ran_at']}")
        if mig.get("revision"):
            print(f"schema revision: {mig['revision']}")
    smoke = report["smoke"]
    if smoke:
        print(f"last smoke test passed at {smoke['checked_at']}: {', '.join(smoke['passed'])}")
    for answer in report["app_health"]:
        print(f"{answer['path']}: {answer['status']} {answer['detail']}")
    if alerts is not None:
        firing = [f"{a['alert']} ({a['labels'] or a['severity']})" for a in alerts]
        print(f"alerts firing: {', '.join(firing) or 'none'}")
    return 0


def _docker_line(svc: dict[str, Any]) -> str:
    line = f"{svc['name']:<32} {svc['health']:<10} restarts={svc['restarts']:<3} {svc['image']}"
    if svc.get("last_probe"):
        line += f"\n{'':<32} last probe: {svc['last_probe']}"
    return line


def history(stack: Pulumi) -> list[Entry]:
    """The stack's updates (``pulumi stack history``) with the app database's release records.

    Works on every backend: nothing reads the backend's checkpoint files.
    """
    entries = stack.history()
    if not entries:
        msg = f"stack {stack.stack!r} has no history yet"
        raise OpsError(msg, 2)
    if resources(stack.export(), MIGRATION_TYPE):
        from components.providers.postgres import Conn, read_releases

        runner, target, password, _quiescent, _app = _db_access(stack)
        records = read_releases(runner, Conn(target, password))
        attach_releases(entries, [r.to_dict() for r in records])
    return entries


def cmd_history(args: argparse.Namespace) -> int:
    """One line per update, newest first, numbered stably (oldest = 1)."""
    stack = _stack(args)
    entries = history(stack)
    if args.json:
        print(json.dumps([e.as_json() for e in reversed(entries)], indent=2))
        return 0
    for e in reversed(entries):
        images = ",".join(f"{k}={v.rsplit(':', 1)[-1]}" for k, v in e.images.items()) or "-"
        mig = e.migration
        print(
            f"{e.number:>4}  {_when(e.start)}  {e.kind:<8} {e.result:<10} "
            f"ledger={len(mig.get('ledger', []))} rev={mig.get('revision') or '-'} "
            f"backup={mig.get('backup_id') or '-'}  {images}"
        )
    return 0


# -- rollback -----------------------------------------------------------------------------------


def _plan(
    current: dict[str, str], target: Entry, ledger_now: list[str], revision_now: str = ""
) -> dict[str, Any]:
    ledger_then = target.migration.get("ledger", [])
    revision_then = str(target.migration.get("revision") or "")
    moved = bool(revision_now and revision_then and revision_now != revision_then)
    return {
        "to": target.number,
        "images": {
            svc: {"from": current.get(svc), "to": ref}
            for svc, ref in target.images.items()
            if current.get(svc) != ref
        },
        "schema_moved": sorted(set(ledger_now) - set(ledger_then)),
        "revision": {"from": revision_now, "to": revision_then} if moved else None,
    }


def _restore_point(entries: Sequence[Entry], target: Entry) -> str:
    """The backup taken just before the first migration after ``target``: its schema and data."""
    for entry in entries[target.number :]:
        mig = entry.migration
        if entry.result == "succeeded" and mig.get("backup_id") and mig.get("applied"):
            return str(mig["backup_id"])
    msg = f"no pre-migration backup was recorded after entry {target.number}: cannot restore"
    raise OpsError(msg)


def _db_access(stack: Pulumi) -> tuple[Any, Any, str, list[str], str]:
    """Runner, target, password, quiescent containers and app of the stack's migration."""
    from components.providers.runner import Target, runner_for

    found = resources(stack.export(secrets=True), MIGRATION_TYPE)
    if not found:
        msg = "this stack has no Migration resource: nothing to restore"
        raise OpsError(msg)
    res = found[0]
    target = Target.from_dict(res["outputs"]["target"])
    password = str(plaintext(res["inputs"]["db_password"]))
    quiescent = list(res["outputs"].get("quiescent") or [])
    app = target.name_prefix.split("-")[-1]
    return runner_for(target), target, password, quiescent, app


def _restore(stack: Pulumi, backup_id: str) -> str:
    """Fresh backup, restore ``backup_id``, reset in-flight work; workers stopped meanwhile."""
    from components.providers.postgres import Conn, restore_backup

    runner, target, password, quiescent, app = _db_access(stack)
    store = backup.store_of(stack)
    say("taking a fresh backup before restoring")
    keep = max(5, len(quiescent) + 5)
    # protect: the pruning after this backup must never remove the one about to be restored.
    fresh = backup.take(runner, target, password, "pre-rollback", keep, store, [backup_id]).name
    # Not (or no longer) in the volume: downloaded from the bucket and checked before anything.
    data = backup.from_store(runner, target, password, store, backup_id)
    say(f"fresh backup {fresh}; stopping {', '.join(quiescent) or 'nothing'}")
    runner.stop_containers(quiescent)
    try:
        where = "the bucket" if data is not None else "the backup volume"
        say(f"restoring {backup_id} from {where}")
        restore_backup(runner, target, password, backup_id, data=data)
        if app in APPS_WITH_CHUNKS:
            _sql(runner, Conn(target, password), RESET_CHUNKS)
    finally:
        runner.start_containers(quiescent)
    return fresh


def _sql(runner: Any, conn: Any, sql: str) -> None:
    script = f'psql -X -q -v ON_ERROR_STOP=1 -c "{sql}"\n'
    conn.run(runner, conn.task(runner, "sql", script))


def _reset_chunks(stack: Pulumi) -> None:
    from components.providers.postgres import Conn

    runner, target, password, _quiescent, app = _db_access(stack)
    if app not in APPS_WITH_CHUNKS:
        return
    say("resetting chunks in 'processing' to 'pending'")
    _sql(runner, Conn(target, password), RESET_CHUNKS)


def _set_images(stack: Pulumi, target: Entry) -> None:
    """Write entry N's image references into the stack's config, field by field (YAML stays)."""
    images = target.config.get("appstack:images")
    if isinstance(images, str):
        images = json.loads(images)
    pairs = []
    for svc, spec in sorted((images or {}).items()):
        stack.run("config", "rm", "--path", f"appstack:images.{svc}", check=False)
        if isinstance(spec, str):
            pairs.append(f"appstack:images.{svc}={spec}")
            continue
        pairs += [f"appstack:images.{svc}.{k}={v}" for k, v in sorted(spec.items())]
    stack.run("config", "set-all", "--path", *[a for p in pairs for a in ("--plaintext", p)])


def _confirm(args: argparse.Namespace, plan: dict[str, Any]) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        msg = "confirmation required: re-run with --yes (no terminal to ask on)"
        raise OpsError(msg, 3)
    answer = input(f"roll back {args.stack} to entry {plan['to']}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        msg = "not confirmed: nothing changed"
        raise OpsError(msg, 3)


def _downgrade(stack: Pulumi, args: argparse.Namespace, entries: list[Entry], target: Entry,
               revision: dict[str, str]) -> None:  # fmt: skip
    """The runbook's rollback of the data: window, backup, downgrade with the CURRENT image.

    The older image does not know the newer revisions, so the image that applied them takes the
    schema back; a failing downgrade leaves the window closed and the release running, unless
    ``--restore-backup`` restores the pre-migration dump instead.
    """
    from components.providers.postgres import (
        Conn,
        MigrationError,
        ReleaseRecord,
        record_release,
    )
    from components.providers.runner import Task, TaskError
    from components.providers.window import close_window, open_window

    runner, db_target, password, _quiescent, _app = _db_access(stack)
    res = resources(stack.export(secrets=True), MIGRATION_TYPE)[0]
    inputs = res["inputs"]
    window = inputs.get("window") or None
    host = db_target.docker_host or None
    if window:
        say(f"maintenance window open: {open_window(host, window) or 'no edge running'}")
    try:
        taken = backup.take(runner, db_target, password, "pre-rollback", _keep(stack),
                            backup.store_of(stack))  # fmt: skip
        fresh = taken.name
        say(f"backup {fresh}; downgrading {revision['from']} -> {revision['to']} with the "
            f"current image {inputs.get('release') or inputs['source_image']}")  # fmt: skip
        env = {**pg_env(db_target, password), **_plain_map(inputs.get("env")),
               **_plain_map(inputs.get("secret_env"))}  # fmt: skip
        command = [*inputs["downgrade_command"], revision["to"]]
        task = Task(name="downgrade", image=str(inputs["source_image"]), command=command,
                    env=env, network=db_target.network or None,
                    secret_keys=("PGPASSWORD", *_plain_map(inputs.get("secret_env"))))  # fmt: skip
        runner.run(task)
    except (TaskError, MigrationError) as exc:
        if not args.restore_backup:
            if window:
                close_window(host, window)
            msg = (
                f"downgrade to {revision['to']} failed; the running release serves on (window "
                f"closed). --restore-backup restores the pre-migration dump instead:\n{exc}"
            )
            raise OpsError(msg) from None
        say(f"downgrade failed ({exc}); restoring the pre-migration backup instead")
        backup_id = _restore_point(entries, target)
        _restore(stack, backup_id)
        return
    record = ReleaseRecord(
        ran_at=datetime.now(UTC).isoformat(timespec="seconds"),
        release=f"rollback-to-{target.number}",
        source_image="",
        backup_id=fresh,
        backup_sha256=taken.sha256,
        applied=(),
        ledger=(),
        revision=revision["to"],
    )
    record_release(runner, Conn(db_target, password), record)
    say(f"database at revision {revision['to']}; the rest of the runbook is `pulumi up`")


def _plain_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (plaintext(value) or {}).items()}


def _keep(stack: Pulumi) -> int:
    """Backups the stack keeps (``keep_backups`` of its Migration), at least 5."""
    found = resources(stack.export(), MIGRATION_TYPE)
    keep = (found[0].get("inputs") or {}).get("keep_backups") if found else None
    return max(5, int(keep or 5))


def rollback(args: argparse.Namespace, stack: Pulumi, entries: list[Entry], target: Entry) -> int:
    """Set entry N's images, take the data back if the schema moved (when allowed), `pulumi up`.

    A revision-tracked schema (alembic) moves back by a downgrade; a ledger (sql-dir) by
    restoring the backup taken before the first migration after the target, if asked.
    """
    current = image_refs(stack.config())
    now = migration_state(stack.export())
    plan = _plan(current, target, now.get("ledger", []), now.get("revision", ""))
    print(json.dumps(plan, indent=2) if args.json else _describe(plan))
    if plan["revision"]:
        _confirm(args, plan)
        bucket = backup.measure(stack, say)
        _downgrade(stack, args, entries, target, plan["revision"])
        _set_images(stack, target)
        say("pulumi up (smoke tests run as its last step; they close the maintenance window)")
        _up(stack)
        say(f"rolled back to entry {target.number}")
        backup.report(stack, bucket, say)
        return 0
    if plan["schema_moved"] and not args.restore_backup:
        msg = (
            f"the schema moved since entry {target.number} ({', '.join(plan['schema_moved'])}); "
            "rolling back needs --restore-backup (data written since that backup is lost)"
        )
        raise OpsError(msg, 3)
    _confirm(args, plan)
    bucket = backup.measure(stack, say)
    if plan["schema_moved"]:
        backup_id = _restore_point(entries, target)
        fresh = _restore(stack, backup_id)
        say(f"restored {backup_id} (the state before the rollback is in {fresh})")
    elif now:
        # Without a Migration resource (kubernetes.skipClusterTasks) no database task runs.
        _reset_chunks(stack)
    _set_images(stack, target)
    say("pulumi up (smoke tests run as its last step)")
    _up(stack)
    say(f"rolled back to entry {target.number}")
    backup.report(stack, bucket, say)
    return 0


def _describe(plan: dict[str, Any]) -> str:
    lines = [f"rollback to entry {plan['to']}:"]
    for svc, change in plan["images"].items():
        lines.append(f"  {svc}: {change['from']} -> {change['to']}")
    if not plan["images"]:
        lines.append("  images: unchanged")
    if plan["schema_moved"]:
        lines.append(f"  schema: newer than the target (applied since: {plan['schema_moved']})")
    elif plan.get("revision"):
        rev = plan["revision"]
        lines.append(f"  schema: revision {rev['from']} -> {rev['to']} (downgrade, backup first)")
    else:
        lines.append("  schema: same as the target")
    return "\n".join(lines)


def cmd_rollback(args: argparse.Namespace) -> int:
    """``appstack rollback --to N|previous``."""
    stack = _stack(args)
    entries = history(stack)
    return rollback(args, stack, entries, pick(entries, args.to))


# -- deploy / maintenance -----------------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    """`pulumi up`; when its smoke tests fail, roll back to the last good entry."""
    stack = _stack(args)
    for pid in stale_locks(_project(stack), args.stack):
        say(f"releasing the lock of a killed update (pid {pid} is gone): `pulumi cancel`")
        stack.run("cancel", "--yes")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="appstack-deploy-") as tmp:
        log = Path(tmp) / "events.jsonl"
        # The engine's structured events show the steps as they go and decide the outcome,
        # never the output's text.
        say("pulumi up (smoke tests run as its last step)")
        proc = stack.up(log, _step)
        outcome = read_events(log) if log.exists() else None
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode == 0:
        say(f"deployed in {time.monotonic() - started:.0f}s; smoke tests passed")
        return 0
    print(output[-4000:], file=sys.stderr)
    if outcome is None:
        say("the update failed and left no event log: not rolling back (nothing to decide on)")
        return 1
    if not outcome.smoke_failed:
        say("the update failed before its smoke tests: the running release was left in place")
        return 1
    for error in outcome.errors:
        print(error, file=sys.stderr)
    entries = history(stack)
    good = [e for e in entries if e.kind == "update" and e.result == "succeeded"]
    if not good:
        say("smoke tests failed and there is no earlier good release to roll back to")
        return 5
    say(f"smoke tests failed: rolling back to entry {good[-1].number}")
    args.yes = True
    try:
        rollback(args, stack, entries, good[-1])
    except OpsError as exc:
        say(f"rollback failed: {exc}")
        return 5
    say("deploy failed its smoke tests; the last good release runs again")
    return 4


def cmd_logs(args: argparse.Namespace) -> int:
    """A service's (or every service's) recent log lines, secrets redacted."""
    from components.ops import kube, logs

    stack = _stack(args)
    deployment, config = stack.export(secrets=True), stack.config()
    secrets = logs.secret_values(deployment)
    since = logs.since_time(args.since)
    if platform(config, args.stack) == "kubernetes":
        found_k8s = {w.name: w for w in kube.workloads(deployment)}
        names = logs.pick_services(list(found_k8s), args.service)
        ctx = kube.context(config)
        texts = {n: logs.kube_logs(found_k8s[n], ctx, args.tail, since) for n in names}
    else:
        found = logs.docker_services(deployment)
        names = logs.pick_services(list(found), args.service)
        texts = {n: logs.docker_logs(found[n], args.tail, since) for n in names}
    if not names:
        msg = f"stack {args.stack!r} has no services in its state (deployed yet?)"
        raise OpsError(msg, 2)
    width = max(len(n) for n in names)
    for name in names:
        sys.stdout.write(logs.prefixed(name, texts[name], secrets, width))
    return 0


def _step(line: str) -> None:
    say(f"  {line}")


def _up(stack: Pulumi) -> None:
    """`pulumi up`, its steps shown as they go; a failure raises with the output's tail."""
    with tempfile.TemporaryDirectory(prefix="appstack-up-") as tmp:
        proc = stack.up(Path(tmp) / "events.jsonl", _step)
    if proc.returncode != 0:
        msg = f"`pulumi up` failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
        raise OpsError(msg)


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Maintenance on/off through config and `pulumi up`."""
    stack = _stack(args)
    say(f"maintenance {args.state}: setting appstack:maintenance, then pulumi up")
    stack.run("config", "set", "appstack:maintenance", "true" if args.state == "on" else "false")
    _up(stack)
    say(f"maintenance {args.state}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """``appstack backup list | take | verify [NAME]`` (components/ops/backup.py)."""
    stack = _stack(args)
    return backup.run(args, _db_access(stack), keep=_keep(stack), say=say,
                      store=backup.store_of(stack))  # fmt: skip


def cmd_release(args: argparse.Namespace) -> int:
    """``appstack release``: images built and pinned at one commit, then `deploy` (release.py)."""
    return release.run(args, _stack(args), deploy=cmd_deploy, say=say)


def parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    p = argparse.ArgumentParser(
        prog="appstack",
        description="Operate appstack stacks: status, history, rollback, deploy, release, logs, "
        "maintenance.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, helptext: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=helptext, description=helptext)
        c.add_argument("--stack", required=True, help="stack name (e.g. dev)")
        c.add_argument("--cwd", default=".", help="project directory (default: here)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    command("status", "each service's image and health, the last migration and backup")
    command("history", "one line per update, newest first")
    rb = command("rollback", "re-apply an earlier update's images (and data, if asked)")
    rb.add_argument("--to", required=True, help="entry number from `history`, or 'previous'")
    rb.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rb.add_argument(
        "--restore-backup",
        action="store_true",
        help="when the schema moved since the target: restore the pre-migration backup",
    )
    dp = command("deploy", "pulumi up; roll back to the last good release if smoke tests fail")
    dp.add_argument("--restore-backup", action="store_true", help=argparse.SUPPRESS)
    lg = command("logs", "a service's recent log lines (every service without a name), redacted")
    lg.add_argument("service", nargs="?", help="service name (e.g. gateway, api)")
    lg.add_argument("--tail", type=int, default=100, help="lines per service (default 100)")
    lg.add_argument("--since", help="a duration (90s, 10m, 2h, 1d) or an ISO 8601 time")
    mt = command("maintenance", "maintenance mode on or off")
    mt.add_argument("state", choices=("on", "off"))
    release.add_arguments(command("release", release.HELP))
    backup.add_arguments(command("backup", backup.HELP))
    return p


COMMANDS = {
    "status": cmd_status,
    "history": cmd_history,
    "rollback": cmd_rollback,
    "deploy": cmd_deploy,
    "logs": cmd_logs,
    "maintenance": cmd_maintenance,
    "release": cmd_release,
    "backup": cmd_backup,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``appstack`` command."""
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OpsError as exc:
        print(f"appstack: error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
