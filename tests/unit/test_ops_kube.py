"""`appstack status` on Kubernetes, its pure parts: which workloads a stack has, and the status
row of a live Deployment or StatefulSet (objects shaped as the API server returns them)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.ops.kube import Workload, context, describe, health, row, workloads
from components.ops.stack import platform

SELECTOR = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/instance": "prod-haven"}


def deployment(**status: Any) -> dict[str, Any]:
    """A rolled-out gateway Deployment (3 replicas), with ``status`` fields overridden."""
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gateway", "namespace": "prod-haven", "generation": 2},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": SELECTOR},
            "template": {
                "metadata": {"labels": SELECTOR},
                "spec": {"containers": [{"name": "gateway", "image": "r.example/gw:1.0.1"}]},
            },
        },
        "status": {
            "observedGeneration": 2,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        },
    }
    obj["status"].update(status)
    return obj


def pod(labels: dict[str, str], *restarts: int, init: int = 0) -> dict[str, Any]:
    """A pod with one container status per restart count (and an init container's)."""
    return {
        "kind": "Pod",
        "metadata": {"name": "p", "labels": labels},
        "status": {
            "containerStatuses": [
                {"name": f"c{i}", "restartCount": n} for i, n in enumerate(restarts)
            ],
            "initContainerStatuses": [{"name": "init", "restartCount": init}],
        },
    }


def test_a_rolled_out_deployment_gives_its_live_image_counts_and_restarts() -> None:
    pods = [
        pod({**SELECTOR, "pod-template-hash": "abc"}, 2, 1, init=1),
        pod(SELECTOR, 0),
        pod({**SELECTOR, "app.kubernetes.io/name": "search"}, 9),  # another workload's pod
        pod({}, 7),
    ]
    assert row(deployment(), pods) == {
        "name": "gateway",
        "kind": "Deployment",
        "namespace": "prod-haven",
        "image": "r.example/gw:1.0.1",
        "images": ["r.example/gw:1.0.1"],
        "desired": 3,
        "ready": 3,
        "available": 3,
        "updated": 3,
        "restarts": 4,
        "health": "ready",
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, "ready"),
        # The controller has not seen the new spec yet: its counts are the old template's.
        ({"observedGeneration": 1}, "progressing"),
        ({"updatedReplicas": 1, "replicas": 4}, "progressing"),
        ({"replicas": 4}, "progressing"),  # an old pod still runs beside the new ones
        ({"readyReplicas": 2, "availableReplicas": 2}, "degraded"),
        ({"availableReplicas": 2}, "degraded"),
        ({"readyReplicas": None, "availableReplicas": None}, "degraded"),
        (
            {
                "updatedReplicas": 1,
                "replicas": 4,
                "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ],
            },
            "stalled",
        ),
    ],
)
def test_health_words(status: dict[str, Any], expected: str) -> None:
    obj = deployment(**status)
    obj["status"] = {k: v for k, v in obj["status"].items() if v is not None}
    assert health(obj) == expected


def test_a_deployment_scaled_to_zero_is_stopped_once_its_pods_are_gone() -> None:
    obj = deployment(replicas=3, readyReplicas=3, availableReplicas=3, updatedReplicas=3)
    obj["spec"]["replicas"] = 0
    assert health(obj) == "progressing"  # its pods are still going
    for key in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas"):
        del obj["status"][key]
    # status.replicas no longer counts a terminating pod: it still runs its grace period.
    terminating = pod(SELECTOR, 0)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-25T20:00:00Z"
    assert health(obj, [terminating]) == "progressing"
    assert health({**obj, "status": {**obj["status"], "terminatingReplicas": 1}}) == "progressing"
    assert health(obj) == "stopped"
    assert [row(obj, [])[k] for k in ("desired", "ready", "available", "updated")] == [0] * 4


def test_a_statefulset_row() -> None:
    sts = copy.deepcopy(deployment())
    sts["kind"] = "StatefulSet"
    sts["spec"] = {**sts["spec"], "replicas": 1}
    sts["status"] = {
        "observedGeneration": 2,
        "replicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
        "currentReplicas": 1,
        "updatedReplicas": 1,
        "currentRevision": "postgres-7d",
        "updateRevision": "postgres-7d",
    }
    assert (row(sts, [])["health"], row(sts, [])["desired"]) == ("ready", 1)
    sts["status"]["updatedReplicas"] = 0  # a new revision waits for its pod
    assert health(sts) == "progressing"


def test_describe_is_one_line_and_carries_an_error() -> None:
    line = describe(row(deployment(readyReplicas=2, availableReplicas=2), []))
    assert line.split()[:3] == ["gateway", "Deployment", "degraded"]
    assert "ready 2/3" in line and line.endswith("r.example/gw:1.0.1")
    broken = {**row(deployment(), []), "health": "unknown", "error": "kubectl get failed"}
    assert describe(broken).splitlines()[1].strip() == "kubectl get failed"


def test_workloads_come_from_the_state_data_stores_first() -> None:
    def res(typ: str, name: str, namespace: str | None = "prod-haven") -> dict[str, Any]:
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        return {"type": typ, "outputs": {"metadata": meta}}

    export = {
        "deployment": {
            "resources": [
                res("kubernetes:core/v1:Namespace", "prod-haven", None),
                res("kubernetes:apps/v1:StatefulSet", "postgres"),
                res("kubernetes:apps/v1:Deployment", "catalog"),
                res("kubernetes:core/v1:Service", "gateway"),
                res("kubernetes:apps/v1:Deployment", "gateway", None),
                res("kubernetes:apps/v1:StatefulSet", "qdrant"),
            ]
        }
    }
    assert workloads(export) == [
        Workload("StatefulSet", "prod-haven", "postgres"),
        Workload("StatefulSet", "prod-haven", "qdrant"),
        Workload("Deployment", "prod-haven", "catalog"),
        Workload("Deployment", "default", "gateway"),
    ]


def test_context_is_the_one_the_stack_config_names() -> None:
    assert context({"appstack:kubernetes": {"context": "prod-eu", "tls": True}}) == "prod-eu"
    assert context({"appstack:kubernetes": {"tls": True}}) is None
    assert context({}) is None


@pytest.mark.parametrize(
    ("config", "stack", "expected"),
    [
        ({"appstack:platform": "kubernetes", "appstack:environment": "dev"}, "x", "kubernetes"),
        ({"appstack:environment": "prod"}, "haven-eu", "kubernetes"),
        ({}, "prod", "kubernetes"),  # the environment defaults to a known stack name
        ({"appstack:environment": "staging"}, "prod", "docker"),
        ({}, "dev", "docker"),
        ({}, "mine", "docker"),
    ],
)
def test_platform_follows_the_settings_defaults(
    config: dict[str, Any], stack: str, expected: str
) -> None:
    assert platform(config, stack) == expected
