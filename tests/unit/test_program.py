"""The real program under mocks: what Haven's runbook promises, for the dev and staging stacks."""

from __future__ import annotations

import json

import pytest

from tests.unit.harness import SECRET_VALUES, Program, run

CONTAINER = "pulumi-python:dynamic/docker:Container"
NETWORK = "pulumi-python:dynamic/docker:Network"
VOLUME = "pulumi-python:dynamic/docker:Volume"
IMAGE = "pulumi-python:dynamic/docker:Image"
SERVICES = ("gateway", "catalog", "search", "worker")
DATASTORES = ("postgres", "qdrant", "minio")


@pytest.fixture(scope="module", params=["dev", "staging"])
def program(request: pytest.FixtureRequest) -> Program:
    stack = request.param
    secrets = SECRET_VALUES if stack == "staging" else None
    return run(stack, secrets=secrets)


def _stack(program: Program) -> str:
    return program.stack


def containers(program: Program) -> dict[str, dict]:
    """Containers by service name (the suffix of their physical name)."""
    return {r.inputs["name"].rsplit("-", 1)[-1]: r.inputs for r in program.of_type(CONTAINER)}


def test_every_service_and_datastore_exists(program: Program) -> None:
    assert set(containers(program)) == set(SERVICES + DATASTORES)


def test_exactly_one_published_port_the_gateways(program: Program) -> None:
    published = [
        (name, port) for name, c in containers(program).items() for port in c.get("ports") or []
    ]
    assert len(published) == 1
    name, port = published[0]
    assert name == "gateway"
    assert port["internal"] == 8080
    expected = {"dev": ("127.0.0.1", 18080), "staging": ("0.0.0.0", 8080)}[_stack(program)]
    assert (port["ip"], port["external"]) == expected


def test_internal_network_is_internal_and_datastores_only_on_it(program: Program) -> None:
    stack = _stack(program)
    nets = {r.inputs["name"]: r.inputs for r in program.of_type(NETWORK)}
    internal = f"{stack}-haven-internal"
    assert nets[internal]["internal"] is True
    assert not nets[f"{stack}-haven-edge"].get("internal")
    for name, c in containers(program).items():
        joined = {n["name"] for n in c["networks"]}
        aliases = {a for n in c["networks"] for a in n.get("aliases") or []}
        assert internal in joined and name in aliases
        if name in DATASTORES or name == "catalog":
            assert joined == {internal}, f"{name} joins {joined}"
    gateway_nets = {n["name"] for n in containers(program)["gateway"]["networks"]}
    assert gateway_nets == {internal, f"{stack}-haven-edge"}


def test_search_and_worker_reach_ollama_through_an_egress_network(program: Program) -> None:
    stack = _stack(program)
    expected = {"dev": "appstack-dev-ollama", "staging": f"{stack}-haven-egress"}[stack]
    for name in ("search", "worker"):
        joined = {n["name"] for n in containers(program)[name]["networks"]}
        assert expected in joined
    if stack == "staging":
        hosts = containers(program)["search"]["extra_hosts"]
        assert hosts == {"host.docker.internal": "host-gateway"}


def test_secret_values_only_travel_as_secrets(program: Program) -> None:
    stack = _stack(program)
    plaintexts = list(SECRET_VALUES.values()) if stack == "staging" else []
    plaintexts += [f"generated-{stack}-haven-{k}" for k in SECRET_VALUES] if stack == "dev" else []
    seen = 0
    for res in program.resources:
        for prop, value in res.raw.items():
            text = json.dumps(value)
            if any(p in text for p in plaintexts):
                seen += 1
                assert res.is_secret(prop), f"{res.name}.{prop} carries a secret in plaintext"
    assert seen >= 7, "the secrets should reach the containers that need them"
    for name in ("gateway", "catalog", "search", "worker", "postgres", "minio"):
        res = next(r for r in program.of_type(CONTAINER) if r.inputs["name"].endswith(name))
        assert res.is_secret("env"), f"{name}'s env holds a secret and must be secret"
    assert "hostAgentSecret" in program.secret_outputs


def test_image_references_come_from_config(program: Program) -> None:
    refs = {r.inputs["ref"] for r in program.of_type(IMAGE)}
    expected = {
        "dev": "appstack.local/haven-gateway:0.1.0",
        "staging": "registry.example.com/haven/gateway:1.0.0",
    }[_stack(program)]
    assert expected in refs
    assert not any(ref.endswith(":latest") for ref in refs)


def test_new_gateway_tag_changes_only_the_gateway_image() -> None:
    base = run("dev")
    images = {
        "gateway": {"registry": "appstack.local", "repository": "haven-gateway", "tag": "0.2.0"}
    }
    from tests.unit.harness import stack_config

    merged = stack_config("dev")["appstack:images"] | images
    changed = run("dev", overrides={"appstack:images": merged})
    before = {r.name: r.inputs["ref"] for r in base.of_type(IMAGE)}
    after = {r.name: r.inputs["ref"] for r in changed.of_type(IMAGE)}
    diff = {k for k in before if before[k] != after[k]}
    assert diff == {"dev-haven-gateway-image"}
    assert after["dev-haven-gateway-image"] == "appstack.local/haven-gateway:0.2.0"


def test_rollout_order_follows_the_design(program: Program) -> None:
    stack = _stack(program)
    by_name = {r.name: r for r in program.resources}

    def deps(name: str) -> set[str]:
        return {program.by_urn(u).name for u in by_name[f"{stack}-haven-{name}"].dependencies}

    p = f"{stack}-haven-"
    assert {p + "postgres"} <= deps("migration")
    assert not deps("postgres") & {p + s for s in (*SERVICES, "migration")}
    assert {p + "migration", p + "postgres", p + "qdrant"} <= deps("catalog")
    assert {p + "catalog", p + "migration"} <= deps("gateway")
    assert {p + "catalog", p + "migration"} <= deps("search")
    assert p + "search" not in deps("gateway") and p + "gateway" not in deps("search")
    assert {p + "search", p + "gateway", p + "catalog"} <= deps("worker")
    assert {p + s for s in SERVICES + DATASTORES} <= deps("smoke")
    assert {p + "minio"} <= deps("bucket")


def test_physical_names_carry_the_stack_name(program: Program) -> None:
    stack = _stack(program)
    for typ in (CONTAINER, NETWORK, VOLUME):
        for res in program.of_type(typ):
            assert res.inputs["name"].startswith(f"{stack}-"), res.inputs["name"]


def test_volumes_protected_where_settings_say(program: Program) -> None:
    stack = _stack(program)
    volumes = program.of_type(VOLUME)
    assert {v.inputs["name"] for v in volumes} >= {
        f"{stack}-haven-postgres-pgdata",
        f"{stack}-haven-qdrant-storage",
        f"{stack}-haven-minio-data",
        f"{stack}-haven-backups",
    }
    protected = stack == "staging"
    for vol in volumes:
        assert vol.protect is protected, vol.name
        assert vol.retain_on_delete is protected, vol.name
    for res in program.resources:
        if res.type != VOLUME:
            assert not res.protect, f"only data volumes are protected, not {res.name}"


def test_containers_are_hardened(program: Program) -> None:
    for name, c in containers(program).items():
        assert c["security_opt"] == ["no-new-privileges:true"], name
        assert c["memory_mb"] > 0 and c["cpus"] > 0, name
        assert c["restart"] == "unless-stopped", name
        assert "/tmp" in c["tmpfs"], name
        if name in SERVICES:
            assert c["read_only"] is True and c["cap_add"] == [], name
        if name != "worker":
            assert c["healthcheck"]["test"][0] == "CMD", name


def test_containers_run_the_resolved_image_of_their_reference(program: Program) -> None:
    images = {r.inputs["ref"]: r for r in program.of_type(IMAGE)}
    for name, c in containers(program).items():
        assert c["image"] in images, name
        assert c["image_id"].startswith("sha256:"), name


def test_migration_inputs_carry_no_plaintext_credential(program: Program) -> None:
    stack = _stack(program)
    migration = program.named(f"{stack}-haven-migration")
    for prop, value in migration.raw.items():
        if prop in ("db_password", "secret_env", "__provider"):
            continue
        text = json.dumps(value)
        for secret in SECRET_VALUES.values():
            assert secret not in text, f"migration input {prop} carries a secret"
    assert migration.is_secret("db_password")
    assert migration.inputs["quiescent"] == [f"{stack}-haven-worker"]


def test_maintenance_moves_the_public_port_to_the_responder() -> None:
    program = run("dev", overrides={"appstack:maintenance": "true"})
    running = containers(program)
    published = [name for name, c in running.items() if c.get("ports")]
    assert published == ["maintenance"]
    responder = running["maintenance"]
    assert responder["ports"] == [{"internal": 8080, "external": 18080, "ip": "127.0.0.1"}]
    assert responder["image"] == running["gateway"]["image"]
    assert responder["env"]["MAINTENANCE_UPSTREAM"] == "http://gateway:8080"
    assert responder["labels"]["appstack.stands-in"] == "true"
    assert "appstack.stands-in" not in running["gateway"]["labels"]
    smoke = program.named("dev-haven-smoke")
    assert {c["name"]: c["expect_status"] for c in smoke.inputs["checks"]} == {
        "gateway-health": 200,
        "maintenance": 503,
    }
    normal = run("dev")
    assert "maintenance" not in containers(normal)
