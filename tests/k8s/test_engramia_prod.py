"""`pulumi up --stack engramia-prod` for real (real API server and kubernetes plugin, kwok nodes):
the repository's Pulumi.engramia-prod.yaml with its secrets and `skipClusterTasks`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s import checks
from tools.k8s_stack import Cluster, Stack, kubernetes_config, scratch_stack, steps

NS = "engramia-prod-engramia"
REPLICAS = {"api": 2, "caddy": 2}
CLAIMS = {"postgres-pgdata", "backups"}


@pytest.fixture(scope="module")
def engramia(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The engramia-prod stack in a scratch copy of the project."""
    tmp = tmp_path_factory.mktemp("engramia")
    config = kubernetes_config("engramia-prod", skipClusterTasks=True)
    with scratch_stack(tmp, "engramia-prod", cluster, "engramia-prod", config, "engramia") as stack:
        yield stack


def test_engramia_prod_deploys_from_empty(cluster: Cluster, engramia: Stack) -> None:
    result = engramia.up()
    assert "NOT declared (Migration, Bootstrap, SmokeTest)" in result.text
    kinds = checks.assert_every_object_is_live(cluster, engramia)
    assert kinds["Namespace"] == [NS]
    assert sorted(kinds["Deployment"]) == sorted(REPLICAS)
    checks.assert_rolled_out(cluster, NS, REPLICAS)
    checks.assert_statefulsets_ready(cluster, NS, {"postgres"})
    checks.assert_claims_bound(cluster, engramia, NS, CLAIMS)
    checks.assert_pdbs(cluster, NS, {"api": 1, "caddy": 1})


def test_engramia_second_up_changes_nothing(engramia: Stack) -> None:
    assert steps(engramia.preview()) == []
    engramia.up("--expect-no-changes")


def test_engramia_destroy_keeps_the_protected_claims(cluster: Cluster, engramia: Stack) -> None:
    engramia.destroy("--exclude-protected")
    assert cluster.items("deployments", NS) == []
    checks.assert_claims_bound(cluster, engramia, NS, CLAIMS)
