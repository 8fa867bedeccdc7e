"""Runs the real ``__main__.py`` under Pulumi mocks (every registration recorded); HTTP stubs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import rpc

ROOT = Path(__file__).resolve().parents[2]
# Type tokens of the kubernetes objects the program registers (the mocks see these).
K = "kubernetes:"
DEPLOYMENT = K + "apps/v1:Deployment"
STATEFULSET = K + "apps/v1:StatefulSet"
SERVICE = K + "core/v1:Service"
SECRET = K + "core/v1:Secret"
CONFIG_MAP = K + "core/v1:ConfigMap"
PVC = K + "core/v1:PersistentVolumeClaim"
NAMESPACE = K + "core/v1:Namespace"
INGRESS = K + "networking.k8s.io/v1:Ingress"
NETPOL = K + "networking.k8s.io/v1:NetworkPolicy"
PDB = K + "policy/v1:PodDisruptionBudget"
JOB = K + "batch/v1:Job"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUES = {
    "authToken": "s3cret-auth-token-value",
    "catalogToken": "s3cret-catalog-token-value",
    "searchToken": "s3cret-search-token-value",
    "postgresPassword": "s3cretPostgresPassword",
    "minioAccessKey": "s3cretMinioAccessKey",
    "minioSecretKey": "s3cretMinioSecretKey",
    "hostAgentSecret": "s3cret-host-agent",
}
MOCK_CA_PEM = "-----BEGIN CERTIFICATE-----\nmock edge root\n-----END CERTIFICATE-----\n"
"""What the mocked ``EdgeRoute`` returns as ``ca_pem`` when the edge runs its own CA."""


def unwrap(value: Any) -> Any:
    """A registered input with every secret envelope opened (for asserting on values)."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) is not None and "value" in value:
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclass
class Registration:
    """One resource as the engine would have seen it."""

    type: str
    name: str
    urn: str
    parent: str
    inputs: dict[str, Any]
    raw: dict[str, Any]
    dependencies: list[str]
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    provider: str

    def is_secret(self, prop: str) -> bool:
        """Whether the engine receives ``prop`` as a secret (wholly or any part of it)."""
        return SECRET_SIG in json.dumps(self.raw.get(prop))


@dataclass
class Program:
    """Everything one run registered."""

    stack: str = ""
    resources: list[Registration] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, typ: str) -> list[Registration]:
        """Resources of one type token."""
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Registration:
        """The resource with logical name ``name``."""
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name!r}, got {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        """The resource with this URN."""
        return next(r for r in self.resources if r.urn == urn)


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == "pulumi-python:dynamic/docker:Image":
            digest = hashlib.sha256(args.inputs["ref"].encode()).hexdigest()
            state["image_id"] = f"sha256:{digest}"
        if args.typ == "pulumi-python:dynamic/docker:Container":
            state["container_name"] = f"{args.inputs['name']}-0123abcd"
        if args.typ == "pulumi-python:dynamic/docker:EdgeRoute":
            state["ca_pem"] = MOCK_CA_PEM if args.inputs.get("internal_ca") else ""
        if args.typ == "pulumi-python:dynamic/ops:GeneratedSecret":
            state["value"] = "generated-" + args.name
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


class _Monitor(pmocks.MockMonitor):
    def __init__(self, program: Program) -> None:
        super().__init__(_Mocks())
        self.program = program

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = json_format.MessageToDict(request.object)
            self.program.resources.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
                    raw=raw,
                    dependencies=list(request.dependencies),
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    provider=request.provider,
                )
            )
        return response


def stack_config(stack: str) -> dict[str, Any]:
    """The ``config:`` block of ``Pulumi.<stack>.yaml``, as raw values."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    return dict(data.get("config") or {})


def run(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    plain: Mapping[str, str] | None = None,
    base: str | None = None,
    into: Program | None = None,
) -> Program:
    """Run ``__main__.py`` for ``stack`` (config from ``Pulumi.<base or stack>.yaml``).

    ``into`` records the registrations in a ``Program`` the caller holds, so a run that raises
    can still be asked what it registered before it failed.
    """
    config = stack_config(base or stack)
    config.update(overrides or {})
    for key, value in (secrets or {}).items():
        config[f"appstack:{key}"] = value
    for key, value in (plain or {}).items():
        config[f"appstack:{key}"] = value
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    secret_keys = [f"appstack:{k}" for k in (secrets or {})]
    pulumi.runtime.set_all_config(flat, secret_keys)

    program = into if into is not None else Program()
    program.stack = stack
    pulumi.runtime.set_mocks(
        _Mocks(), project="appstack", stack=stack, preview=False, monitor=_Monitor(program)
    )

    exports: dict[str, Any] = {}

    def record_export(name: str, value: Any) -> None:
        exports[name] = value

    @pulumi.runtime.test  # type: ignore[misc]
    def main() -> Any:
        original = pulumi.export
        pulumi.export = record_export  # type: ignore[assignment]
        try:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = original

        async def resolve() -> None:
            for key, value in exports.items():
                out = pulumi.Output.from_input(value)
                program.outputs[key] = await out.future()
                if await out.is_secret():
                    program.secret_outputs.add(key)

        return pulumi.Output.from_input(asyncio.ensure_future(resolve()))

    main()
    return program


@contextmanager
def answering(status: int) -> Iterator[str]:
    """A local HTTP server whose every GET answers ``status``; yields its /v1/health URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/health"
    finally:
        server.shutdown()
        server.server_close()
