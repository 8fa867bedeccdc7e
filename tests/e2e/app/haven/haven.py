"""Haven test double: one program, four roles (env SERVICE = gateway | catalog | search | worker).

It implements the contract in shared/DESIGN.md ("Haven — one image, built with build-arg
SERVICE"), with nothing but the standard library and Debian's python3-psycopg:

- gateway  :8080  GET /v1/healthz -> {"status":"ok",...}
                  GET /v1/search?q=  Bearer $AUTH_TOKEN (401 missing, 403 wrong), forwarded to
                  $SEARCH_URL/v1/search with Bearer $SEARCH_TOKEN; 502 when search fails.
                  HAVEN_MAINTENANCE=true -> every path but /v1/healthz answers 503.
- catalog  :8081  GET /v1/healthz (503 unless DATABASE_URL connects);
                  GET/POST /v1/documents (Bearer $CATALOG_TOKEN when set).
- search   :8080  GET /v1/healthz -> {"status":"ok","service":"search",...}
                  GET /v1/search?q=  Bearer $SEARCH_TOKEN when set; embeds q with Ollama and
                  searches Qdrant; 500 when either is unreachable.
- worker   (none) every WORKER_POLL_INTERVAL s claims WORKER_BATCH_SIZE pending chunks,
                  embeds them with Ollama, marks them embedded | failed; heartbeat file
                  /tmp/worker-heartbeat (HAVEN_HEARTBEAT_FILE).

Every response and log line carries HAVEN_VERSION. SIGTERM stops the process at once.
"""

import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = os.environ.get("SERVICE", "gateway").strip()
if SERVICE == "worker_service":
    SERVICE = "worker"
VERSION = os.environ.get("HAVEN_VERSION", "dev")
HEARTBEAT = os.environ.get("HAVEN_HEARTBEAT_FILE", "/tmp/worker-heartbeat")

# Every env name of the real contract, per role (values are read; unused ones are ignored).
ENV_NAMES = {
    "gateway": ["SEARCH_URL", "DATABASE_URL", "AUTH_TOKEN", "CATALOG_BASE_URL", "CONTACTS_HELPER_URL",
                "CATALOG_TOKEN", "SEARCH_TOKEN", "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
                "MINIO_BUCKET", "MINIO_SECURE", "QDRANT_URL", "QDRANT_COLLECTION", "HAVEN_MAINTENANCE"],
    "catalog": ["DATABASE_URL", "CATALOG_TOKEN", "QDRANT_URL", "QDRANT_COLLECTION", "SEARCH_URL",
                "SEARCH_TOKEN", "CATALOG_FORWARD_TO_SEARCH"],
    "search": ["QDRANT_URL", "QDRANT_COLLECTION", "DB_DSN", "OLLAMA_BASE_URL", "EMBEDDING_MODEL",
               "SEARCH_TOKEN"],
    "worker": ["DATABASE_URL", "CATALOG_BASE_URL", "CATALOG_TOKEN", "WORKER_TYPE", "OLLAMA_BASE_URL",
               "EMBEDDING_MODEL", "WORKER_POLL_INTERVAL", "WORKER_BATCH_SIZE"],
}
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "DATABASE_URL", "DB_DSN")


def env(name, default=""):
    return os.environ.get(name, default)


def log(msg):
    print(f"haven-{SERVICE} {VERSION}: {msg}", file=sys.stderr, flush=True)


def dsn(url):
    """postgresql+psycopg://... -> postgresql://... (psycopg wants a libpq URL)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        scheme = scheme.split("+", 1)[0]
        if scheme == "postgres":
            scheme = "postgresql"
        return f"{scheme}://{rest}"
    return url


def db_connect(url, timeout=5):
    import psycopg  # imported lazily: gateway/search never need it

    return psycopg.connect(dsn(url), connect_timeout=timeout)


def http_json(method, url, body=None, headers=None, timeout=10):
    """Returns (status, parsed JSON or text). Raises OSError/URLError when unreachable."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw.decode() or "null")
    except ValueError:
        return status, raw.decode(errors="replace")


def embed(text):
    base = env("OLLAMA_BASE_URL", "http://localhost:11434").rstrip("/")
    model = env("EMBEDDING_MODEL", "nomic-embed-text")
    status, body = http_json("POST", f"{base}/api/embeddings", {"model": model, "prompt": text}, timeout=30)
    if status != 200 or not isinstance(body, dict) or not body.get("embedding"):
        raise RuntimeError(f"ollama answered {status}: {str(body)[:200]}")
    return body["embedding"]


def bearer_check(handler, expected):
    """None when authorized, else (status, body). Missing -> 401, wrong -> 403."""
    if not expected:
        return None
    auth = handler.headers.get("Authorization", "")
    if not auth:
        return 401, {"error": "missing bearer token"}
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return 401, {"error": "missing bearer token"}
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return 403, {"error": "invalid token"}
    return None


class Handler(BaseHTTPRequestHandler):
    server_version = "haven-double"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line per request on stderr
        log(f"{self.command} {self.path.split('?')[0]} -> " + (fmt % args).split('" ')[-1])

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Haven-Version", VERSION)
        self.end_headers()
        self.wfile.write(data)

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return {}
        return json.loads(self.rfile.read(n).decode())

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            fn = ROUTES[SERVICE]
            status, body = fn(self, method, url.path.rstrip("/") or "/", query)
        except Exception as e:  # a double must never hang a test: answer 500 with the cause
            log(f"error: {e!r}")
            status, body = 500, {"error": str(e)}
        if isinstance(body, dict):
            body.setdefault("version", VERSION)
        self.reply(status, body)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")


def health(extra=None):
    body = {"status": "ok", "service": SERVICE, "version": VERSION}
    body.update(extra or {})
    return 200, body


# ---------------------------------------------------------------------------- gateway
def gateway(h, method, path, query):
    if path == "/v1/healthz":
        return 200, {"status": "ok", "service": "gateway", "version": VERSION}
    if env("HAVEN_MAINTENANCE").lower() in ("1", "true", "yes", "on"):
        return 503, {"status": "maintenance"}
    if path == "/v1/search" and method == "GET" and VERSION.endswith("-badsearch"):
        # A release with a regression baked in (tag *-badsearch): healthy, but search fails.
        return 500, {"error": "regression in this release", "version": VERSION}
    if path == "/v1/search" and method == "GET":
        # No AUTH_TOKEN configured: nothing is authorized (401 without a token, 403 with one).
        denied = bearer_check(h, env("AUTH_TOKEN") or "\x00unset")
        if denied:
            return denied
        q = (query.get("q") or [""])[0]
        search = env("SEARCH_URL", "http://search:8080").rstrip("/")
        try:
            status, body = http_json(
                "GET", f"{search}/v1/search?" + urllib.parse.urlencode({"q": q}),
                headers={"Authorization": f"Bearer {env('SEARCH_TOKEN')}"}, timeout=30)
        except OSError as e:
            return 502, {"error": f"search unreachable: {e}"}
        if status != 200:
            return 502, {"error": "search failed", "upstream_status": status, "upstream": body}
        if not isinstance(body, dict):
            return 500, {"error": "search answered non-JSON"}
        body["via"] = "gateway"
        return 200, body
    return 404, {"error": "not found", "path": path}


# ---------------------------------------------------------------------------- catalog
def catalog(h, method, path, query):
    if path == "/v1/healthz":
        try:
            with db_connect(env("DATABASE_URL"), timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as e:
            return 503, {"status": "error", "service": "catalog", "database": str(e)[:300]}
        return health({"database": "ok"})
    denied = bearer_check(h, env("CATALOG_TOKEN"))
    if denied:
        return denied
    if path == "/v1/documents" and method == "GET":
        with db_connect(env("DATABASE_URL")) as conn:
            rows = conn.execute(
                "SELECT d.id, d.title, count(c.id), count(c.id) FILTER (WHERE c.embedding_status='embedded') "
                "FROM documents d LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id ORDER BY d.id"
            ).fetchall()
        return 200, {"documents": [{"id": r[0], "title": r[1], "chunks": r[2], "embedded": r[3]} for r in rows]}
    if path == "/v1/documents" and method == "POST":
        doc = h.body_json()
        chunks = doc.get("chunks") or []
        with db_connect(env("DATABASE_URL")) as conn:
            doc_id = conn.execute(
                "INSERT INTO documents (title, source_uri) VALUES (%s, %s) RETURNING id",
                (doc.get("title", "untitled"), doc.get("source_uri"))).fetchone()[0]
            for i, text in enumerate(chunks):
                conn.execute("INSERT INTO chunks (document_id, chunk_index, content) VALUES (%s, %s, %s)",
                             (doc_id, i, text))
        return 201, {"id": doc_id, "chunks": len(chunks)}
    return 404, {"error": "not found", "path": path}


# ----------------------------------------------------------------------------- search
def qdrant_url():
    return env("QDRANT_URL", "http://qdrant:6333").rstrip("/")


def collection():
    return env("QDRANT_COLLECTION", "haven_chunks")


def search(h, method, path, query):
    if path == "/v1/healthz":
        return 200, {"status": "ok", "service": "search", "version": VERSION}
    if path == "/v1/search" and method == "GET":
        denied = bearer_check(h, env("SEARCH_TOKEN"))
        if denied:
            return denied
        q = (query.get("q") or [""])[0]
        limit = int((query.get("limit") or ["5"])[0])
        try:
            vector = embed(q)
        except Exception as e:
            return 500, {"error": f"embedding failed (ollama): {e}"}
        base, coll = qdrant_url(), collection()
        try:
            status, body = http_json("POST", f"{base}/collections/{coll}/points/search",
                                     {"vector": vector, "limit": limit, "with_payload": True})
            if status == 404:  # a fresh stack has no collection yet: create it, then it is empty
                cs, cb = http_json("PUT", f"{base}/collections/{coll}",
                                   {"vectors": {"size": len(vector), "distance": "Cosine"}})
                if cs not in (200, 409):
                    return 500, {"error": f"qdrant create collection answered {cs}: {str(cb)[:200]}"}
                status, body = 200, {"result": []}
        except OSError as e:
            return 500, {"error": f"qdrant unreachable: {e}"}
        if status != 200 or not isinstance(body, dict):
            return 500, {"error": f"qdrant answered {status}: {str(body)[:200]}"}
        results = [{"id": r.get("id"), "score": r.get("score"), "payload": r.get("payload")}
                   for r in body.get("result") or []]
        return 200, {"query": q, "results": results, "service": "search"}
    return 404, {"error": "not found", "path": path}


ROUTES = {"gateway": gateway, "catalog": catalog, "search": search}
PORTS = {"gateway": 8080, "catalog": 8081, "search": 8080}


# ----------------------------------------------------------------------------- worker
def write_heartbeat(state):
    tmp = HEARTBEAT + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"time": time.time(), "version": VERSION, **state}, f)
    os.replace(tmp, HEARTBEAT)


def worker_once(batch):
    """Claims up to `batch` pending chunks and embeds them. Returns (embedded, failed)."""
    import psycopg

    done = failed = 0
    with db_connect(env("DATABASE_URL")) as conn:
        with conn.transaction():
            rows = conn.execute(
                "UPDATE chunks SET embedding_status = 'processing' WHERE id IN ("
                " SELECT id FROM chunks WHERE embedding_status = 'pending'"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, content",
                (batch,)).fetchall()
        for chunk_id, content in rows:
            try:
                vector = embed(content)
                literal = "[" + ",".join(repr(float(x)) for x in vector) + "]"
                conn.execute("UPDATE chunks SET embedding = %s::vector, embedding_status = 'embedded',"
                             " embedded_at = now() WHERE id = %s", (literal, chunk_id))
                conn.commit()
                done += 1
            except (psycopg.Error, OSError, RuntimeError, ValueError) as e:
                conn.rollback()
                log(f"chunk {chunk_id} failed: {e}")
                conn.execute("UPDATE chunks SET embedding_status = 'failed' WHERE id = %s", (chunk_id,))
                conn.commit()
                failed += 1
    return done, failed


def run_worker(stop):
    interval = float(env("WORKER_POLL_INTERVAL", "5") or 5)
    batch = int(env("WORKER_BATCH_SIZE", "10") or 10)
    kind = env("WORKER_TYPE", "embedding")
    log(f"worker type={kind} interval={interval}s batch={batch}")
    totals = {"embedded": 0, "failed": 0}
    while not stop.is_set():
        state = {"ok": True}
        if kind in ("embedding", "both"):
            try:
                d, f = worker_once(batch)
                totals["embedded"] += d
                totals["failed"] += f
                if d or f:
                    log(f"embedded {d}, failed {f}")
            except Exception as e:  # DB down or schema missing: keep looping, say why
                state = {"ok": False, "error": str(e)[:300]}
                log(f"poll failed: {e}")
        try:
            write_heartbeat({**state, **totals})
        except OSError as e:  # e.g. read-only root without a /tmp tmpfs: keep working, say so
            log(f"heartbeat not written ({HEARTBEAT}): {e}")
        stop.wait(interval)
    log("worker stopped")


def main():
    if SERVICE not in ("gateway", "catalog", "search", "worker"):
        log(f"unknown SERVICE {SERVICE!r}")
        return 2
    shown = {n: ("***" if any(w in n for w in SECRET_WORDS) and env(n) else env(n))
             for n in ENV_NAMES[SERVICE] if n in os.environ}
    log(f"starting; env {shown}")
    stop = threading.Event()

    if SERVICE == "worker":
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        run_worker(stop)
        return 0

    port = int(env("PORT", str(PORTS[SERVICE])))
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)

    def on_term(*_):
        log("SIGTERM: shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log(f"listening on :{port}")
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
