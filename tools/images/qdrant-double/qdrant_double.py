"""A STAND-IN for Qdrant's REST API (not Qdrant): the subset appstack's Haven stack uses.

GET /, /healthz, /readyz, /livez, /collections, /collections/{c}, /collections/{c}/exists
PUT /collections/{c}            {"vectors": {"size": N, "distance": "Cosine"|"Dot"|"Euclid"}}
DELETE /collections/{c}
PUT /collections/{c}/points     {"points": [{"id", "vector", "payload"}]} or {"batch": {...}}
POST /collections/{c}/points/search  {"vector": [...] | {"name","vector"}, "limit", "with_payload",
                                      "score_threshold"}
POST /collections/{c}/points/count
Points live in memory and are persisted as JSON under QDRANT_STORAGE (/qdrant/storage), one
file per collection, rewritten atomically on every change. Brute-force scoring, one lock.
"""

import json
import math
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STORAGE = os.environ.get("QDRANT_STORAGE", "/qdrant/storage")
PORT = int(os.environ.get("QDRANT__SERVICE__HTTP_PORT", "6333"))
VERSION = "1.12.0-appstack-double"
API_KEY = os.environ.get("QDRANT__SERVICE__API_KEY", "")
LOCK = threading.Lock()
COLLECTIONS = {}  # name -> {"config": {...}, "points": {id: {"vector", "payload"}}}
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


def path_of(name):
    return os.path.join(STORAGE, f"collection-{name}.json")


def load():
    os.makedirs(STORAGE, exist_ok=True)
    for f in os.listdir(STORAGE):
        if f.startswith("collection-") and f.endswith(".json"):
            with open(os.path.join(STORAGE, f)) as fh:
                data = json.load(fh)
            COLLECTIONS[data["name"]] = {"config": data["config"],
                                         "points": {p["key"]: p for p in data["points"]}}


def persist(name):
    if name not in COLLECTIONS:
        try:
            os.remove(path_of(name))
        except FileNotFoundError:
            pass
        return
    c = COLLECTIONS[name]
    tmp = path_of(name) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"name": name, "config": c["config"], "points": list(c["points"].values())}, fh)
    os.replace(tmp, path_of(name))


def score(distance, a, b):
    if distance == "Dot":
        return sum(x * y for x, y in zip(a, b))
    if distance == "Euclid":
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(x * x for x in b)) or 1.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def ok(result, status=200):
    return status, {"result": result, "status": "ok", "time": 0.0001}


def err(status, msg):
    return status, {"status": {"error": msg}, "time": 0.0}


def vector_params(config):
    v = config.get("vectors") or {}
    if "size" in v:
        return int(v["size"]), v.get("distance", "Cosine")
    raise ValueError("only a single unnamed vector config is supported by this stand-in")


def collection_info(name):
    c = COLLECTIONS[name]
    n = len(c["points"])
    return {"status": "green", "optimizer_status": "ok", "vectors_count": n, "indexed_vectors_count": 0,
            "points_count": n, "segments_count": 1,
            "config": {"params": {"vectors": c["config"]["vectors"], "shard_number": 1,
                                  "replication_factor": 1, "on_disk_payload": True}},
            "payload_schema": {}}


def handle(method, path, body):
    parts = [p for p in path.split("?")[0].split("/") if p]
    if method == "GET" and not parts:
        return 200, {"title": "qdrant - vector search engine (appstack stand-in)", "version": VERSION}
    if method == "GET" and parts == ["healthz"]:
        return 200, "healthz check passed"
    if method == "GET" and parts == ["livez"]:
        return 200, "healthz check passed"
    if method == "GET" and parts == ["readyz"]:
        return 200, "all shards are ready"
    if parts[:1] != ["collections"]:
        return err(404, f"Not found: {path}")
    with LOCK:
        if len(parts) == 1 and method == "GET":
            return ok({"collections": [{"name": n} for n in sorted(COLLECTIONS)]})
        name = parts[1]
        if not NAME.match(name):
            return err(422, f"Validation error: bad collection name {name!r}")
        rest = parts[2:]
        if rest == ["exists"] and method == "GET":
            return ok({"exists": name in COLLECTIONS})
        if not rest:
            if method == "PUT":
                if name in COLLECTIONS:
                    return err(409, f"Wrong input: Collection `{name}` already exists!")
                try:
                    size, dist = vector_params(body)
                except (ValueError, TypeError) as e:
                    return err(422, f"Validation error: {e}")
                if dist not in ("Cosine", "Dot", "Euclid"):
                    return err(422, f"Validation error: unknown distance {dist}")
                COLLECTIONS[name] = {"config": {"vectors": {"size": size, "distance": dist}}, "points": {}}
                persist(name)
                return ok(True)
            if method == "DELETE":
                existed = COLLECTIONS.pop(name, None) is not None
                persist(name)
                return ok(existed)
            if method == "GET":
                if name not in COLLECTIONS:
                    return err(404, f"Not found: Collection `{name}` doesn't exist!")
                return ok(collection_info(name))
        if name not in COLLECTIONS:
            return err(404, f"Not found: Collection `{name}` doesn't exist!")
        c = COLLECTIONS[name]
        size = c["config"]["vectors"]["size"]
        if rest == ["points"] and method == "PUT":
            points = body.get("points")
            if points is None and "batch" in body:
                b = body["batch"]
                payloads = b.get("payloads") or [None] * len(b["ids"])
                points = [{"id": i, "vector": v, "payload": p} for i, v, p in zip(b["ids"], b["vectors"], payloads)]
            for p in points or []:
                vec = p.get("vector")
                if isinstance(vec, dict):  # {"": [...]} or named: take the only one
                    vec = next(iter(vec.values()))
                if not isinstance(vec, list) or len(vec) != size:
                    return err(400, f"Wrong input: Vector dimension error: expected dim: {size}, got {len(vec or [])}")
                c["points"][str(p["id"])] = {"key": str(p["id"]), "id": p["id"], "vector": [float(x) for x in vec],
                                             "payload": p.get("payload") or {}}
            persist(name)
            return ok({"operation_id": int(time.time()), "status": "completed"})
        if rest == ["points", "search"] and method == "POST":
            vec = body.get("vector")
            if isinstance(vec, dict):
                vec = vec.get("vector")
            if not isinstance(vec, list) or len(vec) != size:
                return err(400, f"Wrong input: Vector dimension error: expected dim: {size}, got {len(vec or [])}")
            dist = c["config"]["vectors"]["distance"]
            scored = [(score(dist, vec, p["vector"]), p) for p in c["points"].values()]
            scored.sort(key=lambda t: t[0], reverse=(dist != "Euclid"))
            thr = body.get("score_threshold")
            if thr is not None:
                scored = [t for t in scored if (t[0] >= thr if dist != "Euclid" else t[0] <= thr)]
            limit = int(body.get("limit", 10))
            offset = int(body.get("offset", 0))
            wp = body.get("with_payload", False)
            wv = body.get("with_vector", False)
            out = []
            for s, p in scored[offset:offset + limit]:
                r = {"id": p["id"], "version": 0, "score": s}
                r["payload"] = p["payload"] if wp else None
                r["vector"] = p["vector"] if wv else None
                out.append(r)
            return ok(out)
        if rest == ["points", "count"] and method == "POST":
            return ok({"count": len(c["points"])})
    return err(404, f"Not found: {method} {path}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("qdrant-double: " + fmt % args, file=sys.stderr, flush=True)

    def _do(self, method):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n).decode() or "{}") if n else {}
        except ValueError as e:
            status, out = err(400, f"Format error in JSON body: {e}")
        else:
            if API_KEY and self.headers.get("api-key") != API_KEY and not self.path.startswith(("/healthz", "/readyz", "/livez")):
                status, out = err(401, "Must provide an API key or an Authorization bearer token")
            else:
                try:
                    status, out = handle(method, self.path, body)
                except Exception as e:  # never hang a test
                    status, out = err(500, f"Service internal error: {e}")
        if isinstance(out, str):
            data, ctype = out.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(out).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._do("GET")

    def do_PUT(self):
        self._do("PUT")

    def do_POST(self):
        self._do("POST")

    def do_DELETE(self):
        self._do("DELETE")


def main():
    load()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"qdrant-double {VERSION} (a stand-in, not Qdrant) on :{PORT}, storage {STORAGE}, "
          f"{len(COLLECTIONS)} collections loaded", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
