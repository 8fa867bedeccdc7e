"""A maintenance responder for apps without a maintenance switch of their own (Haven).

While maintenance is on, the public port is served by this responder instead of the app's public
service: health paths are proxied to the app (so probes and smoke tests still see it), every other
path answers 503 with ``Retry-After``. It runs inside the public service's own image with
``python3 -c`` (Haven's images are Python), so no extra image is needed.
"""

from __future__ import annotations

RESPONDER = r"""
import http.server, json, os, urllib.request, urllib.error
UPSTREAM = os.environ["MAINTENANCE_UPSTREAM"]
HEALTH = set(os.environ.get("MAINTENANCE_HEALTH_PATHS", "/v1/healthz").split(","))
PORT = int(os.environ.get("MAINTENANCE_PORT", "8080"))
class H(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if code == 503:
            self.send_header("Retry-After", "120")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.split("?", 1)[0] in HEALTH:
            try:
                with urllib.request.urlopen(UPSTREAM + self.path, timeout=5) as r:
                    ctype = r.headers.get("Content-Type", "application/json")
                    return self._send(r.status, r.read(), ctype)
            except urllib.error.HTTPError as e:
                return self._send(e.code, e.read())
            except OSError as e:
                return self._send(502, json.dumps({"status": "error", "detail": str(e)}).encode())
        self._send(503, json.dumps({"status": "maintenance"}).encode())
    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), H).serve_forever()
"""
