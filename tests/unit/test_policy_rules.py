"""The policy pack's rules as plain functions (the real engine runs them in tests/e2e).

Shapes are the inputs the engine hands the pack: appstack's Docker containers (snake_case keys of
components/providers/container.py) and Kubernetes objects (camelCase)."""

from __future__ import annotations

from typing import Any

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policy import pack, rules
from tests.unit.harness import SECRET_VALUES, Program, run, unwrap
from tests.unit.test_engramia import ENGRAMIA_SECRETS

URN = "urn:pulumi:{stack}::appstack::pulumi-python:dynamic/docker:Container::{name}"


def urn(stack: str, name: str = "x") -> str:
    return URN.format(stack=stack, name=name)


def container(**override: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": "s-haven-gateway",
        "image": "appstack.local/haven-gateway:0.1.0",
        "env": {"LOG": "info"},
        "user": None,
        "ports": [],
        "memory_mb": 256,
        "cpus": 0.5,
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "labels": {"appstack.service": "gateway"},
    }
    props.update(override)
    return props


@pytest.mark.parametrize(
    ("stack", "config", "env"),
    [
        ("prod", None, "prod"),
        ("engramia-prod", None, "prod"),
        ("dev", None, "dev"),
        ("engramia-dev", None, "dev"),
        ("staging", None, "staging"),
        ("production", None, "staging"),
        ("production", {"prodStacks": ["production"]}, "prod"),
        ("pol-a-dev", {"devStacks": ["nothing"]}, "staging"),
    ],
)
def test_environment_from_the_stack_name(stack: str, config: Any, env: str) -> None:
    assert rules.environment(urn(stack), config) == env


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("registry.example.com:5000/haven/gateway:1.0.0", None),
        ("registry.example.com:5000/haven/gateway", "has no tag"),
        ("caddy", "has no tag"),
        ("caddy:latest", "moving tag :latest"),
        ("caddy@sha256:" + "a" * 64, None),
        ("caddy:latest@sha256:" + "a" * 64, None),
        (rules.UNKNOWN, None),
    ],
)
def test_image_tags(image: Any, problem: str | None) -> None:
    found = rules.tag_problem(image)
    assert (found is None) if problem is None else (problem in str(found))


def test_digest_needed_unless_given() -> None:
    assert rules.digest_problem("caddy:2") is not None
    assert rules.digest_problem("caddy:2@sha256:" + "b" * 64) is None


def test_secret_env_needs_a_secret_value_or_a_file() -> None:
    plain = container(env={"AUTH_TOKEN": "abc", "LOG": "info"})
    assert rules.secret_env_problems(rules.DOCKER_CONTAINER, plain) == [
        "container s-haven-gateway: AUTH_TOKEN is set from a plain (non-secret) value"
    ]
    secret = container(env={"AUTH_TOKEN": rules.SecretText("abc")})
    by_file = container(env={"MINIO_SECRET_KEY_FILE": "/run/secrets/minio_secret_key"})
    computed = container(env={"DATABASE_URL": rules.UNKNOWN, "SEARCH_TOKEN": ""})
    for props in (secret, by_file, computed):
        assert rules.secret_env_problems(rules.DOCKER_CONTAINER, props) == []


def test_mark_secrets_keeps_the_engines_secret_markers() -> None:
    wire = {
        "env": {pack.SIG_KEY: pack.SECRET_SIG, "value": {"AUTH_TOKEN": "abc", "N": 1}},
        "name": "plain",
    }
    marked = pack.mark_secrets(wire)
    assert isinstance(marked["env"]["AUTH_TOKEN"], rules.SecretText)
    assert marked["env"]["N"] == 1 and not isinstance(marked["name"], rules.SecretText)


def test_plain_turns_the_sdks_proxies_into_dicts_with_unknowns() -> None:
    proxied = unknown_checking_proxy({"a": [{"b": UNKNOWN_STRING_VALUE}], "c": "d"})
    assert pack.plain(proxied) == {"a": [{"b": rules.UNKNOWN}], "c": "d"}


def test_limits_and_hardening_on_docker() -> None:
    bad = container(memory_mb=0, cpus=None, user="0:0", read_only=False, security_opt=[])
    assert len(rules.limit_problems(rules.DOCKER_CONTAINER, bad)) == 2
    problems = rules.hardening_problems(rules.DOCKER_CONTAINER, bad)
    assert [p.split(" ", 2)[2][:10] for p in problems] == ["runs as ro", "has a writ", "lacks secu"]
    qdrant = container(read_only=False, labels={"appstack.service": "qdrant"})
    assert rules.hardening_problems(rules.DOCKER_CONTAINER, qdrant) == []


def deployment(container_spec: dict[str, Any], pod_context: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container_spec]}
    if pod_context is not None:
        spec["securityContext"] = pod_context
    return {"spec": {"template": {"spec": spec}}}


def test_kubernetes_pod_templates() -> None:
    kind = "kubernetes:apps/v1:Deployment"
    good = {
        "name": "api",
        "image": "engramia:0.6.2",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": {"readOnlyRootFilesystem": True},
        "env": [{"name": "ENGRAMIA_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "s"}}}],
    }
    props = deployment(good, {"runAsNonRoot": True, "runAsUser": 1001})
    assert rules.limit_problems(kind, props) == []
    assert rules.hardening_problems(kind, props) == []
    assert rules.secret_env_problems(kind, props) == []
    assert rules.images(kind, props) == [("container api", "engramia:0.6.2")]
    bad = {**good, "resources": {"limits": {"memory": "1Gi"}},
           "env": [{"name": "ENGRAMIA_API_KEYS", "value": "k1,k2"}]}  # fmt: skip
    props = deployment(bad, {"runAsUser": 0})
    assert rules.limit_problems(kind, props) == ["container api has no cpu limit"]
    assert rules.hardening_problems(kind, props) == [
        "container api may run as root (runAsNonRoot is not true)"
    ]
    assert "ENGRAMIA_API_KEYS is a literal value" in rules.secret_env_problems(kind, props)[0]


def test_one_public_entry_on_docker() -> None:
    edge = container(
        name="s-caddy",
        labels={"appstack.service": "caddy"},
        ports=[{"internal": 8443, "external": 443, "ip": "0.0.0.0"}],
    )
    prometheus = container(
        name="s-prometheus",
        labels={"appstack.service": "prometheus"},
        ports=[{"internal": 9090, "external": 19090, "ip": "127.0.0.1"}],
    )
    t = rules.DOCKER_CONTAINER
    ok = [(t, urn("s", "caddy"), edge), (t, urn("s", "prom"), prometheus)]
    assert rules.public_entry_problems(ok) == []
    exposed = container(ports=[{"internal": 8080, "external": 8080, "ip": "10.0.0.5"}])
    problems = rules.public_entry_problems([*ok, (t, urn("s", "gateway"), exposed)])
    assert problems == [
        "gateway publishes a port and is not the edge: only the edge (appstack.service=caddy) may",
        "the stack has 2 public entries on Docker (caddy, gateway), not 1",
    ]
    assert rules.public_entry_problems([(t, urn("s", "gw"), container())]) == [
        "the stack has 0 public entries on Docker (none), not 1"
    ]
    assert rules.public_entry_problems([]) == []


def test_one_public_entry_on_kubernetes() -> None:
    workload = ("kubernetes:apps/v1:Deployment", "urn:pulumi:p::a::k::api", deployment({}))
    ingress: tuple[str, str, dict[str, Any]] = (rules.K8S_INGRESS, "urn:pulumi:p::a::k::entry", {})
    lb = (rules.K8S_SERVICE, "urn:pulumi:p::a::k::lb", {"spec": {"type": "LoadBalancer"}})
    node = (rules.K8S_SERVICE, "urn:pulumi:p::a::k::np", {"spec": {"type": "NodePort"}})
    assert rules.public_entry_problems([workload, ingress, node]) == []
    assert rules.public_entry_problems([workload, ingress, lb]) == [
        "Service lb is a LoadBalancer: an entry beside the Ingress"
    ]
    assert rules.public_entry_problems([workload]) == ["the stack has 0 Ingresses (none), not 1"]
    assert rules.exposing_service_type(node[0], node[2]) == "NodePort"


def test_pack_levels() -> None:
    levels = {p.name: p.enforcement_level for p in pack.policies()}
    assert levels.pop("prod-images-by-digest") == pack.ADVISORY
    assert set(levels.values()) == {pack.MANDATORY} and len(levels) == 7


def _mandatory_problems(program: Program) -> list[str]:
    """What the pack's mandatory rules say about every resource a program registered."""
    resources = [(r.type, r.urn, pack.plain(pack.mark_secrets(r.raw))) for r in program.resources]
    env = rules.environment(f"urn:pulumi:{program.stack}::appstack", None)  # mocks' URNs: "stack"
    found = rules.public_entry_problems(resources)
    for (kind, urn_, props), reg in zip(resources, program.resources, strict=True):
        found += [rules.tag_problem(image) or "" for _, image in rules.images(kind, props)]
        found += rules.limit_problems(kind, props) + rules.hardening_problems(kind, props)
        found += rules.secret_env_problems(kind, props)
        if rules.is_data_volume(kind) and env != "dev":
            found += [] if reg.protect else [f"{urn_} not protected"]
        if env == "prod" and rules.exposing_service_type(kind, props):
            found.append(f"{urn_} exposes a Service")
    return [f for f in found if f]


@pytest.mark.parametrize(
    ("stack", "secrets"),
    [
        ("dev", {}),
        ("engramia-dev", {}),
        ("staging", SECRET_VALUES),
        ("prod", SECRET_VALUES),
        ("engramia-prod", ENGRAMIA_SECRETS),
    ],
)
def test_every_stack_of_the_repository_keeps_the_mandatory_rules(
    stack: str, secrets: dict[str, str]
) -> None:
    program = run(stack, secrets=secrets)
    kinds = {r.type for r in program.resources}
    assert rules.DOCKER_CONTAINER in kinds or "kubernetes:apps/v1:Deployment" in kinds
    assert _mandatory_problems(program) == []


def test_the_writable_roots_are_those_the_specs_ask_for() -> None:
    program = run("staging", secrets=SECRET_VALUES)
    containers = program.of_type(rules.DOCKER_CONTAINER)
    writable = {unwrap(c.inputs["labels"])["appstack.service"] for c in containers
                if unwrap(c.inputs["read_only"]) is False}  # fmt: skip
    assert writable == set(rules.WRITABLE_ROOT)
