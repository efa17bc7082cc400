"""`devmesh dev`'s forward proxy: how a process on the host reaches the mesh's services by
name with no code change. It is the process's `HTTP_PROXY`: a request for
`http://catalog/items` arrives here and goes to the gateway's host port for `catalog`
(the gateway's per-service hop, which admits only the host), so the service's routes,
retries and faults apply as for any caller.

Listens on 127.0.0.1 only. A host that is not a service of the mesh is refused (502):
nothing is sent anywhere else. Plain HTTP only (no CONNECT): the mesh speaks HTTP inside.
One request per connection (HTTP/1.0 answers).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 60.0  # seconds for the mesh to answer (a route's own timeout is usually shorter)
MAX_BODY = 64 * 1024 * 1024
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class DevProxy:
    """`routes`: service name -> (host, port) of the gateway's hop for it."""

    def __init__(self, routes: Mapping[str, tuple[str, int]], mesh: str) -> None:
        self.routes = dict(routes)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _forward

            def do_CONNECT(self) -> None:
                self.send_error(501, "devmesh dev's proxy speaks plain HTTP only")

            def log_message(self, *args: Any) -> None:
                pass

        self.mesh = mesh
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def forward(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        host = (url.hostname or req.headers.get("Host", "").split(":")[0]).lower()
        target = self.routes.get(host)
        if target is None:
            known = ", ".join(sorted(self.routes)) or "none"
            req.send_error(502, f"{host!r} is not an HTTP service of mesh '{self.mesh}' ({known})")
            return
        length = int(req.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            req.send_error(413, "request body too large")
            return
        body = req.rfile.read(length) if length else None
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = host
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        conn = http.client.HTTPConnection(*target, timeout=TIMEOUT)
        try:
            conn.request(req.command, path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            req.send_error(502, f"the mesh's gateway did not answer for {host!r}: {exc}")
            return
        finally:
            conn.close()
        req.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP | {"content-length", "date", "server"}:
                req.send_header(name, value)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)
