"""A local control plane (tools/cluster.sh) and Pulumi stacks of the project deployed to it.

Used by tests/k8s and bench/k8s.py. A stack lives in a scratch copy of the project (like the e2e
suite's), with its own file backend and passphrase; its ``Pulumi.<name>.yaml`` is a stack file of
the repository (``base``) plus overrides, and its secrets are set with ``--secret`` as an operator
would. Needs ``pulumi`` on PATH (tools/toolchain.sh) and the cluster toolchain
(tools/k8s-toolchain.sh), whose bin dir is put first on PATH.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
PROJECT = ("__main__.py", "Pulumi.yaml", "components", "requirements.txt")
KWOK_FAIL_IMAGE = "kwok.appstack.test/fail:1"
"""A Job pod running this image ends Failed with exit code 1 under tools/kwok/stages.yaml."""


def k8s_bin_dir() -> Path:
    """Where tools/k8s-toolchain.sh links the cluster binaries."""
    out = subprocess.run(
        [str(TOOLS / "k8s-toolchain.sh"), "bindir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def toolchain_ready() -> tuple[bool, str]:
    """Whether every component of the cluster toolchain is cached (builds nothing)."""
    proc = subprocess.run(
        [str(TOOLS / "k8s-toolchain.sh"), "status"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0, proc.stdout.strip()


def path_with_k8s_bin(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: os.environ) with the cluster bin dir first on PATH."""
    out = dict(os.environ if env is None else env)
    out["PATH"] = f"{k8s_bin_dir()}{os.pathsep}{out.get('PATH', '')}"
    return out


@dataclass
class Result:
    """What one command did."""

    code: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def text(self) -> str:
        """Everything it printed."""
        return self.stdout + self.stderr


@dataclass
class Cluster:
    """A control plane started by tools/cluster.sh in ``dir``; ``stop`` ends what it started."""

    dir: Path
    kubeconfig: Path
    start_seconds: float

    @classmethod
    def start(cls, directory: Path) -> Cluster:
        """Start the cluster kept in ``directory`` and wait until it schedules pods."""
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(TOOLS / "cluster.sh"), "start", str(directory)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            msg = f"tools/cluster.sh start failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
            raise RuntimeError(msg)
        return cls(directory.resolve(), directory.resolve() / "kubeconfig", time.monotonic() - t0)

    def stop(self) -> str:
        """Stop the cluster's processes (only those tools/cluster.sh recorded)."""
        proc = subprocess.run(
            [str(TOOLS / "cluster.sh"), "stop", str(self.dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return proc.stderr

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment whose kubectl and Pulumi provider reach this cluster."""
        env = path_with_k8s_bin(base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> Result:
        """Run kubectl against the cluster."""
        t0 = time.monotonic()
        proc = subprocess.run(
            ["kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
            check=False,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
        if check and proc.returncode != 0:
            msg = f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            raise AssertionError(msg)
        return result

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ARGS -o json``."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)  # type: ignore[no-any-return]

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        """The objects of one kind in a namespace."""
        args = [kind, "-n", namespace] + (["-l", selector] if selector else [])
        return list(self.get(*args).get("items") or [])


def kubernetes_config(base: str, **kubernetes: Any) -> dict[str, Any]:
    """``Pulumi.<base>.yaml``'s ``appstack:kubernetes`` with ``kubernetes`` merged in."""
    config = yaml.safe_load((ROOT / f"Pulumi.{base}.yaml").read_text())["config"]
    return {"appstack:kubernetes": {**config.get("appstack:kubernetes", {}), **kubernetes}}


def secret_values(app: str) -> dict[str, str]:
    """Fresh values for every required secret of ``app`` (set with ``--secret``)."""
    from components.settings import APP_SECRETS

    return {key: f"{key}-{secrets.token_hex(12)}" for key in APP_SECRETS[app]}


@dataclass
class Stack:
    """One stack of the project in its own scratch directory and state backend."""

    name: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        tmp: Path,
        name: str,
        cluster: Cluster,
        base: str,
        config: Mapping[str, Any],
        secret_config: Mapping[str, str],
    ) -> Stack:
        """Copy the program; ``Pulumi.<name>.yaml`` = ``Pulumi.<base>.yaml`` + ``config``."""
        work = tmp / "project"
        work.mkdir(parents=True)
        for item in PROJECT:
            src = ROOT / item
            if src.is_dir():
                shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, work / item)
        project = yaml.safe_load((work / "Pulumi.yaml").read_text())
        project["runtime"]["options"]["virtualenv"] = str(ROOT / ".venv")
        (work / "Pulumi.yaml").write_text(yaml.safe_dump(project))
        stack_config = yaml.safe_load((ROOT / f"Pulumi.{base}.yaml").read_text())["config"]
        stack_config.update(config)
        (work / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": stack_config}))
        state = tmp / "state"
        state.mkdir()
        env = cluster.env()
        env.update(
            {
                "PULUMI_BACKEND_URL": f"file://{state}",
                "PULUMI_CONFIG_PASSPHRASE": "k8s-passphrase-not-a-secret-of-any-stack",
                "PULUMI_SKIP_UPDATE_CHECK": "true",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
                "PULUMI_ERROR_OUTPUT_STRING": "true",
            }
        )
        env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
        stack = cls(name, work, env)
        stack.pulumi("stack", "init", name, check=True)
        for key, value in secret_config.items():
            stack.set_config(f"appstack:{key}", value, secret=True)
        return stack

    def pulumi(self, *args: str, check: bool = False, timeout: float = 1500) -> Result:
        """Run ``pulumi ARGS --non-interactive`` in the project copy."""
        t0 = time.monotonic()
        proc = subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
        if check and proc.returncode != 0:
            msg = f"pulumi {' '.join(args)} failed ({proc.returncode}):\n{result.text[-8000:]}"
            raise AssertionError(msg)
        return result

    def up(self, *extra: str, check: bool = True) -> Result:
        """``pulumi up`` without a prompt."""
        args = ("up", "--yes", "--skip-preview", "--stack", self.name, *extra)
        return self.pulumi(*args, check=check)

    def preview(self, *extra: str) -> dict[str, Any]:
        """``pulumi preview --diff --json``: the planned steps, against the live cluster."""
        out = self.pulumi("preview", "--json", "--diff", "--stack", self.name, *extra, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def destroy(self, *extra: str, check: bool = True) -> Result:
        """``pulumi destroy`` without a prompt."""
        args = ("destroy", "--yes", "--skip-preview", "--stack", self.name, *extra)
        return self.pulumi(*args, check=check)

    def set_config(self, key: str, value: Any, secret: bool = False, path: bool = False) -> None:
        """``pulumi config set [--path] [--secret]``; objects are stored as JSON text."""
        args = ["config", "set", "--stack", self.name, *(["--path"] if path else []), key]
        args.append(json.dumps(value) if isinstance(value, dict | list) else str(value))
        if secret:
            args.append("--secret")
        self.pulumi(*args, check=True)

    def outputs(self) -> dict[str, Any]:
        """Stack outputs (secrets masked)."""
        out = self.pulumi("stack", "output", "--json", "--stack", self.name, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def resources(self) -> list[dict[str, Any]]:
        """The resources in the stack's state."""
        out = self.pulumi("stack", "export", "--stack", self.name, check=True)
        return list(json.loads(out.stdout)["deployment"].get("resources") or [])


@contextmanager
def scratch_stack(
    tmp: Path, name: str, cluster: Cluster, base: str, config: Mapping[str, Any], app: str
) -> Iterator[Stack]:
    """``Stack.create`` with ``app``'s secret values, destroyed after (``--exclude-protected``:
    protected resources stay, as with a user's ``make down``)."""
    stack = Stack.create(tmp, name, cluster, base, config, secret_values(app))
    try:
        yield stack
    finally:
        stack.destroy("--exclude-protected", check=False)


def steps(preview: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(op, urn) of every step of a ``preview --json`` except unchanged ones."""
    return [(s["op"], s["urn"]) for s in preview.get("steps", []) if s["op"] != "same"]


def kind_and_name(resource: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of a kubernetes resource in state, else None."""
    rtype = str(resource.get("type", ""))
    if not rtype.startswith("kubernetes:") or rtype.startswith("pulumi:providers"):
        return None
    meta = (resource.get("outputs") or {}).get("metadata") or {}
    return rtype.rsplit(":", 1)[-1], str(meta.get("namespace") or ""), str(meta.get("name"))


def wait_until(what: str, check: Any, timeout_s: float = 60, every_s: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    msg = f"{what}: not true after {timeout_s:g}s (last: {last!r})"
    raise AssertionError(msg)
