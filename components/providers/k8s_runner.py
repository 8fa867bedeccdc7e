"""Run one-off tasks inside a Kubernetes namespace as Jobs, through ``kubectl`` (no new library).

A task becomes three objects applied together: a Secret holding its whole env (so no value sits in
the Job's spec), a ConfigMap holding its files (mounted read-only at ``/work``) and a Job (no
retries, a deadline, the task's PVC mounts). The runner waits for the Job, collects its log and
deletes all three, also on failure or timeout. ``kubectl`` finds the cluster as it always does
(``KUBECONFIG``, the current context, or the target's ``context``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.providers.runner import (
    CONTAINER_WORK,
    Task,
    TaskError,
    TaskResult,
    _finish,
    _untar_dir,
    log_tail,
    redact,
)

TASK_LABEL = "app.kubernetes.io/component"
TASK_LABEL_VALUE = "task"
"""Label of every task pod: the NetworkPolicy lets these pods (and only these) reach Postgres."""
QUIESCE_ANNOTATION = "appstack.io/replicas-before-quiesce"
POLL_S = 2.0
DEADLINE_GRACE_S = 60
"""The Job's own deadline backs up the runner's (a runner that dies leaves no task running)."""
KUBECTL_TIMEOUT_S = 120.0
# Pod states that never recover by waiting: fail the task at once instead of at its deadline.
STUCK_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)
_BEGIN = "APPSTACK:TAR:BEGIN"
_END = "APPSTACK:TAR:END"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


class KubectlError(RuntimeError):
    """``kubectl`` itself failed (cluster unreachable, forbidden, invalid object)."""


@dataclass(frozen=True)
class Sidecar:
    """A server the task's container talks to on 127.0.0.1: a native sidecar of the task's pod.

    It runs as an initContainer with ``restartPolicy: Always`` (Kubernetes >= 1.29): started
    before the task's container, stopped once that container ended, so the Job completes. It reads
    the same Secret as the task (``envFrom``); ``tmpfs`` paths get emptyDirs of their own.
    """

    image: str
    read_only_root: bool = True
    tmpfs: Sequence[str] = ()
    name: str = "server"


@dataclass(frozen=True)
class JobOutcome:
    """How a task's Job ended, as the API server reports it."""

    succeeded: bool
    timed_out: bool
    exit_code: int | None
    """The exit code in the pod's terminated container status, if any."""
    container_ids: tuple[str, ...]
    """IDs a container runtime gave the Job's containers: none means no container ever ran."""
    reason: str = ""
    """The Job's ``Failed`` condition (``BackoffLimitExceeded``, ``DeadlineExceeded``...)."""


def job_name(prefix: str, task: str) -> str:
    """A DNS-1123 name for a task's objects: prefix, task, random suffix, at most 63 chars."""
    suffix = secrets.token_hex(3)
    stem = _NOT_DNS.sub("-", f"{prefix}-{task}".lower()).strip("-")
    return f"{stem[: 63 - len(suffix) - 1].rstrip('-')}-{suffix}"


def kubectl(
    namespace: str, context: str | None, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl ARGS`` in ``namespace`` of ``context`` (None: the kubeconfig's current one).

    ``kubectl`` finds its kubeconfig as it always does (``KUBECONFIG``, else ~/.kube/config), the
    same one the stack's Kubernetes provider reads.
    """
    argv = ["kubectl", *(["--context", context] if context else [])]
    argv += ["--namespace", namespace, *args]
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        msg = "kubectl is not on PATH: appstack drives Kubernetes clusters through it"
        raise KubectlError(msg) from exc
    if check and proc.returncode != 0:
        msg = f"kubectl {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}"
        raise KubectlError(msg)
    return proc


def _security(uid: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts of a task: non-root, nothing to escalate."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
    }
    return pod, container


def _sidecar_container(
    sidecar: Sidecar, secret: str, volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The sidecar's initContainer; appends the emptyDirs it mounts to ``volumes``."""
    mounts = []
    for i, path in enumerate(sidecar.tmpfs):
        volumes.append({"name": f"s{i}", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}})
        mounts.append({"name": f"s{i}", "mountPath": path})
    _, security = _security(0)
    return {
        "name": sidecar.name,
        "image": sidecar.image,
        "restartPolicy": "Always",  # native sidecar: ends when the task's container did
        "envFrom": [{"secretRef": {"name": secret}}],
        "volumeMounts": mounts,
        "securityContext": {**security, "readOnlyRootFilesystem": sidecar.read_only_root},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
    }


def task_manifests(
    task: Task, name: str, namespace: str, uid: int, prefix: str, sidecar: Sidecar | None = None
) -> list[dict[str, Any]]:
    """The Secret, ConfigMap and Job that run ``task`` (a pure function: tested offline).

    With ``sidecar``, the pod also runs that server beside the task (``Sidecar``).
    """
    labels = {
        TASK_LABEL: TASK_LABEL_VALUE,
        "app.kubernetes.io/managed-by": "appstack",
        "appstack.io/task": _NOT_DNS.sub("-", task.name.lower()).strip("-")[:63] or "task",
        "appstack.io/prefix": prefix,
    }
    meta = {"name": name, "namespace": namespace, "labels": labels}
    env = {**task.env, "WORK": CONTAINER_WORK}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": {k: str(v) for k, v in env.items()},
    }
    # ConfigMap keys cannot hold '/': keys are indexes, `items` put each file at its path.
    ordered = sorted(task.files.items())
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "binaryData": {
            f"f{i}": base64.b64encode(data).decode() for i, (_, data) in enumerate(ordered)
        },
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "work",
            "configMap": {
                "name": name,
                "items": [{"key": f"f{i}", "path": rel} for i, (rel, _) in enumerate(ordered)],
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "work", "mountPath": CONTAINER_WORK, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for i, (claim, path) in enumerate(task.mounts):
        volumes.append({"name": f"m{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"m{i}", "mountPath": path})
    pod_security, container_security = _security(uid)
    container: dict[str, Any] = {
        "name": "task",
        "image": task.image,
        "args": list(task.command),
        "envFrom": [{"secretRef": {"name": name}}],
        "volumeMounts": mounts,
        "securityContext": container_security,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
    }
    if task.entrypoint is not None:
        container["command"] = list(task.entrypoint)
    init = [_sidecar_container(sidecar, name, volumes)] if sidecar else []
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(task.timeout_s) + DEADLINE_GRACE_S,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security,
                    **({"initContainers": init} if init else {}),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    return [secret, config_map, job]


class KubernetesRunner:
    """Runs tasks as Jobs in one namespace; quiesces services by scaling their Deployments."""

    def __init__(
        self, namespace: str, name_prefix: str, context: str | None = None, uid: int = 10001
    ) -> None:
        self.namespace = namespace
        self.name_prefix = name_prefix
        self.context = context
        self.uid = uid

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl`` in the target's context and namespace."""
        return kubectl(self.namespace, self.context, *args, stdin=stdin, check=check)

    def _get_json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))

    def _pods(self, job: str) -> list[dict[str, Any]]:
        return list(self._get_json("pods", "-l", f"job-name={job}").get("items") or [])

    def _wait(self, job: str, timeout_s: float) -> JobOutcome:
        """Poll the Job until it completes, fails or the runner's deadline passes."""
        end = time.monotonic() + timeout_s
        while True:
            status = self._get_json("job", job).get("status") or {}
            pods = self._pods(job)
            code = _exit_code(pods)
            failed = status.get("failed") or code not in (None, 0)
            if status.get("succeeded") or failed:
                return JobOutcome(
                    succeeded=bool(status.get("succeeded")) and not failed,
                    timed_out=False,
                    exit_code=code,
                    container_ids=_container_ids(pods),
                    reason=_failed_condition(status),
                )
            stuck = _stuck(pods)
            if stuck:
                msg = f"task job {job} cannot start: {stuck}"
                raise TaskError(msg, None, stuck)
            if time.monotonic() >= end:
                return JobOutcome(False, True, None, _container_ids(pods))
            time.sleep(POLL_S)

    def _delete(self, name: str) -> None:
        """Delete the task's Job (and its pods), Secret and ConfigMap; report what failed."""
        problems = []
        for kind in ("job", "secret", "configmap"):
            proc = self.kubectl(
                "delete", kind, name, "--ignore-not-found", "--cascade=background", check=False
            )
            if proc.returncode != 0:
                problems.append(f"{kind}/{name}: {proc.stderr.strip()}")
        if problems:
            msg = "could not clean up task objects: " + "; ".join(problems)
            raise KubectlError(msg)

    def run(self, task: Task, sidecar: Sidecar | None = None) -> TaskResult:
        """Apply Secret + ConfigMap + Job, wait, collect the log, always delete all three.

        The log is every container's, the sidecar's first (``kubectl logs --all-containers``).
        """
        name = job_name(self.name_prefix, task.name)
        manifests = task_manifests(task, name, self.namespace, self.uid, self.name_prefix, sidecar)
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
        try:
            self.kubectl("apply", "-f", "-", stdin=document)
            outcome = self._wait(name, task.timeout_s)
            logs = self.kubectl("logs", f"job/{name}", "--all-containers", check=False)
        finally:
            self._delete(name)
        raw = logs.stdout if logs.returncode == 0 else ""
        log_error = logs.stderr.strip() if logs.returncode != 0 else ""
        return self._judge(task, name, outcome, raw, log_error)

    def _judge(
        self, task: Task, job: str, outcome: JobOutcome, raw: str, log_error: str
    ) -> TaskResult:
        """The task's result; a TaskError naming the task and its Job unless a container ran
        and exited 0.

        A Job can report completion without any container having run: on nodes that only
        simulate a kubelet (kwok) a pod's status is written, not lived. A container that really
        ran has an ID from the runtime; without one the "exit code" is nobody's.
        """
        where = f"task {task.name!r} (Job {self.namespace}/{job})"
        logs = redact(raw, task.secret_values())
        no_log = redact(log_error, task.secret_values()) or "empty"
        tail = log_tail(logs) if logs.strip() else f"(no log: {no_log})"
        ran = bool(outcome.container_ids)
        never_ran = (
            "no container ran: the pod has no container ID and no log, so no runtime ever "
            "started it (nodes that run no containers, such as kwok's, only report a status)"
        )
        if outcome.timed_out:
            msg = f"{where} timed out after {task.timeout_s:g}s; log tail:\n{tail}"
            raise TaskError(msg, None, logs)
        if not outcome.succeeded:
            code = outcome.exit_code if outcome.exit_code is not None else 1
            why = f"exit code {code}" + (f", {outcome.reason}" if outcome.reason else "")
            extra = "" if ran else f"; {never_ran}"
            msg = f"{where} failed ({why}){extra}; log tail:\n{tail}"
            raise TaskError(msg, code, logs)
        if not ran:
            msg = (
                f"{where} reports completion but {never_ran}; its work was not done. "
                "On such a cluster set appstack:kubernetes.skipClusterTasks (docs/kubernetes.md)"
            )
            raise TaskError(msg, None, logs)
        return _finish(task, 0, raw, False)

    def read_image_dir(self, image: str, path: str) -> dict[str, bytes]:
        """Files under ``path`` in ``image``: a Job tars the directory to its log, in base64."""
        script = (
            'set -eu; echo "$0"; tar -C "$(dirname "$2")" -cf - "$(basename "$2")" | base64;'
            ' echo "$1"'
        )
        task = Task(
            name="read-schema",
            image=image,
            command=[script, _BEGIN, _END, path],
            entrypoint=["sh", "-c"],
            timeout_s=300,
        )
        logs = self.run(task).logs
        return _untar_dir(decode_tar_log(logs))

    def _replicas(self, name: str) -> tuple[int, dict[str, str]] | None:
        proc = self.kubectl("get", "deployment", name, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            msg = f"kubectl get deployment {name} failed: {proc.stderr.strip()}"
            raise KubectlError(msg)
        data = json.loads(proc.stdout)
        annotations = dict((data.get("metadata") or {}).get("annotations") or {})
        return int((data.get("spec") or {}).get("replicas", 1)), annotations

    def stop_containers(self, names: Sequence[str]) -> list[str]:
        """Scale each named Deployment to 0 (remembering its replicas) and wait for its pods."""
        missing = []
        for name in names:
            found = self._replicas(name)
            if found is None:
                missing.append(name)
                continue
            replicas, annotations = found
            if QUIESCE_ANNOTATION not in annotations:  # a retry must not record 0
                remember = f"{QUIESCE_ANNOTATION}={replicas}"
                self.kubectl("annotate", "deployment", name, remember, "--overwrite")
            self.kubectl("scale", "deployment", name, "--replicas=0")
        for name in names:
            if name not in missing:
                self._wait_scaled_down(name)
        return missing

    def _wait_scaled_down(self, name: str, timeout_s: float = 120.0) -> None:
        """Wait until no pod of the Deployment exists, terminating ones included.

        The Deployment's ``status.replicas`` drops to 0 as soon as its pods are *terminating*,
        while they still run their grace period (the worker finishing its batch): the migration
        must wait for them to be gone.
        """
        spec = self._get_json("deployment", name).get("spec") or {}
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        end = time.monotonic() + timeout_s
        while True:
            status = self._get_json("deployment", name).get("status") or {}
            pods = self._get_json("pods", "-l", selector).get("items") if selector else []
            if not status.get("replicas") and not pods:
                return
            if time.monotonic() >= end:
                msg = f"deployment {name} still has pods {timeout_s:g}s after scaling to 0"
                raise KubectlError(msg)
            time.sleep(POLL_S)

    def start_containers(self, names: Sequence[str]) -> list[str]:
        """Scale each named Deployment back to the replicas it had before ``stop_containers``."""
        missing = []
        for name in names:
            found = self._replicas(name)
            if found is None:
                missing.append(name)
                continue
            _, annotations = found
            before = annotations.get(QUIESCE_ANNOTATION)
            if before is None:
                continue  # never stopped by us: leave it as it is
            self.kubectl("scale", "deployment", name, f"--replicas={int(before)}")
            self.kubectl("annotate", "deployment", name, f"{QUIESCE_ANNOTATION}-")
        return missing

    def mount_path(self, volume: str, container_path: str) -> str:
        """In a pod a PVC is mounted where the task mounts it."""
        del volume
        return container_path


def exec_in_pods(
    namespace: str, context: str | None, selector: str, container: str, argv: Sequence[str]
) -> list[tuple[str, str]]:
    """``kubectl exec`` of ``argv`` in ``container`` of every running pod ``selector`` picks:
    (pod, output) each, in name order; a pod where it fails raises ``KubectlError`` naming it.

    A pod already terminating is skipped when the exec fails there (it is on its way out and
    serves no new request once its endpoint is gone).
    """
    found = kubectl(namespace, context, "get", "pods", "-l", selector,
                    "--field-selector=status.phase=Running", "-o", "json")  # fmt: skip
    pods = sorted(json.loads(found.stdout).get("items") or [], key=lambda p: p["metadata"]["name"])
    done = []
    for pod in pods:
        pod_name = str(pod["metadata"]["name"])
        proc = kubectl(namespace, context, "exec", pod_name, "-c", container, "--", *argv,
                       check=False)  # fmt: skip
        if proc.returncode != 0:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            msg = (
                f"kubectl exec in pod {namespace}/{pod_name} ({container}) failed "
                f"({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
            )
            raise KubectlError(msg)
        done.append((pod_name, proc.stdout.strip()))
    return done


def decode_tar_log(logs: str) -> bytes:
    """The tar archive between the begin/end markers of a ``read_image_dir`` log."""
    lines = logs.splitlines()
    try:
        start = lines.index(_BEGIN) + 1
        end = lines.index(_END, start)
    except ValueError as exc:
        msg = "reading the image directory printed no complete archive"
        raise TaskError(msg, None, logs) from exc
    try:
        return base64.b64decode("".join(lines[start:end]), validate=True)
    except binascii.Error as exc:
        msg = f"reading the image directory printed invalid base64: {exc}"
        raise TaskError(msg, None, logs) from exc


def _exit_code(pods: Sequence[Mapping[str, Any]]) -> int | None:
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated is not None:
                return int(terminated.get("exitCode", 1))
    return None


def _container_ids(pods: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The runtime's IDs of the pods' containers (a kubelet sets one once it created one)."""
    return tuple(
        str(status["containerID"])
        for pod in pods
        for status in (pod.get("status") or {}).get("containerStatuses") or []
        if status.get("containerID")
    )


def _failed_condition(status: Mapping[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return ""


def _stuck(pods: Sequence[Mapping[str, Any]]) -> str:
    for pod in pods:
        status_of = pod.get("status") or {}
        every = [*(status_of.get("initContainerStatuses") or []),
                 *(status_of.get("containerStatuses") or [])]  # fmt: skip
        for status in every:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
    return ""
