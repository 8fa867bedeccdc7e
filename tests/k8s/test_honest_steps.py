"""Without `skipClusterTasks`, a cluster that runs no container fails the update at the first step
that needs one, naming it: nothing passes silently and nothing downstream changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.k8s_stack import Cluster, Stack, kubernetes_config, scratch_stack

NAME = "prod-honest"
NS = f"{NAME}-haven"


@pytest.fixture(scope="module")
def honest(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Haven's prod config, steps not skipped, on the kwok cluster."""
    tmp = tmp_path_factory.mktemp("honest")
    config = kubernetes_config("prod")
    assert "skipClusterTasks" not in config["appstack:kubernetes"]
    with scratch_stack(tmp, NAME, cluster, "prod", config, "haven") as stack:
        yield stack


def test_the_migration_fails_naming_its_job_and_no_service_is_released(
    cluster: Cluster, honest: Stack
) -> None:
    result = honest.up(check=False)
    assert result.code != 0
    assert "no container ran" in result.text, result.text[-3000:]
    # The first task of the migration reads the database's state.
    assert f"task 'db-state' (Job {NS}/{NAME}-haven-db-state-" in result.text
    assert "skipClusterTasks is true" not in result.text
    # The data stores are up; every service waits for the migration, so none was released.
    assert {s["metadata"]["name"] for s in cluster.items("statefulsets", NS)} == {
        "postgres",
        "qdrant",
        "minio",
    }
    assert cluster.items("deployments", NS) == []
    # The runner cleaned up its Job, Secret and ConfigMap.
    assert cluster.items("jobs", NS, "app.kubernetes.io/managed-by=appstack") == []
