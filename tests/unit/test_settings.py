"""Bad configuration fails before any resource is declared, naming the key at fault."""

from __future__ import annotations

from typing import Any

import pytest

from components.settings import ConfigError
from tests.unit.harness import SECRET_VALUES, run, stack_config


def _images(**changes: Any) -> dict[str, Any]:
    images = dict(stack_config("dev")["appstack:images"])
    images.update(changes)
    return {"appstack:images": images}


GW = {"registry": "appstack.local", "repository": "haven-gateway"}
DIGEST = "sha256:" + "a" * 64

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("latest tag", _images(gateway={**GW, "tag": "latest"}), "appstack:images.gateway.tag"),
    ("no tag", _images(gateway=dict(GW)), "appstack:images.gateway: has no tag or digest"),
    (
        "tag and digest",
        _images(gateway={**GW, "tag": "1.0", "digest": DIGEST}),
        "appstack:images.gateway: sets both a tag and a digest",
    ),
    (
        "malformed registry",
        _images(gateway={**GW, "registry": "bad_registry!:x", "tag": "1"}),
        "appstack:images.gateway.registry",
    ),
    (
        "bad digest",
        _images(gateway={**GW, "digest": "sha256:zz"}),
        "appstack:images.gateway.digest",
    ),
    (
        "string ref latest",
        _images(gateway="appstack.local/haven-gateway:latest"),
        "images.gateway.tag",
    ),
    ("missing image", {"appstack:images": {"gateway": {**GW, "tag": "1"}}}, "images.catalog"),
    (
        "unknown image service",
        _images(frontend={**GW, "tag": "1"}),
        "appstack:images.frontend: unknown service",
    ),
    (
        "port out of range",
        {"appstack:public": {"address": "127.0.0.1", "port": 70000}},
        "appstack:public.port",
    ),
    ("port zero", {"appstack:public": {"address": "127.0.0.1", "port": 0}}, "appstack:public.port"),
    (
        "port used twice",
        {"appstack:public": {"address": "127.0.0.1", "port": 8443, "tlsPort": 8443}},
        "appstack:public.tlsPort: 8443 is already used by appstack:public.port",
    ),
    (
        "bind not ip",
        {"appstack:public": {"address": "localhost", "port": 8080}},
        "appstack:public.address",
    ),
    (
        "unknown override",
        {"appstack:services": {"frontend": {"replicas": 2}}},
        "appstack:services.frontend: unknown service",
    ),
    (
        "replicas zero",
        {"appstack:services": {"gateway": {"replicas": 0}}},
        "appstack:services.gateway.replicas",
    ),
    ("ollama not http", {"appstack:ollama": {"url": "ftp://ollama:11434"}}, "appstack:ollama.url"),
    ("ollama no scheme", {"appstack:ollama": {"url": "ollama:11434"}}, "appstack:ollama.url"),
    ("bad environment", {"appstack:environment": "qa"}, "appstack:environment"),
    ("bad bool", {"appstack:generateSecrets": "yes"}, "appstack:generateSecrets"),
]


@pytest.mark.parametrize(("label", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_names_the_key_and_creates_nothing(
    label: str, overrides: dict[str, Any], expected: str
) -> None:
    programs: list[Any] = []
    with pytest.raises(ConfigError) as err:
        programs.append(run("dev", overrides=overrides))
    assert expected in str(err.value), f"{label}: {err.value}"
    assert not programs


def test_missing_secret_on_staging_is_an_error_naming_it() -> None:
    partial = {k: v for k, v in SECRET_VALUES.items() if k != "authToken"}
    with pytest.raises(ConfigError) as err:
        run("staging", secrets=partial)
    assert "appstack:authToken" in str(err.value)
    assert "missing on a staging stack" in str(err.value)


def test_plaintext_secret_is_refused() -> None:
    secrets = {k: v for k, v in SECRET_VALUES.items() if k != "searchToken"}
    with pytest.raises(ConfigError) as err:
        run("staging", secrets=secrets, plain={"searchToken": "visible"})
    assert "appstack:searchToken: is set in plaintext" in str(err.value)
    assert "visible" not in str(err.value)


def test_every_error_is_reported_at_once() -> None:
    overrides = {
        "appstack:public": {"address": "nowhere", "port": 99999},
        "appstack:ollama": {"url": "gopher://x"},
    }
    with pytest.raises(ConfigError) as err:
        run("dev", overrides=overrides)
    text = str(err.value)
    for key in ("appstack:public.address", "appstack:public.port", "appstack:ollama.url"):
        assert key in text


def test_dev_generates_missing_secrets_staging_does_not() -> None:
    dev = run("dev")
    generated = dev.of_type("pulumi-python:dynamic/ops:GeneratedSecret")
    assert len(generated) == len(SECRET_VALUES)
    assert all(r.name.startswith("dev-haven-") for r in generated)
    staging = run("staging", secrets=SECRET_VALUES)
    assert not staging.of_type("pulumi-python:dynamic/ops:GeneratedSecret")


def test_digest_pinned_image_is_used_verbatim() -> None:
    program = run("dev", overrides=_images(gateway={**GW, "digest": DIGEST}))
    refs = {r.inputs["ref"] for r in program.of_type("pulumi-python:dynamic/docker:Image")}
    assert f"appstack.local/haven-gateway@{DIGEST}" in refs


def test_generated_secrets_are_protected_with_the_volumes() -> None:
    dev = run("dev", overrides={"appstack:protectVolumes": "true"})
    secrets = dev.of_type("pulumi-python:dynamic/ops:GeneratedSecret")
    assert secrets and all(s.protect for s in secrets)
    assert not any(
        s.protect for s in run("dev").of_type("pulumi-python:dynamic/ops:GeneratedSecret")
    )
