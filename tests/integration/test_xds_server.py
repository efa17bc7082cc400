"""The ADS server against the real Envoy binary, run as a host process (no Docker).

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
from devmesh.adapters.xds_server import NodeStatus, XdsServer
from devmesh.adapters.xds_types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from devmesh.core.model import Route, Service, Target, Version
from devmesh.envoy.bootstrap import ads_bootstrap
from devmesh.envoy.resources import (
    Resources,
    load_assignment,
    outbound_listener,
    outbound_route_config,
    version_cluster,
)

pytestmark = pytest.mark.envoy

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
    server = XdsServer(tmp_path / "xds.sock", max_workers=4)
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


def _disconnected(xds: XdsServer, node_id: str) -> Callable[[], bool]:
    return lambda: not xds.status(node_id).connected


def _assert_acked(status: NodeStatus) -> None:
    assert status.connected
    assert status.nack is None
    assert set(status.sent) == {LISTENER, ROUTE, CLUSTER, ENDPOINT}
    assert status.acked == status.sent


# -- tests ----------------------------------------------------------------------------------


def test_envoy_connects_receives_everything_and_acks(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    resources = mesh.resources()
    xds.set_snapshot(GROUP, resources)
    envoy("api-v1-a")
    envoy("api-v1-b")  # a second replica of the same group shares the snapshot

    assert xds.wait_synced(["api-v1-a", "api-v1-b"], timeout=10)

    a, b = xds.status("api-v1-a"), xds.status("api-v1-b")
    _assert_acked(a)
    _assert_acked(b)
    assert a.cluster == b.cluster == GROUP
    assert a.sent == b.sent
    assert [s.node_id for s in xds.statuses()] == ["api-v1-a", "api-v1-b"]


def test_stream_waits_for_a_snapshot_then_serves_traffic(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    envoy("api-v1-a")
    assert wait_for(lambda: any(s.node_id == "api-v1-a" for s in xds.statuses()), timeout=10)
    assert not xds.wait_synced(["api-v1-a"], timeout=0.3)  # connected, nothing to serve yet
    assert xds.status("api-v1-a").connected
    assert xds.status("api-v1-a").sent == {}

    xds.set_snapshot(GROUP, mesh.resources("v1"))
    assert xds.wait_synced(["api-v1-a"], timeout=10)

    # Listener (LDS) → route config (RDS) → cluster (CDS) → endpoint (EDS) → backend.
    assert [get(mesh.listener_port) for _ in range(3)] == ["v1"] * 3


def test_route_change_reaches_the_next_request(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    assert get(mesh.listener_port) == "v1"

    timings = []
    for to in ("v2", "v1", "v2", "v1", "v2"):
        before = xds.status("api-v1-a")
        started = time.perf_counter()
        xds.set_snapshot(GROUP, mesh.resources(to))
        assert xds.wait_synced(["api-v1-a"], timeout=5)
        timings.append((time.perf_counter() - started) * 1000)
        assert get(mesh.listener_port) == to  # the very next request, no retry
        after = xds.status("api-v1-a")
        # Only the route configuration changed, so only RDS was pushed.
        assert after.sent[ROUTE] != before.sent[ROUTE]
        assert {t: after.nonces[t] for t in (LISTENER, CLUSTER, ENDPOINT)} == {
            t: before.nonces[t] for t in (LISTENER, CLUSTER, ENDPOINT)
        }
    print(
        "\nset_snapshot → ACK (ms): "
        + ", ".join(f"{t:.1f}" for t in timings)
        + f"; median {sorted(timings)[len(timings) // 2]:.1f}"
    )


def test_new_version_is_synced_only_once_its_endpoints_arrive(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1", versions=("v1",)))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    assert get(mesh.listener_port) == "v1"

    # A new cluster (CDS) whose endpoints Envoy must then ask for by name (EDS), and a route
    # to it (RDS). Synced means all three are in, so the next request already reaches v2.
    xds.set_snapshot(GROUP, mesh.resources("v2", versions=("v1", "v2")))
    assert xds.wait_synced(["api-v1-a"], timeout=5)
    assert get(mesh.listener_port) == "v2"


def test_identical_snapshot_pushes_nothing(xds: XdsServer, envoy: StartEnvoy, mesh: Mesh) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    before = xds.status("api-v1-a")

    xds.set_snapshot(GROUP, mesh.resources("v1"))  # rebuilt from scratch, same content
    time.sleep(0.3)

    after = xds.status("api-v1-a")
    assert after.sent == before.sent
    assert after.nonces == before.nonces
    assert after.responses == before.responses
    assert xds.is_synced("api-v1-a")


def test_rejected_config_is_recorded_not_resent_and_a_fix_clears_it(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    good = mesh.resources("v1")
    xds.set_snapshot(GROUP, good)
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    kept = xds.status("api-v1-a").acked[CLUSTER]
    pushes = xds.status("api-v1-a").responses[CLUSTER]

    xds.set_snapshot(GROUP, mesh.resources("v1", bad_cluster=True))
    assert wait_for(lambda: xds.status("api-v1-a").nack is not None, timeout=5)
    status = xds.status("api-v1-a")
    nack = status.nack
    assert nack is not None
    print(f"\nEnvoy's NACK: {nack.message!r}")
    assert nack.type_url == CLUSTER
    assert nack.version_rejected == status.sent[CLUSTER] != kept
    assert nack.version_kept == kept
    assert "api|v2" in nack.message and "cluster provided LB" in nack.message
    assert not xds.is_synced("api-v1-a")

    time.sleep(1.0)  # a server that resends on NACK would loop many times in a second
    assert xds.status("api-v1-a").responses[CLUSTER] == pushes + 1
    assert get(mesh.listener_port) == "v1"  # Envoy keeps running the last good config

    xds.set_snapshot(GROUP, good)
    assert xds.wait_synced(["api-v1-a"], timeout=5)
    fixed = xds.status("api-v1-a")
    assert fixed.nack is None
    assert fixed.acked[CLUSTER] == kept


def test_envoy_going_away_ends_its_stream_threads(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    def stream_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("xds-read-")]

    xds.set_snapshot(GROUP, mesh.resources("v1"))
    for round_ in range(3):  # churn: pool threads are reused, reader threads end
        proc = envoy(f"api-v1-{round_}")
        assert xds.wait_synced([f"api-v1-{round_}"], timeout=10)
        assert len(stream_threads()) == 1
        proc.terminate()
        proc.wait(timeout=5)
        assert wait_for(_disconnected(xds, f"api-v1-{round_}"), timeout=5)
        assert wait_for(lambda: stream_threads() == [], timeout=5), stream_threads()
    pool = [t for t in threading.enumerate() if t.name.startswith("xds-stream")]
    assert 1 <= len(pool) <= 4  # bounded by max_workers, idle threads wait for the next stream


def test_server_stop_leaks_no_thread_and_envoy_reconnects(
    tmp_path: Path, envoy: StartEnvoy, mesh: Mesh
) -> None:
    baseline = threading.active_count()
    resources = mesh.resources("v1")
    first = XdsServer(tmp_path / "xds.sock", max_workers=4)
    second = XdsServer(tmp_path / "xds.sock", max_workers=4)
    try:
        first.start()
        assert os.stat(tmp_path / "xds.sock").st_mode & 0o777 == 0o600
        first.set_snapshot(GROUP, resources)
        envoy("api-v1-a")
        assert first.wait_synced(["api-v1-a"], timeout=10)
        assert threading.active_count() > baseline  # a pool thread and a reader per stream

        first.stop(grace=0.5)
        assert wait_for(lambda: threading.active_count() <= baseline, timeout=5), [
            t.name for t in threading.enumerate()
        ]
        assert not first.status("api-v1-a").connected  # the last status is kept
        stopped = time.perf_counter()
        while time.perf_counter() - stopped < 1.0:  # Envoy serves on without its control plane
            assert get(mesh.listener_port) == "v1"
            time.sleep(0.1)

        second.start()
        second.set_snapshot(GROUP, resources)
        started = time.perf_counter()
        assert second.wait_synced(["api-v1-a"], timeout=15)
        synced = time.perf_counter()
        print(
            f"\nEnvoy re-synced {synced - started:.2f} s after the restart"
            f" ({synced - stopped:.2f} s after the stop)"
        )
        assert get(mesh.listener_port) == "v1"
        _assert_acked(second.status("api-v1-a"))
    finally:
        first.stop(grace=0.5)
        second.stop(grace=0.5)
    assert wait_for(lambda: threading.active_count() <= baseline, timeout=5), [
        t.name for t in threading.enumerate()
    ]
