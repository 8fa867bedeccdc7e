"""`appstack release`'s pure parts: what it builds, where it pushes, what it pins, what it refuses."""

from __future__ import annotations

import argparse
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import pytest

from components.ops.cli import parser
from components.ops.release import (
    Build,
    check_registry,
    config_changes,
    plan,
    pushed_digest,
    registry_url,
    repository_of,
    resolve,
    run,
    services,
)
from components.ops.stack import OpsError, Pulumi
from tests.unit.harness import answering

DIGEST = "sha256:" + "ab" * 32
DEV_IMAGES = {
    "gateway": {"registry": "appstack.local", "repository": "haven-gateway", "tag": "0.1.0"},
    "catalog": {"registry": "appstack.local", "repository": "haven-catalog", "tag": "0.1.0"},
    "search": "registry.example.com:5000/haven/search:1.4.2",
    "worker": {"registry": "r.example.com", "repository": "haven/worker", "digest": DIGEST},
    "postgres": {"registry": "appstack.local", "repository": "postgres-pgvector", "tag": "17"},
}


def test_haven_builds_its_four_services_from_one_dockerfile_by_build_arg() -> None:
    builds = plan("haven", DEV_IMAGES, services("haven", None), "1a2b3c4", "127.0.0.1:5000")
    assert [(b.ref, dict(b.build_args)) for b in builds] == [
        ("127.0.0.1:5000/haven-gateway:1a2b3c4", {"SERVICE": "gateway"}),
        ("127.0.0.1:5000/haven-catalog:1a2b3c4", {"SERVICE": "catalog"}),
        ("127.0.0.1:5000/haven/search:1a2b3c4", {"SERVICE": "search"}),
        ("127.0.0.1:5000/haven/worker:1a2b3c4", {"SERVICE": "worker_service"}),
    ]


def test_without_registry_each_image_goes_to_the_stacks_registry() -> None:
    builds = plan("haven", DEV_IMAGES, ["search", "worker"], "1a2b3c4", None)
    assert [b.ref for b in builds] == [
        "registry.example.com:5000/haven/search:1a2b3c4",
        "r.example.com/haven/worker:1a2b3c4",
    ]


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("ghcr.io/engramia/engramia:0.6.2", ("ghcr.io", "engramia/engramia")),
        ("localhost:5000/haven/gateway", ("localhost:5000", "haven/gateway")),
        (f"localhost:5000/haven/gateway@{DIGEST}", ("localhost:5000", "haven/gateway")),
        ({"registry": "r.io", "repository": "a/b", "tag": "1"}, ("r.io", "a/b")),
    ],
)
def test_repository_of_reads_objects_and_references(spec: object, parts: tuple[str, str]) -> None:
    assert repository_of(spec) == parts


@pytest.mark.parametrize(
    ("app", "wanted", "message"),
    [
        ("haven", "gateway,frontend", "unknown service frontend"),
        ("haven", ",", "unknown service (none)"),
        ("haven", "postgres", "unknown service postgres"),
        ("wordpress", None, "app 'wordpress' has no images to build"),
    ],
)
def test_bad_services_are_refused_naming_them(app: str, wanted: str | None, message: str) -> None:
    with pytest.raises(OpsError) as err:
        services(app, wanted)
    assert err.value.code == 2 and message in str(err.value)


def test_services_keep_the_order_given_once_each() -> None:
    assert services("haven", "worker, gateway,worker") == ["worker", "gateway"]
    assert services("engramia", None) == ["api"]


def test_a_bad_registry_is_refused_naming_the_key() -> None:
    with pytest.raises(OpsError, match=r"registry 'https://r\.io' \(appstack:images\.gateway\)"):
        plan("haven", DEV_IMAGES, ["gateway"], "1a2b3c4", "https://r.io")
    with pytest.raises(OpsError, match=r"appstack:images\.catalog names no registry"):
        plan("haven", {}, ["catalog"], "1a2b3c4", "127.0.0.1:5000")


def test_the_pinned_config_replaces_the_tag_by_the_digest() -> None:
    builds = plan("haven", DEV_IMAGES, ["gateway"], "1a2b3c4", "127.0.0.1:5000")
    remove, pairs = config_changes(DEV_IMAGES, builds, {"gateway": DIGEST})
    assert remove == ["appstack:images.gateway"]
    assert pairs == [
        "appstack:images.gateway.registry=127.0.0.1:5000",
        "appstack:images.gateway.repository=haven-gateway",
        f"appstack:images.gateway.digest={DIGEST}",
    ]
    assert config_changes({}, builds, {"gateway": DIGEST})[0] == []


def test_the_pushed_digest_is_read_for_its_own_tag() -> None:
    output = (
        "The push refers to repository [127.0.0.1:5000/haven-gateway]\n"
        "d8e787168906: Pushed\n"
        f"other: digest: sha256:{'cd' * 32} size: 1153\n"
        f"1a2b3c4: digest: {DIGEST} size: 1153\n"
    )
    assert pushed_digest(output, "1a2b3c4") == DIGEST
    assert pushed_digest(output, "9z9z9z9") is None


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("localhost:5000", "http://localhost:5000"),
        ("localhost", "http://localhost"),
        ("registry.example.com", "https://registry.example.com"),
        ("ghcr.io:443", "https://ghcr.io:443"),
    ],
)
def test_registries_on_loopback_speak_plain_http_as_dockerd_allows(host: str, url: str) -> None:
    assert registry_url(host) == url


def test_an_unreachable_registry_is_refused_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OpsError, match=f"registry 127.0.0.1:{port} is unreachable") as err:
        check_registry(f"127.0.0.1:{port}")
    assert err.value.code == 2


def _repo(path: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    (path / "app").mkdir(parents=True)
    (path / "app" / "Dockerfile").write_text("FROM scratch\n")
    (path / "README").write_text("haven\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "one")
    return path


def test_resolve_names_the_commit_its_short_sha_and_the_sources_tree(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    commit = resolve(repo / "app", "HEAD", "Dockerfile")
    assert commit.sha == sha and sha.startswith(commit.short) and len(commit.short) >= 7
    assert commit.tree == f"{sha}:app/"
    assert resolve(repo, sha[:10], "app/Dockerfile").tree == f"{sha}:"


@pytest.mark.parametrize(
    ("edit", "ref", "dockerfile", "message"),
    [
        ("README", "HEAD", "app/Dockerfile", "has uncommitted changes (README)"),
        ("", "v9.9.9", "app/Dockerfile", "--ref 'v9.9.9' is not a commit"),
        ("", "HEAD", "Dockerfile", "has no Dockerfile (--dockerfile, relative to --source)"),
    ],
)
def test_resolve_refuses_what_would_not_be_exactly_the_commit(
    tmp_path: Path, edit: str, ref: str, dockerfile: str, message: str
) -> None:
    repo = _repo(tmp_path)
    if edit:
        (repo / edit).write_text("changed\n")
    with pytest.raises(OpsError) as err:
        resolve(repo, ref, dockerfile)
    assert err.value.code == 2 and message in str(err.value)


def test_resolve_refuses_a_directory_outside_git(tmp_path: Path) -> None:
    with pytest.raises(OpsError, match="is not a directory in a git repository"):
        resolve(tmp_path, "HEAD", "Dockerfile")


def test_the_cli_registers_release_with_its_arguments() -> None:
    args = parser().parse_args(
        ["release", "--stack", "dev", "--ref", "abc1234", "--registry", "127.0.0.1:5000",
         "--services", "gateway,worker", "--no-deploy"]
    )  # fmt: skip
    assert (args.command, args.ref, args.registry, args.services, args.no_deploy) == (
        "release", "abc1234", "127.0.0.1:5000", "gateway,worker", True,
    )  # fmt: skip
    assert args.source is None and args.dockerfile == "Dockerfile"
    assert args.restore_backup is False  # deploy's rollback reads it


def test_a_build_pins_its_own_registry_and_repository() -> None:
    build = Build("gateway", "127.0.0.1:5000", "haven-gateway", "1a2b3c4", {})
    assert build.pinned(DIGEST) == {
        "registry": "127.0.0.1:5000",
        "repository": "haven-gateway",
        "digest": DIGEST,
    }


@pytest.fixture
def registry() -> Iterator[str]:
    """A stand-in answering the registry API's version check (``GET /v2/`` 200)."""
    with answering(200) as url:
        yield urlparse(url).netloc


class _Stack:
    """What ``run`` uses of a stack, recording every Pulumi command."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.calls: list[tuple[str, ...]] = []

    def config(self) -> dict[str, Any]:
        return {"appstack:app": "haven", "appstack:images": DEV_IMAGES}

    def run(self, *args: str, **_kw: Any) -> None:
        self.calls.append(args)


@pytest.mark.parametrize(
    ("argv", "docker_host", "message"),
    [
        (["--services", "gateway,frontend"], None, "unknown service frontend"),
        (["--ref", "nope"], None, "--ref 'nope' is not a commit"),
        (["--registry", "127.0.0.1:1"], None, "registry 127.0.0.1:1 is unreachable"),
        ([], "unix:///nonexistent/docker.sock", "no Docker engine to build on"),
    ],
)
def test_bad_input_changes_nothing_and_deploys_nothing(
    tmp_path: Path,
    registry: str,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    docker_host: str | None,
    message: str,
) -> None:
    if docker_host:
        monkeypatch.setenv("DOCKER_HOST", docker_host)
    repo = _repo(tmp_path)
    stack = _Stack(repo)
    args = parser().parse_args(
        ["release", "--stack", "dev", "--source", str(repo / "app"), "--registry", registry, *argv]
    )
    deployed: list[argparse.Namespace] = []

    def deploy(a: argparse.Namespace) -> int:
        deployed.append(a)
        return 0

    with pytest.raises(OpsError) as err:
        run(args, cast(Pulumi, stack), deploy, lambda _m: None)
    assert err.value.code == 2 and message in str(err.value)
    assert stack.calls == [] and deployed == []
