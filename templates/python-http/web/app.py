"""A small HTTP service: answers JSON naming its version. devmesh tells each pod who it is
through DEVMESH_SERVICE, DEVMESH_VERSION and DEVMESH_PORT."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = os.environ.get("DEVMESH_SERVICE", "web")
VERSION = os.environ.get("DEVMESH_VERSION", "dev")
GREETING = os.environ.get("GREETING", "hello")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with the sidecar

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.answer(200, {"ok": True})
        else:
            self.answer(200, {"service": SERVICE, "version": VERSION, "message": GREETING,
                              "path": self.path})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    port = int(os.environ.get("DEVMESH_PORT", "8000"))
    print(f"{SERVICE} {VERSION} listening on :{port}")
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
