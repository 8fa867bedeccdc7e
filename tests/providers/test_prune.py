"""Pruning old release images on a real engine: the current and previous release's stay, and so
does any image a container still uses; only the stack's repositories are touched."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from components.providers.prune import Stored, previous_release, prune, repository, to_prune
from tests.providers.test_runner import CLIENT_IMAGE, _docker_host


def test_repository_cuts_the_tag_or_digest_and_keeps_a_port() -> None:
    assert repository("appstack.local/engramia:0.6.2") == "appstack.local/engramia"
    assert repository("127.0.0.1:5000/haven/gateway:abc1234") == "127.0.0.1:5000/haven/gateway"
    assert repository("r.example/x@sha256:" + "0" * 64) == "r.example/x"
    assert repository("127.0.0.1:5000/x") == "127.0.0.1:5000/x"


def test_the_previous_release_is_the_last_different_image() -> None:
    # 1 -> 2: 1 is the previous; a no-op release after that keeps 1 (never 2 itself).
    assert previous_release({"api": "2"}, {"api": "1"}, {}) == {"api": "1"}
    assert previous_release({"api": "2"}, {"api": "2"}, {"api": "1"}) == {"api": "1"}
    assert previous_release({"api": "1"}, {}, {}) == {}
    stored = [Stored(i, (f"r:{i}",)) for i in ("1", "2", "3", "4")]
    assert [s.image_id for s in to_prune(stored, {"2", "1"}, {"4"})] == ["3"]


@pytest.fixture
def engine() -> Iterator[tuple[str, str]]:
    """An engine with four images (distinct ids) in a repository of this test's own."""
    host = _docker_host()
    if host is None:
        pytest.skip(f"SKIPPED LOUDLY: no Docker engine answered with image {CLIENT_IMAGE}")
    repo = f"appstack.test/prune-{secrets.token_hex(3)}"
    env = {**os.environ, "DOCKER_HOST": host}

    def docker(*args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(["docker", *args], env=env, input=stdin, capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    for tag in ("r1", "r2", "r3", "r4"):
        docker("build", "-q", "-t", f"{repo}:{tag}", "--label", f"release={tag}", "-",
               stdin=f"FROM {CLIENT_IMAGE}\n")  # fmt: skip
    # r4 is another stack's: a stopped container still uses it.
    user = docker("create", "--name", f"{repo.rsplit('/', 1)[1]}-user", f"{repo}:r4", "true")
    try:
        yield host, repo
    finally:
        docker("rm", "-f", user)
        left = docker("images", "-q", repo).split()
        if left:
            docker("rmi", "-f", *set(left))


def test_prune_keeps_current_previous_and_used_images(engine: tuple[str, str]) -> None:
    host, repo = engine
    current, released, removed = prune(host, {"api": f"{repo}:r1"}, {}, {})
    assert set(removed) == {f"{repo}:r2", f"{repo}:r3"}, "first release: no previous yet"
    # The next release: r1 becomes the previous one and stays.
    subprocess.run(
        ["docker", "build", "-q", "-t", f"{repo}:r5", "--label", "release=r5", "-"],
        input=f"FROM {CLIENT_IMAGE}\n", env={**os.environ, "DOCKER_HOST": host},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    now, previous, removed = prune(host, {"api": f"{repo}:r5"}, current, released)
    assert removed == []
    assert previous == {"api": current["api"]}
    tags = subprocess.run(
        ["docker", "images", "--format", "{{.Tag}}", repo],
        env={**os.environ, "DOCKER_HOST": host}, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert sorted(tags) == ["r1", "r4", "r5"]
    assert now["api"] != current["api"]
