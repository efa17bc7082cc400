"""The core of devmesh on every engine it is tested on: the local Docker engine, a simulated
remote engine that behaves like Docker Desktop (the tcp transport), and Podman.

One mesh per engine (module scope), driven by the real `devmesh` command and the daemon's API
(what the TUI reads): up --wait, routing through the sidecars, a live shift under load with no
failed request, an injected fault, ps, logs, stats, and down with nothing left on the engine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import pytest

from devmesh import labels
from devmesh.api import types as api
from devmesh.client import DaemonClient
from tests.e2e.conftest import PROJECTS, Mesh, free_port, request, sweep
from tests.e2e.test_runtime import SHOP, served_by, wait_for

if TYPE_CHECKING:  # imported by pytest_plugins below: importing it first stops its rewrite
    from tests.e2e.engines import Engine

pytest_plugins = ["tests.e2e.engines"]
pytestmark = pytest.mark.docker


class EngineMesh(Mesh):
    """A Mesh whose commands run against its engine (DOCKER_HOST, DEVMESH_TRANSPORT)."""

    engine: Engine

    def run(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return super().run(*args, timeout=timeout, env=env or self.engine.env)

    def daemon(self) -> DaemonClient:
        return DaemonClient(self.state_dir() / "api.sock")


@pytest.fixture(scope="module")
def shop(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineMesh]:
    directory = tmp_path_factory.mktemp(f"shop-{engine.name}")
    mesh = EngineMesh(directory, f"t{uuid.uuid4().hex[:8]}", free_port(), engine.client)
    mesh.engine = engine
    PROJECTS.append(mesh.project)
    mesh.write(SHOP)
    began = time.monotonic()
    result = mesh.up()
    mesh.up_seconds = time.monotonic() - began  # type: ignore[attr-defined]
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield mesh
    finally:
        mesh.run("down", timeout=60)
        sweep(engine.client, mesh.project)


def test_up_wait_returns_with_every_pod_ready_and_synced(shop: EngineMesh) -> None:
    data = shop.ps()
    assert data["ready"] is True
    pods = {p["pod"]: p for p in data["pods"]}
    assert set(pods) == {
        f"{shop.project}-{name}"
        for name in ("frontend-default-0", "catalog-v1-0", "catalog-v2-0", "stock-default-0")
    }
    for pod in pods.values():
        assert pod["xds"]["synced"] and pod["xds"]["nack"] is None, pod
    expected = {"docker": "unix", "remote": "tcp"}.get(shop.engine.name)
    if expected is not None:  # Podman: whichever the daemon decides (its socket is local)
        assert data["transport"] == expected
    if expected == "tcp":
        # Nothing of the host is bind-mounted: the engine's filesystem is not the host's, so
        # a bind would silently give an empty directory (a file: a failed start).
        found = shop.client.containers.list(
            all=True, filters={"label": labels.selector(mesh=shop.project)}
        )
        binds = [
            (c.name, m["Source"]) for c in found for m in c.attrs["Mounts"] if m["Type"] == "bind"
        ]
        assert binds == []


def test_request_crosses_the_gateway_and_the_sidecars(shop: EngineMesh) -> None:
    resp = shop.get("/")
    assert resp.status == 200, resp
    assert served_by(resp) == "frontend/default"  # added by frontend's inbound sidecar
    assert "x-envoy-upstream-service-time" in resp.headers  # the gateway's router
    assert "-> catalog: catalog/v" in resp.body  # frontend called catalog by name
    assert "-> stock: stock/default: widget in stock: 42" in resp.body  # and stock over TCP


def test_live_shift_under_load_fails_no_request(shop: EngineMesh) -> None:
    """Requests run on kept-alive connections while `shift` moves catalog to v2; every one
    answers 200, and the traffic ends up all on v2 without a container being recreated."""
    before = shop.containers()
    statuses: Counter[int | str] = Counter()
    served: list[str] = []
    stop = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", shop.port, timeout=10)
        deadline = time.monotonic() + 20  # bounded whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", "/catalog/x")
                r = conn.getresponse()
                r.read()
                statuses[r.status] += 1
                served.append(str(r.getheader("x-devmesh-served-by", "")))
            except (OSError, http.client.HTTPException) as exc:
                statuses[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", shop.port, timeout=10)
            time.sleep(0.005)
        conn.close()

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        result = shop.run("shift", "catalog", "v1=0", "v2=100")
        assert result.returncode == 0, result.stderr
        shifted = len(served)
        wait_for(lambda: served[-10:] == ["catalog/v2"] * 10, timeout=10, every=0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) >= 50, statuses
    assert "catalog/v1" in served[:shifted]  # it was on 80/20 before
    assert shop.containers() == before


def test_fault_set_through_the_api_aborts_requests_then_clears(shop: EngineMesh) -> None:
    daemon = shop.daemon()
    result = daemon.fault("catalog", "main", abort=api.AbortSpec(percent=100, status=503))
    assert result.active and result.synced, result
    statuses = Counter(shop.get("/catalog/x").status for _ in range(20))
    assert statuses == Counter({503: 20}), statuses
    cleared = daemon.fault("catalog", "main")
    assert not cleared.active and cleared.synced, cleared
    statuses = Counter(shop.get("/catalog/x").status for _ in range(20))
    assert statuses == Counter({200: 20}), statuses


def test_ps_logs_and_the_tui_data_read_the_engine(shop: EngineMesh) -> None:
    text = shop.run("ps").stdout
    assert "ACK" in text and "ready" in text, text
    logs = shop.run("logs", "catalog")
    assert logs.returncode == 0 and "catalog/v1: http on :8000" in logs.stdout, logs
    daemon = shop.daemon()
    state = daemon.state()
    assert {p.service for p in state.pods} == {"frontend", "catalog", "stock"}
    tail = daemon.logs(f"{shop.project}-catalog-v2-0", tail=20)
    assert any("catalog/v2: http on :8000" in line for line in tail.lines), tail

    # Counters from every sidecar (local: its admin socket; tcp: what Envoy pushes).
    for _ in range(10):
        assert shop.get("/").status == 200

    def counted() -> Any:
        stats = daemon.stats()
        by_source = {s.source: s for s in stats.sidecars}
        frontend = by_source.get(f"{shop.project}-frontend-default-0")
        if frontend is None or frontend.inbound is None or frontend.error:
            return None
        return frontend if frontend.inbound.requests >= 10 else None

    frontend = wait_for(counted, timeout=15)
    assert {u.service for u in frontend.upstreams} >= {"catalog"}, frontend


def test_down_leaves_nothing_on_the_engine(shop: EngineMesh) -> None:
    selector = {"label": labels.selector(mesh=shop.project)}
    # tcp puts files into volumes of the pods (no host files): they must go with the pods
    volumes = {
        m["Name"]
        for c in shop.client.containers.list(all=True, filters=selector)
        for m in c.attrs["Mounts"]
        if m["Type"] == "volume"
    }
    result = shop.run("down")
    assert result.returncode == 0, result.stderr
    assert "removed 13 containers, 1 network" in result.stdout, result.stdout
    assert shop.client.containers.list(all=True, filters=selector) == []
    assert shop.client.networks.list(filters=selector) == []
    left = []
    for name in volumes:
        with contextlib.suppress(docker.errors.NotFound):
            shop.client.volumes.get(name)
            left.append(name)
    assert left == []
    assert not shop.state_dir().exists()


# -- the simulated remote engine itself: does it behave like Docker Desktop? --------------------


@pytest.fixture(scope="module")
def remote(engine: Engine) -> Engine:
    if engine.name != "remote":
        pytest.skip("a property of the simulated remote engine")
    return engine


@contextlib.contextmanager
def host_server(text: str) -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 only, answering `text`."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def run_busybox(client: docker.DockerClient, command: str, **kw: Any) -> Any:
    return client.containers.run(
        "busybox:1.35", ["sh", "-c", command], detach=True, init=True, **kw
    )


def test_remote_engine_reaches_the_host_loopback_through_host_gateway(remote: Engine) -> None:
    with host_server("hello from the host's loopback") as port:
        c = run_busybox(
            remote.client,
            f"wget -q -O - http://host.docker.internal:{port}/",
            extra_hosts={"host.docker.internal": "host-gateway"},
        )
        try:
            assert c.wait(timeout=30)["StatusCode"] == 0
            assert c.logs().decode() == "hello from the host's loopback"
        finally:
            c.remove(force=True)


def test_remote_engine_containers_reach_nothing_else_of_the_host(remote: Engine) -> None:
    """Its fence: from inside, only 10.0.2.2 (the host's loopback) goes out through slirp.
    The address tried is this machine's own (no packet could leave it even unfenced)."""
    route = subprocess.run(
        ["ip", "-4", "-j", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
    )
    own = json.loads(route.stdout)[0]["prefsrc"]  # the host's address (nothing is sent)
    before = fenced(remote)
    c = run_busybox(remote.client, f"wget -q -O - http://{own}:9/ 2>&1; echo rc=$?")
    try:
        assert c.wait(timeout=30)["StatusCode"] == 0
        out = c.logs().decode()
        assert "Connection refused" in out and "rc=1" in out, out
    finally:
        c.remove(force=True)
    assert fenced(remote) > before  # refused by the fence, not by the host


def fenced(remote: Engine) -> int:
    """Packets the engine's fence (its DOCKER-USER REJECT rule) has refused so far, read
    inside the engine's container on the local engine."""
    outer = {k: v for k, v in remote.env.items() if k not in ("DOCKER_HOST", "DEVMESH_TRANSPORT")}
    name = f"dm-remote-{remote.env['REMOTE_ENGINE_NAME']}"
    listed = subprocess.run(
        ["docker", "exec", name, "iptables", "-w", "-L", "DOCKER-USER", "-v", "-x", "-n"],
        capture_output=True,
        text=True,
        env=outer,
        timeout=30,
        check=True,
    ).stdout
    return sum(int(line.split()[0]) for line in listed.splitlines() if "REJECT" in line)


def test_remote_engine_publishes_on_127_0_0_1_and_its_addresses_are_not_routed(
    remote: Engine, tmp_path: Path
) -> None:
    port = free_port()
    marker = tmp_path / "from-the-host"
    marker.write_text("host file")
    c = run_busybox(
        remote.client,
        "mkdir -p /w && echo served-inside > /w/index.html && ls /mnt > /w/mnt.txt"
        " && exec httpd -f -p 8000 -h /w",
        ports={"8000/tcp": ("127.0.0.1", port)},
        volumes={str(tmp_path): {"bind": "/mnt", "mode": "ro"}},
    )
    try:
        # The forward follows the engine's start event: wait for it a moment.
        body = wait_for(lambda: request(port, "/").body, timeout=15)
        assert body.strip() == "served-inside"
        # A bind mount names a path inside the engine, not the host's: the host's file is
        # not there (Docker Desktop shares only chosen folders; this engine shares none).
        assert request(port, "/mnt.txt").body.strip() == ""
        c.reload()
        address = next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        assert address
        # The host has no route of its own to the engine's container addresses: only its
        # default route would take them (off the machine), so none is sent; look it up.
        route = subprocess.run(
            ["ip", "-4", "-j", "route", "get", address],
            capture_output=True,
            text=True,
            check=True,
        )
        hop = json.loads(route.stdout)[0]
        default = json.loads(
            subprocess.run(
                ["ip", "-4", "-j", "route", "show", "default"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert default and hop.get("gateway") == default[0].get("gateway"), (hop, default)
    finally:
        c.remove(force=True)
