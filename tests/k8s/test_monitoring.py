"""`appstack:monitoring` on Kubernetes for real (real API server and kubernetes plugin, kwok
nodes): the objects, their content and their policies. kwok runs no container, so nothing is
scraped here; the Docker e2e tests scrape for real.

Two stacks: Haven (`monprod`, Pulumi.prod.yaml + monitoring) on a cluster WITHOUT the
prometheus-operator's CRDs, then Engramia (`monengramia`, Pulumi.engramia-prod.yaml + monitoring)
after the test applied minimal CRDs (fixtures/prometheus-operator-crds.yaml).
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.monitoring import config
from tools.k8s_stack import (
    Cluster,
    Stack,
    kubernetes_config,
    scratch_stack,
    secret_values,
    steps,
    wait_until,
)

CRDS = Path(__file__).parent / "fixtures" / "prometheus-operator-crds.yaml"
CRD_NAMES = ("prometheusrules.monitoring.coreos.com", "servicemonitors.monitoring.coreos.com")
HAVEN_NS = "monprod-haven"
ENGRAMIA_NS = "monengramia-engramia"
MONITORING = {"prometheus", "alertmanager", "postgres-exporter"}
OPERATOR_LABELS = {"release": "kube-prometheus-stack"}


def _decode(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _config_maps(cluster: Cluster, ns: str) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: c.get("data") or {} for c in cluster.items("configmaps", ns)}


def _container(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    live = cluster.get("deployment", name, "-n", ns)
    (container,) = live["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _configured(stack: Stack, key: str) -> str:
    """A secret the stack's config holds, in plaintext."""
    args = ("config", "get", f"appstack:{key}", "--stack", stack.name)
    return stack.pulumi(*args, check=True).stdout.strip()


def _policies(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p["spec"] for p in cluster.items("networkpolicies", ns)}


def _peers(rules: list[dict[str, Any]], key: str) -> set[tuple[str, int]]:
    """(pod name label or namespace, port) of every peer of ingress (``from``)/egress (``to``)."""
    found = set()
    for rule in rules:
        for peer in rule.get(key) or []:
            labels = (peer.get("podSelector") or peer.get("namespaceSelector") or {}).get(
                "matchLabels", {}
            )
            name = labels.get("app.kubernetes.io/name") or labels["kubernetes.io/metadata.name"]
            for port in rule["ports"]:
                found.add((name, int(port["port"])))
    return found


@pytest.fixture(scope="module")
def haven(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Haven's prod stack with monitoring on, in a scratch copy of the project."""
    tmp = tmp_path_factory.mktemp("monprod")
    conf = kubernetes_config("prod", skipClusterTasks=True)
    conf["appstack:monitoring"] = {"enabled": True, "stalledAfter": "7m"}
    with scratch_stack(tmp, "monprod", cluster, "prod", conf, "haven") as stack:
        yield stack


def test_without_the_crds_the_preview_succeeds_and_declares_no_operator_object(
    cluster: Cluster, haven: Stack
) -> None:
    served = cluster.kubectl("api-resources", "--api-group=monitoring.coreos.com", "-o", "name")
    assert served.stdout.strip() == ""
    planned = steps(haven.preview())
    types = {urn.split("::")[-2].rsplit("$", 1)[-1] for _, urn in planned}
    assert "kubernetes:apps/v1:Deployment" in types
    assert not [t for t in types if "monitoring.coreos.com" in t], types
    names = {urn.rsplit("::", 1)[-1] for _, urn in planned}
    assert {f"{HAVEN_NS}-{n}" for n in MONITORING} <= names


def test_operator_true_without_the_crds_is_refused_naming_the_key(haven: Stack) -> None:
    haven.set_config("appstack:monitoring.operator", "true", path=True)
    try:
        result = haven.pulumi("preview", "--stack", haven.name)
    finally:
        haven.set_config("appstack:monitoring.operator", "auto", path=True)
    assert result.code != 0
    assert "appstack:monitoring.operator: true, but the cluster serves no" in result.text


def test_up_deploys_prometheus_alertmanager_and_the_exporter(
    cluster: Cluster, haven: Stack
) -> None:
    haven.up()
    live = {d["metadata"]["name"]: d for d in cluster.items("deployments", HAVEN_NS)}
    assert set(live) >= MONITORING
    for name in MONITORING:
        assert (live[name].get("status") or {}).get("readyReplicas") == 1, name
        pod = live[name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert live["prometheus"]["spec"]["strategy"]["type"] == "Recreate"
    # nothing of it leaves the cluster: ClusterIP/headless Services, the one Ingress is the edge's
    for svc in cluster.items("services", HAVEN_NS):
        assert svc["spec"]["type"] == "ClusterIP", svc["metadata"]["name"]
    ingresses = [i["metadata"]["name"] for i in cluster.items("ingresses", HAVEN_NS)]
    assert ingresses == ["caddy"]
    claim = cluster.get("pvc", "prometheus-data", "-n", HAVEN_NS)
    assert claim["status"]["phase"] == "Bound"


def test_the_rules_config_map_is_the_rule_files(cluster: Cluster, haven: Stack) -> None:
    del haven
    maps = _config_maps(cluster, HAVEN_NS)
    rules = maps["prometheus-rules"]
    assert rules == config.rule_files("haven", "7m")
    assert set(rules) == {"edge.yml", "haven.yml", "storage.yml", "targets.yml"}
    for name in ("edge.yml", "storage.yml", "targets.yml"):
        assert rules[name] == (config.RULES_DIR / name).read_text(), name
    # haven.yml differs from the file only by the configured stall window
    on_disk = yaml.safe_load((config.RULES_DIR / "haven.yml").read_text())
    shipped = yaml.safe_load(rules["haven.yml"])
    stall = shipped["groups"][0]["rules"][0]
    assert (stall["alert"], stall["for"]) == ("HavenChunksStalled", "7m")
    on_disk["groups"][0]["rules"][0]["for"] = "7m"
    assert shipped == on_disk


def test_prometheus_scrapes_every_job_through_service_dns(cluster: Cluster, haven: Stack) -> None:
    del haven
    prom = json.loads(_config_maps(cluster, HAVEN_NS)["prometheus-config"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"prometheus", "postgres", "alertmanager", "edge", "qdrant", "minio"}
    ports = {"postgres": 9187, "alertmanager": 9093, "edge": 2020, "qdrant": 6333, "minio": 9000}
    services = {s["metadata"]["name"]: s for s in cluster.items("services", HAVEN_NS)}
    pods = {"postgres": "postgres-exporter", "edge": "caddy"}
    for job, port in ports.items():
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd == {"names": [f"metrics-{job}"], "type": "A", "port": port}
        svc = services[f"metrics-{job}"]["spec"]
        assert svc["clusterIP"] == "None"  # headless: every replica is a target
        assert svc["selector"] == {"app.kubernetes.io/name": pods.get(job, job)}
        assert [(p["name"], p["port"]) for p in svc["ports"]] == [("metrics", port)]
    assert jobs["minio"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/run/secrets/minio-token",
    }
    relabel = {r["target_label"]: r["replacement"] for r in jobs["edge"]["relabel_configs"]}
    assert relabel == {"app": "haven", "service": "gateway"}
    assert prom["rule_files"] == [
        f"/etc/appstack/rules/{n}" for n in ("edge.yml", "haven.yml", "storage.yml", "targets.yml")
    ]
    caddy = {e["name"]: e.get("value") for e in _container(cluster, HAVEN_NS, "caddy")["env"]}
    assert "http://:2020 {" in caddy["CADDYFILE"]  # the edge serves its metrics listener


def test_credentials_only_in_secrets_never_in_a_config_map(cluster: Cluster, haven: Stack) -> None:
    values = {k: _configured(haven, k) for k in secret_values("haven")}
    assert set(values) == set(secret_values("haven"))
    creds = _decode(cluster.get("secret", "prometheus-credentials", "-n", HAVEN_NS))
    token = creds["minio-token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == values["minioAccessKey"]
    dsn = _decode(cluster.get("secret", "postgres-exporter-env", "-n", HAVEN_NS))
    assert dsn["DATA_SOURCE_PASS"] == values["postgresPassword"]
    assert dsn["DATA_SOURCE_URI"] == "postgres:5432/haven?sslmode=disable"
    env = _container(cluster, HAVEN_NS, "postgres-exporter")["env"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env} == dict.fromkeys(
        ("DATA_SOURCE_PASS", "DATA_SOURCE_URI", "DATA_SOURCE_USER"), "postgres-exporter-env"
    )
    every_map = json.dumps(_config_maps(cluster, HAVEN_NS))
    for name, value in [*values.items(), ("minio-token", token)]:
        assert value not in every_map, name


def test_network_policies_let_prometheus_reach_exactly_its_targets(
    cluster: Cluster, haven: Stack
) -> None:
    del haven
    policies = _policies(cluster, HAVEN_NS)
    out = policies["monitoring-from-prometheus"]
    assert out["policyTypes"] == ["Egress"]
    assert _peers(out["egress"], "to") == {
        ("postgres-exporter", 9187), ("alertmanager", 9093), ("caddy", 2020), ("qdrant", 6333),
        ("minio", 9000),
    }  # fmt: skip
    for server, port in (("caddy", 2020), ("qdrant", 6333), ("minio", 9000)):
        spec = policies[f"monitoring-to-{server}-{port}"]
        assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": server}
        # no operator objects here: nothing outside the namespace is let in
        assert _peers(spec["ingress"], "from") == {("prometheus", port)}
    exporter = policies["monitoring-from-postgres-exporter"]
    assert _peers(exporter["egress"], "to") == {("postgres", 5432)}
    db = policies["monitoring-to-postgres-5432"]
    assert _peers(db["ingress"], "from") == {("postgres-exporter", 5432)}
    # the namespace stays default-deny; Prometheus itself takes no connection
    assert policies["default-deny"]["policyTypes"] == ["Ingress", "Egress"]
    assert not [n for n, p in policies.items() if p["podSelector"].get("matchLabels") == {
        "app.kubernetes.io/name": "prometheus"} and "Ingress" in p["policyTypes"]]  # fmt: skip


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        msg = f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()}"
        raise AssertionError(msg)
    return proc


def _as_docker_run(cluster: Cluster, ns: str, name: str, files: Path) -> list[str]:
    """``docker run`` arguments for the Deployment's pod as the API server holds it: its image,
    command, args, user, env (secretKeyRefs resolved) and volumes (ConfigMaps and Secrets as
    read-only files, claims and emptyDirs as tmpfs)."""
    pod = cluster.get("deployment", name, "-n", ns)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = pod["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    run = ["run", "-d", "--name", f"monk8s-{name}-{secrets.token_hex(3)}", "--network", "none",
           "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges:true", "--memory",
           c["resources"]["limits"]["memory"].replace("Mi", "m")]  # fmt: skip
    if c["securityContext"]["readOnlyRootFilesystem"]:
        run.append("--read-only")
    for mount in c["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume or "secret" in volume:
            if "configMap" in volume:
                data = cluster.get("configmap", volume["configMap"]["name"], "-n", ns)["data"]
            else:
                data = _decode(cluster.get("secret", volume["secret"]["secretName"], "-n", ns))
            folder = files / name / mount["name"]
            folder.mkdir(parents=True)
            folder.chmod(0o755)
            for key, text in data.items():
                (folder / key).write_text(text)
                (folder / key).chmod(0o444)  # no fsGroup under Docker: readable by the uid
            run += ["-v", f"{folder}:{mount['mountPath']}:ro"]
        else:
            run += ["--mount", f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=1777"]
    for env in c.get("env") or []:
        value = env.get("value")
        if value is None:
            ref = env["valueFrom"]["secretKeyRef"]
            value = _decode(cluster.get("secret", ref["name"], "-n", ns))[ref["key"]]
        run += ["-e", f"{env['name']}={value}"]
    return [*run, "--entrypoint", c["command"][0], c["image"], *c["command"][1:], *c["args"]]


def test_the_declared_pods_start_in_a_real_engine(
    cluster: Cluster, haven: Stack, tmp_path: Path
) -> None:
    """kwok runs no container: here Docker plays the kubelet for the three pods, from the objects
    the API server holds, so the commands, flags, mounts and files are the servers' real input."""
    del haven
    ready = {"prometheus": (9090, "/-/ready"), "alertmanager": (9093, "/-/ready"),
             "postgres-exporter": (9187, "/")}  # fmt: skip
    started: dict[str, str] = {}
    try:
        for name in ready:
            started[name] = _docker(*_as_docker_run(cluster, HAVEN_NS, name, tmp_path)).stdout
        for name, (port, path) in ready.items():
            cid = started[name].strip()
            probe = ("exec", cid, "appstack-http-ok", str(port), path)
            wait_until(
                f"{name} ready ({_docker('logs', cid, check=False).stderr[-2000:]})",
                lambda p=probe: _docker(*p, check=False).returncode == 0,
                timeout_s=60,
            )
        # Prometheus loaded every rule of the ConfigMap: 3 + 2 + 1 + 1 (edge, haven, storage,
        # targets), seen by its own scrape of itself
        query = ("exec", started["prometheus"].strip(), "promtool", "query", "instant",
                 "http://127.0.0.1:9090", "sum(prometheus_rule_group_rules)")  # fmt: skip
        wait_until(
            "Prometheus reports the 7 rules of the rule files",
            lambda: " => 7 @" in _docker(*query, check=False).stdout,
            timeout_s=60,
        )
    finally:
        for cid in started.values():
            _docker("rm", "-f", cid.strip(), check=False)


def test_haven_second_up_changes_nothing(haven: Stack) -> None:
    assert steps(haven.preview()) == []


# -- with the prometheus-operator's CRDs --------------------------------------------------------


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Iterator[None]:
    """The two CRDs, applied to the session's cluster, removed afterwards."""
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES)
    )
    try:
        yield
    finally:
        cluster.kubectl("delete", "-f", str(CRDS), "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def engramia(
    cluster: Cluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Engramia's prod stack with monitoring on (operator `auto`), after the CRDs exist."""
    del crds
    tmp = tmp_path_factory.mktemp("monengramia")
    conf = kubernetes_config("engramia-prod", skipClusterTasks=True)
    conf["appstack:monitoring"] = {"enabled": True, "operatorLabels": OPERATOR_LABELS}
    with scratch_stack(tmp, "monengramia", cluster, "engramia-prod", conf, "engramia") as stack:
        yield stack


def test_with_the_crds_prometheus_rules_hold_the_rule_groups(
    cluster: Cluster, engramia: Stack
) -> None:
    result = engramia.up()
    # auth mode db (prod): no static key for the deep-health probe, and the update says so
    assert "not probed in this stack" in result.text
    rules = {r["metadata"]["name"]: r for r in cluster.items("prometheusrules", ENGRAMIA_NS)}
    files = config.rule_files("engramia", "10m")
    assert set(rules) == {f"appstack-{Path(n).stem}" for n in files}
    for name, text in files.items():
        live = rules[f"appstack-{Path(name).stem}"]
        assert live["spec"]["groups"] == yaml.safe_load(text)["groups"], name
        assert OPERATOR_LABELS.items() <= live["metadata"]["labels"].items()
    # the plain Prometheus is deployed beside them, with the same files
    assert _config_maps(cluster, ENGRAMIA_NS)["prometheus-rules"] == files


def test_with_the_crds_service_monitors_select_the_jobs_services(
    cluster: Cluster, engramia: Stack
) -> None:
    del engramia
    monitors = {m["metadata"]["name"]: m for m in cluster.items("servicemonitors", ENGRAMIA_NS)}
    jobs = {"postgres", "alertmanager", "edge", "engramia"}
    assert set(monitors) == {f"appstack-{j}" for j in jobs}
    services = {s["metadata"]["name"]: s for s in cluster.items("services", ENGRAMIA_NS)}
    for job in jobs:
        spec = monitors[f"appstack-{job}"]["spec"]
        selector = spec["selector"]["matchLabels"]
        chosen = [
            n for n, s in services.items()
            if selector.items() <= (s["metadata"].get("labels") or {}).items()
        ]  # fmt: skip
        assert chosen == [f"metrics-{job}"], job
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] == "metrics"
        assert {"targetLabel": "job", "replacement": job} in endpoint["relabelings"]
        assert spec["namespaceSelector"] == {"matchNames": [ENGRAMIA_NS]}
    api = monitors["appstack-engramia"]["spec"]["endpoints"][0]
    assert api["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "prometheus-credentials", "key": "engramia-metrics-token"},
    }
    assert services["metrics-engramia"]["spec"]["selector"] == {"app.kubernetes.io/name": "api"}


def test_the_engramia_metrics_token_is_in_a_secret_only(cluster: Cluster, engramia: Stack) -> None:
    token = _configured(engramia, "metricsToken")
    creds = _decode(cluster.get("secret", "prometheus-credentials", "-n", ENGRAMIA_NS))
    assert creds == {"engramia-metrics-token": token}
    assert token not in json.dumps(_config_maps(cluster, ENGRAMIA_NS))
    prom = json.loads(_config_maps(cluster, ENGRAMIA_NS)["prometheus-config"]["prometheus.yml"])
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "engramia"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/engramia-metrics-token"
    assert job["dns_sd_configs"] == [{"names": ["metrics-engramia"], "type": "A", "port": 8000}]


def test_the_operators_namespace_is_let_in_to_the_targets(
    cluster: Cluster, engramia: Stack
) -> None:
    del engramia
    policies = _policies(cluster, ENGRAMIA_NS)
    api = policies["monitoring-to-api-8000"]
    assert _peers(api["ingress"], "from") == {("prometheus", 8000), ("monitoring", 8000)}
    # Postgres is reached by the exporter only, never by a Prometheus
    db = policies["monitoring-to-postgres-5432"]
    assert _peers(db["ingress"], "from") == {("postgres-exporter", 5432)}
