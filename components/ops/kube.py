"""``appstack status`` on a Kubernetes stack: its Deployments and StatefulSets as the cluster has
them now, not as the stack's state last recorded them.

The workloads are the stack's ``kubernetes:apps/v1`` resources; each namespace is read with one
``kubectl get`` (workloads and pods together), in the context ``appstack:kubernetes.context``
names (else the kubeconfig's current one), from the kubeconfig ``kubectl`` finds itself
(``KUBECONFIG``, else ~/.kube/config): the cluster the stack's next ``pulumi up`` reaches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.ops.stack import resources

WORKLOAD_TYPES = {
    # Data stores first, then services: the rollout's order.
    "kubernetes:apps/v1:StatefulSet": "StatefulSet",
    "kubernetes:apps/v1:Deployment": "Deployment",
}
COUNTS = ("desired", "ready", "available", "updated")


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet of the stack, as its state names it."""

    kind: str
    namespace: str
    name: str


def workloads(deployment: Mapping[str, Any]) -> list[Workload]:
    """The stack's Deployments and StatefulSets, from an exported deployment."""
    found = []
    for typ, kind in WORKLOAD_TYPES.items():
        for res in resources(deployment, typ):
            meta = (res.get("outputs") or {}).get("metadata") or {}
            found.append(Workload(kind, str(meta.get("namespace") or "default"), str(meta["name"])))
    return found


def context(config: Mapping[str, Any]) -> str | None:
    """The kubeconfig context the stack's provider uses (``appstack:kubernetes.context``)."""
    settings = config.get("appstack:kubernetes")
    value = settings.get("context") if isinstance(settings, Mapping) else None
    return str(value) if value else None


def health(obj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> str:
    """One word for a live workload (``pods``: its own): ready, progressing, stalled, degraded or
    stopped.

    ``progressing`` while the controller has not caught up with the spec, or pods of an older
    template remain, or pods are still terminating (``status.replicas`` no longer counts them);
    ``stalled`` once a Deployment's rollout passed its progress deadline; ``degraded`` when the
    rollout is done but fewer pods are ready or available than desired; ``stopped`` when it is
    scaled to 0 and its pods are gone.
    """
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    counts = replica_counts(obj)
    desired = counts["desired"]
    conditions = status.get("conditions") or []
    if any(c.get("reason") == "ProgressDeadlineExceeded" for c in conditions):
        return "stalled"
    behind = int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0)
    old = int(status.get("replicas") or 0) > desired or counts["updated"] < desired
    going = any((p.get("metadata") or {}).get("deletionTimestamp") for p in pods)
    if behind or old or going or int(status.get("terminatingReplicas") or 0):
        return "progressing"
    if desired == 0:
        return "stopped"
    if counts["ready"] < desired or counts["available"] < desired:
        return "degraded"
    return "ready"


def replica_counts(obj: Mapping[str, Any]) -> dict[str, int]:
    """Desired (spec), ready, available and updated replicas (status; absent counts are 0)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "desired": int(spec.get("replicas", 1)),
        "ready": int(status.get("readyReplicas") or 0),
        "available": int(status.get("availableReplicas") or 0),
        "updated": int(status.get("updatedReplicas") or 0),
    }


def own_pods(obj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods the workload's selector matches."""
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}

    def matches(pod: Mapping[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in selector.items())

    return [pod for pod in pods if selector and matches(pod)]


def restarts(pods: Sequence[Mapping[str, Any]]) -> int:
    """Container restarts summed over ``pods`` (init containers included)."""
    statuses = [
        cs
        for pod in pods
        for key in ("containerStatuses", "initContainerStatuses")
        for cs in (pod.get("status") or {}).get(key) or []
    ]
    return sum(int(cs.get("restartCount") or 0) for cs in statuses)


def row(obj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The status row of one live Deployment or StatefulSet (its JSON from the API server), with
    the restarts of its pods among ``pods``."""
    meta = obj.get("metadata") or {}
    template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    images = [str(c.get("image")) for c in template.get("containers") or []]
    own = own_pods(obj, pods)
    return {
        "name": str(meta.get("name")),
        "kind": str(obj.get("kind")),
        "namespace": str(meta.get("namespace")),
        "image": images[0] if images else "",
        "images": images,
        **replica_counts(obj),
        "restarts": restarts(own),
        "health": health(obj, own),
    }


def _absent(workload: Workload, word: str, error: str = "") -> dict[str, Any]:
    """The row of a workload the cluster did not show (``missing``) or could not be asked about."""
    absent: dict[str, Any] = {
        "name": workload.name,
        "kind": workload.kind,
        "namespace": workload.namespace,
        "image": "",
        "images": [],
        **dict.fromkeys(COUNTS, 0),
        "restarts": 0,
        "health": word,
    }
    return {**absent, "error": error} if error else absent


def read(found: Sequence[Workload], kube_context: str | None) -> list[dict[str, Any]]:
    """The live rows of ``found``: one ``kubectl get`` per namespace.

    The cluster's answer is the status: a workload it does not have is ``missing``, a namespace
    it could not be asked about gives ``unknown`` rows carrying kubectl's error.
    """
    from components.providers.k8s_runner import KubectlError, kubectl

    live: dict[tuple[str, str, str], dict[str, Any]] = {}
    pods: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    for namespace in sorted({w.namespace for w in found}):
        try:
            proc = kubectl(
                namespace, kube_context, "get", "deployments,statefulsets,pods", "-o=json"
            )
        except KubectlError as exc:
            errors[namespace] = str(exc)
            continue
        items = json.loads(proc.stdout).get("items") or []
        pods[namespace] = [i for i in items if i.get("kind") == "Pod"]
        for item in items:
            live[(str(item.get("kind")), namespace, str(item["metadata"]["name"]))] = item
    rows = []
    for w in found:
        if w.namespace in errors:
            rows.append(_absent(w, "unknown", errors[w.namespace]))
        elif (obj := live.get((w.kind, w.namespace, w.name))) is None:
            rows.append(_absent(w, "missing"))
        else:
            rows.append(row(obj, pods[w.namespace]))
    return rows


def describe(r: Mapping[str, Any]) -> str:
    """One line of ``appstack status`` for a row."""
    line = (
        f"{r['name']:<12} {r['kind']:<11} {r['health']:<11} ready {r['ready']}/{r['desired']}  "
        f"updated {r['updated']}  available {r['available']}  restarts {r['restarts']}  "
        f"{','.join(r['images']) or '-'}"
    )
    return f"{line}\n  {r['error']}" if r.get("error") else line
