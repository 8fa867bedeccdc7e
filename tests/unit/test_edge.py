"""The edge proxy: its Caddyfile (pure rendering), and how the Docker platform publishes it.

Caddy itself is not on this host, so ``caddy validate`` is not run here: the rendered file is
parsed into its blocks instead (braces balanced, every directive in the block it belongs to).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from components import edge
from components.spec import EdgeSpec, TlsMode
from tests.unit.harness import MOCK_CA_PEM, Program, run, unwrap

UPSTREAM = "dev-haven-gateway-0123abcd:8080"
SPEC = EdgeSpec(
    image="appstack.local/caddy:2",
    upstream="gateway",
    upstream_port=8080,
    health_path="/v1/healthz",
    host="haven.example.com",
)
MAINTENANCE = replace(SPEC, maintenance=True, pass_through=("/v1/healthz",))
CONTAINER = "pulumi-python:dynamic/docker:Container"
EDGE_ROUTE = "pulumi-python:dynamic/docker:EdgeRoute"
PEM_CERT = "-----BEGIN CERTIFICATE-----\nedge-certificate-body\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nedge-private-key-body\n-----END PRIVATE KEY-----\n"


# -- a small Caddyfile reader -------------------------------------------------------------------


@dataclass
class Block:
    """One line of a Caddyfile and, when it opens ``{``, the lines inside."""

    line: str
    children: list[Block] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The directives directly inside this block."""
        return [c.line for c in self.children]

    def block(self, head: str) -> Block:
        """The only child block whose line is ``head``."""
        found = [c for c in self.children if c.line == head]
        assert len(found) == 1, f"expected one {head!r} in {self.line!r}, got {self.lines()}"
        return found[0]


def parse(text: str) -> Block:
    """The file's blocks; fails on unbalanced braces or a block closed on a directive's line."""
    root = Block("<file>")
    stack = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "}":
            assert len(stack) > 1, f"unbalanced '}}' in:\n{text}"
            stack.pop()
            continue
        opens = line.endswith("{")
        node = Block(line[:-1].rstrip() if opens else line)
        stack[-1].children.append(node)
        if opens:
            stack.append(node)
    assert len(stack) == 1, f"unclosed block {stack[-1].line!r} in:\n{text}"
    return root


def site(text: str, address: str) -> Block:
    return parse(text).block(address)


def sites(text: str) -> list[str]:
    """Every site address (top-level block but the global options)."""
    return [b.line for b in parse(text).children if b.line]


def global_options(text: str) -> list[str]:
    first = parse(text).children[0]
    assert first.line == "", "the global options block comes first"
    return first.lines()


def test_the_reader_rejects_a_broken_file() -> None:
    """The checks below can fail: an unclosed or over-closed block is caught."""
    with pytest.raises(AssertionError):
        parse("http://:8080 {\n\treverse_proxy x:1\n")
    with pytest.raises(AssertionError):
        parse("http://:8080 {\n}\n}\n")


# -- rendering ----------------------------------------------------------------------------------


def test_tls_off_is_one_plain_http_site_proxying_with_retries() -> None:
    text = edge.caddyfile(SPEC, UPSTREAM)
    assert sites(text) == ["http://:8080"]
    opts = global_options(text)
    assert "auto_https off" in opts
    assert "admin localhost:2019" in opts and "http_port 8080" in opts
    root = site(text, "http://:8080")
    proxy = root.block(f"reverse_proxy {UPSTREAM}")
    assert "lb_try_duration 5s" in proxy.lines()
    assert any(line.startswith("lb_try_interval ") for line in proxy.lines())
    assert not any(line.startswith("tls") for line in root.lines())
    assert "respond" not in text


def test_tls_off_ignores_a_redirect_port() -> None:
    text = edge.caddyfile(SPEC, UPSTREAM, redirect_port=18443)
    assert sites(text) == ["http://:8080"]
    assert "redir" not in text


def test_maintenance_answers_503_with_retry_after_and_passes_health_through() -> None:
    text = edge.caddyfile(MAINTENANCE, UPSTREAM)
    root = site(text, "http://:8080")
    assert "@pass path /v1/healthz" in root.lines()
    passed = root.block("handle @pass")
    assert passed.block(f"reverse_proxy {UPSTREAM}").lines()[0] == "lb_try_duration 5s"
    rest = root.block("handle")
    assert f"header Retry-After {edge.RETRY_AFTER_S}" in rest.lines()
    (respond,) = [line for line in rest.lines() if line.startswith("respond ")]
    assert respond.endswith(" 503")
    assert '{"status":"maintenance"}' in respond
    assert not any(line.startswith("reverse_proxy") for line in root.lines()), (
        "outside the health path nothing may reach the upstream"
    )


def test_maintenance_passes_every_listed_path() -> None:
    spec = replace(MAINTENANCE, pass_through=("/v1/healthz", "/v1/version"))
    root = site(edge.caddyfile(spec, UPSTREAM), "http://:8080")
    assert "@pass path /v1/healthz /v1/version" in root.lines()


def test_internal_tls_uses_caddys_own_ca_and_a_default_sni() -> None:
    spec = replace(SPEC, tls=TlsMode.INTERNAL, host="localhost")
    text = edge.caddyfile(spec, UPSTREAM)
    opts = global_options(text)
    assert "default_sni localhost" in opts
    assert "auto_https disable_redirects" in opts and "auto_https off" not in opts
    assert "https_port 8443" in opts
    assert sites(text) == ["https://localhost"], "no plain-HTTP listener without a redirect port"
    root = site(text, "https://localhost")
    assert "tls internal" in root.lines()
    assert "lb_try_duration 5s" in root.block(f"reverse_proxy {UPSTREAM}").lines()


def test_certificate_tls_reads_the_files_the_route_writes() -> None:
    spec = replace(SPEC, tls=TlsMode.CERTIFICATE)
    root = site(edge.caddyfile(spec, UPSTREAM), "https://haven.example.com")
    assert "tls /data/appstack/tls/cert.pem /data/appstack/tls/key.pem" in root.lines()
    assert (edge.CERT_FILE, edge.KEY_FILE) == (
        "/data/appstack/tls/cert.pem",
        "/data/appstack/tls/key.pem",
    )
    assert edge.CERT_FILE.startswith(edge.DATA_DIR + "/"), "on the edge's volume"


def test_acme_names_the_account_email_and_leaves_tls_to_caddy() -> None:
    spec = replace(SPEC, tls=TlsMode.ACME, acme_email="ops@example.com")
    text = edge.caddyfile(spec, UPSTREAM)
    assert "email ops@example.com" in global_options(text)
    assert "default_sni haven.example.com" in global_options(text)
    root = site(text, "https://haven.example.com")
    assert not any(line.startswith("tls") for line in root.lines())


def test_a_tls_port_turns_the_plain_port_into_a_redirect() -> None:
    spec = replace(SPEC, tls=TlsMode.INTERNAL)
    text = edge.caddyfile(spec, UPSTREAM, redirect_port=18443)
    assert sites(text) == ["https://haven.example.com", "http://:8080"]
    redirect = site(text, "http://:8080")
    assert redirect.lines() == ["redir https://haven.example.com:18443{uri} 308"]


def test_maintenance_under_tls_is_in_the_https_site() -> None:
    spec = replace(MAINTENANCE, tls=TlsMode.INTERNAL)
    text = edge.caddyfile(spec, UPSTREAM, redirect_port=18443)
    root = site(text, "https://haven.example.com")
    assert "tls internal" in root.lines()
    assert any(line.endswith(" 503") for line in root.block("handle").lines())
    assert "respond" not in str(site(text, "http://:8080").lines())


def test_tls_ending_elsewhere_renders_plain_http() -> None:
    """Kubernetes: the Ingress terminates TLS, whatever the spec says."""
    spec = replace(SPEC, tls=TlsMode.CERTIFICATE)
    text = edge.caddyfile(spec, "gateway:8080", serve_tls=False, redirect_port=18443)
    assert sites(text) == ["http://:8080"]
    assert "auto_https off" in global_options(text)
    assert "tls " not in text and "redir" not in text


@pytest.mark.parametrize(
    ("tls", "redirect", "expected"),
    [
        (TlsMode.OFF, False, edge.Listen("http", http=True, https=False)),
        (TlsMode.OFF, True, edge.Listen("http", http=True, https=False)),
        (TlsMode.INTERNAL, False, edge.Listen("https", http=False, https=True)),
        (TlsMode.ACME, True, edge.Listen("https", http=True, https=True)),
    ],
)
def test_what_the_edge_listens_on(tls: TlsMode, redirect: bool, expected: edge.Listen) -> None:
    assert edge.listens(replace(SPEC, tls=tls), redirect=redirect) == expected


# -- the edge on Docker ---------------------------------------------------------------------------


def _public(**fields: Any) -> dict[str, Any]:
    return {"appstack:public": {"address": "127.0.0.1", "port": 18080, **fields}}


def _caddy(program: Program) -> dict[str, Any]:
    return dict(unwrap(program.named("dev-haven-caddy").inputs))


def _route(program: Program) -> dict[str, Any]:
    (route,) = program.of_type(EDGE_ROUTE)
    return dict(unwrap(route.inputs))


def _ports(program: Program) -> list[tuple[int, int]]:
    return sorted((int(p["internal"]), int(p["external"])) for p in _caddy(program)["ports"])


def test_the_edge_container_keeps_its_state_on_a_volume_and_resumes_it() -> None:
    program = run("dev")
    caddy = _caddy(program)
    assert caddy["mounts"] == [{"source": "dev-haven-caddy-data", "target": edge.DATA_DIR}]
    assert caddy["command"] == ["caddy", "run", "--resume"]
    assert caddy["env"] == edge.ENV
    assert caddy["healthcheck"]["test"] == ["CMD", *edge.HEALTH]
    assert caddy["cap_add"] == ["NET_BIND_SERVICE"] and caddy["read_only"] is True
    route = _route(program)
    assert route["internal_ca"] is False and route["files"] == {}


def test_internal_tls_on_docker_publishes_https_and_trusts_the_edges_ca() -> None:
    program = run("dev", overrides=_public(tls="internal"))
    assert _ports(program) == [(edge.HTTPS_PORT, 18080)]
    route = _route(program)
    assert route["internal_ca"] is True
    assert "tls internal" in site(route["caddyfile"], "https://localhost").lines()
    smoke = program.named("dev-haven-smoke")
    assert smoke.inputs["base_url"] == "https://localhost:18080"
    assert smoke.inputs["ca_pem"] == MOCK_CA_PEM, "the smoke test trusts the CA the route returned"
    assert program.outputs["publicUrl"] == "https://localhost:18080"


def test_a_tls_port_moves_https_there_and_redirects_from_the_plain_port() -> None:
    program = run("dev", overrides=_public(tls="internal", tlsPort=18443))
    route = _route(program)
    redirect = site(route["caddyfile"], "http://:8080")
    assert redirect.lines() == ["redir https://localhost:18443{uri} 308"]
    assert program.named("dev-haven-smoke").inputs["base_url"] == "https://localhost:18443"
    assert (edge.HTTPS_PORT, 18443) in _ports(program)


def test_with_a_tls_port_the_plain_port_publishes_the_redirect_listener() -> None:
    program = run("dev", overrides=_public(tls="internal", tlsPort=18443))
    assert _ports(program) == [(edge.HTTP_PORT, 18080), (edge.HTTPS_PORT, 18443)]


def test_certificate_mode_ships_the_pem_files_only_as_secrets() -> None:
    program = run(
        "dev",
        overrides=_public(tls="certificate", host="haven.example.com"),
        secrets={"tlsCertificate": PEM_CERT, "tlsKey": PEM_KEY},
    )
    (route,) = program.of_type(EDGE_ROUTE)
    assert route.is_secret("files")
    assert unwrap(route.inputs)["files"] == {edge.CERT_FILE: PEM_CERT, edge.KEY_FILE: PEM_KEY}
    text = unwrap(route.inputs)["caddyfile"]
    assert (
        f"tls {edge.CERT_FILE} {edge.KEY_FILE}" in site(text, "https://haven.example.com").lines()
    )
    carriers = 0
    for res in program.resources:
        for prop, value in res.raw.items():
            if "edge-private-key-body" in str(value) or "edge-certificate-body" in str(value):
                carriers += 1
                assert res.is_secret(prop), f"{res.name}.{prop} carries the TLS key in plaintext"
    assert carriers >= 1
    assert program.named("dev-haven-smoke").inputs["base_url"] == "https://haven.example.com:18080"
