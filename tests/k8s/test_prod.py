"""`pulumi up --stack prod` (Haven) for real: the real engine and kubernetes plugin against a real
API server, controller-manager and scheduler, with kwok nodes marking pods Ready.

The stack is the repository's Pulumi.prod.yaml with its secrets set `--secret` and
`kubernetes.skipClusterTasks: true` (kwok runs no container: the Migration, the bucket Job and the
SmokeTest could not run, and the update says it skipped them). The tests run in file order on one
stack: deploy from empty, no-op, tag change, refusal, destroy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s import checks
from tools.k8s_stack import (
    Cluster,
    Stack,
    kind_and_name,
    kubernetes_config,
    scratch_stack,
    steps,
    wait_until,
)

NS = "prod-haven"
REPLICAS = {"gateway": 3, "catalog": 2, "search": 2, "worker": 1, "caddy": 2}
DATASTORES = {"postgres", "qdrant", "minio"}
CLAIMS = {"postgres-pgdata", "qdrant-storage", "minio-data", "backups"}
PDBS = {"gateway": 2, "catalog": 1, "search": 1, "caddy": 1}
REFUSED_TAG = "9.9.9-refused"


@pytest.fixture(scope="module")
def prod(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The prod stack in a scratch copy of the project, on the session's cluster."""
    tmp = tmp_path_factory.mktemp("prod")
    config = kubernetes_config("prod", skipClusterTasks=True)
    with scratch_stack(tmp, "prod", cluster, "prod", config, "haven") as stack:
        yield stack


@pytest.fixture(scope="module")
def first_up(prod: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """`pulumi up` from empty, with the engine's event log (live, one JSON event a line)."""
    events = tmp_path_factory.mktemp("events") / "up.jsonl"
    prod.env["PULUMI_DEBUG_COMMANDS"] = "true"  # --event-log is a debug flag
    try:
        result = prod.up("--event-log", str(events))
    finally:
        del prod.env["PULUMI_DEBUG_COMMANDS"]
    return result.text, events


def test_up_from_empty_deploys_every_object_and_says_what_it_skipped(
    cluster: Cluster, prod: Stack, first_up: tuple[str, Path]
) -> None:
    text, _ = first_up
    # The plugin comes from the engine's plugin dir, at the SDK's version: none on $PATH.
    assert "from $PATH" not in text
    assert "skipClusterTasks is true" in text
    assert "NOT declared (Migration, init Job bucket, SmokeTest)" in text
    kinds = checks.assert_every_object_is_live(cluster, prod)
    assert kinds["Namespace"] == [NS]
    assert sorted(kinds["Deployment"]) == sorted(REPLICAS)
    assert sorted(kinds["StatefulSet"]) == sorted(DATASTORES)
    assert "Job" not in kinds
    assert set(kinds["NetworkPolicy"]) >= {"default-deny", "allow-dns", "allow-gateway"}
    checks.assert_rolled_out(cluster, NS, REPLICAS)
    checks.assert_statefulsets_ready(cluster, NS, DATASTORES)
    checks.assert_claims_bound(cluster, prod, NS, CLAIMS)
    checks.assert_pdbs(cluster, NS, PDBS)
    ingress = cluster.get("ingress", "caddy", "-n", NS)
    assert ingress["spec"]["rules"][0]["host"] == "haven.example.com"
    assert ingress["spec"]["tls"][0]["secretName"] == "haven-tls"
    services = {s["metadata"]["name"]: s["spec"]["type"] for s in cluster.items("svc", NS)}
    assert set(services.values()) == {"ClusterIP"}
    assert "kubernetesNote" in prod.outputs()


def test_the_rollout_follows_the_design_order(first_up: tuple[str, Path]) -> None:
    order = checks.event_order(first_up[1])

    def span(kind: str, name: str) -> tuple[int, int]:
        return order[checks.urn_of(order, kind, name)]

    stores = [span("StatefulSet", s) for s in sorted(DATASTORES)]
    catalog, gateway = span("Deployment", "catalog"), span("Deployment", "gateway")
    search, worker = span("Deployment", "search"), span("Deployment", "worker")
    caddy = span("Deployment", "caddy")
    # Data stores, then the catalog, then gateway and search, then the worker; the edge after
    # the gateway. Each starts only after what it follows is ready (ended).
    assert max(end for _, end in stores) < catalog[0]
    assert catalog[1] < min(gateway[0], search[0])
    assert max(gateway[1], search[1]) < worker[0]
    assert gateway[1] < caddy[0]
    # Gateway and search roll out side by side, not one after the other.
    assert gateway[0] < search[1] and search[0] < gateway[1]


def test_preview_against_the_live_cluster_then_a_second_up_change_nothing(prod: Stack) -> None:
    assert steps(prod.preview()) == []
    result = prod.up("--expect-no-changes")
    assert "skipClusterTasks is true" in result.text  # said on every update


def test_a_gateway_tag_change_rolls_exactly_one_deployment_keeping_capacity(
    cluster: Cluster, prod: Stack
) -> None:
    before = checks.replica_sets(cluster, NS)
    prod.set_config("appstack:images.gateway.tag", "1.0.1", path=True)
    planned = steps(prod.preview())
    assert [(op, urn.rsplit("::", 1)[-1]) for op, urn in planned] == [("update", f"{NS}-gateway")]
    sampler = checks.Sampler(cluster, NS, "gateway")
    sampler.start()
    try:
        prod.up()
    finally:
        samples = sampler.stop()
    after = checks.replica_sets(cluster, NS)
    for name in REPLICAS:
        if name != "gateway":
            assert after[name].keys() == before[name].keys(), name
    new = after["gateway"].keys() - before["gateway"].keys()
    assert len(new) == 1 and before["gateway"].keys() <= after["gateway"].keys()
    (new_rs,) = (after["gateway"][n] for n in new)
    container = new_rs["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/haven/gateway:1.0.1"
    assert new_rs["status"].get("readyReplicas") == 3
    for old in before["gateway"]:
        assert after["gateway"][old]["spec"]["replicas"] == 0
    # maxUnavailable 0: while it rolled, never fewer than 3 gateways were available.
    assert samples, "no sample of the gateway's status was taken during the update"
    assert min(s.get("availableReplicas", 0) for s in samples) >= 3, samples
    checks.assert_rolled_out(cluster, NS, REPLICAS)


REFUSE_POLICY = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "appstack-test-refused-tag"},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": ["apps"],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["deployments"],
                }
            ]
        },
        "validations": [
            {
                "expression": "object.spec.template.spec.containers.all(c, "
                f"!c.image.endsWith(':{REFUSED_TAG}'))",
                "message": f"images tagged {REFUSED_TAG} are refused by this cluster",
            }
        ],
    },
}
REFUSE_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "appstack-test-refused-tag"},
    "spec": {"policyName": "appstack-test-refused-tag", "validationActions": ["Deny"]},
}


def test_an_object_the_api_server_refuses_fails_the_update_naming_it(
    cluster: Cluster, prod: Stack
) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": [REFUSE_POLICY, REFUSE_BINDING]}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(items))
    try:
        probe = json.loads(
            cluster.kubectl("get", "deployment", "search", "-n", NS, "-o", "json").stdout
        )
        probe["spec"]["template"]["spec"]["containers"][0]["image"] = f"x.test/y:{REFUSED_TAG}"
        for key in ("resourceVersion", "uid", "managedFields", "generation", "creationTimestamp"):
            probe["metadata"].pop(key, None)

        def policy_active() -> bool:
            dry = cluster.kubectl(
                "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(probe), check=False
            )
            return dry.code != 0 and "refused by this cluster" in dry.stderr

        wait_until("the admission policy refuses the tag", policy_active, timeout_s=30)
        image_before = cluster.get("deployment", "search", "-n", NS)["spec"]["template"]
        prod.set_config("appstack:images.search.tag", REFUSED_TAG, path=True)
        failed = prod.up(check=False)
        assert failed.code != 0
        assert f"{NS}-search" in failed.text and "refused by this cluster" in failed.text
        live = cluster.get("deployment", "search", "-n", NS)["spec"]["template"]
        assert live == image_before  # the running release is untouched
        checks.assert_rolled_out(cluster, NS, REPLICAS)
    finally:
        cluster.kubectl("delete", "-f", "-", stdin=json.dumps(items), check=False)
    prod.set_config("appstack:images.search.tag", "1.0.0", path=True)
    prod.up()
    assert steps(prod.preview()) == []


def test_destroy_keeps_the_protected_claims(cluster: Cluster, prod: Stack) -> None:
    prod.destroy("--exclude-protected")
    assert cluster.items("deployments", NS) == [] and cluster.items("statefulsets", NS) == []
    assert cluster.items("ingress", NS) == [] and cluster.items("networkpolicies", NS) == []
    checks.assert_claims_bound(cluster, prod, NS, CLAIMS)
    left = {found[0] for r in prod.resources() if (found := kind_and_name(r)) is not None}
    assert left == {"Namespace", "PersistentVolumeClaim"}
