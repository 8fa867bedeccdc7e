"""A STAND-IN for Ollama's HTTP API on :11434 (not Ollama): deterministic embeddings.

POST /api/embeddings {"model", "prompt"}     -> {"embedding": [...]}
POST /api/embed      {"model", "input": s|[s]} -> {"model", "embeddings": [[...], ...]}
GET  /api/tags, GET /api/version, GET / ("Ollama is running"), POST /api/pull, POST /api/show
The vector is a unit vector derived from sha256(model + prompt), dimension OLLAMA_DOUBLE_DIM
(768, like nomic-embed-text). Models: OLLAMA_DOUBLE_MODELS (comma list, default
nomic-embed-text); an unknown model answers 404 like Ollama. OLLAMA_DOUBLE_FAIL=true makes every
/api/embed* call answer 500 (failure injection for the worker's 'failed' path).
"""

import hashlib
import json
import math
import os
import signal
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIM = int(os.environ.get("OLLAMA_DOUBLE_DIM", "768"))
MODELS = [m.strip() for m in os.environ.get("OLLAMA_DOUBLE_MODELS", "nomic-embed-text").split(",") if m.strip()]
PORT = int(os.environ.get("OLLAMA_PORT", "11434"))


def known(model):
    base = (model or "").split(":")[0]
    return any(base == m.split(":")[0] for m in MODELS)


def vector(model, text):
    out, i = [], 0
    seed = f"{model.split(':')[0]}\0{text}".encode()
    while len(out) < DIM:
        block = hashlib.sha256(seed + struct.pack(">I", i)).digest()
        out.extend((b - 127.5) / 127.5 for b in block)
        i += 1
    out = out[:DIM]
    norm = math.sqrt(sum(x * x for x in out)) or 1.0
    return [round(x / norm, 7) for x in out]


def handle(method, path, body):
    fail = os.environ.get("OLLAMA_DOUBLE_FAIL", "").lower() in ("1", "true", "yes")
    if method in ("GET", "HEAD") and path == "/":
        return 200, "Ollama is running"
    if method == "GET" and path == "/api/version":
        return 200, {"version": "0.0.0-appstack-double"}
    if method == "GET" and path == "/api/tags":
        return 200, {"models": [{"name": f"{m}:latest" if ":" not in m else m, "model": m, "size": 0,
                                 "digest": hashlib.sha256(m.encode()).hexdigest(),
                                 "details": {"family": "double", "format": "none"}} for m in MODELS]}
    if method == "POST" and path in ("/api/pull", "/api/show"):
        name = body.get("model") or body.get("name")
        if path == "/api/show" and not known(name):
            return 404, {"error": f"model '{name}' not found"}
        return 200, {"status": "success"} if path == "/api/pull" else {"details": {"family": "double"}}
    if method == "POST" and path in ("/api/embeddings", "/api/embed"):
        model = body.get("model", "")
        if not known(model):
            return 404, {"error": f"model \"{model}\" not found, try pulling it first"}
        if fail:
            return 500, {"error": "injected failure (OLLAMA_DOUBLE_FAIL)"}
        if path == "/api/embeddings":
            return 200, {"embedding": vector(model, str(body.get("prompt", "")))}
        inp = body.get("input", "")
        inputs = inp if isinstance(inp, list) else [inp]
        return 200, {"model": model, "embeddings": [vector(model, str(t)) for t in inputs]}
    return 404, "404 page not found"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("ollama-double: " + fmt % args, file=sys.stderr, flush=True)

    def _do(self, method):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n).decode() or "{}") if n else {}
            status, out = handle(method, self.path.split("?")[0], body)
        except ValueError as e:
            status, out = 400, {"error": f"invalid JSON: {e}"}
        if isinstance(out, str):
            data, ctype = out.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(out).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        self._do("GET")

    def do_HEAD(self):
        self._do("HEAD")

    def do_POST(self):
        self._do("POST")


def main():
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ollama-double (a stand-in, not Ollama) on :{PORT}, models {MODELS}, dim {DIM}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
