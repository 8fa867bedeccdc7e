"""`appstack release` against a real registry: built at a commit, pushed, pinned by digest, deployed.

The registry is Debian's distribution registry (`docker-registry`, tools/system-deps.sh), started
by the fixture as a user process on a free loopback port (dockerd treats 127.0.0.0/8 as an
insecure registry: plain HTTP). The app's source is a git repository holding Haven's test double
as Haven's own repository does, one Dockerfile at its root (`tools/images.sh haven-source`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from components.ops.release import MANIFEST_TYPES
from tests.e2e.conftest import haven_stack
from tests.e2e.stack import ROOT, Stack, docker, wait_http

pytestmark = pytest.mark.e2e
REGISTRY_BIN = Path("/usr/bin/docker-registry")
STACK, PORT = "rpl", 18787  # a name and port of its own: e2e files run side by side
SERVICES = ("gateway", "catalog", "search", "worker")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry of the test's own (filesystem storage in a temp dir), stopped afterwards."""
    if not REGISTRY_BIN.is_file():
        pytest.fail(f"{REGISTRY_BIN} is missing: run tools/system-deps.sh (apt docker-registry)")
    tmp = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{_free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}},
        "http": {"addr": host},
    }
    (tmp / "config.yml").write_text(yaml.safe_dump(config))
    with (tmp / "registry.log").open("w") as log:
        proc = subprocess.Popen(
            [str(REGISTRY_BIN), "serve", str(tmp / "config.yml")], stdout=log, stderr=log
        )
    try:
        wait_http(f"http://{host}/v2/", 200, deadline_s=30)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        # The images the release's deploy pulled from it (their stack is gone by now).
        listed = docker("image", "ls", "--no-trunc", "--format", "{{.Repository}} {{.ID}}")
        ids = {line.split()[1] for line in listed.splitlines() if line.startswith(f"{host}/")}
        if ids:
            docker("image", "rm", "-f", *sorted(ids), check=False)


def _git(source: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(source), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Haven's source at its test tag 0.1.0, committed in a repository of its own."""
    src = tmp_path_factory.mktemp("haven-src")
    subprocess.run(
        [str(ROOT / "tools/images.sh"), "haven-source", "0.1.0", str(src)],
        check=True,
        capture_output=True,
    )
    _git(src, "init", "-q", "-b", "main")
    _git(src, "add", "-A")
    _git(src, "-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid",
         "commit", "-q", "-m", "haven 0.1.0")  # fmt: skip
    return src


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[Stack]:
    """A fresh dev-like Haven stack (images from Pulumi.dev.yaml until released).

    It asks for the registry so that it is destroyed before the registry's teardown.
    """
    assert registry
    with haven_stack(tmp_path_factory.mktemp(STACK), STACK, PORT) as stack:
        yield stack


def _images(stack: Stack) -> dict[str, Any]:
    raw = json.loads(stack.pulumi("config", "--json", "--stack", stack.name, check=True).stdout)
    return raw["appstack:images"]["objectValue"]  # type: ignore[no-any-return]


def _served(registry: str, repository: str, tag: str) -> str:
    """The digest the registry serves for a tag."""
    resp = httpx.head(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
        timeout=10,
    )
    assert resp.status_code == 200, f"{repository}:{tag}: {resp.status_code}"
    return resp.headers["Docker-Content-Digest"]


def test_bad_input_is_refused_before_anything_changes(
    rel: Stack, registry: str, source: Path
) -> None:
    before = _images(rel)
    closed = f"127.0.0.1:{_free_port()}"
    (source / "app" / "haven.py").write_text("# an uncommitted edit\n", encoding="utf-8")
    try:
        dirty = rel.appstack("release", "--source", str(source), "--registry", registry)
    finally:
        _git(source, "checkout", "--", "app/haven.py")
    cases = [
        (dirty, "uncommitted changes (app/haven.py)"),
        (rel.appstack("release", "--source", str(source), "--registry", registry,
                      "--services", "gateway,frontend"), "unknown service frontend"),
        (rel.appstack("release", "--source", str(source), "--registry", closed),
         f"registry {closed} is unreachable"),
        (rel.appstack("release", "--source", str(source), "--registry", registry,
                      "--ref", "no-such-ref"), "--ref 'no-such-ref' is not a commit"),
    ]  # fmt: skip
    for out, message in cases:
        assert out.code == 2 and message in out.stderr, out.text
    assert httpx.get(f"http://{registry}/v2/_catalog", timeout=10).json()["repositories"] == []
    assert _images(rel) == before
    assert rel.pulumi("stack", "history", "--json", "--stack", rel.name).stdout.strip() in (
        "",
        "[]",
    )


def test_release_builds_pushes_pins_digests_and_deploys_them(
    rel: Stack, registry: str, source: Path
) -> None:
    short = _git(source, "rev-parse", "--short", "HEAD")
    # The engine's pulls, watched live (its event buffer is too short to ask afterwards).
    watch = subprocess.Popen(
        ["docker", "events", "--filter", "type=image", "--filter", "event=pull",
         "--format", "{{.Actor.ID}}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out = rel.appstack("release", "--source", str(source), "--registry", registry, "--json")
    finally:
        time.sleep(1)
        watch.terminate()
        pulls = watch.communicate(timeout=30)[0].split()
    assert out.code == 0, out.text[-6000:]
    report = json.loads(out.stdout)
    assert report["tag"] == short and report["commit"] == _git(source, "rev-parse", "HEAD")

    images = _images(rel)
    running = rel.containers()
    for svc in SERVICES:
        repository = f"haven-{svc}"
        tags = httpx.get(f"http://{registry}/v2/{repository}/tags/list", timeout=10).json()
        assert tags["tags"] == [short], tags
        digest = _served(registry, repository, short)
        # Pinned by the digest the registry serves, the tag gone from the config.
        assert images[svc] == {"registry": registry, "repository": repository, "digest": digest}
        assert report["images"][svc] == f"{registry}/{repository}@{digest}"
        # The build tag left the engine: the deploy pulled the image by digest from the registry.
        pinned = f"{registry}/{repository}@{digest}"
        assert docker("image", "ls", "-q", f"{registry}/{repository}:{short}") == ""
        assert pinned in pulls, pulls
        docker("pull", pinned)
        assert running[svc]["Image"] == docker("image", "inspect", "-f", "{{.Id}}", pinned)
        assert running[svc]["State"]["Running"], svc
        image = rel.resource_outputs(f"::{STACK}-haven-{svc}-image")
        assert (image["ref"], image["image_id"]) == (pinned, running[svc]["Image"])
    # Data stores and the edge keep the stack's own images.
    assert images["postgres"]["registry"] == "appstack.local"

    history = json.loads(rel.pulumi("stack", "history", "--json", "--stack", rel.name).stdout)
    assert [h["result"] for h in history] == ["succeeded"]
    assert wait_http(rel.url("/v1/healthz")).json()["status"] == "ok"


def test_release_of_one_service_without_deploy_pins_only_it(
    rel: Stack, registry: str, source: Path
) -> None:
    (source / "app" / "NOTES").write_text("a new commit\n", encoding="utf-8")
    _git(source, "add", "-A")
    _git(source, "-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid",
         "commit", "-q", "-m", "notes")  # fmt: skip
    short = _git(source, "rev-parse", "--short", "HEAD")
    before, containers = _images(rel), {s: c["Id"] for s, c in rel.containers().items()}
    out = rel.appstack(
        "release", "--source", str(source), "--registry", registry,
        "--services", "gateway", "--no-deploy",
    )  # fmt: skip
    assert out.code == 0, out.text[-6000:]
    after = _images(rel)
    assert after["gateway"]["digest"] == _served(registry, "haven-gateway", short)
    assert after["gateway"]["digest"] != before["gateway"]["digest"]
    assert {k: v for k, v in after.items() if k != "gateway"} == {
        k: v for k, v in before.items() if k != "gateway"
    }
    assert {s: c["Id"] for s, c in rel.containers().items()} == containers

    again = rel.appstack(
        "release", "--source", str(source), "--registry", registry,
        "--services", "gateway", "--no-deploy",
    )  # fmt: skip
    assert again.code == 0 and "in the registry already" in again.stderr, again.text[-6000:]
    assert _images(rel) == after
