"""The ``Bootstrap`` dynamic resource: an app's first owner credential, issued once.

Engramia's db auth mode starts with no key: ``POST /v1/keys/bootstrap`` with the bootstrap token
creates the owner key while ``api_keys`` is empty (201), and answers 409 afterwards (DESIGN.md).
Its runbook removes the token from the API's environment after that first call. Here the token
never reaches the long-running API: on the first deploy a throwaway container of the API's image,
on the internal network and with the token, serves the one call (made from inside it, through
``exec``), and is removed; the owner key becomes an encrypted output of the stack. Later deploys
change nothing. A database bootstrapped before (409) is said so, with no key to keep.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.providers.engine_base import EngineError, client
from components.providers.k8s_runner import KubernetesRunner, Sidecar
from components.providers.runner import (
    OWNER_LABEL,
    TASK_LABEL,
    Task,
    TaskError,
    log_tail,
    owner_id,
    redact,
)
from components.spec import BootstrapSpec, ServiceSpec, SmokeSpec

ANSWER = "APPSTACK:BOOTSTRAP:"
"""Prefix of the line the call prints: its answer among the log lines of the server's."""
KUBERNETES = "kubernetes"

CALL = """
import json, os, sys, time, urllib.error, urllib.request
url, token_env, body_key = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.time() + float(sys.argv[4])
data = json.dumps({body_key: os.environ[token_env]}).encode()
while True:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = {"status": resp.status, "body": resp.read().decode()}
            break
    except urllib.error.HTTPError as e:
        answer = {"status": e.code, "body": e.read().decode()}
        break
    except OSError as e:  # not listening yet
        if time.time() > deadline:
            answer = {"status": None, "body": repr(e)}
            break
        time.sleep(0.25)
print("APPSTACK:BOOTSTRAP:" + json.dumps(answer), flush=True)
"""
"""Runs beside the server (in its container on Docker, in the Job's container on Kubernetes):
POSTs the token (from its environment, never an argument) once the server listens; prints the
answer on one line prefixed by ``ANSWER``, and exits 0 whatever the answer."""


def call_argv(props: Mapping[str, Any]) -> list[str]:
    """``python3 -c CALL`` with the call's URL, token variable, body key and deadline."""
    url = f"http://127.0.0.1:{int(props['port'])}{props['path']}"
    deadline = float(props.get("timeout_s") or 120)
    return ["python3", "-c", CALL, url, str(props["token_env"]), str(props["body_key"]),
            str(deadline)]  # fmt: skip


def parse_answer(out: str) -> dict[str, Any] | None:
    """The call's answer (``status``, ``body``) from its output, or None if it printed none."""
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(ANSWER)]
    if not lines:
        return None
    return dict(json.loads(lines[-1].strip()[len(ANSWER) :]))


def with_owner_key(spec: SmokeSpec, owner_key: pulumi.Output[str]) -> SmokeSpec:
    """``spec`` whose ``bearer_from_bootstrap`` checks send the bootstrap's owner key, or their
    own bearer when the key is empty (a bootstrap done outside appstack: 409)."""

    def prefer(fallback: pulumi.Output[str] | None) -> pulumi.Output[str]:
        both = pulumi.Output.all(owner_key, fallback or "")
        return pulumi.Output.secret(both.apply(lambda v: str(v[0] or v[1])))

    checks = tuple(
        dataclasses.replace(c, bearer=prefer(c.bearer)) if c.bearer_from_bootstrap else c
        for c in spec.checks
    )
    return dataclasses.replace(spec, checks=checks)


def _outcome(status: int | None, body: str, result_key: str, where: str) -> dict[str, str]:
    if status == 201:
        try:
            key = str(json.loads(body)[result_key])
        except (ValueError, KeyError, TypeError):
            msg = f"bootstrap: {where} answered 201 without {result_key!r} in its body"
            raise EngineError(msg) from None
        return {"outcome": "created", "owner_key": key}
    if status == 409:
        pulumi.log.warn(
            f"bootstrap: {where} answered 409: the database was bootstrapped before, outside "
            "appstack; its owner key is not known here (the smoke test uses apiKeys)"
        )
        return {"outcome": "existing", "owner_key": ""}
    msg = f"bootstrap: {where} answered {status}: {body[:300]}"
    raise EngineError(msg)


def kubernetes_job(props: Mapping[str, Any]) -> tuple[KubernetesRunner, Task, Sidecar]:
    """The runner, task and sidecar of the call on Kubernetes (a pure function: the cluster
    tests run exactly this pod under Docker)."""
    target = dict(props["target"])
    token_env = str(props["token_env"])
    env = {str(k): str(v) for k, v in (props.get("env") or {}).items()}
    runner = KubernetesRunner(
        str(target["namespace"]), str(props["name_prefix"]), target.get("context") or None,
        int(target.get("run_as_user") or 10001),
    )  # fmt: skip
    argv = call_argv(props)
    task = Task(
        name="bootstrap",
        image=str(props["image"]),
        entrypoint=argv[:1],
        command=argv[1:],
        env={**env, token_env: str(props["token"])},
        timeout_s=float(props.get("timeout_s") or 120) + 60,
        secret_keys=(token_env,),  # and every name that looks secret (runner.looks_secret)
    )
    server = Sidecar(
        image=str(props["image"]),
        read_only_root=bool(props.get("read_only")),
        tmpfs=[str(p) for p in props.get("tmpfs") or ()],
    )
    return runner, task, server


def _call_kubernetes(props: Mapping[str, Any]) -> dict[str, str]:
    """The call as a Job: the API's image as a native sidecar, the call in the Job's container."""
    runner, task, server = kubernetes_job(props)
    deadline = float(props.get("timeout_s") or 120)
    where = f"POST {props['path']}"
    started = time.monotonic()
    try:
        logs = runner.run(task, server).logs
    except TaskError as exc:
        msg = f"bootstrap: the Job could not make the call: {exc}"
        raise EngineError(msg) from None
    answer = parse_answer(logs)
    if answer is None:
        msg = f"bootstrap: the Job printed no answer; log tail:\n{log_tail(logs)}"
        raise EngineError(msg)
    if answer["status"] is None:
        msg = f"bootstrap: the API never listened on {props['port']} within {deadline:g}s:\n"
        raise EngineError(msg + log_tail(logs))
    pulumi.log.info(
        f"bootstrap: {where} answered {answer['status']} after {time.monotonic() - started:.1f}s"
    )
    return _outcome(answer["status"], str(answer["body"]), str(props["result_key"]), where)


def _call(props: Mapping[str, Any]) -> dict[str, str]:
    if (props.get("target") or {}).get("kind") == KUBERNETES:
        return _call_kubernetes(props)
    env = {str(k): str(v) for k, v in (props.get("env") or {}).items()}
    token = str(props["token"])
    env[str(props["token_env"])] = token
    port = int(props["port"])
    where = f"POST {props['path']}"
    name = f"{props['name_prefix']}-bootstrap-{secrets.token_hex(3)}"
    # Labelled as a task of the stack: a run killed midway leaves it to the next run's sweep.
    labels = {**dict(props.get("labels") or {}), TASK_LABEL: "bootstrap",
              "appstack.prefix": str(props["name_prefix"]), OWNER_LABEL: owner_id()}  # fmt: skip
    with client(props.get("docker_host")) as docker_client:
        container = docker_client.containers.run(
            str(props["image"]),
            name=name,
            detach=True,
            environment=env,
            user=props.get("user") or None,
            network=str(props["network"]),
            read_only=bool(props.get("read_only")),
            tmpfs={str(p): "rw,nosuid,nodev,size=64m" for p in props.get("tmpfs") or ()},
            labels=labels,
        )
        try:
            deadline = float(props.get("timeout_s") or 120)
            started = time.monotonic()
            result = container.exec_run(call_argv(props), demux=False)
            out = (result.output or b"").decode("utf-8", "replace").strip()
            answer = parse_answer(out)
            if result.exit_code != 0 or answer is None:
                logs = container.logs(tail=40).decode("utf-8", "replace")
                msg = f"bootstrap: the call could not run ({result.exit_code}): {out}\n{logs}"
                raise EngineError(redact(msg, [token]))
            if answer["status"] is None:
                logs = log_tail(container.logs(tail=40).decode("utf-8", "replace"))
                msg = f"bootstrap: {name} never listened on {port} within {deadline:g}s:\n{logs}"
                raise EngineError(redact(msg, [token]))
            pulumi.log.info(
                f"bootstrap: {where} answered {answer['status']} "
                f"after {time.monotonic() - started:.1f}s"
            )
            return _outcome(answer["status"], str(answer["body"]), str(props["result_key"]), where)
        finally:
            container.remove(force=True)


MOVED = ("docker_host", "network", "target")
"""Inputs that name where the database is: a change may mean a new database to bootstrap."""


class BootstrapProvider(ResourceProvider):
    """Calls the bootstrap endpoint once; never again, never undone."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Only a different stack target (engine, network; cluster, namespace) could call for
        another bootstrap."""
        moved = any(olds.get(k) != news.get(k) for k in MOVED)
        return DiffResult(changes=moved, replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """The one call; the owner key as a secret output."""
        outs = {**props, **_call(props), "bootstrapped_at": time.strftime("%FT%TZ", time.gmtime())}
        outs.pop("token", None)
        outs.pop("env", None)
        return CreateResult(f"{props['name_prefix']}-bootstrap", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """A new engine or network: the database there may be new too, so call again."""
        if olds.get("owner_key"):
            return UpdateResult({**olds, **{k: news.get(k) for k in MOVED if k in news}})
        return UpdateResult(self.create(news).outs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The key lives in the app's database: nothing to remove here."""


@dataclass(frozen=True)
class BootstrapArgs:
    """The throwaway server (the API's image and settings) and the call it serves."""

    image: pulumi.Input[str]
    env: Mapping[str, pulumi.Input[str]]
    token: pulumi.Input[str]
    token_env: str
    path: str
    body_key: str
    result_key: str
    port: int
    network: pulumi.Input[str]
    name_prefix: str
    labels: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    read_only: bool = False
    tmpfs: Sequence[str] = ()
    docker_host: str | None = None
    timeout_s: float = 120.0
    target: Mapping[str, Any] | None = None
    """Kubernetes: ``kind``, ``namespace``, ``context``, ``run_as_user`` (the Job's pod); None on
    Docker, where ``network`` and ``docker_host`` say where the container runs."""


def bootstrap_args(
    spec: BootstrapSpec, svc: ServiceSpec, image: pulumi.Input[str], **where: Any
) -> BootstrapArgs:
    """A ``Bootstrap``'s inputs: the call of ``spec`` served by ``svc``'s image and settings
    (its env without the token, which only the call's server gets); ``where`` says where it
    runs (``network``, ``name_prefix``, ``docker_host``, ``target``...)."""
    env = {k: v for k, v in {**svc.env, **svc.secret_env}.items() if k != spec.token_env}
    return BootstrapArgs(
        image=image,
        env=env,
        token=spec.token,
        token_env=spec.token_env,
        path=spec.path,
        body_key=spec.body_key,
        result_key=spec.result_key,
        port=svc.port or 0,
        read_only=svc.read_only_root,
        tmpfs=list(svc.tmpfs),
        **where,
    )


class Bootstrap(Resource, module="ops", name="Bootstrap"):
    """The app's owner credential, issued on the first deploy."""

    owner_key: pulumi.Output[str]
    outcome: pulumi.Output[str]
    bootstrapped_at: pulumi.Output[str]

    def __init__(
        self, name: str, args: BootstrapArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props: dict[str, Any] = {
            "image": args.image,
            "env": pulumi.Output.secret(dict(args.env)),
            "token": pulumi.Output.secret(args.token),
            "token_env": args.token_env,
            "path": args.path,
            "body_key": args.body_key,
            "result_key": args.result_key,
            "port": args.port,
            "network": args.network,
            "name_prefix": args.name_prefix,
            "labels": dict(args.labels),
            "user": args.user,
            "read_only": args.read_only,
            "tmpfs": list(args.tmpfs),
            "docker_host": args.docker_host,
            "timeout_s": args.timeout_s,
            **({"target": dict(args.target)} if args.target else {}),
            "owner_key": None,
            "outcome": None,
            "bootstrapped_at": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["owner_key"])
        )
        super().__init__(BootstrapProvider(), name, props, opts)
