"""Render mode with the real plugin (`kubernetes.renderManifestsTo`), and every rendered manifest
admitted by the real API server (server-side dry run), the bucket Job included: the one object
kwok stacks skip. Pod Security `restricted` is enforced for pods only, so its warnings about the
workloads' pod templates are checked too."""

from __future__ import annotations

import pytest
import yaml

from tools.k8s_stack import Cluster, Stack, kubernetes_config, secret_values

NAME = "prod-render"
NS = f"{NAME}-haven"


def test_rendered_prod_manifests_are_admitted_by_the_api_server(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("render")
    out = tmp / "manifests"
    config = kubernetes_config("prod", renderManifestsTo=str(out))
    stack = Stack.create(tmp, NAME, cluster, "prod", config, secret_values("haven"))
    result = stack.up()
    assert "render mode" in result.text and "from $PATH" not in result.text
    files = sorted(out.rglob("*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "Deployment", "Ingress", "Job", "Namespace", "NetworkPolicy", "PersistentVolumeClaim",
        "PodDisruptionBudget", "Secret", "Service", "StatefulSet",
    ]  # fmt: skip
    assert cluster.items("deployments", NS) == []  # rendered, not applied
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["name"] == NS
    cluster.kubectl("create", "namespace", NS)
    try:
        rest = [f for f in files if yaml.safe_load(f.read_text())["kind"] != "Namespace"]
        args = [a for f in rest for a in ("-f", str(f))]
        dry = cluster.kubectl("apply", "--dry-run=server", *args, check=False)
        assert dry.code == 0, dry.stderr
        assert dry.stdout.count("(server dry run)") == len(docs) - 1
        assert "PodSecurity" not in dry.stderr, dry.stderr
    finally:
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
