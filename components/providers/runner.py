"""Run one-off tasks inside the target: a Docker container on the internal network, or locally.

Providers build a runner inside each method (``runner_for(target)``): runners hold clients and
are never pickled. A task's command finds its files under ``$WORK`` (``/work`` in a container,
a temporary directory locally) and each mount at ``runner.mount_path(volume, path)``.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

CONTAINER_WORK = "/work"
LOG_TAIL_LINES = 40
REDACTED = "***"

# Env names whose values are treated as secret even when a task does not list them.
_SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|ACCESS_KEY|_KEYS?$|DSN|DATABASE_URL"
)
_NAME_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class TaskError(RuntimeError):
    """A task exited non-zero or timed out; the message holds the redacted tail of its log."""

    def __init__(self, message: str, exit_code: int | None, logs: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.logs = logs


@dataclass(frozen=True)
class Task:
    """A one-off command: image, argv, env, files placed under $WORK, volume mounts."""

    name: str
    image: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)
    mounts: Sequence[tuple[str, str]] = ()
    network: str | None = None
    timeout_s: float = 600.0
    secret_keys: Sequence[str] = ()
    """Env names whose values are secret (names that look secret are redacted anyway)."""
    entrypoint: Sequence[str] | None = None
    """Overrides the image's entrypoint (e.g. MinIO's, which would prefix every command)."""

    def __post_init__(self) -> None:
        if not self.command:
            msg = f"task {self.name!r} has no command"
            raise ValueError(msg)
        for rel in self.files:
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or not p.parts:
                msg = f"task {self.name!r}: file path {rel!r} must be relative, without '..'"
                raise ValueError(msg)

    def secret_values(self) -> list[str]:
        """Values of env entries that are secret, longest first (so substrings redact last)."""
        names = set(self.secret_keys)
        values = [v for k, v in self.env.items() if v and (k in names or _SECRET_NAME.search(k))]
        return sorted(set(values), key=len, reverse=True)


@dataclass(frozen=True)
class TaskResult:
    """What a finished task left: its exit code and its (redacted) combined log."""

    exit_code: int
    logs: str


def looks_secret(name: str) -> bool:
    """Whether a variable's name says its value is a secret (``*_PASSWORD``, ``*_TOKEN``...)."""
    return bool(_SECRET_NAME.search(name.upper()))


def redact(text: str, secret_values: Sequence[str]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for value in sorted(set(secret_values), key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


def log_tail(logs: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log."""
    return "\n".join(logs.rstrip("\n").splitlines()[-lines:])


def _finish(task: Task, exit_code: int, raw_logs: str, timed_out: bool) -> TaskResult:
    """Redact the log and raise ``TaskError`` unless the task exited 0."""
    logs = redact(raw_logs, task.secret_values())
    if timed_out:
        msg = f"task {task.name!r} timed out after {task.timeout_s:g}s; log tail:\n{log_tail(logs)}"
        raise TaskError(msg, None, logs)
    if exit_code != 0:
        msg = f"task {task.name!r} exited {exit_code}; log tail:\n{log_tail(logs)}"
        raise TaskError(msg, exit_code, logs)
    return TaskResult(exit_code=exit_code, logs=logs)


@dataclass(frozen=True)
class Target:
    """Where tasks run and which database they reach; a plain dict in provider inputs."""

    kind: str
    network: str = ""
    name_prefix: str = "appstack"
    client_image: str = ""
    db_host: str = ""
    db_port: int = 5432
    db_name: str = ""
    db_user: str = ""
    backup_volume: str = ""
    docker_host: str | None = None
    workdir: str = ""
    namespace: str = ""
    """Kubernetes: the namespace tasks run in (their Jobs, Secrets and ConfigMaps)."""
    context: str | None = None
    """Kubernetes: the kubeconfig context (None: the current one)."""
    run_as_user: int = 10001
    """Kubernetes: the non-root uid (and fsGroup) of task pods."""
    stack: str = ""
    """The stack whose tasks these are: Docker task containers carry it as ``appstack.stack``."""

    def __post_init__(self) -> None:
        if self.kind not in ("docker", "local", "kubernetes"):
            msg = f"target.kind {self.kind!r} is not one of docker, local, kubernetes"
            raise ValueError(msg)
        if self.kind == "kubernetes" and not self.namespace:
            msg = "target.namespace is required when target.kind is 'kubernetes'"
            raise ValueError(msg)
        if not _NAME_PREFIX.match(self.name_prefix):
            msg = f"target.name_prefix {self.name_prefix!r} must match {_NAME_PREFIX.pattern}"
            raise ValueError(msg)
        if self.kind == "local" and not self.workdir:
            msg = "target.workdir is required when target.kind is 'local'"
            raise ValueError(msg)
        if not 0 < self.db_port < 65536:
            msg = f"target.db_port {self.db_port} is not a TCP port"
            raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form used as a dynamic-provider input."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        """Parse the dict form, refusing unknown keys (Pulumi hands numbers back as floats)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"target has unknown keys {unknown}"
            raise ValueError(msg)
        values = dict(data)
        if "db_port" in values:
            values["db_port"] = int(values["db_port"])
        if "run_as_user" in values:
            values["run_as_user"] = int(values["run_as_user"])
        for key in ("docker_host", "context"):
            if values.get(key) == "":
                values[key] = None
        return cls(**values)

    @property
    def db_address(self) -> str:
        """``host:port`` of the database, for messages."""
        return f"{self.db_host}:{self.db_port}"


class Runner(Protocol):
    """Runs tasks in a target and manages the containers a migration quiesces."""

    def run(self, task: Task) -> TaskResult:
        """Run ``task`` to completion; raise ``TaskError`` on non-zero exit or timeout."""
        ...

    def read_image_dir(self, image: str, path: str) -> dict[str, bytes]:
        """Files under ``path`` in ``image``, keyed by path relative to ``path``."""
        ...

    def stop_containers(self, names: Sequence[str]) -> list[str]:
        """Stop the named containers; return the names that do not exist (skipped)."""
        ...

    def start_containers(self, names: Sequence[str]) -> list[str]:
        """Start the named containers; return the names that do not exist (skipped)."""
        ...

    def mount_path(self, volume: str, container_path: str) -> str:
        """Where a task's command sees ``volume`` mounted at ``container_path``."""
        ...


def _tar_files(files: Mapping[str, bytes], root: str) -> bytes:
    """An in-memory tar of ``files`` under ``root`` (dirs world-writable: tasks run as any uid)."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = {root}
        for rel in files:
            parent = PurePosixPath(root, rel).parent
            while str(parent) not in ("", ".", "/"):
                dirs.add(str(parent))
                parent = parent.parent
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777
            info.mtime = now
            tar.addfile(info)
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(str(PurePosixPath(root, rel)))
            info.size = len(data)
            info.mode = 0o644
            info.mtime = now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _untar_dir(data: bytes) -> dict[str, bytes]:
    """Regular files of a ``get_archive`` tar, keyed by path below its top-level directory."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            parts = PurePosixPath(member.name).parts[1:]
            if not parts:
                continue
            extracted = tar.extractfile(member)
            if extracted is not None:
                out[str(PurePosixPath(*parts))] = extracted.read()
    return out


TASK_LABEL = "appstack.task"
OWNER_LABEL = "appstack.owner"
"""``<hostname>:<pid>`` of the process that runs a task container: a sweep keeps a live owner's."""
FOREIGN_SWEEP_AGE_S = 3600.0
"""A stopped task container left by another host is swept only when older than this."""


def owner_id() -> str:
    """``<hostname>:<pid>`` of this process, as task containers carry it (``OWNER_LABEL``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _created_age_s(attrs: Mapping[str, Any]) -> float:
    """Seconds since the engine created a container (0 when the timestamp cannot be read)."""
    from datetime import UTC, datetime

    raw = str(attrs.get("Created") or "")
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", raw)
    if not match:
        return 0.0
    created = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()


def is_orphan(labels: Mapping[str, str], status: str, age_s: float, owner: str) -> bool:
    """Whether a task container was left by a run that is gone (so a sweep may remove it).

    Never one of this process's own (a parallel task of this run). On this host: one whose owner
    process is dead. From another host (where liveness cannot be seen): a stopped one older than
    ``FOREIGN_SWEEP_AGE_S``. Unlabelled (older releases of appstack): any stopped one.
    """
    me_host, _, me_pid = owner.rpartition(":")
    host, _, pid = str(labels.get(OWNER_LABEL, "")).rpartition(":")
    if not host:
        return status not in ("running", "restarting")
    if host == me_host:
        return pid != me_pid and pid.isdigit() and not _pid_alive(int(pid))
    return status not in ("running", "restarting") and age_s > FOREIGN_SWEEP_AGE_S


class DockerRunner:
    """Runs tasks as one-off containers through the Docker Engine API (``ssh://`` works too).

    Task containers carry the stack (``appstack.stack``), the name prefix, the task and their
    owner process; each is removed with its anonymous volumes (a client image such as Postgres
    declares ``VOLUME``s, which would otherwise pile up dangling), and ``sweep_tasks`` removes
    those a killed run left behind.
    """

    def __init__(
        self, docker_host: str | None, network: str, name_prefix: str, stack: str = ""
    ) -> None:
        self.docker_host = docker_host
        self.network = network
        self.name_prefix = name_prefix
        self.stack = stack

    def _labels(self, task: str) -> dict[str, str]:
        labels = {TASK_LABEL: task, "appstack.prefix": self.name_prefix, OWNER_LABEL: owner_id()}
        if self.stack:
            labels["appstack.stack"] = self.stack
        return labels

    def _client(self) -> Any:
        import docker

        if self.docker_host:
            return docker.DockerClient(base_url=self.docker_host, use_ssh_client=False)
        return docker.from_env()

    def _create(self, client: Any, image: str, **kwargs: Any) -> Any:
        """Create a container, pulling the image once when the engine lacks it."""
        import docker.errors

        try:
            return client.containers.create(image, **kwargs)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(image)
            except docker.errors.APIError as exc:
                msg = f"image {image!r} is not on the engine and could not be pulled: {exc}"
                raise TaskError(msg, None, "") from exc
            return client.containers.create(image, **kwargs)

    def run(self, task: Task) -> TaskResult:
        """Create, fill, start, wait for and always remove a one-off container."""
        import requests.exceptions

        client = self._client()
        name = f"{self.name_prefix}-task-{task.name}-{secrets.token_hex(3)}"
        try:
            container = self._create(
                client,
                task.image,
                command=list(task.command),
                entrypoint=list(task.entrypoint) if task.entrypoint is not None else None,
                name=name,
                environment={**task.env, "WORK": CONTAINER_WORK},
                network=task.network or self.network or None,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                volumes={vol: {"bind": path, "mode": "rw"} for vol, path in task.mounts},
                auto_remove=False,
                detach=True,
                labels=self._labels(task.name),
            )
            try:
                container.put_archive("/", _tar_files(task.files, CONTAINER_WORK.lstrip("/")))
                container.start()
                timed_out = False
                exit_code = -1
                try:
                    status = container.wait(timeout=task.timeout_s)
                    exit_code = int(status.get("StatusCode", -1))
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    timed_out = True
                    container.kill()
                raw = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            finally:
                container.remove(force=True, v=True)
        finally:
            client.close()
        return _finish(task, exit_code, raw, timed_out)

    @contextmanager
    def _never_started(
        self, image: str, task: str, name: str, volumes: Mapping[str, str] | None = None
    ) -> Iterator[Any]:
        """A created, never started, container of ``image`` (``volumes``: volume -> read-only
        mount point) to copy files out of; removed after."""
        client = self._client()
        try:
            binds = {v: {"bind": at, "mode": "ro"} for v, at in (volumes or {}).items()}
            container = self._create(
                client, image, command=["true"], labels=self._labels(task), volumes=binds,
                name=f"{self.name_prefix}-{name}-{secrets.token_hex(3)}",
            )  # fmt: skip
            try:
                yield container
            finally:
                container.remove(force=True, v=True)
        finally:
            client.close()

    def read_image_dir(self, image: str, path: str) -> dict[str, bytes]:
        """Copy ``path`` out of ``image`` through a created, never started, container."""
        with self._never_started(image, "read-image", "read") as container:
            stream, _stat = container.get_archive(path)
            data = b"".join(stream)
        return _untar_dir(data)

    def read_files(
        self, image: str, paths: Sequence[str], volumes: Mapping[str, str], task: str
    ) -> dict[str, bytes]:
        """The files at ``paths`` (those that exist) in a never started container of ``image``
        with ``volumes`` mounted, by path."""
        import docker.errors

        files: dict[str, bytes] = {}
        with self._never_started(image, task, task, volumes) as container:
            for path in paths:
                try:
                    stream, _stat = container.get_archive(path)
                except docker.errors.NotFound:
                    continue
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                    member = tar.extractfile(tar.getmembers()[0])
                    files[path] = member.read() if member else b""
        return files

    def sweep_tasks(self) -> list[str]:
        """Remove (with their anonymous volumes) the task containers a killed run left behind.

        Found by the stack label (by the name prefix when the runner has no stack, and for
        containers of earlier appstack releases, which carry only that); see ``is_orphan``.
        """
        import docker.errors

        owner = owner_id()
        client = self._client()
        removed: list[str] = []
        try:
            filters = [[TASK_LABEL, f"appstack.prefix={self.name_prefix}"]]
            if self.stack:
                filters.insert(0, [TASK_LABEL, f"appstack.stack={self.stack}"])
            seen: set[str] = set()
            for labels in filters:
                for container in client.containers.list(all=True, filters={"label": labels}):
                    if container.id in seen:
                        continue
                    seen.add(container.id)
                    found = container.labels or {}
                    if "appstack.stack" in found and found["appstack.stack"] != self.stack:
                        continue  # another stack sharing the prefix filter: not ours
                    age = _created_age_s(container.attrs)
                    if not is_orphan(found, container.status, age, owner):
                        continue
                    try:
                        container.remove(force=True, v=True)
                    except docker.errors.NotFound:
                        continue
                    removed.append(container.name)
        finally:
            client.close()
        return removed

    def _each_container(self, names: Sequence[str], action: str) -> list[str]:
        """Stop every running container of each name, or start its newest one.

        A name is a service's stable name (``<stack>-<app>-<service>``): each release's container
        carries it as a label, and stacks deployed before that have it as their container name.
        """
        import docker.errors

        from components.providers.engine_base import NAME_LABEL

        missing: list[str] = []
        client = self._client()
        try:
            for name in names:
                found = client.containers.list(all=True, filters={"label": f"{NAME_LABEL}={name}"})
                if not found:
                    try:
                        found = [client.containers.get(name)]
                    except docker.errors.NotFound:
                        missing.append(name)
                        continue
                if action == "stop":
                    for container in found:
                        if container.status in ("running", "restarting"):
                            container.stop()
                else:
                    max(found, key=lambda c: str(c.attrs.get("Created"))).start()
        finally:
            client.close()
        return missing

    def stop_containers(self, names: Sequence[str]) -> list[str]:
        """Stop each named container; missing ones are skipped and returned."""
        return self._each_container(names, "stop")

    def start_containers(self, names: Sequence[str]) -> list[str]:
        """Start each named container; missing ones are skipped and returned."""
        return self._each_container(names, "start")

    def mount_path(self, volume: str, container_path: str) -> str:
        """In a container a mount is where the task mounts it."""
        del volume
        return container_path


class LocalRunner:
    """Runs tasks as local processes (tests, or an operator with direct database access)."""

    CALLS_FILE = "container-calls.jsonl"

    def __init__(self, workdir: str) -> None:
        self.workdir = Path(workdir)
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, task: Task) -> TaskResult:
        """Run the argv with the task's env; files go to a temp dir exported as $WORK."""
        for volume, container_path in task.mounts:
            Path(self.mount_path(volume, container_path)).mkdir(parents=True, exist_ok=True)
        (self.workdir / "tasks").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{task.name}-", dir=self.workdir / "tasks"))
        try:
            for rel, data in task.files.items():
                dest = work / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            env = {**os.environ, **task.env, "WORK": str(work)}
            try:
                proc = subprocess.run(
                    list(task.command),
                    env=env,
                    cwd=work,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=task.timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raw = (exc.output or b"").decode("utf-8", "replace")
                return _finish(task, -1, raw, timed_out=True)
            return _finish(task, proc.returncode, proc.stdout.decode("utf-8", "replace"), False)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def read_image_dir(self, image: str, path: str) -> dict[str, bytes]:
        """Locally an image's directory is the local directory ``path``."""
        del image
        root = Path(path)
        if not root.is_dir():
            msg = f"schema directory {path!r} does not exist"
            raise FileNotFoundError(msg)
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    def _record(self, action: str, names: Sequence[str]) -> list[str]:
        self.calls.append((action, list(names)))
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / self.CALLS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"action": action, "names": list(names)}) + "\n")
        return []

    def stop_containers(self, names: Sequence[str]) -> list[str]:
        """No containers locally: record the call (in ``calls`` and the calls file)."""
        return self._record("stop", names)

    def start_containers(self, names: Sequence[str]) -> list[str]:
        """No containers locally: record the call (in ``calls`` and the calls file)."""
        return self._record("start", names)

    def mount_path(self, volume: str, container_path: str) -> str:
        """Locally a volume is the directory ``<workdir>/volumes/<volume>``."""
        del container_path
        return str(self.workdir / "volumes" / volume)

    def recorded_calls(self) -> list[tuple[str, list[str]]]:
        """Every stop/start recorded under this workdir, by any runner instance."""
        path = self.workdir / self.CALLS_FILE
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [(row["action"], row["names"]) for row in rows]


def sweep_leftover_tasks(runner: Runner) -> list[str]:
    """Remove task containers a killed run left (Docker); other runners leave none to sweep."""
    if isinstance(runner, DockerRunner):
        return runner.sweep_tasks()
    return []


def runner_for(target: Target) -> Runner:
    """The runner for a target's kind."""
    if target.kind == "docker":
        return DockerRunner(target.docker_host, target.network, target.name_prefix, target.stack)
    if target.kind == "kubernetes":
        from components.providers.k8s_runner import KubernetesRunner

        return KubernetesRunner(
            target.namespace, target.name_prefix, target.context, target.run_as_user
        )
    return LocalRunner(target.workdir)
