"""Fixtures for tests against the real Envoy binary run as host processes (no Docker): an
xDS server on a UNIX socket, Envoys started against it, and two tiny HTTP backends.

Every address is loopback or a UNIX socket in the test's tmp_path. Each Envoy gets its own
`--base-id` so several can run at once, and is terminated by its PID in teardown.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmesh.adapters.envoy_binary import envoy_path
from devmesh.adapters.xds_server import XdsServer
from devmesh.core.model import Route, Service, Target, Version
from devmesh.envoy.bootstrap import ads_bootstrap
from devmesh.envoy.resources import (
    Resources,
    load_assignment,
    outbound_listener,
    outbound_route_config,
    version_cluster,
)

GROUP = "test/api/v1"  # Envoy's node cluster: the snapshot key
_BASE_IDS = itertools.count((os.getpid() % 5000) * 10 + 1)
# No proxy from the environment: every request goes straight to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int) -> str:
    with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


_NOT_OURS = (
    "_poll_wrapper",  # grpc.aio's poller: one per process, started on first use and kept
    # the test backends' request handlers: Envoy keeps its upstream connections alive,
    # so one may outlive a request by any time (CI saw one at the final check)
    "process_request_thread",
)


def server_threads() -> list[str]:
    """Python threads, less those that the xDS server cannot have started."""
    return sorted(t.name for t in threading.enumerate() if not any(n in t.name for n in _NOT_OURS))


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@dataclasses.dataclass
class Mesh:
    """One service with two versions, each a tiny HTTP backend answering its own name."""

    service: Service
    listener_port: int
    backend_ports: dict[str, int]

    def resources(
        self, to: str = "v1", *, versions: tuple[str, ...] = ("v1", "v2"), bad_cluster: bool = False
    ) -> Resources:
        service = dataclasses.replace(
            self.service,
            versions=tuple(v for v in self.service.versions if v.name in versions),
            routes=(Route("default", (Target(to, 100),)),),
        )
        clusters = [version_cluster(service, v) for v in service.versions]
        if bad_cluster:
            # Parses as a Cluster proto, but Envoy refuses CLUSTER_PROVIDED for an EDS cluster.
            clusters[1] = {**clusters[1], "lb_policy": "CLUSTER_PROVIDED"}
        return Resources(
            listeners=(outbound_listener(service, [("127.0.0.1", self.listener_port)]),),
            routes=(outbound_route_config(service),),
            clusters=tuple(clusters),
            endpoints=tuple(
                load_assignment(f"api|{name}", ["127.0.0.1"], port=port)
                for name, port in self.backend_ports.items()
                if name in versions
            ),
        )


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.version.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    servers = []
    threads = []
    for name in ("v1", "v2"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
        server.version = name  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, name=f"backend-{name}")
        thread.start()
        servers.append(server)
        threads.append(thread)
    service = Service(
        name="api",
        port=8000,
        protocol="http",
        versions=(Version("v1", None, None), Version("v2", None, None)),
        routes=(Route("default", (Target("v1", 100),)),),
    )
    ports = {s.version: s.server_address[1] for s in servers}  # type: ignore[attr-defined]
    try:
        yield Mesh(service, free_port(), ports)
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join()


@pytest.fixture
def xds(tmp_path: Path) -> Iterator[XdsServer]:
    server = XdsServer(tmp_path / "xds.sock")
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)


StartEnvoy = Callable[[str], subprocess.Popen[bytes]]


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[StartEnvoy]:
    """Start Envoys (node id given; node cluster GROUP) against tmp_path/xds.sock."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(node_id: str) -> subprocess.Popen[bytes]:
        bootstrap = ads_bootstrap(
            node_id, GROUP, str(tmp_path / "xds.sock"), str(tmp_path / f"{node_id}-admin.sock")
        )
        config = tmp_path / f"{node_id}.json"
        config.write_text(json.dumps(bootstrap))
        with open(tmp_path / f"{node_id}.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    str(envoy_path()),
                    "-c",
                    str(config),
                    "--concurrency",
                    "1",
                    "--base-id",
                    str(next(_BASE_IDS)),
                    "-l",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()  # by PID: Popen signals exactly the process it started
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
