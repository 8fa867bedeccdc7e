"""The operator CLI on a Kubernetes stack, run as an operator runs it (in the project, with the
stack's environment), against the real API server: `appstack status` reads the live workloads,
`history` lists the updates, `rollback --to previous` puts the old image back on the cluster.

One Haven prod stack of its own (`skipClusterTasks`: kwok runs no container, so the stack has no
Migration resource), named in `appstack:kubernetes.context`. Tests run in file order. Every CLI
run gets a DOCKER_HOST that answers nothing: no command may need a Docker engine here. Faults
are made the way a cluster makes them: the pod status a kubelet writes for a crash-looping
container, a rollout whose new pods cannot be scheduled, a scale to 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import checks
from tools.k8s_stack import (
    ROOT,
    Cluster,
    Result,
    Stack,
    kubernetes_config,
    scratch_stack,
    steps,
    wait_until,
)

STACK = "opsprod"
NS = f"{STACK}-haven"
REPLICAS = {"gateway": 3, "catalog": 2, "search": 2, "worker": 1, "caddy": 2}
DATASTORES = {"postgres", "qdrant", "minio"}
GATEWAY = "registry.example.com/haven/gateway"
NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/appstack-test/docker.sock"}


def config_images() -> dict[str, str]:
    """Image references of Pulumi.prod.yaml, by service (what the stack deploys first)."""
    config = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    return {
        name: f"{i['registry']}/{i['repository']}:{i['tag']}"
        for name, i in config["appstack:images"].items()
    }


@pytest.fixture(scope="module")
def ops(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, deployed once; its provider and the CLI use the context its config names."""
    tmp = tmp_path_factory.mktemp("ops")
    context = yaml.safe_load(cluster.kubeconfig.read_text())["current-context"]
    config = kubernetes_config("prod", skipClusterTasks=True, context=context)
    with scratch_stack(tmp, STACK, cluster, "prod", config, "haven") as stack:
        stack.up()
        yield stack


def appstack(stack: Stack, *args: str, env: dict[str, str] | None = None) -> Result:
    """`python -m components.ops.cli ARGS --stack S` in the stack's project, with its env."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "components.ops.cli", *args, "--stack", stack.name],
        cwd=stack.workdir,
        env={**stack.env, **NO_DOCKER, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def status(stack: Stack, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """`appstack status --json`: its rows by workload name."""
    out = appstack(stack, "status", "--json", env=env)
    assert out.code == 0, out.text
    return {row["name"]: row for row in json.loads(out.stdout)["services"]}


def wait_for_health(stack: Stack, name: str, health: str) -> dict[str, Any]:
    """Poll `appstack status` until workload ``name`` reports ``health``; its row then."""

    def row() -> dict[str, Any] | None:
        found = status(stack)[name]
        return found if found["health"] == health else None

    found: dict[str, Any] = wait_until(f"status says {name} is {health}", row, timeout_s=60)
    return found


def live_workloads(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The namespace's Deployments and StatefulSets as the API server has them."""
    found = cluster.items("deployments", NS) + cluster.items("statefulsets", NS)
    return {w["metadata"]["name"]: w for w in found}


def template_image(workload: dict[str, Any]) -> str:
    """The image of a live workload's (only) container."""
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def test_status_reads_every_workload_live_with_its_image_and_replicas(
    cluster: Cluster, ops: Stack
) -> None:
    rows = status(ops)
    live = live_workloads(cluster)
    want = {**REPLICAS, **dict.fromkeys(DATASTORES, 1)}
    assert set(rows) == set(live) == set(want)
    images = config_images()
    for name, row in rows.items():
        assert row["kind"] == live[name]["kind"], name
        assert row["image"] == template_image(live[name]) == images[name], name
        counts = [row[k] for k in ("desired", "ready", "available", "updated")]
        assert counts == [want[name]] * 4, (name, counts)
        assert (row["health"], row["restarts"]) == ("ready", 0), name
    text = appstack(ops, "status")
    assert text.code == 0, text.text
    lines = {line.split()[0]: line for line in text.stdout.splitlines()}
    assert set(lines) == set(want)
    assert "ready 3/3" in lines["gateway"] and images["gateway"] in lines["gateway"]


def test_status_reaches_the_cluster_through_the_context_the_stack_names(
    cluster: Cluster, ops: Stack, tmp_path: Path
) -> None:
    # A kubeconfig whose current context is another (unreachable) cluster: only the stack's
    # `appstack:kubernetes.context` leads to this one.
    elsewhere = tmp_path / "kubeconfig"
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}})
    config["contexts"].append(
        {"name": "nowhere", "context": {"cluster": "nowhere", "user": config["users"][0]["name"]}}
    )
    config["current-context"] = "nowhere"
    elsewhere.write_text(yaml.safe_dump(config))
    env = {"KUBECONFIG": str(elsewhere)}
    plain = subprocess.run(
        ["kubectl", "get", "deployments", "-n", NS, "--request-timeout=5s"],
        env={**ops.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode != 0  # the kubeconfig's own default does not reach the cluster
    rows = status(ops, env)
    assert {r["health"] for r in rows.values()} == {"ready"}
    assert rows["gateway"]["ready"] == 3

    # Without that context in the kubeconfig, kubectl's error is the status: no crash.
    del config["contexts"][0]
    elsewhere.write_text(yaml.safe_dump(config))
    rows = status(ops, env)
    assert {r["health"] for r in rows.values()} == {"unknown"}
    assert "context" in rows["gateway"]["error"], rows["gateway"]


def test_a_crash_looping_pod_makes_its_deployment_degraded_with_its_restarts(
    cluster: Cluster, ops: Stack
) -> None:
    (pod, *_) = cluster.items("pods", NS, "app.kubernetes.io/name=gateway")
    name = pod["metadata"]["name"]
    # What a kubelet writes for a container that keeps exiting: not ready, restarted 4 times.
    crash = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
            ],
            "containerStatuses": [
                {
                    "name": "gateway",
                    "image": pod["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ],
        }
    }
    cluster.kubectl("patch", "pod", name, "-n", NS, "--subresource=status", "-p", json.dumps(crash))
    try:
        wait_until(
            "the Deployment counts the pod unready",
            lambda: cluster.get("deployment", "gateway", "-n", NS)["status"].get("readyReplicas")
            == 2,
        )
        rows = status(ops)
        gateway = rows.pop("gateway")
        assert gateway["health"] == "degraded"
        counts = [gateway[k] for k in ("desired", "ready", "available", "updated", "restarts")]
        assert counts == [3, 2, 2, 3, 4]
        assert {r["health"] for r in rows.values()} == {"ready"}
    finally:
        cluster.kubectl("delete", "pod", name, "-n", NS)
    # The ReplicaSet replaces the pod; kwok marks the new one Ready.
    assert wait_for_health(ops, "gateway", "ready")["restarts"] == 0


def test_a_rollout_that_cannot_finish_shows_the_live_template_and_stalls(
    cluster: Cluster, ops: Stack
) -> None:
    drifted = "registry.example.com/haven/search:1.0.0-drift"
    # Changed behind Pulumi's back: new pods fit no node; the deadline is short to see it pass.
    patch = {
        "spec": {
            "progressDeadlineSeconds": 3,
            "template": {
                "spec": {
                    "nodeSelector": {"appstack.test/no-such-node": "true"},
                    "containers": [{"name": "search", "image": drifted}],
                }
            },
        }
    }
    deadline = cluster.get("deployment", "search", "-n", NS)["spec"]["progressDeadlineSeconds"]
    cluster.kubectl("patch", "deployment", "search", "-n", NS, "-p", json.dumps(patch))
    try:
        search = wait_for_health(ops, "search", "stalled")
        assert search["image"] == drifted  # the cluster's: the state still records 1.0.0
        (recorded,) = [r for r in ops.resources() if r["urn"].endswith(f"::{NS}-search")]
        assert template_image(recorded["outputs"]) == config_images()["search"]
        counts = [search[k] for k in ("desired", "ready", "available", "updated")]
        assert counts == [2, 2, 2, 1]  # the old pods keep serving (maxUnavailable 0)
    finally:
        cluster.kubectl("rollout", "undo", "deployment/search", "-n", NS)
        restore = {"spec": {"progressDeadlineSeconds": deadline}}
        cluster.kubectl("patch", "deployment", "search", "-n", NS, "-p", json.dumps(restore))
    assert wait_for_health(ops, "search", "ready")["image"] == config_images()["search"]


def test_a_deployment_scaled_to_zero_is_stopped(cluster: Cluster, ops: Stack) -> None:
    cluster.kubectl("scale", "deployment", "worker", "-n", NS, "--replicas=0")
    try:
        worker = wait_for_health(ops, "worker", "stopped")
        assert [worker[k] for k in ("desired", "ready", "available")] == [0, 0, 0]
        assert cluster.items("pods", NS, "app.kubernetes.io/name=worker") == []
    finally:
        cluster.kubectl("scale", "deployment", "worker", "-n", NS, "--replicas=1")
    wait_for_health(ops, "worker", "ready")
    checks.assert_rolled_out(cluster, NS, REPLICAS)


def test_history_lists_each_update_with_its_images(cluster: Cluster, ops: Stack) -> None:
    ops.set_config("appstack:images.gateway.tag", "1.0.1", path=True)
    ops.up()
    out = appstack(ops, "history", "--json")
    assert out.code == 0, out.text
    entries = json.loads(out.stdout)
    assert [(e["number"], e["kind"], e["result"]) for e in entries] == [
        (2, "update", "succeeded"),
        (1, "update", "succeeded"),
    ]
    assert [e["images"]["gateway"] for e in entries] == [f"{GATEWAY}:1.0.1", f"{GATEWAY}:1.0.0"]
    assert entries[0]["images"]["search"] == entries[1]["images"]["search"]
    # No Migration resource: no release records, and nothing tried to reach a database.
    assert [e["migration"] for e in entries] == [{}, {}]
    text = appstack(ops, "history")
    assert text.code == 0 and len(text.stdout.splitlines()) == 2, text.text
    gateway = status(ops)["gateway"]
    assert (gateway["image"], gateway["health"]) == (f"{GATEWAY}:1.0.1", "ready")
    assert template_image(cluster.get("deployment", "gateway", "-n", NS)) == f"{GATEWAY}:1.0.1"


def test_rollback_to_previous_puts_the_old_image_back_on_the_cluster(
    cluster: Cluster, ops: Stack
) -> None:
    out = appstack(ops, "rollback", "--to", "previous", "--yes")
    assert out.code == 0, out.text
    assert f"gateway: {GATEWAY}:1.0.1 -> {GATEWAY}:1.0.0" in out.stdout
    assert "rolled back to entry 1" in out.stderr
    tag = ops.pulumi("config", "get", "--path", "appstack:images.gateway.tag", "--stack", STACK)
    assert tag.stdout.strip() == "1.0.0"
    assert template_image(cluster.get("deployment", "gateway", "-n", NS)) == f"{GATEWAY}:1.0.0"
    checks.assert_rolled_out(cluster, NS, REPLICAS)
    gateway = status(ops)["gateway"]
    assert (gateway["image"], gateway["health"], gateway["ready"]) == (
        f"{GATEWAY}:1.0.0",
        "ready",
        3,
    )
    entries = json.loads(appstack(ops, "history", "--json").stdout)
    assert [e["images"]["gateway"].rsplit(":", 1)[-1] for e in entries] == [
        "1.0.0",
        "1.0.1",
        "1.0.0",
    ]
    assert steps(ops.preview()) == []


def test_a_workload_deleted_behind_pulumis_back_is_missing(cluster: Cluster, ops: Stack) -> None:
    cluster.kubectl("delete", "deployment", "worker", "-n", NS, "--wait=true")
    worker = status(ops)["worker"]
    assert (worker["health"], worker["image"], worker["ready"]) == ("missing", "", 0)
    ops.up("--refresh")  # the state learns it is gone; the update creates it again
    assert wait_for_health(ops, "worker", "ready")["desired"] == 1
