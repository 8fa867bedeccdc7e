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
WINDOW_FILE = "/data/appstack/window"
"""The runbook's maintenance window (Docker): while this file exists on the edge's volume, every
path but the spec's ``window_pass`` answers 503 with ``Retry-After``, except to requests carrying
the window token (the smoke test's). Caddy tests the file on each request: the migration opens the
window by creating it, the smoke test closes it by removing it, no reload either way; and it
survives a replacement of the edge container, since the volume does."""
WINDOW_HEADER = "X-Appstack-Window"


def window_token(secret: str) -> str:
    """The header value that passes the window: derived from a stack secret, never stored apart."""
    import hashlib

    return hashlib.sha256(f"appstack-window\0{secret}".encode()).hexdigest()[:40]


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


def _unavailable(indent: str) -> list[str]:
    return [
        f"{indent}header Retry-After {RETRY_AFTER_S}",
        f"{indent}header Content-Type application/json",
        f'{indent}respond `{{"status":"maintenance"}}` 503',
    ]


def _window(edge: EdgeSpec, token: str) -> list[str]:
    """503 for every path but ``window_pass`` while the window file exists (token excepted)."""
    root, name = WINDOW_FILE.rsplit("/", 1)
    lines = ["\t@window {", "\t\tfile {", f"\t\t\troot {root}", f"\t\t\ttry_files /{name}",
             "\t\t}"]  # fmt: skip
    if edge.window_pass:
        lines.append(f"\t\tnot path {' '.join(edge.window_pass)}")
    lines += [f"\t\tnot header {WINDOW_HEADER} {token}", "\t}", "\thandle @window {"]
    return [*lines, *_unavailable("\t\t"), "\t}"]


def _body(edge: EdgeSpec, upstream: str, window_token: str | None = None) -> list[str]:
    lines = ["\tlog {", "\t\toutput stdout", "\t\tformat json", "\t}"]
    if window_token:
        lines += _window(edge, window_token)
    if not edge.maintenance:
        if not window_token:
            return lines + _proxy(upstream)
        return [*lines, "\thandle {", *["\t" + line for line in _proxy(upstream)], "\t}"]
    paths = " ".join(edge.pass_through)
    lines += [f"\t@pass path {paths}", "\thandle @pass {"]
    lines += ["\t" + line for line in _proxy(upstream)]
    return [*lines, "\t}", "\thandle {", *_unavailable("\t\t"), "\t}"]


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
    window_token: str | None = None,
) -> str:
    """The whole Caddyfile: global options, then the site that fronts ``upstream`` (host:port).

    ``serve_tls`` false renders plain HTTP whatever the spec says (TLS ends at an Ingress).
    ``redirect_port`` is the public HTTPS port the plain-HTTP listener redirects to, if any.
    ``metrics`` adds request metrics and their listener on ``METRICS_PORT`` (monitoring).
    ``window_token`` renders the maintenance window of ``WINDOW_FILE`` (Docker; the spec's
    ``window`` apps), which requests carrying the token pass.
    """
    tls = serve_tls and edge.tls is not TlsMode.OFF
    lines = _global(edge, tls, metrics)
    if metrics:
        lines += [f"http://:{METRICS_PORT} {{", "\tmetrics", "}"]
    if not tls:
        lines += [f"http://:{HTTP_PORT} {{", *_body(edge, upstream, window_token), "}"]
        return "\n".join(lines) + "\n"
    lines += [
        f"https://{edge.host} {{",
        *_tls_directive(edge),
        *_body(edge, upstream, window_token),
        "}",
    ]
    if redirect_port is not None:
        target = f"https://{edge.host}:{redirect_port}{{uri}}"
        lines += [f"http://:{HTTP_PORT} {{", f"\tredir {target} 308", "}"]
    return "\n".join(lines) + "\n"
