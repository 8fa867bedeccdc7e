"""The kubectl Job runner against a real API server, controller-manager and scheduler (kwok nodes).

kwok runs no container: a Job there "completes" with a status nobody lived. The runner must refuse
that as a result, and report a Job that fails, each time naming the task and its Job, and clean up
its objects either way. Pod Security Admission enforces `restricted` on this cluster, so every
task pod the runner makes must pass it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from components.providers.k8s_runner import QUIESCE_ANNOTATION, KubernetesRunner
from components.providers.runner import Task, TaskError
from tools.k8s_stack import KWOK_FAIL_IMAGE, Cluster, wait_until

NS = "runner-test"


@pytest.fixture(scope="module")
def runner(cluster: Cluster) -> Iterator[KubernetesRunner]:
    """A runner on a fresh namespace, with kubectl and KUBECONFIG of the test cluster."""
    cluster.kubectl("create", "namespace", NS)
    saved = {k: os.environ.get(k) for k in ("PATH", "KUBECONFIG")}
    os.environ.update({k: cluster.env()[k] for k in ("PATH", "KUBECONFIG")})
    try:
        yield KubernetesRunner(NS, "k8stest", uid=999)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _leftovers(cluster: Cluster) -> list[str]:
    names = []
    for kind in ("jobs", "secrets", "configmaps"):
        for item in cluster.items(kind, NS, "app.kubernetes.io/managed-by=appstack"):
            names.append(f"{kind}/{item['metadata']['name']}")
    return names


def test_a_job_that_completes_without_running_a_container_fails_naming_it(
    runner: KubernetesRunner, cluster: Cluster
) -> None:
    task = Task(
        name="schema-apply",
        image="registry.example.com/haven/catalog:1.0.0",
        command=["psql", "-f", "/work/apply.sql"],
        env={"PGPASSWORD": "pw-not-in-any-message"},
        files={"apply.sql": b"select 1;"},
        timeout_s=60,
    )
    with pytest.raises(TaskError) as err:
        runner.run(task)
    message = str(err.value)
    assert f"task 'schema-apply' (Job {NS}/k8stest-schema-apply-" in message
    assert "reports completion but no container ran" in message
    assert "skipClusterTasks" in message
    assert "pw-not-in-any-message" not in message
    assert err.value.exit_code is None
    assert _leftovers(cluster) == []


def test_a_failing_job_fails_naming_it_and_its_exit_code(
    runner: KubernetesRunner, cluster: Cluster
) -> None:
    task = Task(name="migrate", image=KWOK_FAIL_IMAGE, command=["false"], timeout_s=60)
    with pytest.raises(TaskError) as err:
        runner.run(task)
    message = str(err.value)
    assert f"task 'migrate' (Job {NS}/k8stest-migrate-" in message
    assert "failed (exit code 1" in message and "BackoffLimitExceeded" in message
    assert err.value.exit_code == 1
    assert _leftovers(cluster) == []


def test_reading_an_image_dir_fails_when_no_container_ran(runner: KubernetesRunner) -> None:
    with pytest.raises(TaskError) as err:
        runner.read_image_dir("registry.example.com/haven/catalog:1.0.0", "/app/schema")
    assert "task 'read-schema'" in str(err.value) and "no container ran" in str(err.value)


def test_the_task_pods_pass_pod_security_restricted(cluster: Cluster) -> None:
    # The namespace has no label: the cluster-wide default (enforce: restricted) applies. A pod
    # that breaks it is refused by the API server at once (dry run: nothing is created).
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-pod", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/x:1"}]},
    }
    refused = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(bad), check=False
    )
    assert refused.code != 0 and "restricted" in refused.stderr


def test_quiescing_scales_a_deployment_to_zero_and_back(
    runner: KubernetesRunner, cluster: Cluster
) -> None:
    labels = {"app.kubernetes.io/name": "worker"}
    pod_security = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "name": "worker",
        "image": "registry.example.com/haven/worker:1.0.0",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker", "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                # A pod that takes its time to go, like the worker finishing its batch.
                "metadata": {
                    "labels": labels,
                    "annotations": {"kwok.appstack.test/delete-after": "4s"},
                },
                "spec": {
                    "securityContext": pod_security,
                    "containers": [container],
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))

    def ready() -> int:
        return int(cluster.get("deployment", "worker", "-n", NS)["status"].get("readyReplicas", 0))

    wait_until("worker has 2 ready pods", lambda: ready() == 2)

    assert runner.stop_containers(["worker", "no-such-deployment"]) == ["no-such-deployment"]
    live = cluster.get("deployment", "worker", "-n", NS)
    assert live["spec"]["replicas"] == 0
    assert live["metadata"]["annotations"][QUIESCE_ANNOTATION] == "2"
    # Gone, not merely terminating: the migration starts right after this returns.
    assert cluster.items("pods", NS, "app.kubernetes.io/name=worker") == []

    assert runner.start_containers(["worker"]) == []
    live = cluster.get("deployment", "worker", "-n", NS)
    assert live["spec"]["replicas"] == 2
    assert QUIESCE_ANNOTATION not in (live["metadata"].get("annotations") or {})
    wait_until("worker is back to 2 ready pods", lambda: ready() == 2)
