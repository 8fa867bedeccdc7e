"""``EdgeRoute``: points the running edge proxy (Caddy) at a release, health-gated and atomically.

The switch runs inside the edge container through the Docker Engine API (``exec``), so it needs
no published admin port and works over ``ssh://`` too:

1. the new upstream must answer its health path *from the edge* (same network, same DNS) with the
   expected status, retried until a deadline; otherwise the update fails naming the upstream and
   the edge keeps its current configuration;
2. certificate files (TLS mode ``certificate``) and the Caddyfile are written to the edge's
   volume;
3. ``caddy reload`` loads the file through the admin API: Caddy swaps its whole configuration at
   once, keeps in-flight requests on the old one, and refuses a bad file without changing
   anything.

With the internal CA the route also returns the CA's root certificate, so clients (and the smoke
test) can trust the edge.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components import edge
from components.providers.engine_base import EngineError, changed, client, exec_in, not_found
from components.providers.runner import log_tail, redact

KEYS = ("docker_host", "container_id", "upstream", "health_path", "health_status", "caddyfile",
        "files", "internal_ca", "retire")  # fmt: skip
DRAIN_S = 2.0
"""How long requests the old configuration already sent to the old release get to finish."""
_STATUS = re.compile(r"HTTP/\d(?:\.\d)? (\d{3})")


def probe(container: Any, url: str) -> tuple[int | None, str]:
    """The status ``url`` answers from inside the edge container (``None``: no answer)."""
    # -S prints the response headers (GNU and busybox wget alike); a 4xx/5xx still shows them.
    _code, out = exec_in(container, ["wget", "-S", "-q", "-O", "/dev/null", "-T", "3", url])
    found = _STATUS.findall(out)
    return (int(found[-1]) if found else None), out


def _gate(container: Any, props: Mapping[str, Any], deadline_s: float) -> None:
    url = f"http://{props['upstream']}{props['health_path']}"
    want = int(props["health_status"])
    end = time.monotonic() + deadline_s
    while True:
        status, out = probe(container, url)
        if status == want:
            return
        if time.monotonic() > end:
            msg = (
                f"edge: upstream {props['upstream']} did not answer {props['health_path']} with "
                f"{want} from the edge within {deadline_s:g}s (last: {status}); the edge keeps "
                f"serving the running release.\n{log_tail(out)}"
            )
            raise EngineError(msg)
        time.sleep(0.25)


def _write_and_reload(container: Any, props: Mapping[str, Any]) -> None:
    files: dict[str, str] = {str(k): str(v) for k, v in (props.get("files") or {}).items()}
    env = {"APPSTACK_CADDYFILE": str(props["caddyfile"])}
    script = ["umask 077", f"mkdir -p {edge.CONFIG_FILE.rsplit('/', 1)[0]}"]
    for i, path in enumerate(sorted(files)):
        env[f"APPSTACK_FILE_{i}"] = files[path]
        script += [
            f"mkdir -p {path.rsplit('/', 1)[0]}",
            f'printf "%s" "$APPSTACK_FILE_{i}" > {path}',
        ]
    script.append(f'printf "%s" "$APPSTACK_CADDYFILE" > {edge.CONFIG_FILE}')
    code, out = exec_in(container, ["sh", "-c", " && ".join(script)], env)
    secrets = list(files.values())
    if code != 0:
        msg = f"edge: writing its configuration failed ({code}): {redact(log_tail(out), secrets)}"
        raise EngineError(msg)
    reload = ["caddy", "reload", "--config", edge.CONFIG_FILE, "--adapter", "caddyfile", "--force"]
    code, out = exec_in(container, reload)
    if code != 0:
        msg = (
            f"edge: Caddy refused the new configuration ({code}); it keeps the running one:\n"
            f"{redact(log_tail(out), secrets)}"
        )
        raise EngineError(msg)


def _internal_ca(container: Any) -> str:
    end = time.monotonic() + 30
    while True:
        code, out = exec_in(container, ["cat", edge.INTERNAL_CA])
        if code == 0 and "BEGIN CERTIFICATE" in out:
            return out
        if time.monotonic() > end:
            msg = f"edge: the internal CA's root ({edge.INTERNAL_CA}) did not appear: {out[-400:]}"
            raise EngineError(msg)
        time.sleep(0.25)


def _retire(docker_client: Any, props: Mapping[str, Any]) -> None:
    """Stop the upstream's earlier releases now that the edge no longer sends them requests."""
    from components.providers.container import predecessors

    retire = props.get("retire") or {}
    if not retire:
        return
    current = str(props["upstream"]).rsplit(":", 1)[0]
    old = predecessors(docker_client, retire, current)
    if old:
        time.sleep(DRAIN_S)
    for container in old:
        pulumi.log.info(f"edge switched to {current}: stopping {container.name}")
        container.stop(timeout=int(retire.get("stop_timeout_s") or 30))


class EdgeRouteProvider(ResourceProvider):
    """Loads the edge's configuration once its new upstream answers."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Any change is a reload of the same edge: never a replacement."""
        return DiffResult(changes=bool(changed(olds, news, KEYS)), replaces=[])

    def _apply(self, props: Mapping[str, Any]) -> dict[str, Any]:
        with client(props.get("docker_host")) as docker_client:
            container = docker_client.containers.get(str(props["container_id"]))
            _gate(container, props, float(props.get("gate_timeout_s") or 60))
            _write_and_reload(container, props)
            ca = _internal_ca(container) if props.get("internal_ca") else ""
            _retire(docker_client, props)
        digest = hashlib.sha256(str(props["caddyfile"]).encode()).hexdigest()
        pulumi.log.info(f"edge now routes to {props['upstream']} (config {digest[:12]})")
        return {**props, "ca_pem": ca, "config_sha256": digest}

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Gate on the upstream, then load the configuration."""
        outs = self._apply(props)
        return CreateResult(id_=f"edge-{outs['config_sha256'][:12]}", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Gate on the new upstream, then swap the configuration atomically."""
        return UpdateResult(outs=self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The edge container still exists (its configuration lives and dies with it)."""
        with client(props.get("docker_host")) as docker_client:
            try:
                docker_client.containers.get(str(props.get("container_id")))
            except Exception as exc:
                if not_found(exc):
                    return ReadResult(id_="", outs={})
                raise
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the configuration goes with the edge container."""


@dataclass(frozen=True)
class EdgeRouteArgs:
    """The edge container, the upstream it must switch to, and the configuration to load."""

    container_id: pulumi.Input[str]
    upstream: pulumi.Input[str]
    health_path: str
    health_status: int
    caddyfile: pulumi.Input[str]
    files: Mapping[str, pulumi.Output[str]]
    internal_ca: bool
    docker_host: str | None = None
    gate_timeout_s: float = 60
    retire: Mapping[str, Any] = field(default_factory=dict)
    """The upstream's stable name and labels: its earlier releases stop after the switch."""


class EdgeRoute(Resource, module="docker", name="EdgeRoute"):
    """The edge's live configuration, switched to a new release only once it answers."""

    upstream: pulumi.Output[str]
    ca_pem: pulumi.Output[str]
    config_sha256: pulumi.Output[str]

    def __init__(
        self, name: str, args: EdgeRouteArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        files: dict[str, pulumi.Output[str]] = dict(args.files)
        props: dict[str, Any] = {
            "docker_host": args.docker_host,
            "container_id": args.container_id,
            "upstream": args.upstream,
            "health_path": args.health_path,
            "health_status": args.health_status,
            "caddyfile": args.caddyfile,
            "files": pulumi.Output.secret(files) if args.files else {},
            "internal_ca": args.internal_ca,
            "gate_timeout_s": args.gate_timeout_s,
            "retire": dict(args.retire),
            "ca_pem": None,
            "config_sha256": None,
        }
        super().__init__(EdgeRouteProvider(), name, props, opts)
