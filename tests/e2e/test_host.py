"""A version running on the host (`host: {port}`), with real Docker and real Envoy: a Python
http.server on the host, bound to 127.0.0.1, gets exactly the requests with the dev header;
the rest go to the container version. Paused (as in a debugger) it goes unhealthy and
comes back by itself when it answers again: no container is replaced.

One mesh serves the module.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker
import pytest

from tests.e2e.conftest import APP, PROJECTS, Mesh, free_port, request, sweep

pytestmark = pytest.mark.docker

MESH = """
mesh: hostdev
defaults:
  health: {{path: /healthz, interval: 1s, timeout: 1s}}
ingress:
  port: {port}
  routes:
    - {{name: api, match: {{path_prefix: /}}, service: api}}
services:
  api:
    build: {app}
    image: devmesh-shop-app:1
    port: 8000
    versions:
      v1: {{}}
      local: {{host: {{port: {host_port}}}}}
    routes:
      - {{name: mine, match: {{headers: {{x-dev: me}}}}, to: local}}
      - {{name: main, to: v1}}
"""


class HostApp:
    """http.server on 127.0.0.1: answers "local served PATH", records what it served, and
    can be paused (its handlers block, as a process stopped in a debugger would)."""

    def __init__(self, port: int) -> None:
        self.served: list[str] = []
        self.running = threading.Event()
        self.running.set()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.running.wait(30)
                if self.path != "/healthz":
                    app.served.append(self.path)
                body = f"local served {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.running.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def dev(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[tuple[Mesh, HostApp]]:
    directory = tmp_path_factory.mktemp("host")
    mesh = Mesh(directory, f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client)
    PROJECTS.append(mesh.project)
    host_port = free_port()
    app = HostApp(host_port)
    mesh.file.write_text(MESH.format(port=mesh.port, app=APP, host_port=host_port))
    try:
        mesh.up_ok()
        yield mesh, app
    finally:
        app.close()
        mesh.run("down", timeout=60)
        sweep(docker_client, mesh.project)


def _local_pod(mesh: Mesh) -> dict[str, Any]:
    pod: dict[str, Any] = next(p for p in mesh.ps()["pods"] if p["version"] == "local")
    return pod


def _wait(check: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_the_host_process_gets_only_the_requests_with_the_dev_header(
    dev: tuple[Mesh, HostApp],
) -> None:
    mesh, app = dev
    app.served.clear()
    plain = [mesh.get(f"/plain/{i}") for i in range(30)]
    mine = [mesh.get(f"/mine/{i}", headers={"x-dev": "me"}) for i in range(20)]
    assert all(r.status == 200 and r.body.startswith("api/v1 (") for r in plain), plain[:2]
    assert all(
        r.status == 200 and r.body == f"local served /mine/{i}\n" for i, r in enumerate(mine)
    )
    assert app.served == [f"/mine/{i}" for i in range(20)]
    assert all(r.headers.get("x-devmesh-served-by") == "api/local" for r in mine)


def test_a_paused_host_process_goes_unhealthy_and_comes_back_without_a_restart(
    dev: tuple[Mesh, HostApp],
) -> None:
    mesh, app = dev
    before = mesh.containers()
    assert _local_pod(mesh)["state"] == "ready"
    app.running.clear()  # a breakpoint: connections are accepted, nothing answers
    try:
        assert _wait(lambda: _local_pod(mesh)["state"] == "unhealthy", 20), _local_pod(mesh)
        # The containers' version is untouched meanwhile.
        assert request(mesh.port, "/plain").status == 200
    finally:
        app.running.set()  # the debugger continues
    assert _wait(lambda: _local_pod(mesh)["state"] == "ready", 20), _local_pod(mesh)
    assert _wait(lambda: mesh.get("/back", headers={"x-dev": "me"}).status == 200, 10)
    assert mesh.get("/back", headers={"x-dev": "me"}).body == "local served /back\n"
    assert mesh.containers() == before  # nothing was replaced or restarted
