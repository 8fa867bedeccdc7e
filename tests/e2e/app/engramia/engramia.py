"""Engramia test double: the HTTP contract of shared/DESIGN.md ("Engramia"), and nothing more.

One stdlib HTTP server plus SQLAlchemy over psycopg2 (unpacked from wheels into the image, as
the real image installs them). What it serves, in the order a request meets it:

1. rate limits, per client IP and path, and per API key (fixed one-minute windows; 429 with
   ``Retry-After: 60``). ENGRAMIA_RATE_LIMIT_DEFAULT / _EXPENSIVE / _PER_KEY are read with int()
   at start-up: any other form (``120/minute``) crashes the process, as it does the real one.
   The client IP is the first X-Forwarded-For entry when present (the real server runs uvicorn
   with --proxy-headers --forwarded-allow-ips=*).
2. request body size (ENGRAMIA_MAX_BODY_SIZE, 413).
3. maintenance: ENGRAMIA_MAINTENANCE=true|1|yes answers every path but exactly /v1/health and
   /v1/health/deep with 503 and ``Retry-After: 3600`` (/v1/version and /metrics included).
4. routes:
   GET  /v1/version          no auth: app_version, api_version, git_commit, build_time
   GET  /v1/health           bearer key: {"status":"ok","storage":...,"pattern_count":N}
   GET  /v1/health/deep      bearer key: per-check status and latency_ms; 503 only when every
                             configured check fails. Checks: storage (SELECT 1), llm and
                             embedding (slow probes that give up after ENGRAMIA_DOUBLE_PROBE_SECONDS,
                             3 s, without a reachable provider), redis and stripe (only when
                             configured), migration (alembic_version against the revision
                             pinned in this image)
   POST /v1/keys/bootstrap   {"bootstrap_token"}: 201 + owner key while api_keys is empty, then
                             409; 503 without ENGRAMIA_BOOTSTRAP_TOKEN or without DB auth; 401
   POST /v1/memories         bearer key: {"content", "tags"?} -> 201 (stored rows survive releases)
   GET  /v1/memories[/ID]    bearer key
   GET  /metrics             ENGRAMIA_METRICS=true; Bearer $ENGRAMIA_METRICS_TOKEN (401), 403
                             when no token is configured

Auth (ENGRAMIA_AUTH_MODE, default auto, any other value behaves as auto): env = keys of
ENGRAMIA_API_KEYS (comma-separated); db = sha256 of the key in table api_keys; auto = db when
ENGRAMIA_DATABASE_URL is set, else env; dev = no auth, only with ENGRAMIA_ALLOW_NO_AUTH=true and
never with ENGRAMIA_ENV production|prod; oidc = this double has no identity provider: every
token is refused. The version, the revision the migration check expects and the schema this
release writes come from /app/release.json, written when the image is built.

Logs are JSON lines on stdout. SIGTERM stops accepting, lets in-flight requests finish, exits 0.
"""

import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The real image ships psycopg2 and no psycopg 3 (Debian's python3-psycopg is in this image's
# base): a URL naming another driver must fail here as it fails there.
sys.modules["psycopg"] = None

RELEASE_FILE = os.environ.get("ENGRAMIA_DOUBLE_RELEASE_FILE", "/app/release.json")
API_VERSION = "v1"
HEALTH_PATHS = ("/v1/health", "/v1/health/deep")
EXPENSIVE_FRAGMENTS = ("/evaluate", "/compose", "/evolve")
TRUE = ("1", "true", "yes")
STARTED = time.monotonic()


def env(name, default=""):
    return os.environ.get(name, default)


def release():
    try:
        with open(RELEASE_FILE) as f:
            return json.load(f)
    except OSError:
        return {"app_version": "0.0.0+dev", "expected_revision": None}


RELEASE = release()
APP_VERSION = RELEASE.get("app_version") or "0.0.0+dev"
EXPECTED_REVISION = RELEASE.get("expected_revision")
WRITES_TAGS = bool(RELEASE.get("writes_tags"))


def log(level, message, **fields):
    line = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": "engramia.api",
        "message": message,
        "app_version": APP_VERSION,
        **fields,
    }
    print(json.dumps(line, default=str), flush=True)


def database_url():
    return env("ENGRAMIA_DATABASE_URL").strip()


def make_engine(url):
    """A SQLAlchemy engine; it connects lazily, so the API starts before its database answers."""
    from sqlalchemy import create_engine

    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         connect_args={"connect_timeout": 3})


class Config:
    """Everything read at start-up. A malformed integer raises here and the process exits."""

    def __init__(self):
        self.rate_default = int(env("ENGRAMIA_RATE_LIMIT_DEFAULT", "60"))
        self.rate_expensive = int(env("ENGRAMIA_RATE_LIMIT_EXPENSIVE", "10"))
        self.rate_per_key = int(env("ENGRAMIA_RATE_LIMIT_PER_KEY", "120"))
        self.max_body = int(env("ENGRAMIA_MAX_BODY_SIZE", str(1024 * 1024)))
        self.port = int(env("ENGRAMIA_PORT", "8000"))
        self.host = env("ENGRAMIA_HOST", "0.0.0.0")
        self.probe_s = float(env("ENGRAMIA_DOUBLE_PROBE_SECONDS", "3"))
        self.auth_mode = env("ENGRAMIA_AUTH_MODE", "auto").lower()
        self.storage = env("ENGRAMIA_STORAGE", "json").lower()
        self.data_path = env("ENGRAMIA_DATA_PATH", "/data/engramia_data")
        self.metrics = env("ENGRAMIA_METRICS", "false").lower() == "true"
        self.metrics_token = env("ENGRAMIA_METRICS_TOKEN").strip()
        self.engine = None
        if self.storage == "postgres":
            if not database_url():
                raise RuntimeError("ENGRAMIA_STORAGE=postgres needs ENGRAMIA_DATABASE_URL")
            self.engine = make_engine(database_url())
        self.auth_engine = None
        if self.auth_mode != "env" and database_url():
            self.auth_engine = self.engine or make_engine(database_url())

    def use_db_auth(self):
        if self.auth_mode in ("env", "dev", "oidc"):
            return False
        if self.auth_mode == "db":
            return True
        return bool(database_url())  # auto, and any unknown value


CFG = None
COUNTS = {}
COUNTS_LOCK = threading.Lock()
REQUESTS = {}
INFLIGHT = [0]
INFLIGHT_LOCK = threading.Lock()


# --------------------------------------------------------------------------------- storage
class JsonStore:
    """ENGRAMIA_STORAGE=json: memories in one file under ENGRAMIA_DATA_PATH."""

    kind = "json"

    def __init__(self, path):
        self.file = os.path.join(path, "memories.json")
        self.lock = threading.Lock()

    def _load(self):
        try:
            with open(self.file) as f:
                return json.load(f)
        except FileNotFoundError:
            return []

    def add(self, content, tags, scope):
        with self.lock:
            rows = self._load()
            row = {"id": len(rows) + 1, "content": content, "tags": tags, "tenant_id": scope[0],
                   "project_id": scope[1], "created_at": datetime.now(UTC).isoformat()}
            rows.append(row)
            os.makedirs(os.path.dirname(self.file), exist_ok=True)
            with open(self.file + ".tmp", "w") as f:
                json.dump(rows, f)
            os.replace(self.file + ".tmp", self.file)
            return row

    def list(self, scope, memory_id=None):
        rows = [r for r in self._load() if (r["tenant_id"], r["project_id"]) == scope]
        return [r for r in rows if memory_id is None or r["id"] == memory_id]

    def count(self):
        return len(self._load())

    def ping(self):
        self._load()


class PgStore:
    """ENGRAMIA_STORAGE=postgres: the ``memories`` table the migrations create."""

    kind = "postgres"

    def __init__(self, engine):
        self.engine = engine

    def _row(self, r):
        row = {"id": r.id, "content": r.content, "tenant_id": r.tenant_id,
               "project_id": r.project_id, "created_at": r.created_at.isoformat()}
        if WRITES_TAGS:
            row["tags"] = r.tags
        return row

    def _columns(self):
        return "id, content, tenant_id, project_id, created_at" + (", tags" if WRITES_TAGS else "")

    def add(self, content, tags, scope):
        from sqlalchemy import text

        params = {"content": content, "tenant": scope[0], "project": scope[1]}
        if WRITES_TAGS:
            sql = ("INSERT INTO memories (content, tenant_id, project_id, tags) "
                   "VALUES (:content, :tenant, :project, CAST(:tags AS jsonb))")
            params["tags"] = json.dumps(tags)
        else:
            sql = ("INSERT INTO memories (content, tenant_id, project_id) "
                   "VALUES (:content, :tenant, :project)")
        with self.engine.begin() as conn:
            r = conn.execute(text(sql + f" RETURNING {self._columns()}"), params).one()
        return self._row(r)

    def list(self, scope, memory_id=None):
        from sqlalchemy import text

        sql = (f"SELECT {self._columns()} FROM memories "
               "WHERE tenant_id = :tenant AND project_id = :project")
        params = {"tenant": scope[0], "project": scope[1]}
        if memory_id is not None:
            sql += " AND id = :id"
            params["id"] = memory_id
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(text(sql + " ORDER BY id"), params)]

    def count(self):
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM memories")).scalar_one())

    def ping(self):
        from sqlalchemy import text

        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


STORE = None


# ------------------------------------------------------------------------------ deep health
def timed(fn):
    started = time.perf_counter()
    try:
        extra = fn() or {}
        result = {"status": "ok", **extra}
    except Exception as e:  # a probe reports its failure, it never raises
        result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:300]}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def provider_probe(what):
    """The LLM / embedding client: without a reachable provider it gives up after its retries."""
    key = env("OPENAI_API_KEY")
    base = env("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    if not key:
        time.sleep(CFG.probe_s)  # the client's retries and backoff before it gives up
        raise ConnectionError(f"{what} provider unreachable: no OPENAI_API_KEY, client gave up")
    req = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=CFG.probe_s):  # noqa: S310 - the configured provider
        return {}


def check_redis():
    url = env("ENGRAMIA_REDIS_URL")
    if not url:
        return {"status": "not_configured"}
    parsed = urllib.parse.urlsplit(url)

    def probe():
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=CFG.probe_s):
            return {}

    return timed(probe)


def check_stripe():
    if not env("STRIPE_SECRET_KEY"):
        return {"status": "not_configured"}

    def probe():
        req = urllib.request.Request("https://api.stripe.com/v1/", method="HEAD")
        urllib.request.urlopen(req, timeout=CFG.probe_s).close()  # noqa: S310

    return timed(probe)


def check_migration():
    if STORE is None or STORE.kind != "postgres":
        return {"status": "not_configured"}
    from sqlalchemy import text

    current = {}

    def probe():
        with CFG.engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version LIMIT 1")).first()
        current["revision"] = row[0] if row else None
        if current["revision"] != EXPECTED_REVISION:
            raise RuntimeError(f"migration mismatch: current={current['revision']!r} "
                               f"expected={EXPECTED_REVISION!r}")

    result = timed(probe)
    result.update(current_revision=current.get("revision"), expected_revision=EXPECTED_REVISION)
    return result


def deep_health():
    checks = {
        "storage": timed(STORE.ping),
        "llm": timed(lambda: provider_probe("llm")),
        "embedding": timed(lambda: provider_probe("embedding")),
        "redis": check_redis(),
        "stripe": check_stripe(),
        "migration": check_migration(),
    }
    statuses = [c["status"] for c in checks.values() if c["status"] != "not_configured"]
    if all(s == "ok" for s in statuses):
        overall = "ok"
    elif all(s == "error" for s in statuses):
        overall = "error"
    else:
        overall = "degraded"
    body = {"status": overall, "version": APP_VERSION,
            "uptime_seconds": round(time.monotonic() - STARTED, 1), "checks": checks}
    return (503 if overall == "error" else 200), body


# ------------------------------------------------------------------------------------ auth
def error(status, code, detail, **extra):
    return status, {"error_code": code, "detail": detail, **extra}


def authorize(h):
    """None when the request may go on, else (status, body); sets h.scope."""
    h.scope = ("default", "default")
    allow_no_auth = env("ENGRAMIA_ALLOW_NO_AUTH").lower() in TRUE
    production = env("ENGRAMIA_ENV").lower().strip() in ("production", "prod")
    if CFG.auth_mode == "dev" or (not CFG.use_db_auth() and not env_keys()):
        if not allow_no_auth:
            return error(503, "SERVICE_UNAVAILABLE", "No API keys configured (or dev mode without "
                         "ENGRAMIA_ALLOW_NO_AUTH=true): nothing can be authorized.")
        if production:
            return error(503, "SERVICE_UNAVAILABLE",
                         "Authentication cannot be disabled in a production environment.")
        return None
    header = h.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return error(401, "UNAUTHORIZED",
                     "Missing or malformed Authorization header. Expected: Bearer <key>")
    token = header[len("Bearer "):]
    if CFG.auth_mode == "oidc":
        return error(401, "UNAUTHORIZED", "Invalid token (no identity provider in this double).")
    if CFG.use_db_auth():
        if CFG.auth_engine is None:
            return error(503, "SERVICE_UNAVAILABLE", "Authentication service not available.")
        from sqlalchemy import text

        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            with CFG.auth_engine.connect() as conn:
                row = conn.execute(text(
                    "SELECT tenant_id, project_id FROM api_keys "
                    "WHERE key_hash = :h AND revoked_at IS NULL"), {"h": digest}).first()
        except Exception as e:
            log("ERROR", "api key lookup failed", error=type(e).__name__)
            return error(503, "SERVICE_UNAVAILABLE", "Authentication service not available.")
        if row is None:
            return error(401, "UNAUTHORIZED", "Invalid or revoked API key.")
        h.scope = (row[0], row[1])
        return None
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in env_keys()):
        return error(401, "UNAUTHORIZED", "Invalid API key.")
    return None


def env_keys():
    return [k.strip() for k in env("ENGRAMIA_API_KEYS").split(",") if k.strip()]


def bootstrap(h):
    if CFG.auth_engine is None or not CFG.use_db_auth():
        return error(503, "SERVICE_UNAVAILABLE", "Key management requires DB auth mode "
                     "(ENGRAMIA_DATABASE_URL must be configured).")
    expected = env("ENGRAMIA_BOOTSTRAP_TOKEN").strip()
    if not expected:
        return error(503, "SERVICE_UNAVAILABLE", "Bootstrap is disabled: ENGRAMIA_BOOTSTRAP_TOKEN "
                     "is not set.")
    body = h.body_json()
    supplied = str(body.get("bootstrap_token") or "").strip()
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        log("WARNING", "bootstrap attempt with an invalid token", ip=h.client_ip())
        return error(401, "UNAUTHORIZED", "Invalid bootstrap token.")
    from sqlalchemy import text

    key = "engramia_sk_" + secrets.token_urlsafe(32)
    key_id = str(uuid.uuid4())
    name = str(body.get("key_name") or "Owner key")
    with CFG.auth_engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(736973)"))
        if conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one() > 0:
            return error(409, "CONFLICT", "Bootstrap already completed.")
        conn.execute(text("INSERT INTO tenants (id, name) VALUES ('default', :n) "
                          "ON CONFLICT (id) DO NOTHING"), {"n": body.get("tenant_name") or "Default"})
        conn.execute(text("INSERT INTO projects (id, tenant_id, name) VALUES "
                          "('default', 'default', :n) ON CONFLICT (id) DO NOTHING"),
                     {"n": body.get("project_name") or "default"})
        conn.execute(text(
            "INSERT INTO api_keys (id, tenant_id, project_id, name, key_prefix, key_hash, role) "
            "VALUES (:id, 'default', 'default', :name, :prefix, :hash, 'owner')"),
            {"id": key_id, "name": name, "prefix": key[:20] + "...",
             "hash": hashlib.sha256(key.encode()).hexdigest()})
    log("INFO", "bootstrap complete: owner key created", key_id=key_id)
    return 201, {"id": key_id, "name": name, "key": key, "key_prefix": key[:20] + "...",
                 "role": "owner", "tenant_id": "default", "project_id": "default"}


# ---------------------------------------------------------------------------------- routes
def metrics(h):
    if not CFG.metrics_token:
        return 403, "Forbidden: ENGRAMIA_METRICS_TOKEN is not configured."
    header = h.headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
    if not hmac.compare_digest(token.encode(), CFG.metrics_token.encode()):
        return 401, "Unauthorized"
    lines = ["# HELP engramia_requests_total Requests answered, by status.",
             "# TYPE engramia_requests_total counter"]
    with COUNTS_LOCK:
        lines += [f'engramia_requests_total{{status="{s}"}} {n}' for s, n in sorted(REQUESTS.items())]
    try:
        lines += ["# TYPE engramia_pattern_count gauge", f"engramia_pattern_count {STORE.count()}"]
    except Exception:
        lines.append("engramia_pattern_count NaN")
    return 200, "\n".join(lines) + "\n"


def memories(h, method, rest):
    denied = authorize(h)
    if denied:
        return denied
    if method == "POST" and not rest:
        body = h.body_json()
        content = body.get("content")
        if not isinstance(content, str) or not content:
            return error(422, "VALIDATION_ERROR", "content must be a non-empty string")
        tags = body.get("tags") or []
        return 201, STORE.add(content, [str(t) for t in tags], h.scope)
    if method == "GET" and not rest:
        return 200, {"memories": STORE.list(h.scope)}
    if method == "GET" and rest.isdigit():
        found = STORE.list(h.scope, int(rest))
        return (200, found[0]) if found else error(404, "NOT_FOUND", "memory not found")
    return error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed")


def route(h, method, path):
    if path == "/v1/version" and method == "GET":
        return 200, {"app_version": APP_VERSION, "api_version": API_VERSION,
                     "git_commit": env("GIT_COMMIT", "unknown"),
                     "build_time": env("BUILD_TIME", "unknown")}
    if path == "/v1/health" and method == "GET":
        denied = authorize(h)
        if denied:
            return denied
        return 200, {"status": "ok", "storage": STORE.kind, "pattern_count": STORE.count()}
    if path == "/v1/health/deep" and method == "GET":
        return authorize(h) or deep_health()
    if path == "/v1/keys/bootstrap" and method == "POST":
        return bootstrap(h)
    if path == "/v1/memories" or path.startswith("/v1/memories/"):
        return memories(h, method, path[len("/v1/memories"):].strip("/"))
    if (path == "/metrics" or path.startswith("/metrics/")) and CFG.metrics:
        return metrics(h)
    return error(404, "NOT_FOUND", "Not Found")


def rate_limited(ip, path, token):
    window = int(time.time() / 60)
    limit = CFG.rate_expensive if any(f in path for f in EXPENSIVE_FRAGMENTS) else CFG.rate_default
    with COUNTS_LOCK:
        if len(COUNTS) > 10000:  # forget earlier windows
            for k in [k for k in COUNTS if k[2] < window]:
                del COUNTS[k]
        ip_key = (ip, path, window)
        COUNTS[ip_key] = COUNTS.get(ip_key, 0) + 1
        key_count = 0
        if token is not None:
            key_key = ("key", hashlib.sha256(token.encode()).hexdigest()[:32], window)
            COUNTS[key_key] = COUNTS.get(key_key, 0) + 1
            key_count = COUNTS[key_key]
        ip_count = COUNTS[ip_key]
    if ip_count > limit:
        return error(429, "RATE_LIMITED", f"Rate limit exceeded. Max {limit} requests per minute.",
                     error_context={"retry_after": 60})
    if token is not None and key_count > CFG.rate_per_key:
        return error(429, "RATE_LIMITED", f"Rate limit exceeded. Max {CFG.rate_per_key} requests "
                     "per minute per API key.", error_context={"retry_after": 60})
    return None


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection is closed after this

    def log_message(self, fmt, *args):  # requests are logged as JSON by handle_one
        pass

    def client_ip(self):
        forwarded = self.headers.get("X-Forwarded-For", "")
        return forwarded.split(",")[0].strip() or self.client_address[0]

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        self._body_read = True
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    def reply(self, status, body, headers=()):
        text = isinstance(body, str)
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                            ("Referrer-Policy", "no-referrer"), *headers):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def handle_request(self, method):
        started = time.perf_counter()
        with INFLIGHT_LOCK:
            INFLIGHT[0] += 1
        self._body_read = False
        path = urllib.parse.urlsplit(self.path).path
        headers = []
        try:
            header = self.headers.get("Authorization", "")
            token = header[len("Bearer "):] if header.startswith("Bearer ") else None
            result = rate_limited(self.client_ip(), path, token)
            if result is not None:
                headers.append(("Retry-After", "60"))
            elif int(self.headers.get("Content-Length") or 0) > CFG.max_body:
                result = error(413, "PAYLOAD_TOO_LARGE", "Request body too large.")
                self.close_connection = True
            elif env("ENGRAMIA_MAINTENANCE").lower() in TRUE and path not in HEALTH_PATHS:
                result = error(503, "SERVICE_UNAVAILABLE", "Service is under scheduled maintenance. "
                               "Please try again later.", error_context={"retry_after": 3600})
                headers.append(("Retry-After", "3600"))
            else:
                result = route(self, method, path)
        except Exception as e:  # a double must never hang a test: 500 with the cause, logged
            log("ERROR", "unhandled error", path=path, error=f"{type(e).__name__}: {e}"[:300])
            result = error(500, "INTERNAL_ERROR", "An internal error occurred.")
        finally:
            with INFLIGHT_LOCK:
                INFLIGHT[0] -= 1
        status, body = result
        if not self._body_read and int(self.headers.get("Content-Length") or 0):
            self.close_connection = True  # an unread body would be taken for the next request
        self.reply(status, body, headers)
        with COUNTS_LOCK:
            REQUESTS[status] = REQUESTS.get(status, 0) + 1
        log("INFO", "request", method=method, path=path, status=status, client=self.client_ip(),
            duration_ms=round((time.perf_counter() - started) * 1000, 2))

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_PUT(self):
        self.handle_request("PUT")

    def do_DELETE(self):
        self.handle_request("DELETE")


def main():
    global CFG, STORE
    CFG = Config()  # raises (and the process exits 1) on a malformed integer setting
    STORE = PgStore(CFG.engine) if CFG.engine is not None else JsonStore(CFG.data_path)
    mode = CFG.auth_mode if CFG.auth_mode in ("env", "db", "dev", "oidc") else "auto"
    log("INFO", "starting", storage=STORE.kind, auth_mode=mode, db_auth=CFG.use_db_auth(),
        expected_revision=EXPECTED_REVISION, rate_limit_default=CFG.rate_default,
        rate_limit_expensive=CFG.rate_expensive, rate_limit_per_key=CFG.rate_per_key,
        maintenance=env("ENGRAMIA_MAINTENANCE").lower() in TRUE, metrics=CFG.metrics)
    server = ThreadingHTTPServer((CFG.host, CFG.port), Api)
    server.daemon_threads = True

    def stop(signum, _frame):
        log("INFO", "shutting down", signal=signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("INFO", "listening", port=CFG.port)
    server.serve_forever(poll_interval=0.2)
    server.server_close()  # refuse new connections; in-flight ones finish below
    deadline = time.monotonic() + 10
    while INFLIGHT[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    log("INFO", "stopped", unfinished=INFLIGHT[0])


if __name__ == "__main__":
    main()
