"""Drives a real Pulumi engine against a real Docker engine, in a scratch copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
OLLAMA_IMAGE = "appstack.local/ollama:double"
COPY = ("__main__.py", "Pulumi.yaml", "Pulumi.dev.yaml", "components", "requirements.txt")


def docker(*args: str, check: bool = True) -> str:
    """Run the docker CLI against the engine the suite uses; return stdout."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        msg = f"docker {' '.join(args)} failed: {proc.stderr.strip()}"
        raise AssertionError(msg)
    return proc.stdout.strip()


def start_ollama(network: str, name: str) -> None:
    """Ollama is outside the stack: a stand-in container on its own network, as in dev."""
    docker("rm", "-f", name, check=False)
    docker("network", "rm", network, check=False)
    docker("network", "create", network)
    docker("run", "-d", "--name", name, "--network", network, "--network-alias", "ollama",
           "--read-only", "--cap-drop", "ALL", OLLAMA_IMAGE)  # fmt: skip


@dataclass
class Result:
    """What one pulumi command did."""

    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        """Everything it printed."""
        return self.stdout + self.stderr


@dataclass
class Stack:
    """One stack of the project, in its own directory, state backend and passphrase."""

    name: str
    workdir: Path
    port: int
    ollama_network: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, tmp: Path, name: str, port: int, config: Mapping[str, Any], base: str = "dev"
    ) -> Stack:
        """Copy the program, write ``Pulumi.<name>.yaml`` from ``Pulumi.<base>.yaml`` + ``config``.

        The base's public port becomes ``port``; a base that names an Ollama network (Haven's)
        gets one of the stack's own.
        """
        work = tmp / "project"
        work.mkdir(parents=True)
        for item in (*COPY, f"Pulumi.{base}.yaml"):
            src = ROOT / item
            if src.is_dir():
                shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, work / item)
        # The scratch copy uses the repository's virtualenv.
        pulumi_yaml = yaml.safe_load((work / "Pulumi.yaml").read_text())
        pulumi_yaml["runtime"]["options"]["virtualenv"] = str(ROOT / ".venv")
        (work / "Pulumi.yaml").write_text(yaml.safe_dump(pulumi_yaml))
        dev = yaml.safe_load((ROOT / f"Pulumi.{base}.yaml").read_text())["config"]
        net = f"appstack-{name}-ollama"
        dev["appstack:public"] = {"address": "127.0.0.1", "port": port}
        if "appstack:ollama" in dev:
            dev["appstack:ollama"] = {"url": "http://ollama:11434", "network": net}
        dev.update(config)
        (work / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": dev}))
        state = tmp / "state"
        state.mkdir()
        env = dict(os.environ)
        env.update(
            {
                "PULUMI_BACKEND_URL": f"file://{state}",
                "PULUMI_CONFIG_PASSPHRASE": "e2e-passphrase-not-a-secret-of-any-stack",
                "PULUMI_SKIP_UPDATE_CHECK": "true",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
                "PULUMI_ERROR_OUTPUT_STRING": "true",
            }
        )
        env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
        stack = cls(name, work, port, net, env)
        stack.pulumi("stack", "init", name, check=True)
        return stack

    @property
    def state_dir(self) -> Path:
        """The file backend's directory."""
        return Path(self.env["PULUMI_BACKEND_URL"].removeprefix("file://"))

    def pulumi(self, *args: str, check: bool = False, timeout: float = 900) -> Result:
        """Run ``pulumi ARGS`` in the project copy."""
        proc = subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            msg = f"pulumi {' '.join(args)} failed ({proc.returncode}):\n{result.text[-6000:]}"
            raise AssertionError(msg)
        return result

    def appstack(self, *args: str) -> Result:
        """Run the `appstack` CLI as an operator would, in the project directory."""
        env = dict(self.env)
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.run(
            [sys.executable, "-m", "components.ops.cli", *args, "--stack", self.name],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def up(self, check: bool = True) -> Result:
        """``pulumi up`` without a prompt."""
        return self.pulumi("up", "--yes", "--skip-preview", "--stack", self.name, check=check)

    def preview(self) -> dict[str, Any]:
        """``pulumi preview --json``: the planned steps."""
        out = self.pulumi("preview", "--json", "--diff", "--stack", self.name, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def set_config(self, key: str, value: Any, secret: bool = False) -> None:
        """``pulumi config set``; objects are stored as JSON text, which ``get_object`` reads."""
        args = ["config", "set", "--stack", self.name, key]
        args.append(json.dumps(value) if isinstance(value, dict | list) else str(value))
        if secret:
            args.append("--secret")
        self.pulumi(*args, check=True)

    def set_images(self, tag: str, services: tuple[str, ...]) -> None:
        """Point Haven services at another test-image tag."""
        for svc in services:
            self.pulumi(
                "config", "set", "--path", "--stack", self.name,
                f"appstack:images.{svc}.tag", tag, check=True,
            )  # fmt: skip

    def outputs(self, secrets: bool = False) -> dict[str, Any]:
        """Stack outputs."""
        args = ["stack", "output", "--json", "--stack", self.name]
        if secrets:
            args.append("--show-secrets")
        return json.loads(self.pulumi(*args, check=True).stdout)  # type: ignore[no-any-return]

    def export(self, secrets: bool = False) -> dict[str, Any]:
        """``pulumi stack export``."""
        args = ["stack", "export", "--stack", self.name]
        if secrets:
            args.append("--show-secrets")
        return json.loads(self.pulumi(*args, check=True).stdout)  # type: ignore[no-any-return]

    def resource_outputs(self, name_suffix: str) -> dict[str, Any]:
        """The outputs of the one resource whose URN ends with ``name_suffix``."""
        found = [
            r for r in self.export()["deployment"]["resources"] if r["urn"].endswith(name_suffix)
        ]
        assert len(found) == 1, f"{name_suffix}: {len(found)} resources"
        return found[0].get("outputs", {})  # type: ignore[no-any-return]

    # -- what is running ---------------------------------------------------------------------

    def containers(self) -> dict[str, dict[str, Any]]:
        """This stack's containers by service, from the engine: each service's newest release."""
        newest: dict[str, dict[str, Any]] = {}
        for c in sorted(self.releases(), key=lambda c: str(c["Created"])):
            newest[c["Config"]["Labels"]["appstack.service"]] = c
        return newest

    def releases(self, service: str | None = None) -> list[dict[str, Any]]:
        """Every release container of this stack (of one service), old releases included.

        Only containers with a service label: one-off task containers of the stack (a migration's
        psql, a secrets writer) are not releases.
        """
        label = f"label=appstack.stack={self.name}"
        args = ["ps", "-aq", "--filter", label]
        args += [
            "--filter",
            f"label=appstack.service={service}" if service else "label=appstack.service",
        ]
        ids = docker(*args).split()
        if not ids:
            return []
        # A container may go between `ps` and `inspect` (an update is running): skip it.
        return json.loads(docker("inspect", *ids, check=False) or "[]")  # type: ignore[no-any-return]

    def url(self, path: str) -> str:
        """A URL on the published edge."""
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        """GET through the public entry point."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url(path), headers=headers, timeout=10)

    def psql(self, sql: str, database: str = "haven") -> str:
        """Run SQL in the stack's Postgres container (as the test operator would, via exec).

        ``database`` is the app's database, owned by the user of the same name.
        """
        return docker(
            "exec", self.containers()["postgres"]["Id"],
            "psql", "-U", database, "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip


def kill_engine_processes(stack: Stack) -> int:
    """SIGKILL every process of this stack's engine (they carry its backend URL in their env).

    A killed ``pulumi`` leaves its language host and provider plugins running, in process groups
    of their own: the test kills them too, as an operator's kill -9 of a whole session would.
    """
    marker = ("PULUMI_BACKEND_URL=" + stack.env["PULUMI_BACKEND_URL"]).encode()
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def wait_http(url: str, status: int = 200, deadline_s: float = 60) -> httpx.Response:
    """Poll ``url`` until it answers ``status``."""
    end = time.monotonic() + deadline_s
    last: Exception | httpx.Response | None = None
    while time.monotonic() < end:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    msg = f"{url} did not answer {status}: {last!r}"
    raise AssertionError(msg)


@dataclass
class Watch:
    """Requests against one URL at a fixed rate, from a thread, until stopped."""

    url: str
    interval_s: float
    verify: ssl.SSLContext | bool = True
    version_key: str = "version"
    """The JSON field of a 200 answer that names the release which served it."""
    window: bool = False
    """Count 503 answers with ``Retry-After`` (a maintenance window) apart from failures."""
    ok: int = 0
    windowed: int = 0
    """503 answers with ``Retry-After`` seen while ``window`` is on."""
    failures: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    longest_gap_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        last_ok = time.monotonic()
        with httpx.Client(timeout=5, verify=self.verify) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    resp = client.get(self.url)
                    if resp.status_code == 200:
                        self.ok += 1
                        self.versions.add(str(resp.json().get(self.version_key)))
                        self.longest_gap_s = max(self.longest_gap_s, started - last_ok)
                        last_ok = started
                    elif (
                        self.window and resp.status_code == 503 and resp.headers.get("Retry-After")
                    ):
                        self.windowed += 1
                    else:
                        self.failures.append(f"{resp.status_code} {resp.text[:80]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
