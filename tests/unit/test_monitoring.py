"""The monitoring component under mocks: its containers, their networks, nothing published, and
every credential travelling as a secret; plus the settings key and the edge's metrics listener."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from components.monitoring import config
from components.settings import MONITORING_IMAGES, ConfigError
from tests.unit.harness import SECRET_VALUES, Program, run, unwrap

CONTAINER = "pulumi-python:dynamic/docker:Container"
VOLUME = "pulumi-python:dynamic/docker:Volume"
EDGE_ROUTE = "pulumi-python:dynamic/docker:EdgeRoute"
HAVEN_MONITORING = {"prometheus", "alertmanager", "postgres-exporter"}


def monitoring(program: Program) -> dict[str, Any]:
    """The monitoring containers by service, as registered (secret envelopes kept)."""
    found = {}
    for r in program.of_type(CONTAINER):
        labels = unwrap(r.inputs["labels"])
        if labels.get("appstack.component") == "monitoring":
            found[labels["appstack.service"]] = r
    return found


def files_of(container: Any) -> dict[str, str]:
    """A container's files by path: those its command writes from its env, and its secret files."""
    inputs = unwrap(container.inputs)
    script = inputs["command"][2]
    env = inputs["env"]
    files = {f"/run/secrets/{n}": v for n, v in (inputs.get("secret_files") or {}).items()}
    for line in script.splitlines():
        if line.startswith("printf '%s' "):
            var, path = line.removeprefix("printf '%s' \"$").split('" > ')
            files[path] = env[var]
    return files


@pytest.fixture(scope="module", params=["dev", "staging"])
def program(request: pytest.FixtureRequest) -> Program:
    secrets = SECRET_VALUES if request.param == "staging" else None
    return run(request.param, secrets=secrets)


def test_on_by_default_in_dev_and_staging_with_its_containers(program: Program) -> None:
    assert set(monitoring(program)) == HAVEN_MONITORING


def test_nothing_of_it_is_published(program: Program) -> None:
    for name, c in monitoring(program).items():
        assert unwrap(c.inputs)["ports"] == [], name


def test_networks_prometheus_reaches_the_edge_the_rest_is_internal(program: Program) -> None:
    stack = program.stack
    internal, edge = f"{stack}-haven-internal", f"{stack}-haven-edge"
    nets = {
        n: [(x["name"], x["aliases"]) for x in unwrap(c.inputs)["networks"]]
        for n, c in monitoring(program).items()
    }
    assert nets["prometheus"] == [(internal, ["prometheus"]), (edge, [])]
    assert nets["alertmanager"] == [(internal, ["alertmanager"])]
    assert nets["postgres-exporter"] == [(internal, ["postgres-exporter"])]


def test_credentials_are_secret_and_only_in_files(program: Program) -> None:
    running = monitoring(program)
    for name in ("prometheus", "postgres-exporter"):
        assert running[name].is_secret("secret_files"), f"{name}'s secret files are credentials"
        assert not any("SECRET" in k for k in unwrap(running[name].inputs)["env"]), name
    prom_files = files_of(running["prometheus"])
    prom = json.loads(prom_files["/etc/appstack/prometheus.yml"])
    minio = next(j for j in prom["scrape_configs"] if j["job_name"] == "minio")
    assert minio["authorization"]["credentials_file"] == "/run/secrets/minio-token"
    token = prom_files["/run/secrets/minio-token"]
    assert token.count(".") == 2, "a JWT"
    assert token not in json.dumps(prom)
    exporter = files_of(running["postgres-exporter"])
    password = exporter["/run/secrets/postgres-password"]
    if program.stack == "staging":
        assert password == SECRET_VALUES["postgresPassword"]
    command = unwrap(running["postgres-exporter"].inputs)["command"][2]
    assert password not in command and "DATA_SOURCE_PASS_FILE=" in command
    assert "DATA_SOURCE_PASS_FILE=/run/secrets/postgres-password" in command
    assert "exec env -u APPSTACK_FILE_0 'env'" in command, "config vars leave the server's env"


def test_prometheus_scrapes_the_edge_exporter_stores_and_loads_the_rules(program: Program) -> None:
    prom = json.loads(files_of(monitoring(program)["prometheus"])["/etc/appstack/prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    stores = {"minio"} if program.stack == "dev" else {"qdrant", "minio"}  # dev: the stand-in
    assert set(jobs) == {"prometheus", "postgres", "alertmanager", "edge"} | stores
    assert jobs["edge"]["static_configs"] == [
        {"targets": ["caddy:2020"], "labels": {"app": "haven", "service": "gateway"}}
    ]
    assert prom["rule_files"] == [
        f"/etc/appstack/rules/{n}" for n in ("edge.yml", "haven.yml", "storage.yml", "targets.yml")
    ]
    files = files_of(monitoring(program)["prometheus"])
    for name in ("edge.yml", "haven.yml", "storage.yml", "targets.yml"):
        assert yaml.safe_load(files[f"/etc/appstack/rules/{name}"])["groups"], name


def test_the_edge_serves_metrics_only_with_monitoring_on() -> None:
    (route,) = run("dev").of_type(EDGE_ROUTE)
    caddyfile = unwrap(route.inputs)["caddyfile"]
    assert "\tservers {\n\t\tmetrics\n\t}\n" in caddyfile
    assert "http://:2020 {\n\tmetrics\n}\n" in caddyfile
    assert "admin localhost:2019" in caddyfile, "the admin API stays on localhost"
    off = run("dev", overrides={"appstack:monitoring": "false"})
    assert monitoring(off) == {}
    (route,) = off.of_type(EDGE_ROUTE)
    assert "metrics" not in unwrap(route.inputs)["caddyfile"]


def test_prometheus_published_only_when_configured() -> None:
    program = run("dev", overrides={"appstack:monitoring": {"prometheusPort": 19090}})
    ports = {n: unwrap(c.inputs)["ports"] for n, c in monitoring(program).items()}
    assert ports["prometheus"] == [{"internal": 9090, "external": 19090, "ip": "127.0.0.1"}]
    assert all(p == [] for n, p in ports.items() if n != "prometheus")


def test_settings_reach_the_queries_and_rules() -> None:
    program = run(
        "dev",
        overrides={"appstack:monitoring": {"storageBudget": "512Mi", "stalledAfter": "3m",
                                           "qdrantMetrics": False,
                                           "images": {"prometheus": "docker.io/prom/prometheus:v2.53.3"}}},
    )  # fmt: skip
    running = monitoring(program)
    queries = json.loads(files_of(running["postgres-exporter"])["/etc/appstack/queries.yml"])
    assert f"{512 * 2**20}::float AS budget_bytes" in queries["appstack_database"]["query"]
    assert "processing_min_id" in queries["haven_chunks"]["query"]
    files = files_of(running["prometheus"])
    haven = yaml.safe_load(files["/etc/appstack/rules/haven.yml"])
    (stalled,) = [
        r for g in haven["groups"] for r in g["rules"] if r.get("alert") == "HavenChunksStalled"
    ]
    assert stalled["for"] == "3m"
    jobs = {
        j["job_name"] for j in json.loads(files["/etc/appstack/prometheus.yml"])["scrape_configs"]
    }
    assert "qdrant" not in jobs
    assert unwrap(running["prometheus"].inputs)["image"] == "docker.io/prom/prometheus:v2.53.3"
    assert unwrap(running["alertmanager"].inputs)["image"] == MONITORING_IMAGES["alertmanager"]


def test_prometheus_data_volume_protected_like_the_stacks_data(program: Program) -> None:
    (volume,) = [v for v in program.of_type(VOLUME) if v.inputs["name"].endswith("prometheus-data")]
    assert volume.protect is (program.stack == "staging")
    assert unwrap(monitoring(program)["prometheus"].inputs)["rollout"] == "stop-first"


def test_off_on_prod_unless_configured() -> None:
    prod = run("prod", secrets=SECRET_VALUES)
    assert monitoring(prod) == {}
    assert prod.of_type("kubernetes:core/v1:ConfigMap") == []  # on Kubernetes: test_monitoring_kube


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"stalledAfter": "ten minutes"}, "appstack:monitoring.stalledAfter"),
        ({"storageBudget": "10GB"}, "appstack:monitoring.storageBudget"),
        ({"prometheusPort": 80}, "appstack:monitoring.prometheusPort"),
        ({"scrapeInterval": "0s"}, "appstack:monitoring.scrapeInterval"),
        ({"enabled": "yes"}, "appstack:monitoring.enabled"),
        ({"qdrantMetrics": "maybe"}, "appstack:monitoring.qdrantMetrics"),
        ({"images": {"grafana": "grafana/grafana:11"}}, "appstack:monitoring.images.grafana"),
        ({"alerts": True}, "appstack:monitoring.alerts"),
        ("sometimes", "appstack:monitoring"),
    ],
)
def test_bad_monitoring_settings_name_the_key(value: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run("dev", overrides={"appstack:monitoring": value})


def test_engramia_metrics_token_and_deep_health_probe() -> None:
    program = run("engramia-dev")
    running = monitoring(program)
    assert set(running) == {"prometheus", "alertmanager", "postgres-exporter", "blackbox"}
    files = files_of(running["prometheus"])
    prom = json.loads(files["/etc/appstack/prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    token_file = "/run/secrets/engramia-metrics-token"
    assert jobs["engramia"]["authorization"] == {"type": "Bearer", "credentials_file": token_file}
    assert files[token_file] == "generated-engramia-dev-engramia-metricsToken"
    assert running["prometheus"].is_secret("secret_files")
    assert running["blackbox"].is_secret("secret_files")
    probe = jobs["engramia_deep_error"]
    assert probe["params"] == {"module": ["engramia_deep_error"]}
    assert probe["static_configs"][0]["targets"] == ["http://api:8000/v1/health/deep"]
    blackbox = files_of(running["blackbox"])
    key = blackbox["/run/secrets/engramia-api-key"]
    assert key and "," not in key
    modules = json.loads(blackbox["/etc/appstack/blackbox.yml"])["modules"]
    assert set(modules) == {"engramia_deep_error", "engramia_deep_degraded"}
    assert key not in json.dumps(modules)


def test_minio_token_is_minios_prometheus_jwt() -> None:
    import base64
    import hashlib
    import hmac

    token = config.minio_token("access", "secret", now=0)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims == {"exp": 100 * 365 * 86400, "sub": "access", "iss": "prometheus"}
    expected = hmac.new(b"secret", f"{header}.{payload}".encode(), hashlib.sha512).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
