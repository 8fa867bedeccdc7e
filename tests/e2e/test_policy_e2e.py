"""The policy pack under the real engine: ``pulumi preview --policy-pack policy``.

Each policy meets a compliant stack and a violating one. The resources come from a small program
(tests/e2e/policy_app) made of appstack's own Docker resources and pulumi-kubernetes resources in
render mode (the real kubernetes plugin, no cluster), and from appstack's program itself (its dev
stack and its prod stack on Kubernetes in render mode) — previews only: nothing is created, no
port is published. The engine starts the pack through the language host's ``RunPlugin``.

A mandatory violation fails the preview (exit code 1) naming the policy and the resource; an
advisory one is reported and the preview passes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.ops.preview_report import PreviewReport, parse_events
from tests.e2e.stack import ROOT, Stack
from tools.k8s_stack import kubernetes_config, secret_values, toolchain_ready

POLICY = ROOT / "policy"
APP = Path(__file__).parent / "policy_app"
K8S_READY, K8S_STATUS = toolchain_ready()


@dataclass
class Preview:
    """One preview: its exit code, printed text and the parsed event stream."""

    code: int
    text: str
    report: PreviewReport

    def violations(self, level: str | None = None) -> set[tuple[str, str]]:
        """(policy, resource name or "the stack") of every violation (of ``level``)."""
        return {
            (v.policy, v.resource.split(": ", 1)[-1])
            for v in self.report.violations
            if level is None or v.level == level
        }


def _env(state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PULUMI_BACKEND_URL": f"file://{state}",
            "PULUMI_CONFIG_PASSPHRASE": "policy-passphrase-not-a-secret-of-any-stack",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_ERROR_OUTPUT_STRING": "true",
        }
    )
    env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
    return env


def run(workdir: Path, env: dict[str, str], *args: str, check: bool = True) -> str:
    """``pulumi ARGS --non-interactive`` in ``workdir``; its output."""
    proc = subprocess.run(
        ["pulumi", *args, "--non-interactive"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        msg = f"pulumi {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        raise AssertionError(msg)
    return proc.stdout + proc.stderr


def preview(workdir: Path, env: dict[str, str], stack: str, *extra: str) -> Preview:
    """The stack's preview with the pack, once as the engine's event stream and once as text."""
    args = ["preview", "--diff", "--stack", stack, "--policy-pack", str(POLICY), *extra]
    stream_env = {**env, "PULUMI_ENABLE_STREAMING_JSON_PREVIEW": "1"}
    proc = subprocess.run(
        ["pulumi", *args, "--json", "--non-interactive"],
        cwd=workdir, env=stream_env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    text = subprocess.run(
        ["pulumi", *args, "--non-interactive"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if "failed to start" in text.stderr and "Method not implemented" in text.stderr:
        pytest.fail(
            "the language host the engine ran has no RunPlugin: the shared toolchain's link "
            "(tools/toolchain.sh, the last checkout that ran tools/env.sh) points to a checkout "
            f"without it:\n{text.stderr[-2000:]}"
        )
    assert proc.returncode == text.returncode, (proc.stderr, text.stdout)
    assert "from $PATH" not in text.stdout + text.stderr
    return Preview(
        text.returncode, text.stdout + text.stderr, parse_events(proc.stdout.splitlines())
    )


class PolicyApp:
    """tests/e2e/policy_app in a scratch directory with its own file backend."""

    def __init__(self, tmp: Path) -> None:
        self.workdir = tmp / "project"
        shutil.copytree(APP, self.workdir, ignore=shutil.ignore_patterns("__pycache__"))
        project = yaml.safe_load((self.workdir / "Pulumi.yaml").read_text())
        project["runtime"]["options"]["virtualenv"] = str(ROOT / ".venv")
        (self.workdir / "Pulumi.yaml").write_text(yaml.safe_dump(project))
        state = tmp / "state"
        state.mkdir()
        self.env = _env(state)
        self.render = tmp / "render"
        self.stacks: set[str] = set()

    def stack(self, name: str, case: str, platform: str = "docker") -> str:
        """Stack ``name`` (created on first use) set to ``case`` on ``platform``."""
        if name not in self.stacks:
            run(self.workdir, self.env, "stack", "init", name)
            run(self.workdir, self.env, "config", "set", "--stack", name, "--secret",
                "apiToken", "token-from-secret-config")  # fmt: skip
            run(self.workdir, self.env, "config", "set", "--stack", name, "renderTo",
                str(self.render / name))  # fmt: skip
            self.stacks.add(name)
        run(self.workdir, self.env, "config", "set", "--stack", name, "case", case)
        run(self.workdir, self.env, "config", "set", "--stack", name, "platform", platform)
        return name

    def preview(self, name: str, case: str, platform: str = "docker", *extra: str) -> Preview:
        """Set the case, preview with the pack."""
        return preview(self.workdir, self.env, self.stack(name, case, platform), *extra)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyApp]:
    """The small program, in its scratch copy."""
    if shutil.which("pulumi") is None:
        pytest.fail("the policy tests need `pulumi` on PATH: run them through tools/env.sh")
    yield PolicyApp(tmp_path_factory.mktemp("policy"))


def refused(result: Preview, policy: str, resource: str) -> None:
    """A mandatory violation of ``policy`` on ``resource``: the preview failed naming both."""
    assert result.code != 0, result.text[-3000:]
    assert (policy, resource) in result.violations("mandatory"), result.report.violations
    shown = "pulumi:pulumi:Stack" if resource == "the stack" else resource
    assert f"[mandatory]  {policy}" in result.text and shown in result.text
    assert result.report.failed


def passed(result: Preview) -> None:
    """No mandatory violation: the preview succeeded."""
    assert result.code == 0, result.text[-3000:]
    assert not result.violations("mandatory"), result.report.violations
    assert not result.report.failed and result.report.packs == {"appstack": "1.0.0"}


# -- Docker (appstack's own dynamic resources) ---------------------------------------------------


def test_docker_compliant_stack_passes_every_policy(app: PolicyApp) -> None:
    result = app.preview("pol-docker-staging", "good")
    passed(result)
    assert result.violations() == set()
    assert len(result.report.steps) == 4  # the stack, the volume, two containers


@pytest.mark.parametrize(
    ("case", "policy", "resource"),
    [
        ("second-entry", "one-public-entry", "the stack"),
        ("plain-secret", "no-plain-secret-env", "api"),
        ("latest", "images-pinned", "api"),
        ("no-limits", "resource-limits", "api"),
        ("root", "workload-hardening", "api"),
        ("unprotected", "protected-data-volumes", "data"),
    ],
)
def test_docker_violation_fails_the_preview(
    app: PolicyApp, case: str, policy: str, resource: str
) -> None:
    result = app.preview("pol-docker-staging", case)
    refused(result, policy, resource)
    # exactly the rule the case breaks, nothing else
    assert {p for p, _ in result.violations()} == {policy}


def test_unprotected_volume_is_fine_on_dev(app: PolicyApp) -> None:
    passed(app.preview("pol-docker-dev", "unprotected"))


def test_prod_tag_without_digest_is_advisory(app: PolicyApp) -> None:
    result = app.preview("pol-docker-prod", "good")
    passed(result)
    assert result.violations("advisory") == {
        ("prod-images-by-digest", "api"), ("prod-images-by-digest", "edge")
    }  # fmt: skip
    assert "[advisory]  prod-images-by-digest" in result.text
    assert result.violations() == result.violations("advisory")
    digest = app.preview("pol-docker-prod", "digest")  # both images by digest
    passed(digest)
    assert digest.violations() == set()


def test_policy_config_makes_advisory_mandatory_and_names_prod_stacks(
    app: PolicyApp, tmp_path: Path
) -> None:
    config = tmp_path / "policy-config.json"
    config.write_text(
        json.dumps(
            {"prod-images-by-digest": {"enforcementLevel": "mandatory", "prodStacks": ["pol-*-x"]}}
        )
    )
    result = app.preview("pol-docker-x", "good", "docker", "--policy-pack-config", str(config))
    refused(result, "prod-images-by-digest", "api")


# -- Kubernetes (pulumi-kubernetes, render mode: the real plugin, no cluster) ---------------------

k8s = pytest.mark.skipif(
    not K8S_READY,
    reason="THE CLUSTER TOOLCHAIN (the kubernetes plugin) IS NOT CACHED: `make k8s-toolchain` "
    "builds it; tools/k8s-toolchain.sh status:\n" + K8S_STATUS,
)


@k8s
def test_kubernetes_compliant_stack_passes_every_policy(app: PolicyApp) -> None:
    result = app.preview("pol-k8s-prod", "good", "kubernetes")
    passed(result)
    assert result.violations() == {("prod-images-by-digest", "api")}


@k8s
@pytest.mark.parametrize(
    ("stack", "case", "policies", "resource"),
    [
        ("pol-k8s-prod", "plain-secret", {"no-plain-secret-env"}, "api"),
        ("pol-k8s-prod", "latest", {"images-pinned"}, "api"),
        ("pol-k8s-prod", "no-limits", {"resource-limits"}, "api"),
        ("pol-k8s-prod", "root", {"workload-hardening"}, "api"),
        ("pol-k8s-staging", "unprotected", {"protected-data-volumes"}, "data"),
        ("pol-k8s-prod", "nodeport", {"no-exposing-services-on-prod"}, "api"),
        (
            "pol-k8s-staging",
            "loadbalancer",
            {"one-public-entry"},
            "the stack",
        ),
    ],
)
def test_kubernetes_violation_fails_the_preview(
    app: PolicyApp, stack: str, case: str, policies: set[str], resource: str
) -> None:
    result = app.preview(stack, case, "kubernetes")
    for policy in policies:
        refused(result, policy, resource)
    assert {p for p, _ in result.violations("mandatory")} == policies


@k8s
def test_nodeport_is_allowed_outside_prod(app: PolicyApp) -> None:
    passed(app.preview("pol-k8s-staging", "nodeport", "kubernetes"))


# -- appstack's own program ----------------------------------------------------------------------


def test_appstack_dev_stack_passes(tmp_path: Path) -> None:
    stack = Stack.create(tmp_path, "pol-dev", 18396, {})
    result = preview(stack.workdir, stack.env, stack.name)
    passed(result)
    assert result.violations() == set()
    assert len(result.report.steps) > 30


@k8s
@pytest.mark.parametrize(("base", "app_name"), [("prod", "haven"), ("engramia-prod", "engramia")])
def test_appstack_prod_on_kubernetes_passes_its_mandatory_policies(
    tmp_path: Path, base: str, app_name: str
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    for item in ("__main__.py", "Pulumi.yaml", "components", "requirements.txt"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, work / item)
    project: dict[str, Any] = yaml.safe_load((work / "Pulumi.yaml").read_text())
    project["runtime"]["options"]["virtualenv"] = str(ROOT / ".venv")
    (work / "Pulumi.yaml").write_text(yaml.safe_dump(project))
    config = yaml.safe_load((ROOT / f"Pulumi.{base}.yaml").read_text())["config"]
    config.update(kubernetes_config(base, renderManifestsTo=str(tmp_path / "manifests")))
    (work / "Pulumi.pol-prod.yaml").write_text(yaml.safe_dump({"config": config}))
    (tmp_path / "state").mkdir()
    env = _env(tmp_path / "state")
    env.pop("KUBECONFIG", None)
    run(work, env, "stack", "init", "pol-prod")
    for key, value in secret_values(app_name).items():
        run(work, env, "config", "set", "--stack", "pol-prod", "--secret", f"appstack:{key}", value)
    result = preview(work, env, "pol-prod")
    passed(result)
    # prod's images are tags until `appstack release` pins their digests: advisory only
    assert {p for p, _ in result.violations()} == {"prod-images-by-digest"}
    assert len(result.report.steps) > 20
