"""The prod stack's manifests, rendered offline from the mocked program, are valid Kubernetes.

Validated with kubernetes-validate (the Kubernetes OpenAPI schemas as JSON Schema) against the
newest Kubernetes version it ships, in strict mode: an unknown or misspelt field is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.harness import SECRET_VALUES
from tools.render_manifests import api_version_kind, render

EXPECTED_KINDS = {
    "Namespace": 1,
    "Secret": 7,  # gateway, catalog, search, worker, postgres, minio, bucket Job (caddy has none)
    "NetworkPolicy": 12,  # default-deny, dns, 8 workloads (caddy too), bucket Job, migration tasks
    "PersistentVolumeClaim": 4,  # postgres, qdrant, minio, backups (the edge keeps no state)
    "Service": 7,  # every workload with a port, caddy included
    "StatefulSet": 3,
    "Job": 1,  # MinIO bucket
    "Deployment": 5,  # gateway, catalog, search, worker, caddy
    "PodDisruptionBudget": 4,  # gateway (3 replicas), catalog (2), search (2), caddy (2)
    "Ingress": 1,
}
VERSION = kubernetes_validate.latest_version()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, dict[str, Any]]]:
    outdir = tmp_path_factory.mktemp("manifests")
    files = render("prod", outdir)
    return [(path, yaml.safe_load(path.read_text())) for path in files]


def test_counts_and_kinds(manifests: list[tuple[Path, dict[str, Any]]]) -> None:
    assert Counter(m["kind"] for _, m in manifests) == EXPECTED_KINDS


def test_every_manifest_validates_strictly(manifests: list[tuple[Path, dict[str, Any]]]) -> None:
    assert tuple(int(p) for p in VERSION.split(".")[:2]) >= (1, 30)
    problems = []
    for path, manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{path.name}: {where}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_strict_validation_rejects_an_unknown_field(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    """The check above can fail: a misspelt field in a real manifest is rejected."""
    deployment = next(m for _, m in manifests if m["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_no_secret_value_is_written(manifests: list[tuple[Path, dict[str, Any]]]) -> None:
    for path, _ in manifests:
        text = path.read_text()
        for value in SECRET_VALUES.values():
            assert value not in text, path.name
    secret = next(m for _, m in manifests if m["kind"] == "Secret")
    assert set(secret["stringData"].values()) == {"<redacted>"}


def test_api_version_from_type_token() -> None:
    assert api_version_kind("kubernetes:core/v1:Secret") == ("v1", "Secret")
    assert api_version_kind("kubernetes:apps/v1:Deployment") == ("apps/v1", "Deployment")
    assert api_version_kind("kubernetes:networking.k8s.io/v1:Ingress") == (
        "networking.k8s.io/v1",
        "Ingress",
    )
    assert api_version_kind("pulumi:providers:kubernetes") is None
