"""`appstack:monitoring` on Kubernetes under mocks: the objects' shape, the rules and scrape config
shared with Docker, credentials only in Secrets, the policies, and when the prometheus-operator's
objects are declared (``monitoring.operator``, ``auto`` asking a fake ``kubectl``)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.monitoring import config
from components.settings import ConfigError
from tests.unit.harness import (
    CONFIG_MAP,
    DEPLOYMENT,
    NETPOL,
    SECRET,
    SECRET_VALUES,
    SERVICE,
    K,
    Program,
    Registration,
    run,
    stack_config,
    unwrap,
)
from tools import render_manifests

RULE = K + "monitoring.coreos.com/v1:PrometheusRule"
MONITOR = K + "monitoring.coreos.com/v1:ServiceMonitor"
MONITORING = {"prometheus", "alertmanager", "postgres-exporter"}
OFF_OPERATOR = {"enabled": True, "operator": "false"}
# A kubectl that answers `api-resources` from $FAKE_API_RESOURCES (or fails when it is "fail").
FAKE_KUBECTL = """#!{python}
import os, sys
answer = os.environ.get("FAKE_API_RESOURCES", "")
if "api-resources" not in sys.argv or answer == "fail":
    sys.stderr.write("The connection to the server localhost:8080 was refused\\n")
    sys.exit(1)
print(answer)
"""
SERVED = "prometheusrules.monitoring.coreos.com\nservicemonitors.monitoring.coreos.com"


def prod(monitoring: Any, **kubernetes: Any) -> Program:
    overrides: dict[str, Any] = {"appstack:monitoring": monitoring}
    if kubernetes:
        k = dict(stack_config("prod")["appstack:kubernetes"])
        overrides["appstack:kubernetes"] = {**k, **kubernetes}
    return run("prod", secrets=SECRET_VALUES, overrides=overrides)


def by_name(program: Program, typ: str) -> dict[str, Registration]:
    return {unwrap(r.inputs["metadata"])["name"]: r for r in program.of_type(typ)}


def container(res: Registration) -> dict[str, Any]:
    (found,) = unwrap(res.inputs)["spec"]["template"]["spec"]["containers"]
    return dict(found)


@pytest.fixture(scope="module")
def haven() -> Program:
    return prod(OFF_OPERATOR)


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


def test_the_servers_are_deployments_hardened_and_limited(haven: Program) -> None:
    deployments = by_name(haven, DEPLOYMENT)
    assert set(deployments) >= MONITORING
    for name in MONITORING:
        spec = unwrap(deployments[name].inputs)["spec"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65534
        assert pod["automountServiceAccountToken"] is False
        c = container(deployments[name])
        assert (
            c["resources"]["requests"]
            == c["resources"]["limits"]
            == {
                "cpu": "500m",
                "memory": "256Mi",
            }
        )
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["readinessProbe"]["httpGet"]["port"] == c["ports"][0]["containerPort"]
    prometheus = unwrap(deployments["prometheus"].inputs)["spec"]
    assert prometheus["strategy"] == {"type": "Recreate"}
    mounts = {m["mountPath"] for m in container(deployments["prometheus"])["volumeMounts"]}
    assert mounts == {"/etc/appstack/config", "/etc/appstack/rules", "/prometheus", "/run/secrets"}


def test_nothing_is_exposed_outside_the_cluster(haven: Program) -> None:
    for name, svc in by_name(haven, SERVICE).items():
        spec = unwrap(svc.inputs)["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP", name
    ingresses = haven.of_type(K + "networking.k8s.io/v1:Ingress")
    assert [unwrap(i.inputs["metadata"])["name"] for i in ingresses] == ["caddy"]


def test_rules_and_scrape_config_come_from_the_shared_renderer(haven: Program) -> None:
    maps = {n: unwrap(r.inputs)["data"] for n, r in by_name(haven, CONFIG_MAP).items()}
    assert maps["prometheus-rules"] == config.rule_files("haven", "10m")
    prom = json.loads(maps["prometheus-config"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"prometheus", "postgres", "alertmanager", "edge", "qdrant", "minio"}
    assert jobs["edge"]["dns_sd_configs"] == [
        {"names": ["metrics-edge"], "type": "A", "port": 2020}
    ]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    queries = yaml.safe_load(maps["postgres-exporter-queries"]["queries.yml"])
    assert set(queries) == {"appstack_database", "haven_chunks"}


def test_credentials_are_secret_and_absent_from_config_maps(haven: Program) -> None:
    secrets = by_name(haven, SECRET)
    creds, dsn = secrets["prometheus-credentials"], secrets["postgres-exporter-env"]
    assert creds.is_secret("stringData") and dsn.is_secret("stringData")
    assert set(unwrap(creds.inputs)["stringData"]) == {"minio-token"}
    assert unwrap(dsn.inputs)["stringData"]["DATA_SOURCE_PASS"] == SECRET_VALUES["postgresPassword"]
    token = unwrap(creds.inputs)["stringData"]["minio-token"]
    every_map = json.dumps([unwrap(r.inputs) for r in haven.of_type(CONFIG_MAP)])
    for value in [*SECRET_VALUES.values(), token]:
        assert value not in every_map
    env = container(by_name(haven, DEPLOYMENT)["postgres-exporter"])["env"]
    assert all("value" not in e for e in env)
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env} == {"postgres-exporter-env"}


def test_policies_add_the_monitorings_edges_only(haven: Program) -> None:
    policies = {n: unwrap(r.inputs)["spec"] for n, r in by_name(haven, NETPOL).items()}
    egress = policies["monitoring-from-prometheus"]["egress"]
    reached = {
        (rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], p["port"])
        for rule in egress
        for p in rule["ports"]
    }
    assert reached == {
        ("postgres-exporter", 9187), ("alertmanager", 9093), ("caddy", 2020), ("qdrant", 6333),
        ("minio", 9000),
    }  # fmt: skip
    edge = policies["monitoring-to-caddy-2020"]
    assert edge["policyTypes"] == ["Ingress"]
    assert [r["from"] for r in edge["ingress"]] == [
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    ]
    assert "monitoring-to-postgres-5432" in policies


def test_the_edge_serves_metrics_only_with_monitoring_on(haven: Program) -> None:
    def caddyfile(program: Program) -> str:
        env = container(by_name(program, DEPLOYMENT)["caddy"])["env"]
        return str(next(e["value"] for e in env if e["name"] == "CADDYFILE"))

    assert "http://:2020 {" in caddyfile(haven)
    off = run("prod", secrets=SECRET_VALUES)
    assert "2020" not in caddyfile(off)
    assert not set(by_name(off, DEPLOYMENT)) & MONITORING
    assert not off.of_type(CONFIG_MAP)


def test_auto_declares_operator_objects_when_the_crds_are_served(
    fake_kubectl: pytest.MonkeyPatch,
) -> None:
    fake_kubectl.setenv("FAKE_API_RESOURCES", SERVED)
    program = prod({"enabled": True, "operatorLabels": {"release": "kps"}})
    rules = by_name(program, RULE)
    files = config.rule_files("haven", "10m")
    assert set(rules) == {f"appstack-{Path(n).stem}" for n in files}
    for name, text in files.items():
        inputs = unwrap(rules[f"appstack-{Path(name).stem}"].inputs)
        assert inputs["spec"]["groups"] == yaml.safe_load(text)["groups"]
        assert inputs["metadata"]["labels"]["release"] == "kps"
    monitors = by_name(program, MONITOR)
    assert set(monitors) == {f"appstack-{j}" for j in ("postgres", "alertmanager", "edge",
                                                      "qdrant", "minio")}  # fmt: skip
    minio = unwrap(monitors["appstack-minio"].inputs)["spec"]["endpoints"][0]
    assert minio["path"] == config.MINIO_METRICS_PATH
    assert minio["authorization"]["credentials"] == {
        "name": "prometheus-credentials",
        "key": "minio-token",
    }
    # the operator's Prometheus (namespace `monitoring`) is let in to the scraped pods only
    policies = {n: unwrap(r.inputs)["spec"] for n, r in by_name(program, NETPOL).items()}
    outside = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert [outside] in [r["from"] for r in policies["monitoring-to-qdrant-6333"]["ingress"]]
    assert [outside] not in [r["from"] for r in policies["monitoring-to-postgres-5432"]["ingress"]]


def test_auto_declares_none_without_the_crds(fake_kubectl: pytest.MonkeyPatch) -> None:
    fake_kubectl.setenv("FAKE_API_RESOURCES", "")
    program = prod({"enabled": True})
    assert program.of_type(RULE) == [] and program.of_type(MONITOR) == []
    assert set(by_name(program, DEPLOYMENT)) >= MONITORING


@pytest.mark.parametrize(
    ("operator", "served", "message"),
    [
        ("true", "", r"appstack:monitoring\.operator: true, but the cluster serves no"),
        ("auto", "fail", r"appstack:monitoring\.operator: auto: cannot ask the cluster"),
    ],
)
def test_operator_refusals_name_the_key_and_create_nothing(
    fake_kubectl: pytest.MonkeyPatch, operator: str, served: str, message: str
) -> None:
    fake_kubectl.setenv("FAKE_API_RESOURCES", served)
    with pytest.raises(ConfigError, match=message):
        prod({"enabled": True, "operator": operator})


def test_render_mode_declares_operator_objects_only_when_asked(tmp_path: Path) -> None:
    auto = prod({"enabled": True}, renderManifestsTo=str(tmp_path / "a"))
    assert auto.of_type(RULE) == []
    wanted = prod({"enabled": True, "operator": True}, renderManifestsTo=str(tmp_path / "b"))
    assert len(wanted.of_type(RULE)) == 4 and len(wanted.of_type(MONITOR)) == 5


def test_engramia_metrics_token_from_a_secret(fake_kubectl: pytest.MonkeyPatch) -> None:
    fake_kubectl.setenv("FAKE_API_RESOURCES", SERVED)
    secrets = {k: f"{k}-value-1234" for k in ("postgresPassword", "apiKeys", "bootstrapToken",
                                               "metricsToken")}  # fmt: skip
    program = run(
        "engramia-prod", secrets=secrets, overrides={"appstack:monitoring": {"enabled": True}}
    )
    creds = by_name(program, SECRET)["prometheus-credentials"]
    assert creds.is_secret("stringData")
    assert unwrap(creds.inputs)["stringData"] == {
        "engramia-metrics-token": "metricsToken-value-1234"
    }
    monitor = unwrap(by_name(program, MONITOR)["appstack-engramia"].inputs)["spec"]
    assert (
        monitor["endpoints"][0]["authorization"]["credentials"]["key"] == "engramia-metrics-token"
    )
    every_map = json.dumps([unwrap(r.inputs) for r in program.of_type(CONFIG_MAP)])
    assert "metricsToken-value-1234" not in every_map


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"enabled": True, "operator": "maybe"}, "appstack:monitoring.operator"),
        ({"enabled": True, "operatorNamespace": "Not_A_Namespace"}, "monitoring.operatorNamespace"),
        ({"enabled": True, "operatorLabels": ["release"]}, "appstack:monitoring.operatorLabels"),
        ({"enabled": True, "prometheusPort": 19090}, "appstack:monitoring.prometheusPort"),
    ],
)
def test_bad_kubernetes_monitoring_settings_name_the_key(value: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prod(value)


def test_the_kubernetes_prometheus_config_passes_promtool(haven: Program, tmp_path: Path) -> None:
    """promtool reads prometheus.yml with its rule and credential files where the pod has them
    (here under ``tmp_path``): the dns_sd jobs, relabelling and authorization are valid."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run tools/system-deps.sh (Debian's prometheus package)")
    maps = {n: unwrap(r.inputs)["data"] for n, r in by_name(haven, CONFIG_MAP).items()}
    root = str(tmp_path)
    text = maps["prometheus-config"]["prometheus.yml"]
    text = text.replace(config.CONFIG_DIR, root + config.CONFIG_DIR)
    text = text.replace(config.SECRETS_DIR, root + config.SECRETS_DIR)
    files = {f"{config.CONFIG_DIR}/rules/{n}": t for n, t in maps["prometheus-rules"].items()}
    files[f"{config.CONFIG_DIR}/config/prometheus.yml"] = text
    secrets = unwrap(by_name(haven, SECRET)["prometheus-credentials"].inputs)["stringData"]
    files.update({f"{config.SECRETS_DIR}/{k}": v for k, v in secrets.items()})
    for path, content in files.items():
        target = Path(root + path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    check = subprocess.run(
        [promtool, "check", "config", root + f"{config.CONFIG_DIR}/config/prometheus.yml"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = check.stdout + check.stderr
    assert check.returncode == 0, out
    assert "SUCCESS: 4 rule files found" in out and "is valid prometheus config file" in out


def test_engramia_deep_health_probe_with_a_static_key() -> None:
    secrets = {k: f"{k}-value-1234" for k in ("postgresPassword", "apiKeys", "bootstrapToken",
                                               "metricsToken")}  # fmt: skip
    program = run(
        "engramia-prod",
        secrets=secrets,
        overrides={"appstack:monitoring": OFF_OPERATOR, "appstack:engramia": {"authMode": "env"}},
    )
    key = by_name(program, SECRET)["blackbox-credentials"]
    assert key.is_secret("stringData")
    assert unwrap(key.inputs)["stringData"] == {"engramia-api-key": "apiKeys-value-1234"}
    maps = {n: unwrap(r.inputs)["data"] for n, r in by_name(program, CONFIG_MAP).items()}
    assert "apiKeys-value-1234" not in json.dumps(maps)
    modules = yaml.safe_load(maps["blackbox-config"]["blackbox.yml"])["modules"]
    assert set(modules) == {"engramia_deep_error", "engramia_deep_degraded"}
    prom = json.loads(maps["prometheus-config"]["prometheus.yml"])
    probe = next(j for j in prom["scrape_configs"] if j["job_name"] == "engramia_deep_error")
    assert probe["static_configs"][0]["targets"] == ["http://api:8000/v1/health/deep"]
    policies = {n: unwrap(r.inputs)["spec"] for n, r in by_name(program, NETPOL).items()}
    to_api = policies["monitoring-from-blackbox"]["egress"]
    assert to_api == [
        {
            "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "api"}}}],
            "ports": [{"protocol": "TCP", "port": 8000}],
        }
    ]
    into = [r["from"] for r in policies["monitoring-to-api-8000"]["ingress"]]
    assert [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "blackbox"}}}] in into


def test_every_monitoring_manifest_validates_strictly(haven: Program) -> None:
    """The monitoring's objects, rendered as the plugin would send them, against the Kubernetes
    OpenAPI schemas in strict mode (an unknown or misspelt field is an error)."""
    version = kubernetes_validate.latest_version()
    ours = [
        m for m in render_manifests.manifests(haven)
        if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "monitoring"
        or m["metadata"]["name"] == "prometheus-data"
    ]  # fmt: skip
    kinds = Counter(m["kind"] for m in ours)
    # Services: 3 servers + metrics-{postgres,alertmanager,edge,qdrant,minio}; policies: egress of
    # prometheus and the exporter, ingress of the 5 scraped pods and of Postgres
    assert kinds == {"Secret": 2, "ConfigMap": 4, "Deployment": 3, "Service": 8,
                     "NetworkPolicy": 8, "PersistentVolumeClaim": 1}  # fmt: skip
    for manifest in ours:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")
