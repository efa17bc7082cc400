"""The daemon's local API: JSON over HTTP on a UNIX socket readable only by its owner.

GET  /v1/state      the mesh, its pods and their readiness, xDS status, problems
POST /v1/reload     re-read the mesh file and reconcile (what a second `up` does)
POST /v1/shutdown   stop the daemon (pods keep running; `down` removes them)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

log = logging.getLogger("devmesh.api")

Handler = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A thread per connection; connections are HTTP/1.1 and kept (the TUI reads on one)."""

    daemon_threads = True
    routes: dict[tuple[str, str], Handler]

    def server_activate(self) -> None:
        super().server_activate()
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close_open(self) -> None:
        """End the kept connections: a stopped API answers nothing more on them."""
        with self.open_lock:
            for request in self.open:
                with contextlib.suppress(OSError):  # already gone
                    request.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _dispatch(self, method: str) -> None:
        route = self.server.routes.get((method, self.path.split("?", 1)[0]))
        body: dict[str, Any] = {}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self._send(400, {"error": "the body is not JSON"})
                return
        if route is None:
            self._send(404, {"error": f"no {method} {self.path}"})
            return
        try:
            status, payload = route(body)
        except Exception as exc:  # the API must answer, whatever went wrong inside
            log.exception("API %s %s failed", method, self.path)
            status, payload = 500, {"error": str(exc)}
        self._send(status, payload)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def address_string(self) -> str:
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class ApiServer:
    def __init__(self, socket_path: Path, routes: dict[tuple[str, str], Handler]) -> None:
        self.socket_path = socket_path
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: its owner only
        try:
            self._server = _Server(str(socket_path), _Handler)
        finally:
            os.umask(old)
        self._server.routes = routes
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="api",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_open()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)
