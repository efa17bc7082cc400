"""A version running on the host (`host: {port}`), with real Docker and real Envoy: a Python
http.server on the host, bound to 127.0.0.1, gets exactly the requests with the dev header;
the rest go to the container version. Paused (as in a debugger) it goes unhealthy and
comes back by itself when it answers again: no container is replaced.

`devmesh dev` runs a second one live (not in the file): it calls an upstream by name
through the proxy `devmesh dev` gives it, and stopping `devmesh dev` under load sends its
requests back to the containers with none failed.

One mesh serves the module.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker
import pytest

from tests.e2e.conftest import APP, ENV, PROJECTS, Mesh, free_port, request, sweep

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
  stock:
    build: {app}
    image: devmesh-shop-app:1
    port: 8000
"""


class HostApp:
    """http.server on 127.0.0.1: answers "local served PATH", records what it served, and
    can be paused (its handlers block, as a process stopped in a debugger would)."""

    def __init__(self, port: int) -> None:
        self.port = port
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


# What a developer runs under `devmesh dev`: an http.server on $PORT that calls `stock` by
# name (urllib takes HTTP_PROXY from the environment) and, stopped, finishes the requests
# it has before it exits (with 7, to see the exit code passed through).
DEV_APP = """
import os, signal, sys, threading, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with urllib.request.urlopen("http://stock/hello", timeout=10) as r:
            upstream = r.read().decode().splitlines()[0]
        body = f"dev served {self.path}; stock says: {upstream}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
server.server_close()  # joins the requests under way
sys.exit(7)
"""


def test_devmesh_dev_serves_its_header_calls_upstreams_and_leaves_with_no_failed_request(
    dev: tuple[Mesh, HostApp], tmp_path: Any
) -> None:
    mesh, _ = dev
    script = tmp_path / "server.py"
    script.write_text(DEV_APP)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devmesh",
            "dev",
            "api",
            "--version",
            "mine",
            "--header",
            "x-who=me",
            "-f",
            str(mesh.file),
            "-p",
            mesh.project,
            "--",
            sys.executable,
            str(script),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mine = {"x-who": "me"}
    try:
        assert _wait(lambda: mesh.get("/up", headers=mine).body.startswith("dev served"), 30)
        answers = [mesh.get(f"/m/{i}", headers=mine) for i in range(10)]
        for i, r in enumerate(answers):
            assert r.status == 200, r
            assert r.body.startswith(f"dev served /m/{i}; stock says: stock/default ("), r.body
        assert all(mesh.get("/p").body.startswith("api/v1 (") for _ in range(10))
        # Stopped under load: its requests go back to the containers, none fails.
        failures: list[str] = []
        bodies: list[tuple[float, str]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    r = mesh.get("/load", headers=mine)
                    bodies.append((time.monotonic(), r.body))
                    if r.status != 200:
                        failures.append(f"{r.status} {r.body[:100]}")
                except OSError as exc:
                    failures.append(repr(exc))
                time.sleep(0.02)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        exited = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 7, proc.stderr.read() if proc.stderr else ""
    assert failures == [], failures[:5]
    assert any(b.startswith("dev served") for _, b in bodies)  # it served under the load
    after = [b for t, b in bodies if t > exited]
    assert after and all(b.startswith("api/v1 (") for b in after), after[:3]
    assert _wait(lambda: all(p["version"] != "mine" for p in mesh.ps()["pods"]), 15)


def test_a_version_taken_out_again_and_again_under_load_fails_no_request(
    dev: tuple[Mesh, HostApp],
) -> None:
    # Each take-out drops the version's cluster in the push that moves its route away.
    # Envoy takes CDS first: had the cluster gone in that push, the route would still send
    # to a cluster its Envoy had lost for the moment between, answered 503 with no body (NC).
    # Counted from when the version serves (until then its route has no healthy endpoint,
    # as for any version whose pods are not ready) to the next add.
    from devmesh.api import types as api
    from devmesh.daemon import launcher

    mesh, _ = dev
    second = HostApp(free_port())
    client = launcher.client(mesh.project)
    mine = {"x-who": "cycle"}
    failures: list[str] = []
    counted = [0]
    counting = threading.Event()
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens to the loop below
        while not stop.is_set() and time.monotonic() < deadline:
            counts = counting.is_set()
            try:
                r = request(mesh.port, "/cycle", headers=mine)
                failed = None if r.status == 200 else f"{r.status} {r.body!r}"
            except OSError as exc:
                failed = repr(exc)
            if counts:
                counted[0] += 1
                if failed is not None:
                    failures.append(failed)

    def serving() -> bool:
        pods = [p for p in mesh.ps()["pods"] if p["version"] == "cycle"]
        return bool(pods) and all(p["state"] == "ready" for p in pods)

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for _ in range(10):
            added = client.dev(api.DevRequest("api", "cycle", second.port, "x-who", "cycle"))
            assert added.active and added.synced
            assert _wait(serving, 15)
            counting.set()
            time.sleep(0.3)
            removed = client.dev(api.DevRequest("api", "cycle", remove=True))
            assert not removed.active and removed.synced
            time.sleep(0.3)
            counting.clear()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        second.close()
    assert counted[0] > 100, counted
    assert failures == [], (len(failures), failures[:5])
    assert second.served  # it served while it was in
