"""The ``GeneratedSecret`` dynamic resource: a random value created once, stored encrypted."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

CHARSETS = {
    "alphanumeric": string.ascii_letters + string.digits,
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "hex": "0123456789abcdef",
}
"""Every charset is URL-safe: a value can go into a DSN or header unquoted."""
MIN_LENGTH = 16
MAX_LENGTH = 256


def generate(length: int, charset: str) -> str:
    """A random value of ``length`` characters drawn from ``CHARSETS[charset]``."""
    alphabet = CHARSETS[charset]
    return "".join(secrets.choice(alphabet) for _ in range(length))


class GeneratedSecretProvider(ResourceProvider):
    """Creates the value once; only a new length or charset replaces it."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate length and charset."""
        failures = []
        length = news.get("length")
        if not isinstance(length, int | float) or not MIN_LENGTH <= length <= MAX_LENGTH:
            reason = f"length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length!r}"
            failures.append(CheckFailure("length", reason))
        charset = news.get("charset")
        if charset not in CHARSETS:
            reason = f"charset {charset!r} is not one of {', '.join(CHARSETS)}"
            failures.append(CheckFailure("charset", reason))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Replace when length or charset change; nothing else about a secret can change."""
        replaces = [k for k in ("length", "charset") if _num(olds.get(k)) != _num(news.get(k))]
        return DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Generate the value; its id is random too, never derived from the value."""
        length, charset = int(props["length"]), str(props["charset"])
        outs = {"length": length, "charset": charset, "value": generate(length, charset)}
        return CreateResult(secrets.token_hex(8), outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The value lives only in the stack's state, so the state is the live value."""
        return ReadResult(id_, props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Keep the value (diff never asks for an in-place change of it)."""
        return UpdateResult({**olds, "length": news["length"], "charset": news["charset"]})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing outside the state holds the value."""


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(frozen=True)
class GeneratedSecretArgs:
    """Length and charset of the generated value."""

    length: int = 32
    charset: str = "alphanumeric"


class GeneratedSecret(Resource, module="ops", name="GeneratedSecret"):
    """A random secret generated once and kept (encrypted) in the stack's state."""

    value: pulumi.Output[str]
    length: pulumi.Output[int]
    charset: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: GeneratedSecretArgs | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        args = args or GeneratedSecretArgs()
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["value"])
        props = {"length": args.length, "charset": args.charset, "value": None}
        super().__init__(
            GeneratedSecretProvider(),
            name,
            props,
            pulumi.ResourceOptions.merge(opts, secret_opts),
        )
