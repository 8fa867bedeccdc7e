"""The edge proxy's configuration: one Caddyfile, rendered from an ``EdgeSpec`` for every platform.

Caddy listens on unprivileged ports inside its container (HTTP 8080, HTTPS 8443); the platform
publishes them. On Docker the file is loaded through Caddy's admin API (``caddy reload``), which
swaps the whole configuration atomically and lets in-flight requests finish: that is how the edge
moves to a new release of its upstream without dropping a request. On Kubernetes the Ingress
terminates TLS and the file comes in through the pod's environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.spec import EdgeSpec, TlsMode

HTTP_PORT = 8080
HTTPS_PORT = 8443
METRICS_PORT = 2020
"""Plain-HTTP listener serving only Caddy's Prometheus metrics, when monitoring asks for it: on
the edge network, never published (the admin API, which also serves them, stays on localhost)."""
ADMIN = "localhost:2019"
DATA_DIR = "/data"
"""Caddy's data (certificates, its internal CA) and, under ``config/``, its autosaved config."""
CONFIG_FILE = "/data/appstack/Caddyfile"
CERT_FILE = "/data/appstack/tls/cert.pem"
KEY_FILE = "/data/appstack/tls/key.pem"
INTERNAL_CA = "/data/caddy/pki/authorities/local/root.crt"
ENV = {"XDG_DATA_HOME": DATA_DIR, "XDG_CONFIG_HOME": f"{DATA_DIR}/config"}
"""Both on the edge's volume: a restarted Caddy resumes the last loaded config and keeps its CA."""
# The container starts with whatever config it last loaded (none on a fresh volume: then only the
# admin endpoint listens until appstack loads one).
COMMAND = ("caddy", "run", "--resume")
HEALTH = ("wget", "-q", "-O", "/dev/null", f"http://{ADMIN}/config/")
# The official image gives /usr/bin/caddy the file capability cap_net_bind_service; with every
# capability dropped the kernel refuses to exec such a binary (EPERM), so the edge keeps exactly
# that one (the only one Kubernetes' restricted profile allows adding).
CAPABILITIES = ("NET_BIND_SERVICE",)
RETRY_AFTER_S = 3600
# A request whose upstream refuses the connection is retried this long before it fails: covers the
# instant an old release stops while a client's request is in the air.
TRY_DURATION = "5s"


@dataclass(frozen=True)
class Listen:
    """What the edge serves: which internal ports are published, and the scheme clients use."""

    scheme: str
    http: bool
    https: bool


def listens(edge: EdgeSpec, redirect: bool) -> Listen:
    """Plain HTTP when TLS is off; otherwise HTTPS, plus an HTTP redirect when ``redirect``."""
    if edge.tls is TlsMode.OFF:
        return Listen("http", http=True, https=False)
    return Listen("https", http=redirect, https=True)


def _global(edge: EdgeSpec, serve_tls: bool, metrics: bool = False) -> list[str]:
    lines = ["{", f"\tadmin {ADMIN}", f"\thttp_port {HTTP_PORT}", f"\thttps_port {HTTPS_PORT}"]
    if metrics:
        # Caddy 2.6 counts requests per server (with their status codes) only when asked.
        lines += ["\tservers {", "\t\tmetrics", "\t}"]
    if not serve_tls:
        lines.append("\tauto_https off")
    else:
        # Redirects, when wanted, are written out: Caddy's own would name the internal port.
        lines.append("\tauto_https disable_redirects")
        lines.append(f"\tdefault_sni {edge.host}")
        if edge.tls is TlsMode.ACME and edge.acme_email:
            lines.append(f"\temail {edge.acme_email}")
    lines.append("}")
    return lines


def _proxy(upstream: str) -> list[str]:
    return [
        f"\treverse_proxy {upstream} {{",
        f"\t\tlb_try_duration {TRY_DURATION}",
        "\t\tlb_try_interval 100ms",
        "\t}",
    ]


def _body(edge: EdgeSpec, upstream: str) -> list[str]:
    lines = ["\tlog {", "\t\toutput stdout", "\t\tformat json", "\t}"]
    if not edge.maintenance:
        return lines + _proxy(upstream)
    paths = " ".join(edge.pass_through)
    lines += [f"\t@pass path {paths}", "\thandle @pass {"]
    lines += ["\t" + line for line in _proxy(upstream)]
    lines += [
        "\t}",
        "\thandle {",
        f"\t\theader Retry-After {RETRY_AFTER_S}",
        "\t\theader Content-Type application/json",
        '\t\trespond `{"status":"maintenance"}` 503',
        "\t}",
    ]
    return lines


def _tls_directive(edge: EdgeSpec) -> list[str]:
    if edge.tls is TlsMode.INTERNAL:
        return ["\ttls internal"]
    if edge.tls is TlsMode.CERTIFICATE:
        return [f"\ttls {CERT_FILE} {KEY_FILE}"]
    return []  # ACME: Caddy's default for a named host


def caddyfile(
    edge: EdgeSpec,
    upstream: str,
    serve_tls: bool = True,
    redirect_port: int | None = None,
    metrics: bool = False,
) -> str:
    """The whole Caddyfile: global options, then the site that fronts ``upstream`` (host:port).

    ``serve_tls`` false renders plain HTTP whatever the spec says (TLS ends at an Ingress).
    ``redirect_port`` is the public HTTPS port the plain-HTTP listener redirects to, if any.
    ``metrics`` adds request metrics and their listener on ``METRICS_PORT`` (monitoring).
    """
    tls = serve_tls and edge.tls is not TlsMode.OFF
    lines = _global(edge, tls, metrics)
    if metrics:
        lines += [f"http://:{METRICS_PORT} {{", "\tmetrics", "}"]
    if not tls:
        lines += [f"http://:{HTTP_PORT} {{", *_body(edge, upstream), "}"]
        return "\n".join(lines) + "\n"
    lines += [f"https://{edge.host} {{", *_tls_directive(edge), *_body(edge, upstream), "}"]
    if redirect_port is not None:
        target = f"https://{edge.host}:{redirect_port}{{uri}}"
        lines += [f"http://:{HTTP_PORT} {{", f"\tredir {target} 308", "}"]
    return "\n".join(lines) + "\n"
