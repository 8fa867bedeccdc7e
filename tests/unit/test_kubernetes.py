"""The real program under mocks for the prod stack (Haven on Kubernetes), and the kubectl runner.

What the runbook and DESIGN.md promise on Kubernetes: one Ingress, to the edge proxy (Caddy) in
front of the public service, nothing else reachable from outside, default-deny networking plus
exactly the topology's edges, secrets only through secretKeyRef, probes/limits/non-root
everywhere, protected PVCs, and the rollout order data stores -> migration -> services -> smoke
test.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from components.platforms.kubernetes import egress_peer, split_host_port
from components.providers.k8s_runner import (
    KubernetesRunner,
    TaskError,
    decode_tar_log,
    task_manifests,
)
from components.providers.runner import Target, Task, runner_for
from components.settings import ConfigError
from tests.unit.harness import (
    DEPLOYMENT,
    INGRESS,
    JOB,
    NAMESPACE,
    NETPOL,
    PDB,
    PVC,
    SECRET,
    SECRET_VALUES,
    SERVICE,
    STATEFULSET,
    K,
    Program,
    Registration,
    run,
    stack_config,
)

MIGRATION = "pulumi-python:dynamic/ops:Migration"
SMOKE = "pulumi-python:dynamic/ops:SmokeTest"
NAME = "app.kubernetes.io/name"
APP_SERVICES = ("gateway", "catalog", "search", "worker")
DATASTORES = ("postgres", "qdrant", "minio")
EDGE = "caddy"
PORTS = {"gateway": 8080, "catalog": 8081, "search": 8080, "postgres": 5432, "qdrant": 6333,
         "minio": 9000, "caddy": 8080}  # fmt: skip
# Pulumi.prod.yaml sets the app services; caddy has the prod default (2).
PROD_REPLICAS = {"gateway": 3, "catalog": 2, "search": 2, "worker": 1, "caddy": 2}

# Haven's connections, read off DESIGN.md's contracts (each service's env) and its depends_on,
# written out here rather than computed by the code under test.
EXPECTED_EDGES = {
    ("catalog", "postgres"), ("catalog", "qdrant"), ("catalog", "search"),
    ("search", "catalog"), ("search", "postgres"), ("search", "qdrant"),
    ("gateway", "catalog"), ("gateway", "postgres"), ("gateway", "qdrant"), ("gateway", "minio"),
    ("gateway", "search"),
    ("worker", "catalog"), ("worker", "postgres"), ("worker", "search"), ("worker", "gateway"),
    ("bucket", "minio"),  # the MinIO bucket init Job
    ("tasks", "postgres"),  # migration and backup Jobs
    ("caddy", "gateway"),  # the edge proxies to the public service
}  # fmt: skip


@pytest.fixture(scope="module")
def prod() -> Program:
    return run("prod", secrets=SECRET_VALUES)


def _prod_with(kubernetes: dict[str, Any], **more: Any) -> Program:
    config = dict(stack_config("prod")["appstack:kubernetes"])
    config.update(kubernetes)
    return run("prod", overrides={"appstack:kubernetes": config, **more}, secrets=SECRET_VALUES)


def by_name(program: Program, typ: str) -> dict[str, Registration]:
    return {r.inputs["metadata"]["name"]: r for r in program.of_type(typ)}


def container(res: Registration) -> dict[str, Any]:
    containers = res.inputs["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def deps(program: Program, res: Registration) -> set[str]:
    return {program.by_urn(u).name for u in res.dependencies}


# -- exposure --------------------------------------------------------------------------------


def test_one_ingress_for_the_edge_with_tls(prod: Program) -> None:
    ingresses = prod.of_type(INGRESS)
    assert len(ingresses) == 1
    spec = ingresses[0].inputs["spec"]
    assert spec["ingressClassName"] == "nginx"
    (rule,) = spec["rules"]
    assert rule["host"] == "haven.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": EDGE, "port": {"number": 8080}}
    assert spec["tls"] == [{"hosts": ["haven.example.com"], "secretName": "haven-tls"}]
    assert prod.outputs["publicUrl"] == "https://haven.example.com"


def test_services_are_cluster_ip_named_after_the_service(prod: Program) -> None:
    services = by_name(prod, SERVICE)
    assert set(services) == {"gateway", "catalog", "search", "postgres", "qdrant", "minio", EDGE}
    for name, svc in services.items():
        assert svc.inputs["spec"]["type"] == "ClusterIP", name
        assert svc.inputs["spec"]["selector"] == {NAME: name}
        assert [p["port"] for p in svc.inputs["spec"]["ports"]] == [PORTS[name]]
    types = {s.inputs["spec"].get("type") for s in prod.of_type(SERVICE)}
    assert not types & {"LoadBalancer", "NodePort"}


# -- network policies -------------------------------------------------------------------------


def _peer(selector: dict[str, Any]) -> str:
    labels = selector.get("matchLabels") or {}
    if NAME in labels:
        return str(labels[NAME])
    assert labels == {"app.kubernetes.io/component": "task"}, labels
    return "tasks"


def test_default_deny_and_dns_cover_the_whole_namespace(prod: Program) -> None:
    policies = by_name(prod, NETPOL)
    deny = policies["default-deny"].inputs["spec"]
    assert deny["podSelector"] == {}
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert not deny.get("ingress") and not deny.get("egress")
    dns = policies["allow-dns"].inputs["spec"]
    assert dns["podSelector"] == {} and dns["policyTypes"] == ["Egress"]
    (rule,) = dns["egress"]
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
    (to,) = rule["to"]
    assert to["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


def test_network_policies_allow_exactly_the_topologys_edges(prod: Program) -> None:
    egress: set[tuple[str, str, int]] = set()
    ingress: set[tuple[str, str, int]] = set()
    for name, pol in by_name(prod, NETPOL).items():
        if name in ("default-deny", "allow-dns"):
            continue
        spec = pol.inputs["spec"]
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"], name
        me = _peer(spec["podSelector"])
        for rule in spec.get("egress") or []:
            port = rule["ports"][0]["port"]
            for to in rule.get("to") or [{}]:
                if "podSelector" in to:
                    egress.add((me, _peer(to["podSelector"]), port))
        for rule in spec.get("ingress") or []:
            port = rule["ports"][0]["port"]
            for src in rule["from"]:
                if "podSelector" in src:
                    ingress.add((_peer(src["podSelector"]), me, port))
    expected = {(a, b, PORTS[b]) for a, b in EXPECTED_EDGES}
    assert egress == expected
    assert ingress == expected


def test_every_env_reference_to_a_service_is_an_allowed_edge(prod: Program) -> None:
    """Independent of EXPECTED_EDGES: read the hosts out of the rendered Deployments' env."""
    services = set(by_name(prod, SERVICE))
    for name, dep in by_name(prod, DEPLOYMENT).items():
        for env in container(dep).get("env") or []:
            for host in re.findall(r"(?:^|//)([a-z0-9-]+):[0-9]+", str(env.get("value", ""))):
                if host in services:
                    assert (name, host) in EXPECTED_EDGES, f"{name} -> {host} via {env['name']}"


def _from_outside(program: Program) -> list[tuple[str, int]]:
    """(workload, port) of every ingress rule that admits pods of another namespace."""
    admitted = []
    for pol in program.of_type(NETPOL):
        spec = pol.inputs["spec"]
        for rule in spec.get("ingress") or []:
            for src in rule["from"]:
                if "namespaceSelector" in src:
                    labels = src["namespaceSelector"].get("matchLabels") or {}
                    assert labels == {"kubernetes.io/metadata.name": "ingress-nginx"}, labels
                    admitted.append((_peer(spec["podSelector"]), rule["ports"][0]["port"]))
    return admitted


def test_only_caddy_is_reachable_from_the_ingress_controller_and_it_reaches_the_gateway(
    prod: Program,
) -> None:
    assert _from_outside(prod) == [(EDGE, 8080)]
    policies = by_name(prod, NETPOL)
    caddy = policies[f"allow-{EDGE}"].inputs["spec"]
    to = {
        (_peer(t["podSelector"]), r["ports"][0]["port"]) for r in caddy["egress"] for t in r["to"]
    }
    assert to == {("gateway", 8080)}, "the edge talks to the gateway and nothing else"
    gateway = policies["allow-gateway"].inputs["spec"]
    sources = {
        (_peer(src["podSelector"]), rule["ports"][0]["port"])
        for rule in gateway["ingress"]
        for src in rule["from"]
    }
    assert (EDGE, 8080) in sources
    assert all("namespaceSelector" not in src for r in gateway["ingress"] for src in r["from"])


def _outside_egress(program: Program) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for pol in program.of_type(NETPOL):
        spec = pol.inputs["spec"]
        if not spec["podSelector"]:
            continue
        for rule in spec.get("egress") or []:
            if not any("podSelector" in to for to in rule.get("to") or []):
                out.setdefault(_peer(spec["podSelector"]), []).append(rule)
    return out


def test_ollama_egress_only_for_search_and_worker_to_its_namespace(prod: Program) -> None:
    rules = _outside_egress(prod)
    assert set(rules) == {"search", "worker"}
    for rule_list in rules.values():
        (rule,) = rule_list
        assert rule["ports"] == [{"protocol": "TCP", "port": 11434}]
        assert rule["to"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ai-infra"}}}
        ]


def test_ollama_by_ip_is_a_slash_32_and_by_other_name_port_only() -> None:
    by_ip = run("prod", overrides={"appstack:ollama": {"url": "http://10.1.2.3:11434"}},
                secrets=SECRET_VALUES)  # fmt: skip
    (rule,) = _outside_egress(by_ip)["search"]
    assert rule["to"] == [{"ipBlock": {"cidr": "10.1.2.3/32"}}]
    by_name_ = run("prod", overrides={"appstack:ollama": {"url": "http://ollama.lan:11434"}},
                   secrets=SECRET_VALUES)  # fmt: skip
    (rule,) = _outside_egress(by_name_)["worker"]
    assert "to" not in rule and rule["ports"] == [{"protocol": "TCP", "port": 11434}]


def test_egress_peer_and_host_port_parsing() -> None:
    assert split_host_port("ollama.ai.svc.cluster.local:11434") == (
        "ollama.ai.svc.cluster.local",
        [11434],
    )
    assert split_host_port("ollama.lan") == ("ollama.lan", [80, 443])
    assert egress_peer("fd00::1") == ("ip", [{"ip_block": {"cidr": "fd00::1/128"}}])
    assert egress_peer("o.infra.svc")[0] == "namespace"
    assert egress_peer("host.docker.internal") == ("port-only", [])


# -- workloads --------------------------------------------------------------------------------


def test_deployments_and_statefulsets_are_the_right_workloads(prod: Program) -> None:
    deployments = by_name(prod, DEPLOYMENT)
    assert set(deployments) == {*APP_SERVICES, EDGE}
    for name, dep in deployments.items():
        assert dep.inputs["spec"]["replicas"] == PROD_REPLICAS[name]
        strategy = dep.inputs["spec"]["strategy"]
        assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}, name
    sets = by_name(prod, STATEFULSET)
    assert set(sets) == set(DATASTORES)
    for name, sts in sets.items():
        assert sts.inputs["spec"]["replicas"] == 1, name
        assert sts.inputs["spec"]["serviceName"] == name


def test_probes_limits_and_non_root_everywhere(prod: Program) -> None:
    workloads = {**by_name(prod, DEPLOYMENT), **by_name(prod, STATEFULSET)}
    uids = {"postgres": 999, "qdrant": 1000, "minio": 1000}
    for name, res in workloads.items():
        c = container(res)
        pod = res.inputs["spec"]["template"]["spec"]
        if c.get("ports"):
            assert c["readinessProbe"] and c["livenessProbe"], name
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert limits["memory"].endswith("Mi") and limits["cpu"].endswith("m"), name
        assert requests == limits, name
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uids.get(name, 10001), name
        assert sc["fsGroup"] == sc["runAsUser"], name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False, name
        kept = {"add": ["NET_BIND_SERVICE"]} if name == "caddy" else {}
        assert csc["capabilities"] == {"drop": ["ALL"], **kept}, name
        writable = name in DATASTORES and name != "postgres"  # Postgres: a tmpfs for its socket
        assert csc["readOnlyRootFilesystem"] is not writable, name
        tmp = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "/tmp" in tmp, name
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols[tmp["/tmp"]]["emptyDir"]["medium"] == "Memory", name
    gateway = container(workloads["gateway"])
    assert gateway["readinessProbe"]["httpGet"] == {"port": 8080, "path": "/v1/healthz"}
    postgres = container(workloads["postgres"])
    assert postgres["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert gateway["resources"]["limits"] == {"memory": "256Mi", "cpu": "500m"}


def _env(res: Registration) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(res).get("env") or []}


def test_the_edge_is_a_deployment_serving_plain_http_to_the_gateway_service(prod: Program) -> None:
    caddy = by_name(prod, DEPLOYMENT)[EDGE]
    c = container(caddy)
    assert c["image"] == "docker.io/library/caddy:2.8.4"
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    caddyfile = _env(caddy)["CADDYFILE"]
    # TLS ends at the Ingress: Caddy listens for plain HTTP and names the Service, whose rolling
    # updates keep it answering.
    assert "\nhttp://:8080 {\n" in caddyfile
    assert "\treverse_proxy gateway:8080 {\n" in caddyfile
    assert "\tauto_https off\n" in caddyfile
    assert "https://" not in caddyfile and "\ttls " not in caddyfile
    assert "respond" not in caddyfile
    assert "$CADDYFILE" in " ".join(c["args"]), "the pod runs the Caddyfile of its env"
    assert "prod-haven-gateway" in deps(prod, caddy)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_maintenance_on_kubernetes_is_answered_by_the_edge() -> None:
    program = run("prod", overrides={"appstack:maintenance": "true"}, secrets=SECRET_VALUES)
    caddyfile = _env(by_name(program, DEPLOYMENT)[EDGE])["CADDYFILE"]
    assert "\t@pass path /v1/healthz\n" in caddyfile
    assert '\t\trespond `{"status":"maintenance"}` 503\n' in caddyfile
    assert "\t\theader Retry-After 3600\n" in caddyfile
    (smoke,) = program.of_type(SMOKE)
    assert {c["name"]: c["expect_status"] for c in smoke.inputs["checks"]} == {
        "gateway-health": 200,
        "maintenance": 503,
    }
    assert _from_outside(program) == [(EDGE, 8080)]


def test_the_worker_has_no_port_and_no_invented_probe(prod: Program) -> None:
    worker = container(by_name(prod, DEPLOYMENT)["worker"])
    assert "ports" not in worker
    assert "readinessProbe" not in worker and "livenessProbe" not in worker


def test_pdb_only_for_two_replicas_or_more(prod: Program) -> None:
    pdbs = {n: r.inputs["spec"] for n, r in by_name(prod, PDB).items()}
    assert pdbs == {
        "gateway": {"minAvailable": 2, "selector": {"matchLabels": {NAME: "gateway"}}},
        "catalog": {"minAvailable": 1, "selector": {"matchLabels": {NAME: "catalog"}}},
        "search": {"minAvailable": 1, "selector": {"matchLabels": {NAME: "search"}}},
        EDGE: {"minAvailable": 1, "selector": {"matchLabels": {NAME: EDGE}}},
    }


def test_pdb_min_available_setting_is_used() -> None:
    program = _prod_with({"pdbMinAvailable": {"gateway": 1}})
    assert by_name(program, PDB)["gateway"].inputs["spec"]["minAvailable"] == 1


# -- secrets ----------------------------------------------------------------------------------


def test_secret_env_is_a_secret_key_ref_and_never_plaintext(prod: Program) -> None:
    secrets = by_name(prod, SECRET)
    for res in [*prod.of_type(DEPLOYMENT), *prod.of_type(STATEFULSET), *prod.of_type(JOB)]:
        text = json.dumps(res.raw)
        for value in SECRET_VALUES.values():
            assert value not in text, f"{res.name} carries a secret value"
        name = res.inputs["metadata"]["name"]
        env_secret = secrets.get(f"{name}-env")
        for env in container(res).get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None:
                assert env_secret is not None, name
                assert ref == {"name": f"{name}-env", "key": env["name"]}
                assert env["name"] in env_secret.inputs["stringData"]["value"]
    refs = {
        e["name"]
        for e in container(by_name(prod, DEPLOYMENT)["gateway"])["env"]
        if "valueFrom" in e
    }
    assert refs == {"DATABASE_URL", "AUTH_TOKEN", "CATALOG_TOKEN", "SEARCH_TOKEN",
                    "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}  # fmt: skip
    for name, sec in secrets.items():
        assert sec.is_secret("stringData"), name
    assert set(secrets) == {f"{n}-env" for n in (*APP_SERVICES, "postgres", "minio", "bucket")}


# -- storage ----------------------------------------------------------------------------------


def test_pvcs_are_declared_and_protected(prod: Program) -> None:
    claims = by_name(prod, PVC)
    assert set(claims) == {"postgres-pgdata", "qdrant-storage", "minio-data", "backups"}
    for name, claim in claims.items():
        assert claim.protect and claim.retain_on_delete, name
        spec = claim.inputs["spec"]
        assert spec["resources"]["requests"]["storage"] == "20Gi", name
        assert "storageClassName" not in spec  # prod names none: the cluster default
    pg = by_name(prod, STATEFULSET)["postgres"].inputs["spec"]["template"]["spec"]
    claims_used = [v["persistentVolumeClaim"]["claimName"] for v in pg["volumes"]
                   if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims_used == ["postgres-pgdata"]
    (namespace,) = prod.of_type(NAMESPACE)
    assert namespace.retain_on_delete  # deleting it would delete the claims inside
    for res in prod.resources:
        if res.type != PVC:
            assert not res.protect, f"only claims are protected, not {res.name}"


def test_storage_class_from_settings() -> None:
    program = _prod_with({"storageClass": "fast-ssd"})
    for claim in program.of_type(PVC):
        assert claim.inputs["spec"]["storageClassName"] == "fast-ssd"


# -- rollout order ----------------------------------------------------------------------------


def test_migration_after_postgres_and_before_every_deployment(prod: Program) -> None:
    (migration,) = prod.of_type(MIGRATION)
    assert "prod-haven-postgres" in deps(prod, migration)
    assert "prod-haven-pvc-backups" in deps(prod, migration)
    target = migration.inputs["target"]
    assert target["kind"] == "kubernetes" and target["namespace"] == "prod-haven"
    assert target["backup_volume"] == "backups" and target["db_host"] == "postgres"
    assert target["run_as_user"] == 999
    assert migration.inputs["quiescent"] == ["worker"]
    assert migration.is_secret("db_password")
    for name in APP_SERVICES:
        assert "prod-haven-migration" in deps(prod, prod.named(f"prod-haven-{name}")), name
    assert "prod-haven-catalog" in deps(prod, prod.named("prod-haven-gateway"))
    assert "prod-haven-gateway" in deps(prod, prod.named("prod-haven-worker"))
    assert "prod-haven-minio" in deps(prod, prod.named("prod-haven-bucket"))


def test_smoke_test_hits_the_ingress_after_everything(prod: Program) -> None:
    (smoke,) = prod.of_type(SMOKE)
    assert smoke.inputs["base_url"] == "https://haven.example.com"
    after = deps(prod, smoke)
    for name in (*APP_SERVICES, *DATASTORES, EDGE, "bucket", "ingress"):
        assert f"prod-haven-{name}" in after, name


def test_names_carry_the_stack_and_live_in_its_namespace(prod: Program) -> None:
    (namespace,) = prod.of_type(NAMESPACE)
    assert namespace.inputs["metadata"]["name"] == "prod-haven"
    for res in prod.resources:
        if res.type.startswith(K) and res.type != NAMESPACE:
            assert res.inputs["metadata"]["namespace"] == "prod-haven", res.name
    other = run("prodeu", base="prod", overrides={"appstack:environment": "prod"},
                secrets=SECRET_VALUES)  # fmt: skip
    (ns2,) = other.of_type(NAMESPACE)
    assert ns2.inputs["metadata"]["name"] == "prodeu-haven"


def test_render_mode_skips_cluster_tasks_and_says_so(tmp_path: Path) -> None:
    program = _prod_with({"renderManifestsTo": str(tmp_path)})
    (provider,) = program.of_type("pulumi:providers:kubernetes")
    assert provider.inputs["renderYamlToDirectory"] == str(tmp_path)
    assert not program.of_type(MIGRATION) and not program.of_type(SMOKE)
    assert len(program.of_type(DEPLOYMENT)) == 5  # the four services and the edge
    assert "kubernetesNote" in program.outputs
    assert "skipped" in program.outputs["kubernetesNote"]
    for res in program.resources:
        if res.type.startswith(K):
            assert res.provider.startswith(provider.urn), res.name


def test_skip_cluster_tasks_declares_no_task_and_says_which() -> None:
    program = _prod_with({"skipClusterTasks": True})
    assert not program.of_type(MIGRATION) and not program.of_type(SMOKE)
    assert not program.of_type("kubernetes:batch/v1:Job")
    assert len(program.of_type(DEPLOYMENT)) == 5
    note = program.outputs["kubernetesNote"]
    assert "NOT declared (Migration, init Job bucket, SmokeTest)" in note


# -- bad configuration ------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("storage class format", {"storageClass": "Fast_SSD"}, {}, "kubernetes.storageClass"),
    ("ingress host", {"ingressHost": "not a host"}, {}, "kubernetes.ingressHost"),
    ("ingress host no dot", {"ingressHost": "haven"}, {}, "kubernetes.ingressHost"),
    ("tls without secret", {"tls": True, "tlsSecret": None}, {}, "kubernetes.tlsSecret"),
    ("tls not a bool", {"tls": "sometimes"}, {}, "kubernetes.tls"),
    (
        "pdb >= replicas",
        {"pdbMinAvailable": {"gateway": 3}},
        {},
        "kubernetes.pdbMinAvailable.gateway: minAvailable 3 with 3 replica(s)",
    ),
    (
        "pdb with one replica",
        {"pdbMinAvailable": {"worker": 1}},
        {},
        "kubernetes.pdbMinAvailable.worker: minAvailable 1 with 1 replica(s)",
    ),
    (
        "pdb on a single-replica data store",
        {"pdbMinAvailable": {"postgres": 1}},
        {},
        "kubernetes.pdbMinAvailable.postgres: minAvailable 1 with 1 replica(s)",
    ),
    ("pdb unknown service", {"pdbMinAvailable": {"web": 1}}, {}, "pdbMinAvailable.web"),
    ("ingress namespace", {"ingressNamespace": "Ingress_NS"}, {}, "kubernetes.ingressNamespace"),
    ("unknown field", {"replicas": 2}, {}, "appstack:kubernetes: unknown fields"),
    ("skip tasks not a bool", {"skipClusterTasks": "yes"}, {}, "kubernetes.skipClusterTasks"),
]


@pytest.mark.parametrize(("label", "k8s", "more", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_kubernetes_config_names_the_key_and_creates_nothing(
    label: str, k8s: dict[str, Any], more: dict[str, Any], expected: str
) -> None:
    attempt = Program()
    config = {**stack_config("prod")["appstack:kubernetes"], **k8s}
    overrides = {"appstack:kubernetes": config, **more}
    with pytest.raises(ConfigError) as err:
        run("prod", overrides=overrides, secrets=SECRET_VALUES, into=attempt)
    assert expected in str(err.value), f"{label}: {err.value}"
    assert attempt.resources == [], f"{label}: registered {[r.name for r in attempt.resources]}"


# -- the kubectl runner -----------------------------------------------------------------------


def test_target_kind_kubernetes_gets_the_kubectl_runner() -> None:
    target = Target(kind="kubernetes", namespace="prod-haven", context="ctx", run_as_user=999)
    runner = runner_for(Target.from_dict({**target.to_dict(), "run_as_user": 999.0}))
    assert isinstance(runner, KubernetesRunner)
    assert (runner.namespace, runner.context, runner.uid) == ("prod-haven", "ctx", 999)
    with pytest.raises(ValueError, match="namespace"):
        Target(kind="kubernetes")


def test_task_manifests_keep_env_in_a_secret_and_files_in_a_config_map() -> None:
    task = Task(
        name="apply",
        image="pg:15",
        command=["sh", "-c", "psql -f $WORK/migrations/v2_001.sql"],
        env={"PGPASSWORD": "pw-value", "PGHOST": "postgres"},
        files={"init.sql": b"select 1;", "migrations/v2_001.sql": b"select 2;"},
        mounts=[("backups", "/backups")],
    )
    secret, cm, job = task_manifests(task, "prod-haven-apply-abc", "ns", 999, "prod-haven")
    assert secret["stringData"]["PGPASSWORD"] == "pw-value"
    assert "pw-value" not in json.dumps(job) and "pw-value" not in json.dumps(cm)
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "prod-haven-apply-abc"}}]
    assert "env" not in c and c["args"] == list(task.command)
    work = next(v for v in pod["volumes"] if v["name"] == "work")
    paths = {i["path"] for i in work["configMap"]["items"]}
    assert paths == {"init.sql", "migrations/v2_001.sql"}
    assert {"name": "m0", "persistentVolumeClaim": {"claimName": "backups"}} in pod["volumes"]
    assert {"name": "m0", "mountPath": "/backups"} in c["volumeMounts"]
    assert pod["securityContext"]["runAsUser"] == 999 and pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "task"


def test_the_manifests_of_a_task_are_valid_kubernetes() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    task = Task(name="x", image="i:1", command=["true"], files={"a/b": b"1"})
    for manifest in task_manifests(task, "n", "ns", 10001, "p"):
        kv.validate(manifest, kv.latest_version(), strict=True)


FAKE_KUBECTL = """#!{python}
import json, os, sys
args = sys.argv[1:]
log = os.environ["FAKE_KUBECTL_LOG"]
stdin = sys.stdin.read() if "-f" in args else ""
with open(log, "a") as fh:
    fh.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
mode = os.environ.get("FAKE_KUBECTL_MODE", "ok")
verb = args[args.index("--namespace") + 2]
if verb == "get" and "job" in args:
    print(json.dumps({{"status": {{"failed": 1}} if mode == "fail" else {{"succeeded": 1}}}}))
elif verb == "get" and "pods" in args:
    code = 3 if mode == "fail" else 0
    status = {{"state": {{"terminated": {{"exitCode": code}}}}}}
    if mode != "never-ran":  # a runtime that ran the container gives it an ID
        status["containerID"] = "containerd://0123abcd"
    print(json.dumps({{"items": [{{"status": {{"containerStatuses": [status]}}}}]}}))
elif verb == "logs":
    if mode == "never-ran":
        print("Error from server: dial tcp 127.0.0.1:1: connection refused", file=sys.stderr)
        sys.exit(1)
    print(os.environ.get("FAKE_KUBECTL_LOGS", "done"))
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    return log


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _verbs(log: Path) -> list[str]:
    return [c["args"][c["args"].index("--namespace") + 2] for c in _calls(log)]


def test_runner_applies_waits_collects_logs_and_cleans_up(fake_kubectl: Path) -> None:
    runner = KubernetesRunner("prod-haven", "prod-haven", context="ctx")
    task = Task(name="state", image="pg:15", command=["true"], env={"PGPASSWORD": "pw"})
    result = runner.run(task)
    assert result.exit_code == 0 and result.logs.strip() == "done"
    calls = _calls(fake_kubectl)
    assert calls[0]["args"][:4] == ["--context", "ctx", "--namespace", "prod-haven"]
    applied = json.loads(calls[0]["stdin"])
    assert [i["kind"] for i in applied["items"]] == ["Secret", "ConfigMap", "Job"]
    deleted = [c["args"][-4] for c in calls if "delete" in c["args"]]
    assert deleted == ["job", "secret", "configmap"]


def test_runner_failure_raises_redacted_and_still_cleans_up(
    fake_kubectl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KUBECTL_MODE", "fail")
    monkeypatch.setenv("FAKE_KUBECTL_LOGS", "ERROR: bad password pw-secret-value")
    runner = KubernetesRunner("ns", "prod-haven")
    task = Task(name="apply", image="pg", command=["false"], env={"PGPASSWORD": "pw-secret-value"})
    with pytest.raises(TaskError) as err:
        runner.run(task)
    assert err.value.exit_code == 3
    assert "pw-secret-value" not in str(err.value) and "***" in str(err.value)
    assert _verbs(fake_kubectl).count("delete") == 3


def test_runner_refuses_a_completion_no_container_ran(
    fake_kubectl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KUBECTL_MODE", "never-ran")
    runner = KubernetesRunner("ns", "prod-haven")
    with pytest.raises(TaskError) as err:
        runner.run(Task(name="apply", image="pg", command=["true"]))
    message = str(err.value)
    assert "task 'apply' (Job ns/prod-haven-apply-" in message
    assert "no container ran" in message and "skipClusterTasks" in message
    assert _verbs(fake_kubectl).count("delete") == 3


def test_decode_tar_log_needs_both_markers() -> None:
    import base64

    payload = base64.b64encode(b"tar-bytes").decode()
    log = f"noise\nAPPSTACK:TAR:BEGIN\n{payload[:4]}\n{payload[4:]}\nAPPSTACK:TAR:END\n"
    assert decode_tar_log(log) == b"tar-bytes"
    with pytest.raises(TaskError):
        decode_tar_log("APPSTACK:TAR:BEGIN\nabcd\n")
