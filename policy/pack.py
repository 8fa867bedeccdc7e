"""The policy pack: the rules of ``policy/rules.py`` as pulumi-policy policies.

Enforcement (README "Policies" says why each is what it is):

| policy | level | applies to |
| --- | --- | --- |
| one-public-entry | mandatory | the stack: Docker containers, Kubernetes Ingresses and Services |
| no-plain-secret-env | mandatory | Docker containers, Kubernetes workloads |
| images-pinned | mandatory | every container image: no :latest, no missing tag |
| prod-images-by-digest | advisory | the same, on prod stacks: ``@sha256:`` digests |
| resource-limits | mandatory | memory and CPU limits on every container |
| workload-hardening | mandatory | non-root, read-only root (per spec), no-new-privileges |
| protected-data-volumes | mandatory | Docker volumes and PVCs outside dev: ``protect`` |
| no-exposing-services-on-prod | mandatory | NodePort / LoadBalancer Services on prod stacks |

Secrets: pulumi-policy hands a policy the inputs with the engine's secret markers removed, so a
secret and a plain value look alike. The engine does send the markers (``KeepSecrets``), and
``mark_secrets`` keeps them visible as ``SecretText`` (a ``str``) by wrapping the SDK's
deserializer once at start-up; everything else the SDK does is unchanged. pulumi-policy is pinned
exactly (requirements.txt) and the real-engine tests (tests/e2e/test_policy_e2e.py) fail if this
stops working: a secret env var must pass and a plain one must fail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pulumi_policy.policy as sdk_policy
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import (
    UNKNOWN_ARCHIVE_VALUE,
    UNKNOWN_ARRAY_VALUE,
    UNKNOWN_ASSET_VALUE,
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_OBJECT_VALUE,
    UNKNOWN_STRING_VALUE,
    _DictProxy,
    _ListProxy,
)

from policy import rules

NAME = "appstack"
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 (a wire-format marker)
UNKNOWNS = frozenset(
    {
        UNKNOWN_ARCHIVE_VALUE, UNKNOWN_ARRAY_VALUE, UNKNOWN_ASSET_VALUE, UNKNOWN_BOOLEAN_VALUE,
        UNKNOWN_NUMBER_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE,
    }
)  # fmt: skip
ENVIRONMENT_SCHEMA = PolicyConfigSchema(
    properties={
        "prodStacks": {"type": "array", "items": {"type": "string"}},
        "devStacks": {"type": "array", "items": {"type": "string"}},
    }
)
"""Which stacks are prod / dev (glob patterns on the stack name; rules.environment)."""


def mark_secrets(value: Any, secret: bool = False) -> Any:
    """Wire-format properties with each secret's strings turned into ``SecretText``."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return mark_secrets(value.get("value"), True)
        return {k: mark_secrets(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [mark_secrets(v, secret) for v in value]
    if secret and isinstance(value, str):
        return rules.SecretText(value)
    return value


def keep_secret_markers() -> None:
    """Make pulumi-policy's deserializer keep secrets visible (see the module's docstring)."""
    original = sdk_policy.deserialize_properties
    if getattr(original, "keeps_secrets", False):
        return

    def deserialize(props: dict[str, Any], proxy_secrets: bool = False) -> dict[str, Any]:
        return original(mark_secrets(props), proxy_secrets)

    deserialize.keeps_secrets = True  # type: ignore[attr-defined]
    sdk_policy.deserialize_properties = deserialize


def plain(value: Any) -> Any:
    """The SDK's unknown-checking proxies as plain dicts and lists, unknowns as ``UNKNOWN``."""
    if isinstance(value, _DictProxy | _ListProxy):
        value = value["__target"]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str) and value in UNKNOWNS:
        return rules.UNKNOWN
    return value


Check = Callable[[str, str, dict[str, Any], Any, Mapping[str, Any]], list[str]]
"""(type, urn, inputs, options, policy config) -> problems."""


def resource_policy(
    name: str,
    description: str,
    level: EnforcementLevel,
    check: Check,
    schema: PolicyConfigSchema | None = None,
) -> ResourceValidationPolicy:
    """A resource policy that reports each problem ``check`` finds against the resource."""

    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        props = plain(args.props)
        config = args.get_config() or {}
        for problem in check(args.resource_type, args.urn, props, args.opts, config):
            report(problem, args.urn)

    return ResourceValidationPolicy(
        name=name,
        description=description,
        enforcement_level=level,
        validate=validate,
        config_schema=schema,
    )


def _images_pinned(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    return [f"{where}: {p}" for where, image in rules.images(t, props)
            if (p := rules.tag_problem(image))]  # fmt: skip


def _by_digest(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    if rules.environment(urn, cfg) != "prod":
        return []
    return [f"{where}: {p} on a prod stack" for where, image in rules.images(t, props)
            if (p := rules.digest_problem(image))]  # fmt: skip


def _limits(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    return rules.limit_problems(t, props)


def _hardening(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    writable = cfg.get("writableRoot") or rules.WRITABLE_ROOT
    return rules.hardening_problems(t, props, writable)


def _secret_env(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    return rules.secret_env_problems(t, props, cfg.get("notSecret") or rules.NOT_SECRET)


def _protected(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    if not rules.is_data_volume(t) or rules.environment(urn, cfg) == "dev" or opts.protect:
        return []
    env = rules.environment(urn, cfg)
    return [f"data volume {rules.name_of(urn)} is not protected on a {env} stack (protect)"]


def _no_exposing(t: str, urn: str, props: dict[str, Any], opts: Any, cfg: Any) -> list[str]:
    kind = rules.exposing_service_type(t, props)
    if kind is None or rules.environment(urn, cfg) != "prod":
        return []
    return [f"Service {rules.name_of(urn)} is of type {kind} on a prod stack"]


def _one_public_entry(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = [(r.resource_type, r.urn, plain(r.props)) for r in args.resources]
    for problem in rules.public_entry_problems(resources):
        report(problem, None)


MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY


def policies() -> list[sdk_policy.Policy]:
    """Every policy of the pack, with its enforcement level."""
    return [
        StackValidationPolicy(
            name="one-public-entry",
            description="Exactly one public entry per stack: the edge on Docker, the Ingress on "
            "Kubernetes.",
            enforcement_level=MANDATORY,
            validate=_one_public_entry,
        ),
        resource_policy(
            "no-plain-secret-env",
            "Secret-looking variables come from secret inputs, secret files or Secrets.",
            MANDATORY,
            _secret_env,
            PolicyConfigSchema(
                properties={"notSecret": {"type": "array", "items": {"type": "string"}}}
            ),
        ),
        resource_policy(
            "images-pinned",
            "Images are pinned: a version tag or a digest, never :latest or no tag.",
            MANDATORY,
            _images_pinned,
        ),
        resource_policy(
            "prod-images-by-digest",
            "On prod stacks every image is pinned by digest (@sha256:).",
            ADVISORY,
            _by_digest,
            ENVIRONMENT_SCHEMA,
        ),
        resource_policy(
            "resource-limits",
            "Every container has a memory and a CPU limit.",
            MANDATORY,
            _limits,
        ),
        resource_policy(
            "workload-hardening",
            "Non-root, a read-only root where the spec says so, no new privileges.",
            MANDATORY,
            _hardening,
            PolicyConfigSchema(
                properties={"writableRoot": {"type": "array", "items": {"type": "string"}}}
            ),
        ),
        resource_policy(
            "protected-data-volumes",
            "Data volumes are protected (Pulumi protect) outside dev.",
            MANDATORY,
            _protected,
            ENVIRONMENT_SCHEMA,
        ),
        resource_policy(
            "no-exposing-services-on-prod",
            "No NodePort or LoadBalancer Service on prod stacks.",
            MANDATORY,
            _no_exposing,
            ENVIRONMENT_SCHEMA,
        ),
    ]


def main() -> None:
    """Serve the pack to the engine (prints the port; runs until the engine stops it)."""
    keep_secret_markers()
    PolicyPack(name=NAME, policies=policies(), enforcement_level=MANDATORY)
