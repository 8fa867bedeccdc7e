"""GeneratedSecret provider and resource."""

from __future__ import annotations

import string
from typing import Any

import pulumi
import pytest
from pulumi.dynamic import Resource

from components.providers.secrets import (
    GeneratedSecret,
    GeneratedSecretArgs,
    GeneratedSecretProvider,
)


@pytest.mark.parametrize(
    ("charset", "alphabet"),
    [
        ("alphanumeric", string.ascii_letters + string.digits),
        ("urlsafe", string.ascii_letters + string.digits + "-_"),
        ("hex", "0123456789abcdef"),
    ],
)
def test_value_has_length_and_charset(charset: str, alphabet: str) -> None:
    result = GeneratedSecretProvider().create({"length": 48.0, "charset": charset})
    value = (result.outs or {})["value"]
    assert len(value) == 48
    assert set(value) <= set(alphabet)
    assert value not in result.id


def test_values_differ_between_creates() -> None:
    provider = GeneratedSecretProvider()
    values = {
        (provider.create({"length": 32, "charset": "alphanumeric"}).outs or {})["value"]
        for _ in range(5)
    }
    assert len(values) == 5


def test_diff_replaces_only_on_length_or_charset() -> None:
    provider = GeneratedSecretProvider()
    olds = provider.create({"length": 32, "charset": "alphanumeric"}).outs or {}
    assert provider.diff("id", olds, {"length": 32.0, "charset": "alphanumeric"}).changes is False
    longer = provider.diff("id", olds, {"length": 40, "charset": "alphanumeric"})
    assert longer.changes is True
    assert longer.replaces == ["length"]
    assert provider.diff("id", olds, {"length": 32, "charset": "hex"}).replaces == ["charset"]


def test_check_refuses_short_or_unknown_charset() -> None:
    failures = GeneratedSecretProvider().check({}, {"length": 8, "charset": "emoji"}).failures
    assert {f.property for f in failures} == {"length", "charset"}


def test_value_output_is_declared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine encrypts ``value`` because the resource declares it an additional secret."""
    seen: dict[str, Any] = {}

    def fake_init(self: Any, provider: Any, name: str, props: Any, opts: Any = None) -> None:
        seen.update(provider=provider, name=name, props=props, opts=opts)

    monkeypatch.setattr(Resource, "__init__", fake_init)
    user_opts = pulumi.ResourceOptions(protect=True)
    GeneratedSecret("api-key", GeneratedSecretArgs(length=40), user_opts)
    assert seen["opts"].additional_secret_outputs == ["value"]
    assert seen["opts"].protect is True
    assert seen["props"] == {"length": 40, "charset": "alphanumeric", "value": None}
    assert isinstance(seen["provider"], GeneratedSecretProvider)
    assert GeneratedSecret._resource_type_name == "dynamic/ops:GeneratedSecret"
