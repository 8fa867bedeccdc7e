"""The ``OneOffTask`` dynamic resource: a command run once inside the target (e.g. a bucket).

It runs on create and again whenever its image, command or plain env change; it must be
idempotent (MinIO's ``mc mb --ignore-existing``). Secret env is a secret input, never an output.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.providers.runner import Target, Task, runner_for, sweep_leftover_tasks

RERUN_KEYS = ("image", "entrypoint", "command", "env", "target")


def _run(props: Mapping[str, Any]) -> dict[str, Any]:
    target = Target.from_dict(props["target"])
    runner = runner_for(target)
    sweep_leftover_tasks(runner)
    secret_env = {str(k): str(v) for k, v in (props.get("secret_env") or {}).items()}
    env = {str(k): str(v) for k, v in (props.get("env") or {}).items()}
    started = time.monotonic()
    runner.run(
        Task(
            name=str(props.get("name") or "task"),
            image=str(props["image"]),
            command=[str(c) for c in props["command"]],
            entrypoint=[str(c) for c in props["entrypoint"]] if props.get("entrypoint") else None,
            env={**env, **secret_env},
            network=target.network or None,
            timeout_s=float(props.get("timeout_s") or 300),
            secret_keys=tuple(secret_env),
        )
    )
    outs = {k: props.get(k) for k in (*RERUN_KEYS, "name", "timeout_s")}
    outs["duration_s"] = round(time.monotonic() - started, 3)
    outs["ran_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return outs


class OneOffTaskProvider(ResourceProvider):
    """Runs the task on create, and on update when what it does changed."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Re-run only when the image, command, plain env or target changed."""
        changed = [k for k in RERUN_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Run the task; a failure raises with the task's log tail and records nothing."""
        outs = _run(props)
        return CreateResult(id_=f"{outs['name']}-{int(time.time())}", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Run the task again with its new inputs."""
        return UpdateResult(outs=_run(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """A one-off task leaves nothing of its own to remove (its effect is data)."""


@dataclass(frozen=True)
class OneOffTaskArgs:
    """Inputs of a ``OneOffTask``."""

    target: Target
    image: pulumi.Input[str]
    command: Sequence[str]
    entrypoint: Sequence[str] | None = None
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    timeout_s: float = 300.0


class OneOffTask(Resource, module="ops", name="OneOffTask"):
    """A command run once inside the target, again when its inputs change."""

    duration_s: pulumi.Output[float]
    ran_at: pulumi.Output[str]

    def __init__(
        self, name: str, args: OneOffTaskArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        target = args.target
        if not target.stack:  # label its containers with the program's stack
            target = dataclasses.replace(target, stack=pulumi.get_stack())
        props: dict[str, Any] = {
            "name": name,
            "target": target.to_dict(),
            "image": args.image,
            "command": list(args.command),
            "entrypoint": list(args.entrypoint) if args.entrypoint is not None else None,
            "env": dict(args.env),
            "secret_env": pulumi.Output.secret(dict(args.secret_env)),
            "timeout_s": args.timeout_s,
            "duration_s": None,
            "ran_at": None,
        }
        super().__init__(OneOffTaskProvider(), name, props, opts)
