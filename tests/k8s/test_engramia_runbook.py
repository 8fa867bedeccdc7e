"""Engramia's runbook on Kubernetes (maintenance window, bootstrap) on a real API server.

kwok nodes run no container, so neither the Bootstrap Job nor ``kubectl exec`` can run on this
cluster. What is real here: `pulumi up` of engramia-prod (db auth mode, `skipClusterTasks`, the
images overridden with the local contract images) against the real API server and kubernetes
plugin, and then Docker playing the kubelet: the pods AS THE API SERVER HOLDS THEM (the Bootstrap
Job as its provider builds it and the API server accepted it, the API and Caddy Deployments'
templates; env resolved from their Secrets) run with the local Docker engine beside a real
PostgreSQL. The Bootstrap pod issues an owner key (201) that authenticates at the declared API
pod, which has no bootstrap token; the declared Caddy pod, with the window file the Migration's
script writes, answers 503 + Retry-After except to the window's token and on the exempt paths.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from components import edge
from components.providers import window
from components.providers.bootstrap import kubernetes_job, parse_answer
from components.providers.k8s_runner import job_name, task_manifests
from tools.k8s_stack import Cluster, Stack, kubernetes_config, scratch_stack, wait_until

STACK = "k9engramia"
NS = f"{STACK}-engramia"
TOKEN_ENV = "ENGRAMIA_BOOTSTRAP_TOKEN"
LABEL = "k9-kubelet"
IMAGES = {
    "api": {"registry": "appstack.local", "repository": "engramia", "tag": "0.6.2"},
    "postgres": {"registry": "appstack.local", "repository": "postgres-pgvector", "tag": "17"},
    "caddy": {"registry": "appstack.local", "repository": "caddy", "tag": "2"},
}


def _decode(secret: Mapping[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _docker(*args: str, check: bool = True, timeout: float = 180) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        msg = f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()}"
        raise AssertionError(msg)
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def engramia(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """engramia-prod on the local contract images, deployed once for the module."""
    tmp = tmp_path_factory.mktemp(STACK)
    config: dict[str, Any] = kubernetes_config("engramia-prod", skipClusterTasks=True)
    config["appstack:images"] = IMAGES
    with scratch_stack(tmp, STACK, cluster, "engramia-prod", config, "engramia") as stack:
        result = stack.up()
        assert "NOT declared (Migration, Bootstrap, SmokeTest)" in result.text
        yield stack


def _configured(stack: Stack, key: str) -> str:
    args = ("config", "get", f"appstack:{key}", "--stack", stack.name)
    return stack.pulumi(*args, check=True).stdout.strip()


def _template(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    return dict(cluster.get(kind, name, "-n", NS)["spec"]["template"]["spec"])


def _env(cluster: Cluster, container: Mapping[str, Any]) -> dict[str, str]:
    """A container's environment as a kubelet builds it: envFrom Secrets, then env (values and
    secretKeyRefs), read from the API server."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_decode(cluster.get("secret", source["secretRef"]["name"], "-n", NS)))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _decode(cluster.get("secret", ref["name"], "-n", NS))[ref["key"]]
    return env


# -- what the API server holds ------------------------------------------------------------------


def test_the_edge_pods_get_the_window_from_a_secret_and_an_empty_dir(
    cluster: Cluster, engramia: Stack
) -> None:
    pod = _template(cluster, "deployment", "caddy")
    (caddy,) = pod["containers"]
    refs = {e["name"]: e.get("valueFrom") for e in caddy["env"]}
    assert refs["CADDYFILE"] == {"secretKeyRef": {"name": "caddy-env", "key": "CADDYFILE"}}
    text = _decode(cluster.get("secret", "caddy-env", "-n", NS))["CADDYFILE"]
    token = edge.window_token(_configured(engramia, "postgresPassword"))
    assert f"not header {edge.WINDOW_HEADER} {token}" in text
    assert "root /data/appstack" in text and "try_files /window" in text
    # the token is in the Secret only: not in the Deployment, not in any ConfigMap
    assert token not in json.dumps(cluster.get("deployment", "caddy", "-n", NS))
    assert token not in json.dumps(cluster.items("configmaps", NS))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in caddy["volumeMounts"]}
    assert "emptyDir" in mounts["/data/appstack"]


def test_the_api_deployment_never_has_the_bootstrap_token(
    cluster: Cluster, engramia: Stack
) -> None:
    token = _configured(engramia, "bootstrapToken")
    (api,) = _template(cluster, "deployment", "api")["containers"]
    env = _env(cluster, api)
    assert env["ENGRAMIA_AUTH_MODE"] == "db"
    assert TOKEN_ENV not in env
    every_secret = json.dumps([_decode(s) for s in cluster.items("secrets", NS)])
    assert token not in every_secret, "with skipClusterTasks no Bootstrap: the token is nowhere"


# -- Docker plays the kubelet -------------------------------------------------------------------


@dataclass
class Kubelet:
    """Runs pod containers from their specs with Docker on one network of its own."""

    cluster: Cluster
    network: str
    started: list[str] = field(default_factory=list)

    def run(self, pod: Mapping[str, Any], container: Mapping[str, Any], *extra: str) -> str:
        """``docker run -d`` of one container of ``pod``: image, command/args with Kubernetes'
        meaning, uid/gid, capabilities, read-only root, emptyDirs (and the task's empty
        ConfigMap) as tmpfs, environment from the API server. The container ID."""
        sc = pod.get("securityContext") or {}
        csc = container.get("securityContext") or {}
        args = ["run", "-d", "--label", f"{LABEL}=1", "--user",
                f"{sc['runAsUser']}:{sc['runAsGroup']}", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges:true", *extra]  # fmt: skip
        for cap in (csc.get("capabilities") or {}).get("add") or []:
            args += ["--cap-add", cap]
        if csc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            assert "emptyDir" in volume or "configMap" in volume, volume
            args += ["--mount", f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=1777"]
        for key, value in sorted(_env(self.cluster, container).items()):
            args += ["-e", f"{key}={value}"]
        command, rest = list(container.get("command") or []), list(container.get("args") or [])
        if command:
            args += ["--entrypoint", command[0], container["image"], *command[1:], *rest]
        else:
            args += [container["image"], *rest]
        cid = _docker(*args)
        self.started.append(cid)
        return cid

    def wait_probe(self, cid: str, container: Mapping[str, Any], what: str) -> None:
        """Wait until the container's declared readiness probe (an exec probe) passes."""
        probe = ["exec", cid, *container["readinessProbe"]["exec"]["command"]]
        wait_until(
            f"{what} ready ({_docker('logs', '--tail', '20', cid, check=False)})",
            lambda: subprocess.run(["docker", *probe], capture_output=True).returncode == 0,
            timeout_s=60,
        )


@pytest.fixture
def kubelet(cluster: Cluster) -> Iterator[Kubelet]:
    """A Docker network for the pods; every container and the network removed after."""
    network = f"{LABEL}-{secrets.token_hex(3)}"
    _docker("network", "create", "--label", f"{LABEL}=1", network)
    runner = Kubelet(cluster, network)
    try:
        yield runner
    finally:
        for cid in runner.started:
            _docker("rm", "-f", "-v", cid, check=False)
        _docker("network", "rm", network, check=False)


def _postgres(engramia: Stack, kubelet: Kubelet) -> None:
    """PostgreSQL with pgvector as the Service name ``postgres`` (the stack's credentials),
    migrated to head by the API image's alembic, as the Migration does."""
    password = _configured(engramia, "postgresPassword")
    cid = _docker("run", "-d", "--label", f"{LABEL}=1", "--network", kubelet.network,
                  "--network-alias", "postgres", "-e", "POSTGRES_USER=engramia",
                  "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=engramia",
                  "appstack.local/postgres-pgvector:17")  # fmt: skip
    kubelet.started.append(cid)
    ready = ["docker", "exec", cid, "pg_isready", "-q", "-h", "127.0.0.1", "-U", "engramia"]
    wait_until(
        "postgres ready",
        lambda: subprocess.run(ready, capture_output=True).returncode == 0,
        timeout_s=90,
    )
    url = f"postgresql+psycopg2://engramia:{password}@postgres:5432/engramia"
    _docker("run", "--rm", "--label", f"{LABEL}=1", "--network", kubelet.network,
            "-e", f"ENGRAMIA_DATABASE_URL={url}", "appstack.local/engramia:0.6.2",
            "alembic", "upgrade", "head")  # fmt: skip


def _bootstrap_props(cluster: Cluster, engramia: Stack) -> dict[str, Any]:
    """The Bootstrap's inputs as the platform gives them: the API's image and env (without the
    token), its read-only root and tmpfs, the configured token."""
    (api,) = _template(cluster, "deployment", "api")["containers"]
    return {
        "image": api["image"], "env": _env(cluster, api),
        "token": _configured(engramia, "bootstrapToken"), "token_env": TOKEN_ENV,
        "path": "/v1/keys/bootstrap", "body_key": "bootstrap_token", "result_key": "key",
        "port": 8000, "name_prefix": STACK, "timeout_s": 60,
        "read_only": api["securityContext"]["readOnlyRootFilesystem"],
        "tmpfs": [m["mountPath"] for m in api["volumeMounts"]],
        "target": {"kind": "kubernetes", "namespace": NS, "run_as_user": 1001},
    }  # fmt: skip


def _run_bootstrap_job(cluster: Cluster, kubelet: Kubelet, props: Mapping[str, Any]) -> str:
    """Apply the Job exactly as the provider's runner would, read it back from the API server,
    run its pod: the sidecar first, the call in its network namespace. The call's output."""
    runner, task, server = kubernetes_job(props)
    name = job_name(runner.name_prefix, task.name)
    manifests = task_manifests(task, name, NS, runner.uid, runner.name_prefix, server)
    assert not manifests[1]["binaryData"], "the task has no files: its ConfigMap is empty"
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    cluster.kubectl("apply", "-f", "-", stdin=document)
    try:
        pod = cluster.get("job", name, "-n", NS)["spec"]["template"]["spec"]
        (sidecar,) = pod["initContainers"]
        assert sidecar["restartPolicy"] == "Always"  # accepted by the API server as a sidecar
        (main,) = pod["containers"]
        side = kubelet.run(pod, sidecar, "--network", kubelet.network)
        call = kubelet.run(pod, main, "--network", f"container:{side}")
        code = _docker("wait", call, timeout=120)
        out = _docker("logs", call)
        assert code == "0", out + _docker("logs", side, check=False)
        env = _docker("inspect", "-f", "{{json .Config.Env}}", side)
        assert f"{TOKEN_ENV}=" in env, "the sidecar serves with the token from the task's Secret"
        return out
    finally:
        for kind in ("job", "secret", "configmap"):
            cluster.kubectl("delete", kind, name, "-n", NS, "--ignore-not-found", check=False)


def test_the_bootstrap_pod_issues_an_owner_key_the_declared_api_accepts(
    cluster: Cluster, engramia: Stack, kubelet: Kubelet
) -> None:
    _postgres(engramia, kubelet)
    props = _bootstrap_props(cluster, engramia)
    answer = parse_answer(_run_bootstrap_job(cluster, kubelet, props))
    assert answer is not None and answer["status"] == 201, answer
    key = json.loads(answer["body"])["key"]
    # the API Deployment's pod, without the token, takes the owner key
    pod = _template(cluster, "deployment", "api")
    (api,) = pod["containers"]
    cid = kubelet.run(pod, api, "--network", kubelet.network, "--network-alias", "api")
    kubelet.wait_probe(cid, api, "api")
    assert TOKEN_ENV not in _docker("inspect", "-f", "{{json .Config.Env}}", cid)
    status = ("import sys, urllib.request as u\nr = u.Request('http://127.0.0.1:8000/v1/health', "
              "headers={'Authorization': 'Bearer ' + sys.argv[1]})\n"
              "print(u.urlopen(r, timeout=10).status)")  # fmt: skip
    assert _docker("exec", cid, "python3", "-c", status, key) == "200"
    wrong = subprocess.run(["docker", "exec", cid, "python3", "-c", status, "ek_wrong"],
                           capture_output=True, text=True)  # fmt: skip
    assert "401" in wrong.stderr
    # a second run of the same Job: the database is bootstrapped, 409 (no key to keep)
    again = parse_answer(_run_bootstrap_job(cluster, kubelet, props))
    assert again is not None and again["status"] == 409, again


def test_the_declared_edge_pod_serves_the_window_the_migration_opens(
    cluster: Cluster, engramia: Stack, kubelet: Kubelet
) -> None:
    api_pod = _template(cluster, "deployment", "api")
    (api,) = api_pod["containers"]
    _postgres(engramia, kubelet)
    api_id = kubelet.run(api_pod, api, "--network", kubelet.network, "--network-alias", "api")
    kubelet.wait_probe(api_id, api, "api")
    pod = _template(cluster, "deployment", "caddy")
    (caddy,) = pod["containers"]
    cid = kubelet.run(pod, caddy, "--network", kubelet.network, "-p", "127.0.0.1::8080")
    kubelet.wait_probe(cid, caddy, "caddy")
    port = _docker("port", cid, "8080/tcp").splitlines()[0].rsplit(":", 1)[-1]
    base = f"http://127.0.0.1:{port}"
    token = edge.window_token(_configured(engramia, "postgresPassword"))
    bypass = {edge.WINDOW_HEADER: token}

    def get(path: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return httpx.get(base + path, headers=dict(headers or {}), timeout=10)

    def proxies() -> bool:
        try:
            return get("/v1/version").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until("caddy proxies to the API", proxies)
    # the script the Migration runs in every edge pod (kubectl exec there, docker exec here)
    _docker("exec", cid, "sh", "-c", window.OPEN)
    shut = get("/v1/version")
    assert shut.status_code == 503 and shut.headers["Retry-After"] == str(edge.RETRY_AFTER_S)
    assert shut.json() == {"status": "maintenance"}
    passed = get("/v1/version", bypass)
    assert passed.status_code == 200 and passed.json()["app_version"] == "0.6.2"
    assert get("/v1/health").status_code == 401, "Engramia's exempt path: the API's own answer"
    assert get("/v1/version", {edge.WINDOW_HEADER: "not-the-token"}).status_code == 503
    # the SmokeTest's script closes it
    assert _docker("exec", cid, "sh", "-c", window.CLOSE) == "closed"
    assert get("/v1/version").status_code == 200
    assert _docker("exec", cid, "sh", "-c", window.CHECK) == ""


def test_second_up_changes_nothing(engramia: Stack) -> None:
    engramia.up("--expect-no-changes")


def test_the_kubelet_left_no_container() -> None:
    assert _docker("ps", "-aq", "--filter", f"label={LABEL}=1") == ""
