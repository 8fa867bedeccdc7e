"""Engramia's runbook on Kubernetes, offline: the maintenance window's objects and ``kubectl``
calls, the Bootstrap Job's manifests, and what engramia-prod declares (mocks)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from components import edge
from components.platforms.k8s_workloads import CADDYFILE_DIGEST
from components.providers import bootstrap, k8s_runner, window
from components.providers.bootstrap import ANSWER, parse_answer
from components.providers.k8s_runner import KubectlError, Sidecar, task_manifests
from components.providers.runner import Task, TaskResult
from tests.unit.harness import DEPLOYMENT, SECRET, Program, Registration, run, unwrap
from tests.unit.test_engramia import ENGRAMIA_SECRETS

TOKEN = "ENGRAMIA_BOOTSTRAP_TOKEN"


@pytest.fixture(scope="module")
def prod() -> Program:
    """engramia-prod (db auth mode by default) on a cluster that runs containers."""
    return run("engramia-prod", secrets=ENGRAMIA_SECRETS)


def _deployment(program: Program, name: str) -> Registration:
    (found,) = [d for d in program.of_type(DEPLOYMENT) if d.inputs["metadata"]["name"] == name]
    return found


def _secret(program: Program, name: str) -> Registration:
    (found,) = [s for s in program.of_type(SECRET) if s.inputs["metadata"]["name"] == name]
    return found


def _pod(res: Registration) -> dict[str, Any]:
    return dict(unwrap(res.inputs)["spec"]["template"]["spec"])


# -- the edge: window matcher in a Secret, emptyDir for the window file -------------------------


def test_the_edge_reads_its_caddyfile_from_its_secret_with_the_window(prod: Program) -> None:
    (caddy,) = _pod(_deployment(prod, "caddy"))["containers"]
    env = {e["name"]: e for e in caddy["env"]}
    assert env["CADDYFILE"]["valueFrom"]["secretKeyRef"] == {
        "name": "caddy-env",
        "key": "CADDYFILE",
    }
    assert "value" not in env["CADDYFILE"]
    held = _secret(prod, "caddy-env")
    assert held.is_secret("stringData")
    text = unwrap(held.inputs["stringData"])["CADDYFILE"]
    token = edge.window_token(ENGRAMIA_SECRETS["postgresPassword"])
    assert f"not header {edge.WINDOW_HEADER} {token}" in text
    assert "try_files /window" in text and "root /data/appstack" in text
    assert "not path /v1/health /v1/health/deep" in text, "Engramia's own exempt paths"
    # the pods roll when the Caddyfile changes: its digest is plain env, the token is nowhere
    # in the Deployment
    assert len(env[CADDYFILE_DIGEST]["value"]) == 64
    assert token not in json.dumps(unwrap(_deployment(prod, "caddy").inputs))


def test_the_window_file_lives_on_an_empty_dir_of_each_edge_pod(prod: Program) -> None:
    pod = _pod(_deployment(prod, "caddy"))
    (caddy,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in caddy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/data/appstack"]]
    assert caddy["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_migration_and_the_smoke_name_the_edge_pods(prod: Program) -> None:
    # (a None context is not sent: the kubeconfig's current one)
    wanted = {"kind": "kubernetes", "namespace": "engramia-prod-engramia",
              "selector": "app.kubernetes.io/name=caddy", "container": "caddy"}  # fmt: skip
    migration = prod.named("engramia-prod-engramia-migration")
    assert migration.inputs["window"] == wanted
    smoke = prod.named("engramia-prod-engramia-smoke")
    assert smoke.inputs["window"] == wanted
    assert smoke.is_secret("headers")
    token = edge.window_token(ENGRAMIA_SECRETS["postgresPassword"])
    assert unwrap(smoke.inputs["headers"]) == {edge.WINDOW_HEADER: token}


# -- the bootstrap ------------------------------------------------------------------------------


def test_the_api_never_has_the_token_the_bootstrap_job_does(prod: Program) -> None:
    api = _deployment(prod, "api")
    (container,) = _pod(api)["containers"]
    assert TOKEN not in {e["name"] for e in container["env"]}
    assert TOKEN not in unwrap(_secret(prod, "api-env").inputs["stringData"])
    boot = prod.named("engramia-prod-engramia-bootstrap")
    assert boot.inputs["target"] == {"kind": "kubernetes", "namespace": "engramia-prod-engramia",
                                     "run_as_user": 1001}  # fmt: skip
    assert boot.is_secret("token") and boot.is_secret("env")
    assert unwrap(boot.inputs["token"]) == ENGRAMIA_SECRETS["bootstrapToken"]
    assert TOKEN not in unwrap(boot.inputs["env"])
    assert unwrap(boot.inputs["env"])["ENGRAMIA_AUTH_MODE"] == "db"
    assert boot.inputs["tmpfs"] == ["/tmp", "/app/tmp", "/data"] and boot.inputs["read_only"]
    deps = {prod.by_urn(u).name for u in boot.dependencies}
    assert "engramia-prod-engramia-migration" in deps
    assert "engramia-prod-engramia-bootstrap" in {prod.by_urn(u).name for u in api.dependencies}


def test_the_owner_key_is_a_secret_output_and_the_smoke_sends_it(prod: Program) -> None:
    assert "engramiaOwnerKey" in prod.secret_outputs
    smoke = prod.named("engramia-prod-engramia-smoke")
    assert smoke.is_secret("secrets")


def test_skip_cluster_tasks_declares_no_bootstrap_and_still_no_token() -> None:
    program = run(
        "engramia-prod",
        secrets=ENGRAMIA_SECRETS,
        overrides={"appstack:kubernetes": {**_k8s(), "skipClusterTasks": True}},
    )
    assert not [r for r in program.resources if r.name.endswith("-bootstrap")]
    (container,) = _pod(_deployment(program, "api"))["containers"]
    assert TOKEN not in {e["name"] for e in container["env"]}
    assert "Bootstrap" in program.outputs["kubernetesNote"]
    assert "engramiaOwnerKey" not in program.outputs


def _k8s() -> dict[str, Any]:
    from tests.unit.harness import stack_config

    return dict(stack_config("engramia-prod")["appstack:kubernetes"])


def _task() -> Task:
    return Task(
        name="bootstrap",
        image="appstack.local/engramia:0.6.2",
        entrypoint=["python3"],
        command=["-c", "print(1)"],
        env={TOKEN: "tok-1", "ENGRAMIA_AUTH_MODE": "db"},
    )


def test_the_job_runs_the_api_as_a_native_sidecar_with_the_tasks_secret() -> None:
    server = Sidecar(image="appstack.local/engramia:0.6.2", tmpfs=("/tmp", "/app/tmp", "/data"))
    secret, _, job = task_manifests(_task(), "eng-bootstrap-abc", "ns1", 1001, "eng", server)
    assert secret["stringData"][TOKEN] == "tok-1"
    pod = job["spec"]["template"]["spec"]
    (side,) = pod["initContainers"]
    assert side["restartPolicy"] == "Always"
    assert "command" not in side and "args" not in side, "the image's own server command"
    assert side["envFrom"] == [{"secretRef": {"name": "eng-bootstrap-abc"}}]
    assert side["securityContext"]["readOnlyRootFilesystem"] is True
    assert side["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    paths = {m["mountPath"]: volumes[m["name"]] for m in side["volumeMounts"]}
    assert set(paths) == {"/tmp", "/app/tmp", "/data"}
    assert all("emptyDir" in v for v in paths.values())
    (main,) = pod["containers"]
    assert main["command"] == ["python3"] and main["envFrom"] == side["envFrom"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsUser"] == 1001
    # without a sidecar the Job is what it was
    _, _, plain = task_manifests(_task(), "x", "ns1", 1001, "eng")
    assert "initContainers" not in plain["spec"]["template"]["spec"]


def test_the_answer_is_the_marked_line_among_the_servers_log() -> None:
    log = "\n".join([
        '{"level": "info", "msg": "listening", "status": 500}',
        ANSWER + json.dumps({"status": 201, "body": '{"key": "ek_1"}'}),
    ])  # fmt: skip
    assert parse_answer(log) == {"status": 201, "body": '{"key": "ek_1"}'}
    assert parse_answer('{"status": 201}') is None


class _Runner:
    """Stands in for the KubernetesRunner: records the task and sidecar, returns ``logs``."""

    def __init__(self, logs: str) -> None:
        self.logs = logs
        self.seen: list[tuple[Task, Sidecar | None]] = []

    def __call__(self, *args: Any) -> _Runner:
        self.args = args
        return self

    def run(self, task: Task, sidecar: Sidecar | None = None) -> TaskResult:
        self.seen.append((task, sidecar))
        return TaskResult(0, self.logs)


def _props() -> dict[str, Any]:
    return {
        "image": "appstack.local/engramia:0.6.2", "env": {"ENGRAMIA_AUTH_MODE": "db"},
        "token": "tok-1", "token_env": TOKEN, "path": "/v1/keys/bootstrap",
        "body_key": "bootstrap_token", "result_key": "key", "port": 8000, "network": "",
        "name_prefix": "eng", "read_only": True, "tmpfs": ["/tmp"], "timeout_s": 30,
        "target": {"kind": "kubernetes", "namespace": "ns1", "context": "kind-x",
                   "run_as_user": 1001},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "outcome", "key"),
    [
        (201, '{"key": "ek_owner"}', "created", "ek_owner"),
        (409, '{"detail": "done"}', "existing", ""),
    ],
)
def test_the_provider_runs_the_job_and_reads_its_answer(
    monkeypatch: pytest.MonkeyPatch, status: int, body: str, outcome: str, key: str
) -> None:
    fake = _Runner("server up\n" + ANSWER + json.dumps({"status": status, "body": body}))
    monkeypatch.setattr(bootstrap, "KubernetesRunner", fake)
    outs = bootstrap.BootstrapProvider().create(_props()).outs or {}
    assert (outs["outcome"], outs["owner_key"]) == (outcome, key)
    assert "token" not in outs and "env" not in outs
    assert fake.args == ("ns1", "eng", "kind-x", 1001)
    ((task, server),) = fake.seen
    assert task.env[TOKEN] == "tok-1" and server is not None and server.read_only_root
    assert task.command[-4] == "http://127.0.0.1:8000/v1/keys/bootstrap"


@pytest.mark.parametrize(
    ("logs", "said"),
    [
        ("no answer at all", "printed no answer"),
        (ANSWER + json.dumps({"status": None, "body": "refused"}), "never listened on 8000"),
        (ANSWER + json.dumps({"status": 401, "body": "bad token"}), "answered 401"),
    ],
)
def test_the_provider_fails_clearly(monkeypatch: pytest.MonkeyPatch, logs: str, said: str) -> None:
    monkeypatch.setattr(bootstrap, "KubernetesRunner", _Runner(logs))
    with pytest.raises(RuntimeError, match=said):
        bootstrap.BootstrapProvider().create(_props())


def test_a_moved_namespace_calls_for_another_bootstrap() -> None:
    provider = bootstrap.BootstrapProvider()
    olds, news = _props(), _props()
    assert not provider.diff("id", olds, news).changes
    news["target"] = {**news["target"], "namespace": "ns2"}
    assert provider.diff("id", olds, news).changes


# -- kubectl exec at every edge pod -------------------------------------------------------------


class _Kubectl:
    """``subprocess.run`` for kubectl: the pods listed, each exec's answer by pod name."""

    def __init__(self, pods: Sequence[dict[str, Any]], answers: dict[str, tuple[int, str]]):
        self.pods = pods
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if "get" in argv:
            return subprocess.CompletedProcess(argv, 0, json.dumps({"items": self.pods}), "")
        pod = argv[argv.index("exec") + 1]
        code, out = self.answers[pod]
        return subprocess.CompletedProcess(argv, code, out if code == 0 else "", out)


def _pods(*names: str, terminating: Sequence[str] = ()) -> list[dict[str, Any]]:
    return [
        {"metadata": {"name": n, **({"deletionTimestamp": "t"} if n in terminating else {})}}
        for n in names
    ]


@pytest.fixture
def edge_window() -> Iterator[dict[str, Any]]:
    """The window input of an edge in namespace ns1 of context kind-x."""
    yield window.kubernetes_window("ns1", "kind-x", "app.kubernetes.io/name=caddy", "caddy")


def test_open_execs_into_every_running_edge_pod(
    monkeypatch: pytest.MonkeyPatch, edge_window: dict[str, Any]
) -> None:
    fake = _Kubectl(_pods("caddy-b", "caddy-a"), {"caddy-a": (0, ""), "caddy-b": (0, "")})
    monkeypatch.setattr(k8s_runner.subprocess, "run", fake)
    assert window.open_window(None, edge_window)
    get, *execs = fake.calls
    assert get == ["kubectl", "--context", "kind-x", "--namespace", "ns1", "get", "pods", "-l",
                   "app.kubernetes.io/name=caddy", "--field-selector=status.phase=Running",
                   "-o", "json"]  # fmt: skip
    assert [c[5:10] for c in execs] == [["exec", "caddy-a", "-c", "caddy", "--"],
                                        ["exec", "caddy-b", "-c", "caddy", "--"]]  # fmt: skip
    assert all(c[10:] == ["sh", "-c", window.OPEN] for c in execs)
    assert edge.WINDOW_FILE in window.OPEN


def test_no_edge_pod_running_opens_nothing(
    monkeypatch: pytest.MonkeyPatch, edge_window: dict[str, Any]
) -> None:
    monkeypatch.setattr(k8s_runner.subprocess, "run", _Kubectl([], {}))
    assert window.open_window(None, edge_window) == ""


def test_close_says_whether_a_pod_had_it_open(
    monkeypatch: pytest.MonkeyPatch, edge_window: dict[str, Any]
) -> None:
    fake = _Kubectl(_pods("caddy-a", "caddy-b"), {"caddy-a": (0, "closed\n"), "caddy-b": (0, "")})
    monkeypatch.setattr(k8s_runner.subprocess, "run", fake)
    assert window.close_window(None, edge_window) is True
    assert all(c[10:] == ["sh", "-c", window.CLOSE] for c in fake.calls[1:])
    monkeypatch.setattr(
        k8s_runner.subprocess, "run", _Kubectl(_pods("caddy-a"), {"caddy-a": (0, "")})
    )
    assert window.close_window(None, edge_window) is False
    monkeypatch.setattr(
        k8s_runner.subprocess, "run", _Kubectl(_pods("caddy-a"), {"caddy-a": (0, "open\n")})
    )
    assert window.is_open(None, edge_window) is True


def test_an_exec_that_fails_names_the_pod_unless_it_is_terminating(
    monkeypatch: pytest.MonkeyPatch, edge_window: dict[str, Any]
) -> None:
    gone = _Kubectl(_pods("caddy-a", "caddy-old", terminating=["caddy-old"]),
                    {"caddy-a": (0, ""), "caddy-old": (1, "container not found")})  # fmt: skip
    monkeypatch.setattr(k8s_runner.subprocess, "run", gone)
    assert window.open_window(None, edge_window)
    broken = _Kubectl(_pods("caddy-a"), {"caddy-a": (126, "permission denied")})
    monkeypatch.setattr(k8s_runner.subprocess, "run", broken)
    with pytest.raises(KubectlError, match=r"pod ns1/caddy-a \(caddy\) failed \(126\)"):
        window.open_window(None, edge_window)
