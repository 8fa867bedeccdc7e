"""The real program under mocks: what Haven's runbook promises, for the dev and staging stacks."""

from __future__ import annotations

import json

import pytest

from tests.unit.harness import SECRET_VALUES, Program, run, unwrap

CONTAINER = "pulumi-python:dynamic/docker:Container"
NETWORK = "pulumi-python:dynamic/docker:Network"
VOLUME = "pulumi-python:dynamic/docker:Volume"
IMAGE = "pulumi-python:dynamic/docker:Image"
EDGE_ROUTE = "pulumi-python:dynamic/docker:EdgeRoute"
SERVICES = ("gateway", "catalog", "search", "worker")
DATASTORES = ("postgres", "qdrant", "minio")
EDGE = "caddy"
# How each release overlaps the running one (components/providers/container.py), by role:
# stateless services start first; whatever must not run twice (one volume, one job queue, one
# host port) stops first.
ROLLOUTS = {
    "gateway": "start-first", "catalog": "start-first", "search": "start-first",
    "worker": "stop-first", "postgres": "stop-first", "qdrant": "stop-first",
    "minio": "stop-first", "caddy": "stop-first",
}  # fmt: skip


@pytest.fixture(scope="module", params=["dev", "staging"])
def program(request: pytest.FixtureRequest) -> Program:
    stack = request.param
    secrets = SECRET_VALUES if stack == "staging" else None
    return run(stack, secrets=secrets)


def _stack(program: Program) -> str:
    return program.stack


def containers(program: Program) -> dict[str, dict]:
    """The app's containers by service name (the suffix of their physical name).

    The monitoring component's containers are tested on their own (test_monitoring.py).
    """
    return {
        r.inputs["name"].rsplit("-", 1)[-1]: r.inputs
        for r in program.of_type(CONTAINER)
        if unwrap(r.inputs["labels"]).get("appstack.component") != "monitoring"
    }


def edge_route(program: Program) -> dict:
    (route,) = program.of_type(EDGE_ROUTE)
    return dict(unwrap(route.inputs))


def test_every_service_and_datastore_exists(program: Program) -> None:
    assert set(containers(program)) == {*SERVICES, *DATASTORES, EDGE}


def test_exactly_one_published_port_the_edges(program: Program) -> None:
    published = [
        (name, port) for name, c in containers(program).items() for port in c.get("ports") or []
    ]
    assert len(published) == 1
    name, port = published[0]
    assert name == EDGE
    assert port["internal"] == 8080
    expected = {"dev": ("127.0.0.1", 18080), "staging": ("0.0.0.0", 8080)}[_stack(program)]
    assert (port["ip"], port["external"]) == expected
    assert containers(program)["gateway"]["ports"] == [], "the gateway is reached through the edge"


def test_internal_network_is_internal_and_datastores_only_on_it(program: Program) -> None:
    stack = _stack(program)
    nets = {r.inputs["name"]: r.inputs for r in program.of_type(NETWORK)}
    internal = f"{stack}-haven-internal"
    assert nets[internal]["internal"] is True
    assert not nets[f"{stack}-haven-edge"].get("internal")
    edge = f"{stack}-haven-edge"
    on_edge = set()
    for name, c in containers(program).items():
        joined = {n["name"] for n in c["networks"]}
        aliases = {a for n in c["networks"] for a in n.get("aliases") or []}
        if edge in joined:
            on_edge.add(name)
        if name == EDGE:
            # The edge is outside the internal network: it can reach only what joins the edge.
            assert c["networks"] == [{"name": edge, "aliases": [EDGE]}]
            continue
        assert internal in joined and name in aliases
        if name in DATASTORES or name == "catalog":
            assert joined == {internal}, f"{name} joins {joined}"
    gateway_nets = {n["name"] for n in containers(program)["gateway"]["networks"]}
    assert gateway_nets == {internal, edge}
    assert on_edge == {EDGE, "gateway"}


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
        # Images that read *_FILE get secret files; the others still need secret env.
        carrier = "secret_files" if name in ("postgres", "minio") else "env"
        assert res.is_secret(carrier), f"{name}'s {carrier} holds a secret and must be secret"
    assert "hostAgentSecret" in program.secret_outputs


def test_images_that_read_secret_files_get_files_not_env(program: Program) -> None:
    running = containers(program)
    expected = {
        "postgres": {"POSTGRES_PASSWORD"},
        "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    }
    for name, keys in expected.items():
        env, files = unwrap(running[name]["env"]), unwrap(running[name]["secret_files"])
        assert set(files) == {k.lower() for k in keys}, name
        for key in keys:
            assert key not in env, f"{name} gets {key} as a file, not env"
            assert env[f"{key}_FILE"] == f"/run/secrets/{key.lower()}"
    for name in ("gateway", "catalog", "search", "worker", "qdrant", "caddy"):
        assert not running[name].get("secret_files"), f"{name}'s image reads env only"


def test_every_haven_service_runs_as_the_uid_kubernetes_forces(program: Program) -> None:
    users = {name: c.get("user") for name, c in containers(program).items()}
    assert users == {
        **dict.fromkeys(("gateway", "catalog", "search", "worker"), "10001"),
        "postgres": "999",
        "qdrant": "1000",
        "minio": "1000",
        "caddy": None,  # the image's own user (the local image's 1000; README, Security)
    }
    for name in ("postgres", "minio"):
        assert containers(program)[name]["cap_add"] == [], f"{name} starts non-root: no caps"


def test_image_references_come_from_config(program: Program) -> None:
    refs = {r.inputs["ref"] for r in program.of_type(IMAGE)}
    expected = {
        "dev": "appstack.local/haven-gateway:0.1.0",
        "staging": "registry.example.com/haven/gateway:1.0.0",
    }[_stack(program)]
    assert expected in refs
    edge = {"dev": "appstack.local/caddy:2", "staging": "docker.io/library/caddy:2.8.4"}
    assert edge[_stack(program)] in refs
    assert containers(program)[EDGE]["image"] == edge[_stack(program)]
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
    # The edge switches only once both it and the gateway's new release are up, and the smoke
    # test runs through the switched edge.
    assert {p + "caddy", p + "gateway"} <= deps("edge-route")
    assert {p + "edge-route", p + "caddy"} <= deps("smoke")


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
        if name == "postgres":
            assert c["read_only"] is True and "/var/run/postgresql" in c["tmpfs"], name
        if name == EDGE:
            # Exactly the one the official image's binary carries as a file capability.
            assert c["read_only"] is True and c["cap_add"] == ["NET_BIND_SERVICE"], name
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


def test_each_role_rolls_out_as_designed(program: Program) -> None:
    running = containers(program)
    assert {name: c["rollout"] for name, c in running.items()} == ROLLOUTS
    for name, c in running.items():
        assert c["grace_s"] > 0, name
        if c["mounts"]:
            assert c["rollout"] == "stop-first", f"{name} has a volume and must never run twice"


def test_no_container_or_volume_is_deleted_before_its_replacement(program: Program) -> None:
    checked = program.of_type(CONTAINER) + program.of_type(VOLUME)
    assert len(checked) >= len(ROLLOUTS) + 4
    for res in checked:
        assert not res.delete_before_replace, res.name


def test_the_edge_routes_to_the_gateways_release_not_its_alias(program: Program) -> None:
    route = edge_route(program)
    gateway = f"{_stack(program)}-haven-gateway"
    # The mocked engine names each release `<name>-0123abcd` (its `container_name` output): the
    # edge follows a new release only when the route is updated to it, never by DNS.
    assert route["upstream"] == f"{gateway}-0123abcd:8080"
    assert f"reverse_proxy {gateway}-0123abcd:8080 {{" in route["caddyfile"]
    assert (route["health_path"], route["health_status"]) == ("/v1/healthz", 200)
    assert "respond" not in route["caddyfile"], "no maintenance answer outside maintenance"


def test_maintenance_is_answered_at_the_edge() -> None:
    program = run("dev", overrides={"appstack:maintenance": "true"})
    running = containers(program)
    assert "maintenance" not in running, "no responder container any more"
    assert set(running) == {*SERVICES, *DATASTORES, EDGE}
    published = {name: c["ports"] for name, c in running.items() if c.get("ports")}
    assert published == {EDGE: [{"internal": 8080, "external": 18080, "ip": "127.0.0.1"}]}
    caddyfile = edge_route(program)["caddyfile"]
    assert "@pass path /v1/healthz\n" in caddyfile
    assert "\t\theader Retry-After 3600\n" in caddyfile
    assert '\t\trespond `{"status":"maintenance"}` 503\n' in caddyfile
    assert "reverse_proxy dev-haven-gateway-0123abcd:8080 {" in caddyfile
    smoke = program.named("dev-haven-smoke")
    checks = {c["name"]: c for c in smoke.inputs["checks"]}
    assert {name: c["expect_status"] for name, c in checks.items()} == {
        "gateway-health": 200,
        "maintenance": 503,
    }
    assert checks["gateway-health"]["path"] == "/v1/healthz"
    assert checks["maintenance"]["path"].startswith("/v1/search")
    normal = run("dev")
    assert "respond" not in edge_route(normal)["caddyfile"]
    normal_checks = {c["name"] for c in normal.named("dev-haven-smoke").inputs["checks"]}
    assert "maintenance" not in normal_checks
