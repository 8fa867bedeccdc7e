"""Bad configuration fails before any resource is declared, naming the key at fault."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from components.settings import ConfigError
from tests.unit.harness import SECRET_VALUES, Program, run, stack_config


def _images(**changes: Any) -> dict[str, Any]:
    images = dict(stack_config("dev")["appstack:images"])
    images.update(changes)
    return {"appstack:images": images}


GW = {"registry": "appstack.local", "repository": "haven-gateway"}
DIGEST = "sha256:" + "a" * 64


def _public(**fields: Any) -> dict[str, Any]:
    return {"appstack:public": {"address": "127.0.0.1", "port": 18080, **fields}}


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
    (
        "tls unknown mode",
        _public(tls="sometimes"),
        "appstack:public.tls: 'sometimes' is not one of off, internal, acme, certificate",
    ),
    (
        "acme without host",
        _public(tls="acme", acmeEmail="ops@example.com"),
        "appstack:public.host: is required with public.tls acme",
    ),
    (
        "acme without email",
        _public(tls="acme", host="haven.example.com"),
        "appstack:public.acmeEmail: is required with public.tls acme",
    ),
    (
        "acme email not an address",
        _public(tls="acme", host="haven.example.com", acmeEmail="ops"),
        "appstack:public.acmeEmail: 'ops' is not an e-mail address",
    ),
    ("host not a dns name", _public(tls="internal", host="Not A Host"), "appstack:public.host"),
    (
        "certificate without the tls secrets",
        _public(tls="certificate"),
        "appstack:tlsCertificate: is required with public.tls certificate",
    ),
    (
        "tlsPort with tls off",
        _public(tlsPort=18443),
        "appstack:public.tlsPort: is set but public.tls is off",
    ),
    ("unknown public field", _public(tlsMode="internal"), "appstack:public: unknown fields"),
    (
        "replicas 2 on docker",
        {"appstack:services": {"gateway": {"replicas": 2}}},
        "appstack:services.gateway.replicas: 2: the Docker platform runs one container per service",
    ),
    (
        "lock timeout without a unit",
        {"appstack:migrationLockTimeout": "5"},
        "appstack:migrationLockTimeout: '5' is not a duration like 500ms, 5s or 2min",
    ),
    (
        "lock timeout in words",
        {"appstack:migrationLockTimeout": "5 seconds"},
        "appstack:migrationLockTimeout",
    ),
    ("lock timeout zero", {"appstack:migrationLockTimeout": "0s"}, "migrationLockTimeout"),
    ("public url not http", _public(url="ftp://haven.example.com"), "appstack:public.url"),
    ("public url without host", _public(url="http://:8080"), "appstack:public.url"),
    (
        "public url with a query",
        _public(url="http://haven.example.com:8080/?x=1"),
        "appstack:public.url: 'http://haven.example.com:8080/?x=1' must not carry",
    ),
    (
        "remote engine over ssh without a public url",
        {"appstack:dockerHost": "ssh://deploy@staging.example.com"},
        "appstack:public.url: is required when the Docker engine is remote "
        "(dockerHost=ssh://deploy@staging.example.com)",
    ),
    (
        "edge replicas 2 on docker",
        {"appstack:services": {"caddy": {"replicas": 2}}},
        "appstack:services.caddy.replicas: 2",
    ),
    (
        "typo of a known key",
        {"appstack:maintainance": "true"},
        "appstack:maintainance: unknown key (did you mean appstack:maintenance?)",
    ),
    (
        "a key nothing reads",
        {"appstack:gatewayImage": "appstack.local/haven-gateway:0.2.0"},
        "appstack:gatewayImage: unknown key",
    ),
]


@pytest.mark.parametrize(("label", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_names_the_key_and_creates_nothing(
    label: str, overrides: dict[str, Any], expected: str
) -> None:
    attempt = Program()
    with pytest.raises(ConfigError) as err:
        run("dev", overrides=overrides, into=attempt)
    assert expected in str(err.value), f"{label}: {err.value}"
    assert attempt.resources == [], f"{label}: registered {[r.name for r in attempt.resources]}"


def test_the_harness_records_what_a_run_registered() -> None:
    """The check above can fail: a good run registers into the Program it is handed."""
    attempt = Program()
    run("dev", into=attempt)
    assert len(attempt.resources) > 20


def test_certificate_mode_names_each_missing_tls_secret() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    attempt = Program()
    with pytest.raises(ConfigError) as err:
        run(
            "dev",
            overrides=_public(tls="certificate"),
            secrets={"tlsCertificate": pem},
            into=attempt,
        )
    assert "appstack:tlsKey: is required with public.tls certificate" in str(err.value)
    assert "appstack:tlsCertificate" not in str(err.value)
    assert pem not in str(err.value)
    assert attempt.resources == []


def test_replicas_above_one_are_fine_where_the_platform_scales() -> None:
    k8s = run("prod", secrets=SECRET_VALUES)
    gateway = next(
        d
        for d in k8s.of_type("kubernetes:apps/v1:Deployment")
        if d.inputs["metadata"]["name"] == "gateway"
    )
    assert gateway.inputs["spec"]["replicas"] == 3
    one = run("dev", overrides={"appstack:services": {"gateway": {"replicas": 1}}})
    assert one.named("dev-haven-gateway")


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


ENGRAMIA_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "rate limit with a unit",
        {"appstack:engramia": {"rateLimits": {"default": "120/minute"}}},
        "appstack:engramia.rateLimits.default: must be an integer in [1, 1000000], "
        "got '120/minute'",
    ),
    (
        "rate limit not a number",
        {"appstack:engramia": {"rateLimits": {"perKey": "lots"}}},
        "appstack:engramia.rateLimits.perKey",
    ),
    (
        "rate limit fractional",
        {"appstack:engramia": {"rateLimits": {"expensive": 2.5}}},
        "appstack:engramia.rateLimits.expensive",
    ),
    (
        "rate limit zero",
        {"appstack:engramia": {"rateLimits": {"default": 0}}},
        "appstack:engramia.rateLimits.default: 0 is out of range",
    ),
    (
        "unknown rate limit",
        {"appstack:engramia": {"rateLimits": {"burst": 5}}},
        "appstack:engramia.rateLimits: unknown fields ['burst']",
    ),
    (
        "auth mode that Engramia does not have",
        {"appstack:engramia": {"authMode": "api_key"}},
        "appstack:engramia.authMode: 'api_key' is not one of env, db",
    ),
    (
        "auth mode auto",
        {"appstack:engramia": {"authMode": "auto"}},
        "appstack:engramia.authMode: 'auto'",
    ),
    (
        "unknown engramia field",
        {"appstack:engramia": {"authmode": "env"}},
        "appstack:engramia: unknown fields ['authmode']",
    ),
    ("engramia not an object", {"appstack:engramia": "env"}, "appstack:engramia"),
]


@pytest.mark.parametrize(
    ("label", "overrides", "expected"), ENGRAMIA_CASES, ids=[c[0] for c in ENGRAMIA_CASES]
)
def test_bad_engramia_config_names_the_key_and_creates_nothing(
    label: str, overrides: dict[str, Any], expected: str
) -> None:
    attempt = Program()
    with pytest.raises(ConfigError) as err:
        run("engramia-dev", overrides=overrides, into=attempt)
    assert expected in str(err.value), f"{label}: {err.value}"
    assert attempt.resources == [], f"{label}: registered {[r.name for r in attempt.resources]}"


def test_engramia_settings_on_a_haven_stack_are_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        run("dev", overrides={"appstack:engramia": {"authMode": "env"}})
    assert "appstack:engramia: is set but appstack:app is 'haven'" in str(err.value)


def test_the_engramia_checks_above_can_pass() -> None:
    """Integers given as YAML numbers or as strings (``pulumi config set --path``) both work."""
    program = run(
        "engramia-dev",
        overrides={"appstack:engramia": {"authMode": "db", "rateLimits": {"default": "600"}}},
    )
    assert program.named("engramia-dev-engramia-api")


def test_docker_host_from_the_environment_needs_a_public_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2376")
    attempt = Program()
    with pytest.raises(ConfigError) as err:
        run("dev", into=attempt)
    assert "appstack:public.url: is required when the Docker engine is remote" in str(err.value)
    assert "DOCKER_HOST=tcp://10.0.0.5:2376" in str(err.value)
    assert attempt.resources == []
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/appstack-docker.sock")
    assert len(run("dev").resources) > 20  # a local socket needs none


def test_public_url_is_what_the_smoke_test_probes_and_publicurl_shows() -> None:
    url = "http://staging.example.com:8080/"
    program = run(
        "dev",
        overrides={
            "appstack:dockerHost": "ssh://deploy@staging.example.com",
            **_public(url=url),
        },
    )
    assert program.named("dev-haven-smoke").inputs["base_url"] == url.rstrip("/")
    assert program.outputs["publicUrl"] == url.rstrip("/")
    assert run("dev").outputs["publicUrl"] == "http://127.0.0.1:18080"  # without it, unchanged


def test_migration_lock_timeout_reaches_the_migration() -> None:
    def lock_timeout(program: Program) -> Any:
        return program.named("dev-haven-migration").inputs["lock_timeout"]

    assert lock_timeout(run("dev")) == "5s"
    changed = run("dev", overrides={"appstack:migrationLockTimeout": "750ms"})
    assert lock_timeout(changed) == "750ms"
    target = changed.named("dev-haven-migration").inputs["target"]
    assert target["stack"] == "dev", "task containers are labelled with the stack"


def test_dev_outputs_the_auth_token_as_a_secret() -> None:
    program = run("dev")
    assert "authToken" in program.secret_outputs
    assert "hostAgentSecret" in program.secret_outputs


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "engramia-dev", "engramia-prod"])
def test_the_key_table_covers_every_key_the_settings_read(stack: str) -> None:
    import json

    import pulumi

    from components import settings

    config = stack_config(stack)
    secrets = {f"appstack:{k}": v for k, v in SECRET_VALUES.items()}
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in {**config, **secrets}.items()}
    pulumi.runtime.set_all_config(flat, list(secrets))
    tracked = settings.TrackedConfig("appstack")
    # An Engramia stack lacks its own secrets here: what matters is what was read.
    with contextlib.suppress(ConfigError):
        settings.load(config=tracked, stack=stack, project="appstack")
    assert {"environment", "images", "public"} <= tracked.read
    assert tracked.read <= settings.known_keys(), tracked.read - settings.known_keys()


def test_the_readme_reference_is_generated_from_the_code_and_has_not_drifted() -> None:
    from components import config_reference
    from components.settings import CONFIG_KEYS, ENVIRONMENT_DEFAULTS
    from tests.unit.harness import ROOT

    readme = (ROOT / "README.md").read_text()
    assert config_reference.readme_table(readme) == config_reference.render(), (
        "run python -m components.config_reference --write"
    )
    assert config_reference.main([]) == 0
    # Every key the settings validate against has its row; defaults come from the code's table.
    rendered = config_reference.render()
    assert [k for k in CONFIG_KEYS if f"| `{k}" not in rendered] == []
    keep = ENVIRONMENT_DEFAULTS["staging"]["keepBackups"]
    assert f"| `keepBackups` | int | dev 3, staging {keep}, prod 14 |" in rendered
    assert "`engramia`" in rendered and "`apiKeys`" in rendered  # the secrets row, from APP_SECRETS


def test_a_changed_default_shows_up_as_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    from components import config_reference, settings
    from tests.unit.harness import ROOT

    changed = {**settings.ENVIRONMENT_DEFAULTS["dev"], "keepBackups": 4}
    monkeypatch.setitem(settings.ENVIRONMENT_DEFAULTS, "dev", changed)
    readme = (ROOT / "README.md").read_text()
    assert config_reference.readme_table(readme) != config_reference.render()
    assert config_reference.main([]) == 1
