"""A stack as the operator sees it: the Pulumi CLI, its state, and its history of updates."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MIGRATION_TYPE = "pulumi-python:dynamic/ops:Migration"
CONTAINER_TYPE = "pulumi-python:dynamic/docker:Container"
SMOKE_TYPE = "pulumi-python:dynamic/ops:SmokeTest"


class OpsError(RuntimeError):
    """An operator command cannot go on; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def find_project(start: Path) -> Path:
    """The directory holding ``Pulumi.yaml``, from ``start`` upwards."""
    for path in (start, *start.parents):
        if (path / "Pulumi.yaml").is_file():
            return path
    msg = f"no Pulumi.yaml in {start} or above: run appstack from the project (or pass --cwd)"
    raise OpsError(msg, 2)


@dataclass
class Pulumi:
    """The Pulumi CLI for one stack of one project."""

    cwd: Path
    stack: str

    def run(
        self,
        *args: str,
        check: bool = True,
        stream: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``pulumi ARGS --stack S``; ``stream`` shows its output live (long steps)."""
        argv = ["pulumi", *args, "--stack", self.stack, "--non-interactive"]
        proc = subprocess.run(
            argv,
            cwd=self.cwd,
            env={**os.environ, **env} if env else None,
            text=True,
            capture_output=not stream,
            check=False,
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip()[-3000:]
            msg = f"`pulumi {' '.join(args)}` failed (exit {proc.returncode}): {detail}"
            raise OpsError(msg)
        return proc

    def up(
        self, log: Path, step: Callable[[str], None], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``pulumi up`` that reports each resource step as it goes, from the engine's event log.

        The output is kept (returned) for a failure's detail; ``log`` keeps the events, which
        decide the outcome (``read_events``). ``--event-log`` needs ``PULUMI_DEBUG_COMMANDS``.
        """
        argv = ["pulumi", "up", "--yes", "--skip-preview", "--event-log", str(log),
                "--stack", self.stack, "--non-interactive"]  # fmt: skip
        environment = {**os.environ, "PULUMI_DEBUG_COMMANDS": "true", **(env or {})}
        steps = StepFollower(log)
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=environment, stdout=out,
                                    stderr=subprocess.STDOUT, text=True)  # fmt: skip
            while proc.poll() is None:
                for line in steps.new():
                    step(line)
                time.sleep(0.2)
            for line in steps.new():
                step(line)
            out.seek(0)
            text = out.read()
        return subprocess.CompletedProcess(argv, proc.returncode, text, "")

    def json(self, *args: str) -> Any:
        """``pulumi ARGS --json`` parsed."""
        return json.loads(self.run(*args, "--json").stdout or "null")

    def exists(self) -> bool:
        """Whether the stack exists in the current backend."""
        stacks = json.loads(
            subprocess.run(
                ["pulumi", "stack", "ls", "--json", "--non-interactive"],
                cwd=self.cwd,
                text=True,
                capture_output=True,
                check=False,
            ).stdout
            or "[]"
        )
        return any(s.get("name", "").split("/")[-1] == self.stack for s in stacks)

    def export(self, secrets: bool = False) -> dict[str, Any]:
        """The current deployment (``pulumi stack export``)."""
        args = ["stack", "export"] + (["--show-secrets"] if secrets else [])
        return json.loads(self.run(*args).stdout)  # type: ignore[no-any-return]

    def history(self) -> list[Entry]:
        """Every update of the stack, oldest first (``pulumi stack history``: any backend)."""
        return parse_history(self.json("stack", "history") or [])

    def config(self) -> dict[str, Any]:
        """The stack's config, values parsed (objects from JSON text)."""
        raw = self.json("config")
        return {k: _config_value(v.get("objectValue", v.get("value"))) for k, v in raw.items()}


def _config_value(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def plaintext(value: Any) -> Any:
    """A value from ``stack export --show-secrets``: secrets keep an envelope with the plaintext."""
    if isinstance(value, dict) and "plaintext" in value:
        return json.loads(value["plaintext"])
    return value


def resources(deployment: Mapping[str, Any], typ: str) -> list[dict[str, Any]]:
    """Resources of one type in an exported deployment or checkpoint."""
    latest = deployment.get("deployment") or deployment.get("checkpoint", {}).get("latest") or {}
    return [r for r in latest.get("resources") or [] if r.get("type") == typ]


def migration_state(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """What the Migration resource recorded: ledger names, last applied files, backup id."""
    found = resources(deployment, MIGRATION_TYPE)
    if not found:
        return {}
    out = found[0].get("outputs") or {}
    return {
        "ledger": [row["name"] for row in out.get("ledger") or []],
        "applied": list(out.get("applied") or []),
        "backup_id": out.get("backup_id") or "",
        "ran_at": out.get("ran_at") or "",
        "revision": out.get("revision_after") or "",
    }


@dataclass
class Entry:
    """One update of the stack's history, numbered oldest = 1 (numbers never shift)."""

    number: int
    kind: str
    result: str
    start: int
    end: int
    message: str
    images: dict[str, str]
    config: dict[str, Any]
    migration: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The entry for ``--json`` output."""
        return {
            "number": self.number,
            "kind": self.kind,
            "result": self.result,
            "start": self.start,
            "end": self.end,
            "message": self.message,
            "images": self.images,
            "migration": self.migration,
            "changes": self.changes,
        }


def image_refs(config: Mapping[str, Any]) -> dict[str, str]:
    """``service -> reference`` from a config's ``appstack:images``."""
    images = _config_value(config.get("appstack:images")) or {}
    refs = {}
    for svc, spec in sorted(images.items()) if isinstance(images, dict) else []:
        if isinstance(spec, str):
            refs[svc] = spec
            continue
        base = f"{spec.get('registry')}/{spec.get('repository')}"
        refs[svc] = (
            f"{base}@{spec['digest']}" if spec.get("digest") else f"{base}:{spec.get('tag')}"
        )
    return refs


def platform(config: Mapping[str, Any], stack: str) -> str:
    """The platform a stack deploys to: ``appstack:platform``, else its environment's default."""
    from components.settings import ENVIRONMENT_DEFAULTS

    environment = str(config.get("appstack:environment") or stack)
    defaults = ENVIRONMENT_DEFAULTS.get(environment, ENVIRONMENT_DEFAULTS["dev"])
    return str(config.get("appstack:platform") or defaults["platform"])


def backend_dir() -> Path | None:
    """The file backend's directory, or None for any other backend (``s3://``, ``gs://``...)."""
    url = os.environ.get("PULUMI_BACKEND_URL", "")
    if not url.startswith("file://"):
        return None
    return Path(url.removeprefix("file://")).expanduser()


def _epoch(value: Any) -> int:
    """Seconds since the epoch of a history timestamp (RFC 3339 text, or a number)."""
    if isinstance(value, int | float):
        return int(value)
    text = str(value or "")
    if not text:
        return 0
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def parse_history(raw: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """Entries from ``pulumi stack history --json`` (newest first there), numbered oldest = 1."""
    entries = []
    for number, info in enumerate(reversed(list(raw)), start=1):
        config = {
            str(k): (v.get("objectValue", v.get("value")) if isinstance(v, Mapping) else v)
            for k, v in (info.get("config") or {}).items()
        }
        entries.append(
            Entry(
                number=number,
                kind=str(info.get("kind", "")),
                result=str(info.get("result", "")),
                start=_epoch(info.get("startTime")),
                end=_epoch(info.get("endTime")),
                message=str(info.get("message") or ""),
                images=image_refs(config),
                config=config,
                changes=dict(info.get("resourceChanges") or {}),
            )
        )
    return entries


def attach_releases(entries: Sequence[Entry], releases: Sequence[Mapping[str, Any]]) -> None:
    """Give each entry the migration state of its time, from the app database's release records.

    A record belongs to the update that ran it (its time within the update's, 2 s of slack for
    the timestamps' rounding); every entry carries the ledger as it stood when it ended.
    """
    timed = sorted(releases, key=lambda r: _epoch(r.get("ran_at")))
    for entry in entries:
        own = [r for r in timed if entry.start - 2 <= _epoch(r.get("ran_at")) <= entry.end + 2]
        before = [r for r in timed if _epoch(r.get("ran_at")) <= entry.end + 2]
        last = own[-1] if own else None
        entry.migration = {
            "ledger": list((before[-1] if before else {}).get("ledger") or []),
            "applied": [name for r in own for name in r.get("applied") or []],
            "backup_id": str(last.get("backup_id") or "") if last else "",
            "ran_at": str(last.get("ran_at") or "") if last else "",
            "revision": str((before[-1] if before else {}).get("revision") or ""),
        }


def stale_locks(project: str, stack: str) -> list[int]:
    """Pids of this host's update locks whose process is gone (a killed ``pulumi up``).

    Only a ``file://`` backend's locks can be read here; on any other backend this finds none
    (``pulumi cancel`` by hand releases a stale lock there).
    """
    root = backend_dir()
    if root is None:
        return []
    folder = root / ".pulumi" / "locks"
    stale = []
    for path in folder.glob(f"*/{project}/{stack}/*.json"):
        try:
            lock = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = int(lock.get("pid") or 0)
        if lock.get("hostname") != socket.gethostname() or pid <= 0:
            continue  # another host's update: not ours to judge
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.append(pid)
        except PermissionError:
            continue  # alive, another user's
    return stale


@dataclass(frozen=True)
class Outcome:
    """What the engine's events say an update did."""

    smoke_ran: bool
    smoke_failed: bool
    errors: tuple[str, ...]
    """The error diagnostics of the smoke test (or of the update, when smoke did not fail)."""


_OPS = {"create": "creating", "update": "updating", "replace": "replacing",
        "create-replacement": "creating the replacement of", "delete": "deleting",
        "delete-replaced": "removing the replaced", "read": "reading"}  # fmt: skip


def step_line(event: Mapping[str, Any], started: dict[str, float]) -> str | None:
    """One engine event as an operator's step line (None: nothing to say, e.g. unchanged)."""
    for key in ("resourcePreEvent", "resOutputsEvent", "resOpFailedEvent"):
        meta = (event.get(key) or {}).get("metadata") or {}
        op = str(meta.get("op") or "")
        if not meta or op not in _OPS:
            continue
        urn = str(meta.get("urn") or "")
        what = f"{str(meta.get('type', '')).rsplit(':', 1)[-1]} {urn.rsplit('::', 1)[-1]}"
        now = time.monotonic()
        if key == "resourcePreEvent":
            started[urn] = now
            return f"{_OPS[op]} {what} ..."
        took = f" ({now - started.pop(urn, now):.1f}s)"
        return f"{what}: {'done' if key == 'resOutputsEvent' else 'FAILED'}{took}"
    return None


class StepFollower:
    """Reads an event log while it is written: complete lines only, from where it left off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.started: dict[str, float] = {}

    def new(self) -> list[str]:
        """Step lines of the events written since the last call."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = []
        for raw in data[:end].splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            line = step_line(event, self.started)
            if line:
                lines.append(line)
        return lines


def read_events(path: Path) -> Outcome:
    """The outcome of an update from its ``--event-log`` (one JSON engine event per line)."""
    smoke_ran = smoke_failed = False
    smoke_errors: list[str] = []
    other_errors: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        for key in ("resourcePreEvent", "resOutputsEvent", "resOpFailedEvent"):
            meta = (event.get(key) or {}).get("metadata") or {}
            if meta.get("type") == SMOKE_TYPE:
                smoke_ran = True
                smoke_failed = smoke_failed or key == "resOpFailedEvent"
        diag = event.get("diagnosticEvent") or {}
        if diag.get("severity") == "error":
            message = str(diag.get("message") or "").strip()
            if f"{SMOKE_TYPE}::" in str(diag.get("urn") or ""):
                smoke_failed = True
                smoke_errors.append(message)
            else:
                other_errors.append(message)
    return Outcome(smoke_ran, smoke_failed, tuple(smoke_errors if smoke_failed else other_errors))


def pick(entries: Sequence[Entry], to: str) -> Entry:
    """The entry ``--to`` names: a number, or ``previous`` (the last good update before now)."""
    updates = [e for e in entries if e.kind == "update"]
    if to == "previous":
        good = [e for e in updates if e.result == "succeeded"]
        if len(good) < 2:
            msg = "there is no earlier successful update to roll back to"
            raise OpsError(msg, 2)
        return good[-2]
    try:
        number = int(to)
    except ValueError:
        msg = f"--to {to!r} is neither an entry number nor 'previous'"
        raise OpsError(msg, 2) from None
    if not 1 <= number <= len(entries):
        msg = f"--to {number} is out of range: the history has entries 1..{len(entries)}"
        raise OpsError(msg, 2)
    entry = entries[number - 1]
    if entry.kind != "update":
        msg = f"entry {number} is a {entry.kind}, not an update: nothing to roll back to"
        raise OpsError(msg, 2)
    if entry.result != "succeeded":
        msg = f"entry {number} {entry.result}: only a succeeded update can be rolled back to"
        raise OpsError(msg, 2)
    return entry
