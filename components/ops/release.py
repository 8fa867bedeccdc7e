"""``appstack release``: build each service's image at one commit, push it, pin digests, deploy.

The app's source is a git checkout (``--source``, default the project; its Dockerfile at
``--dockerfile``, default ``Dockerfile``, relative to the source). Each image is built from the
commit's own tree (``git archive``, never the working tree) on the engine ``docker`` talks to,
tagged ``<registry>/<repository>:<short sha>`` (the repository is the stack's, from
``appstack:images``; the registry is ``--registry`` or the stack's) and pushed. The digest the
registry answers for that tag is written into the stack's config as ``appstack:images.<svc>`` =
``{registry, repository, digest}``, and the stack is deployed as ``appstack deploy`` does. The
build tags are removed from the engine once pushed: a deploy gets each image from the registry by
digest, on the build machine as on any other host. Everything that can be wrong with the input
(stack, services, source, ref, Dockerfile, registry) is checked before anything is built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.ops.stack import OpsError, Pulumi

HELP = "build each service's image at a commit, push it, pin the digests in config, deploy"

# What each app builds: its services and their build arguments. Haven is one Dockerfile built once
# per service with build-arg SERVICE (its worker's role is `worker_service`); Engramia is one image.
BUILDS: dict[str, dict[str, dict[str, str]]] = {
    "haven": {
        "gateway": {"SERVICE": "gateway"},
        "catalog": {"SERVICE": "catalog"},
        "search": {"SERVICE": "search"},
        "worker": {"SERVICE": "worker_service"},
    },
    "engramia": {"api": {}},
}
# A tag's manifest as the registry stores it (schema 2 or OCI; an index when the build was one).
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
_PUSHED = re.compile(r"^(?P<tag>\S+): digest: (?P<digest>sha256:[a-f0-9]{64}) size: \d+$", re.M)


@dataclass(frozen=True)
class Commit:
    """The commit a release builds, and where its source lives in the repository."""

    sha: str
    short: str
    tree: str
    """``<sha>:<path>``: the source directory's tree at that commit (what ``git archive`` packs)."""


@dataclass(frozen=True)
class Build:
    """One service's image of a release."""

    service: str
    registry: str
    repository: str
    tag: str
    build_args: Mapping[str, str]

    @property
    def ref(self) -> str:
        """Where the image is pushed: ``registry/repository:tag``."""
        return f"{self.registry}/{self.repository}:{self.tag}"

    def pinned(self, digest: str) -> dict[str, str]:
        """The service's ``appstack:images`` entry once pushed: by digest, no tag."""
        return {"registry": self.registry, "repository": self.repository, "digest": digest}


# -- what to build (pure) -----------------------------------------------------------------------


def services(app: str, wanted: str | None) -> list[str]:
    """The services ``--services`` names (comma-separated), all of the app's by default."""
    known = list(BUILDS.get(app, {}))
    if not known:
        msg = f"app {app!r} has no images to build (known apps: {', '.join(BUILDS)})"
        raise OpsError(msg, 2)
    if not wanted:
        return known
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        named = ", ".join(unknown) or "(none)"
        msg = f"--services: unknown service {named}; {app} builds {', '.join(known)}"
        raise OpsError(msg, 2)
    return list(dict.fromkeys(names))


def repository_of(spec: Any) -> tuple[str, str]:
    """``(registry, repository)`` of an ``appstack:images`` entry (object or reference text)."""
    if isinstance(spec, Mapping):
        return str(spec.get("registry") or ""), str(spec.get("repository") or "")
    ref = str(spec or "").split("@", 1)[0]
    name, _, tag = ref.rpartition(":")
    if "/" in tag or not name:  # the colon was a registry port, not a tag
        name = ref
    registry, _, repository = name.partition("/")
    return registry, repository


def plan(
    app: str, images: Mapping[str, Any], names: Sequence[str], tag: str, registry: str | None
) -> list[Build]:
    """One build per service: the stack's repository, ``registry`` (or the stack's), ``tag``."""
    # The settings' own test of a registry host: what is pinned here passes preview.
    from components.settings import _REGISTRY

    builds = []
    for name in names:
        current, repository = repository_of(images.get(name))
        host = registry or current
        if not repository or not host:
            msg = f"appstack:images.{name} names no registry/repository to push the image to"
            raise OpsError(msg, 2)
        if not _REGISTRY.match(host):
            msg = f"registry {host!r} (appstack:images.{name}) is not host[:port]"
            raise OpsError(msg, 2)
        builds.append(Build(name, host, repository, tag, dict(BUILDS[app][name])))
    return builds


def pushed_digest(output: str, tag: str) -> str | None:
    """The digest ``docker push`` reports for ``tag`` (``<tag>: digest: sha256:... size: N``)."""
    for match in _PUSHED.finditer(output):
        if match["tag"] == tag:
            return match["digest"]
    return None


def registry_url(host: str) -> str:
    """The registry's base URL: plain HTTP on loopback (as dockerd treats it), HTTPS elsewhere."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    loopback = name == "localhost" or name.startswith("127.")
    return f"{'http' if loopback else 'https'}://{host}"


def config_changes(
    current: Mapping[str, Any], builds: Sequence[Build], digests: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """The ``appstack:images.<svc>`` paths to remove and the ``path=value`` pairs to set."""
    remove = [f"appstack:images.{b.service}" for b in builds if b.service in current]
    pairs = [
        f"appstack:images.{b.service}.{key}={value}"
        for b in builds
        for key, value in b.pinned(digests[b.service]).items()
    ]
    return remove, pairs


# -- source, registry, engine -------------------------------------------------------------------


def _git(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(source), *args], text=True, capture_output=True, check=False
    )


def resolve(source: Path, ref: str, dockerfile: str) -> Commit:
    """The commit ``ref`` names in ``source``'s repository; refuses a dirty source."""
    if not source.is_dir() or _git(source, "rev-parse", "--git-dir").returncode != 0:
        msg = f"--source {source} is not a directory in a git repository"
        raise OpsError(msg, 2)
    found = _git(source, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0:
        msg = f"--ref {ref!r} is not a commit of {source}"
        raise OpsError(msg, 2)
    sha = found.stdout.strip()
    dirty = _git(source, "status", "--porcelain", "--untracked-files=no", "--", ".").stdout
    if dirty.strip():
        files = ", ".join(line[3:] for line in dirty.splitlines()[:5])
        msg = (
            f"{source} has uncommitted changes ({files}): a release is exactly a commit; "
            "commit or stash them"
        )
        raise OpsError(msg, 2)
    prefix = _git(source, "rev-parse", "--show-prefix").stdout.strip()
    if _git(source, "cat-file", "-e", f"{sha}:{prefix}{dockerfile}").returncode != 0:
        msg = f"commit {sha[:12]} has no {prefix}{dockerfile} (--dockerfile, relative to --source)"
        raise OpsError(msg, 2)
    short = _git(source, "rev-parse", "--short", sha).stdout.strip()
    return Commit(sha, short, f"{sha}:{prefix}")


def check_registry(host: str) -> None:
    """The registry answers its API (200, or 401 asking for credentials docker has)."""
    import httpx

    url = f"{registry_url(host)}/v2/"
    try:
        status = httpx.get(url, timeout=10).status_code
    except httpx.HTTPError as exc:
        msg = f"registry {host} is unreachable ({url}: {exc})"
        raise OpsError(msg, 2) from None
    if status not in (200, 401):
        msg = f"registry {host} answered {status} at {url}: not a registry API"
        raise OpsError(msg, 2)


def registry_digest(build: Build) -> str | None:
    """The digest the registry serves for the build's tag; None without one (or credentials)."""
    import httpx

    url = f"{registry_url(build.registry)}/v2/{build.repository}/manifests/{build.tag}"
    try:
        resp = httpx.head(url, headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
    except httpx.HTTPError as exc:
        msg = f"registry {build.registry}: asking for {build.ref} failed ({exc})"
        raise OpsError(msg) from None
    if resp.status_code in (401, 403, 404):
        return None
    digest = resp.headers.get("Docker-Content-Digest")
    if resp.status_code != 200 or not digest:
        msg = f"registry {build.registry} answered {resp.status_code} for {build.ref}"
        raise OpsError(msg)
    return str(digest)


def _docker(*args: str, stdin: Any = None, env: Mapping[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            ["docker", *args], stdin=stdin, text=True, capture_output=True, check=False, env=env
        )
    except FileNotFoundError:
        msg = "the docker CLI is not on PATH: a release builds and pushes with it"
        raise OpsError(msg) from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        msg = f"`docker {' '.join(args[:2])} ...` failed (exit {proc.returncode}): {detail}"
        raise OpsError(msg)
    return proc.stdout


def _build_env() -> dict[str, str]:
    """The legacy builder where the CLI has no buildx (Debian's docker.io): it is all we need."""
    env = dict(os.environ)
    if subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode:
        env["DOCKER_BUILDKIT"] = "0"
    return env


def build_and_push(build: Build, archive: Path, dockerfile: str, commit: Commit) -> str:
    """Build the image from the commit's tree, push it; its digest, as the registry has it."""
    args = [f"--build-arg={k}={v}" for k, v in sorted(build.build_args.items())]
    with archive.open("rb") as context:
        _docker(
            "build", "-q", "-f", dockerfile, *args,
            "--label", f"org.opencontainers.image.revision={commit.sha}",
            "-t", build.ref, "-",
            stdin=context, env=_build_env(),
        )  # fmt: skip
    pushed = pushed_digest(_docker("push", build.ref), build.tag)
    served = registry_digest(build)
    digest = served or pushed
    if not digest or (served and pushed and served != pushed):
        msg = f"{build.ref}: push reported {pushed}, the registry serves {served}"
        raise OpsError(msg)
    # Untagged here, the deploy pulls the image by digest from the registry (see the docstring);
    # an image a running container uses keeps existing without the tag.
    subprocess.run(["docker", "image", "rm", build.ref], capture_output=True, check=False)
    return digest


# -- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``release``'s own arguments (``--stack``, ``--cwd`` and ``--json`` are every command's)."""
    parser.add_argument("--ref", default="HEAD", help="commit of the source to release (HEAD)")
    parser.add_argument("--registry", help="HOST[:PORT] to push to (default: the stack's)")
    parser.add_argument("--services", help="comma-separated services (default: all the app's)")
    parser.add_argument("--source", help="the app's source: a git checkout (default: --cwd)")
    parser.add_argument(
        "--dockerfile", default="Dockerfile", help="relative to --source (Dockerfile)"
    )
    parser.add_argument("--no-deploy", action="store_true", help="build, push and pin only")
    parser.add_argument("--restore-backup", action="store_true", help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Release:
    """A checked release: what to build from which commit, and the stack's images before it."""

    source: Path
    commit: Commit
    builds: list[Build]
    images: Mapping[str, Any]


def prepare(args: argparse.Namespace, stack: Pulumi) -> Release:
    """Every input checked (services, source, ref, Dockerfile, registries, engine); no change."""
    config = stack.config()
    app = str(config.get("appstack:app") or "haven")
    images = config.get("appstack:images") or {}
    names = services(app, args.services)
    source = Path(args.source or stack.cwd).resolve()
    commit = resolve(source, args.ref, args.dockerfile)
    builds = plan(app, images, names, commit.short, args.registry)
    for host in sorted({b.registry for b in builds}):
        check_registry(host)
    try:
        _docker("version", "--format", "{{.Server.Version}}")
    except OpsError as exc:
        host = os.environ.get("DOCKER_HOST", "the default socket")
        msg = f"no Docker engine to build on ({host}): {exc}"
        raise OpsError(msg, 2) from None
    return Release(source, commit, builds, images)


def publish(release: Release, dockerfile: str, say: Callable[[str], None]) -> dict[str, str]:
    """Each image built and pushed (or found in the registry already): its digest by service."""
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="appstack-release-") as tmp:
        archive = Path(tmp) / "source.tar"
        packed = _git(release.source, "archive", "-o", str(archive), release.commit.tree)
        if packed.returncode != 0:
            msg = f"git archive {release.commit.tree} failed: {packed.stderr.strip()}"
            raise OpsError(msg)
        for build in release.builds:
            # A commit is built once: a retried release pins what the registry already holds.
            known = registry_digest(build)
            if known:
                say(f"{build.ref} is in the registry already: pinning it as it is")
                digests[build.service] = known
                continue
            say(f"building and pushing {build.ref}")
            digests[build.service] = build_and_push(build, archive, dockerfile, release.commit)
    return digests


def pin(stack: Pulumi, release: Release, digests: Mapping[str, str]) -> dict[str, str]:
    """``appstack:images.<svc>`` = ``{registry, repository, digest}``; the pinned references."""
    remove, pairs = config_changes(release.images, release.builds, digests)
    if remove:
        stack.run("config", "rm-all", "--path", *remove)
    stack.run("config", "set-all", "--path", *[a for p in pairs for a in ("--plaintext", p)])
    return {b.service: f"{b.registry}/{b.repository}@{digests[b.service]}" for b in release.builds}


def run(
    args: argparse.Namespace,
    stack: Pulumi,
    deploy: Callable[[argparse.Namespace], int],
    say: Callable[[str], None],
) -> int:
    """Check every input, then build, push and pin each image, then ``deploy``."""
    release = prepare(args, stack)
    pinned = pin(stack, release, publish(release, args.dockerfile, say))
    report = {"commit": release.commit.sha, "tag": release.commit.short, "images": pinned}
    print(json.dumps(report, indent=2) if args.json else _describe(report), flush=True)
    if args.no_deploy:
        say(f"pinned {len(pinned)} images of {release.commit.short}; not deployed (--no-deploy)")
        return 0
    say(f"deploying {release.commit.short}")
    return deploy(args)


def _describe(report: Mapping[str, Any]) -> str:
    lines = [f"release {report['tag']} ({report['commit']}):"]
    lines += [f"  {svc}: {ref}" for svc, ref in report["images"].items()]
    return "\n".join(lines)
