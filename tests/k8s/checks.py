"""What the cluster tests check on the live cluster, shared by the prod and engramia-prod suites."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tools.k8s_stack import Cluster, Stack, kind_and_name

PLURAL = {
    "Namespace": "namespace",
    "Secret": "secret",
    "NetworkPolicy": "networkpolicy",
    "PersistentVolumeClaim": "persistentvolumeclaim",
    "Service": "service",
    "StatefulSet": "statefulset",
    "Deployment": "deployment",
    "PodDisruptionBudget": "poddisruptionbudget",
    "Ingress": "ingress",
    "Job": "job",
}


def assert_every_object_is_live(cluster: Cluster, stack: Stack) -> dict[str, list[str]]:
    """Every kubernetes object in the stack's state exists on the cluster; names by kind."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for resource in stack.resources():
        found = kind_and_name(resource)
        if found is None:
            continue
        kind, namespace, name = found
        args = [PLURAL[kind], name] + (["-n", namespace] if namespace else [])
        live = cluster.get(*args)
        assert live["metadata"]["uid"] == resource["outputs"]["metadata"]["uid"], name
        by_kind[kind].append(name)
    return dict(by_kind)


def assert_rolled_out(cluster: Cluster, namespace: str, replicas: Mapping[str, int]) -> None:
    """Each Deployment runs exactly its replicas, all updated, ready and available."""
    live = {d["metadata"]["name"]: d for d in cluster.items("deployments", namespace)}
    assert set(live) == set(replicas)
    for name, want in replicas.items():
        spec, status = live[name]["spec"], live[name].get("status") or {}
        got = [status.get(k, 0) for k in ("replicas", "updatedReplicas", "readyReplicas")]
        assert spec["replicas"] == want and got == [want] * 3, (name, got)
        assert status.get("availableReplicas") == want, name
        strategy = spec["strategy"]["rollingUpdate"]
        assert (strategy["maxUnavailable"], strategy["maxSurge"]) == (0, 1), name


def assert_statefulsets_ready(cluster: Cluster, namespace: str, names: set[str]) -> None:
    """Each data store's StatefulSet has its one pod ready."""
    live = {s["metadata"]["name"]: s for s in cluster.items("statefulsets", namespace)}
    assert set(live) == names
    for name, sts in live.items():
        assert (sts.get("status") or {}).get("readyReplicas") == 1, name


def assert_claims_bound(
    cluster: Cluster, stack: Stack | None, namespace: str, names: set[str]
) -> None:
    """The claims exist and are Bound; in the state (when given) each is protected."""
    live = {c["metadata"]["name"]: c for c in cluster.items("pvc", namespace)}
    assert set(live) == names
    for name, claim in live.items():
        assert claim["status"]["phase"] == "Bound", name
    if stack is not None:
        protected = {
            found[2]: bool(r.get("protect"))
            for r in stack.resources()
            if (found := kind_and_name(r)) and found[0] == "PersistentVolumeClaim"
        }
        assert protected == dict.fromkeys(names, True)


def assert_pdbs(cluster: Cluster, namespace: str, min_available: Mapping[str, int]) -> None:
    """The PodDisruptionBudgets the API server holds, and what each allows."""
    live = {p["metadata"]["name"]: p for p in cluster.items("pdb", namespace)}
    assert {n: p["spec"]["minAvailable"] for n, p in live.items()} == dict(min_available)
    for name, pdb in live.items():
        status = pdb.get("status") or {}
        # The disruption controller counted the pods: exactly one may go at a time here.
        assert status.get("currentHealthy", 0) >= min_available[name], name


def replica_sets(cluster: Cluster, namespace: str) -> dict[str, dict[str, dict[str, Any]]]:
    """ReplicaSets by owning Deployment, each by name."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rs in cluster.items("replicasets", namespace):
        owner = next(o["name"] for o in rs["metadata"]["ownerReferences"])
        out[owner][rs["metadata"]["name"]] = rs
    return dict(out)


def event_order(path: Path) -> dict[str, tuple[int, int]]:
    """(start, end) sequence numbers of every resource step of an engine event log, by URN."""
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        seq = int(event.get("sequence", 0))
        if "resourcePreEvent" in event:
            urn = event["resourcePreEvent"]["metadata"]["urn"]
            start.setdefault(urn, seq)
        elif "resOutputsEvent" in event:
            end[event["resOutputsEvent"]["metadata"]["urn"]] = seq
    return {urn: (start[urn], end[urn]) for urn in start if urn in end}


def urn_of(order: Mapping[str, tuple[int, int]], type_: str, name: str) -> str:
    """The one URN of a type whose resource name ends with ``name``."""
    found = [u for u in order if u.split("::")[-2].endswith(type_) and u.endswith(f"-{name}")]
    assert len(found) == 1, (type_, name, found)
    return found[0]


class Sampler(threading.Thread):
    """Samples a Deployment's status while an update runs (to see a rollout's capacity)."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        """Poll until stopped."""
        while not self.stopped.is_set():
            proc = self.cluster.kubectl(
                "get", "deployment", self.name, "-n", self.namespace, "-o", "json", check=False
            )
            if proc.code == 0:
                live = json.loads(proc.stdout)
                self.samples.append({**live.get("status", {}), "spec": live["spec"]["replicas"]})
            self.stopped.wait(0.2)

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling; the samples taken."""
        self.stopped.set()
        self.join(timeout=10)
        return self.samples
