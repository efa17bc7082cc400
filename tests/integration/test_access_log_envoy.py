"""Access-log entries from the real Envoy binary (a host process, no Docker), through the
daemon's own AccessLogService and `to_entry`: what Envoy leaves out of an entry for a
request that never reached a host, and that the entry still names the service.

Every address is loopback or a UNIX socket in the test's tmp_path (fixtures: conftest.py).
"""

from __future__ import annotations

import dataclasses
import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmesh.adapters.access_log_service import AccessLogService, Batch, EnvoyAccess, decode
from devmesh.adapters.xds_server import XdsServer
from devmesh.api import types as api
from devmesh.daemon.accesslog import Directory, to_entry
from devmesh.envoy.access_log import with_access_logs
from devmesh.envoy.resources import load_assignment
from tests.integration.conftest import GROUP, Mesh, StartEnvoy, wait_for

pytestmark = pytest.mark.envoy


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[XdsServer, list[EnvoyAccess]]]:
    """An xDS server that also takes access logs, as the daemon's does; the entries."""
    got: list[EnvoyAccess] = []

    def on_batch(node_id: str, cluster: str, log_name: str, data: Batch, _n: int) -> None:
        got.extend(decode(node_id, cluster, log_name, data))

    server = XdsServer(tmp_path / "xds.sock", services=[AccessLogService(on_batch).register])
    server.start()
    try:
        yield server, got
    finally:
        server.stop(grace=0.5)


def _status(port: int, path: str = "/items", headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_a_request_no_host_took_is_logged_against_its_service_and_route(
    logged: tuple[XdsServer, list[EnvoyAccess]], envoy: StartEnvoy, mesh: Mesh
) -> None:
    """Routed to v2, which has no endpoint: 503 UH. The line names the cluster the route
    chose even though no host took the request (Envoy's gRPC logger, before, sent none, so
    only the route's name said where it was going); the authority is the client's."""
    xds, got = logged
    resources = mesh.resources(to="v2")
    resources = dataclasses.replace(
        resources,
        listeners=tuple(with_access_logs(True, [dict(ln) for ln in resources.listeners])),
        endpoints=(
            load_assignment("api|v1", ["127.0.0.1"], port=mesh.backend_ports["v1"]),
            load_assignment("api|v2", []),
        ),
    )
    xds.set_snapshot(GROUP, resources)
    envoy("api-caller")
    assert xds.wait_synced(["api-caller"], timeout=10)

    assert _status(mesh.listener_port) == 503
    assert wait_for(lambda: bool(got), timeout=5)  # Envoy flushes every 0.5 s
    raw = got[0]
    assert (raw.flags, raw.upstream_cluster, raw.upstream_ip, raw.status) == (
        ("UH",),
        "api|v2",
        "",
        503,
    )
    assert (raw.method, raw.path, raw.detail) == ("GET", "/items", "no_healthy_upstream")
    assert raw.request_id and raw.duration_ms is not None and raw.upstream_ms is None

    e = to_entry(raw, Directory(services=frozenset({"api"})))
    assert (e.reporter, e.service, e.version, e.pod) == (api.Reporter.OUTBOUND, "api", "v2", "")
    assert e.route == "default"


def _served(xds: XdsServer, envoy: StartEnvoy, mesh: Mesh) -> None:
    resources = mesh.resources(to="v1")
    resources = dataclasses.replace(
        resources,
        listeners=tuple(with_access_logs(True, [dict(ln) for ln in resources.listeners])),
    )
    xds.set_snapshot(GROUP, resources)
    envoy("api-caller")
    assert xds.wait_synced(["api-caller"], timeout=10)


def test_a_served_request_is_logged_with_every_field_the_line_carries(
    logged: tuple[XdsServer, list[EnvoyAccess]], envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds, got = logged
    _served(xds, envoy, mesh)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"x-request-id": "rid-1", "traceparent": parent, "host": "api"}
    assert _status(mesh.listener_port, "/items?page=2&q=a|b", headers) == 200
    assert wait_for(lambda: bool(got), timeout=5)
    raw = got[0]
    assert (raw.node_id, raw.node_cluster, raw.log_name) == ("api-caller", GROUP, "outbound")
    assert (raw.method, raw.authority, raw.path) == ("GET", "api", "/items?page=2&q=a|b")
    assert (raw.status, raw.flags, raw.detail) == (200, (), "via_upstream")
    assert (raw.request_id, raw.trace_header) == ("rid-1", parent)
    assert (raw.upstream_cluster, raw.upstream_ip, raw.downstream_ip) == (
        "api|v1",
        "127.0.0.1",
        "127.0.0.1",
    )
    assert raw.bytes_sent == 2 and raw.bytes_received == 0  # the body "v1"
    assert raw.duration_ms is not None and raw.upstream_ms is not None
    assert 0 <= raw.upstream_ms <= raw.duration_ms < 5_000
    assert abs(raw.start - time.time()) < 30


def test_header_values_cannot_shift_the_lines_fields(
    logged: tuple[XdsServer, list[EnvoyAccess]], envoy: StartEnvoy, mesh: Mesh
) -> None:
    """The fields are split at NUL, which no header value can hold. A hostile value with
    other control characters, the field text `-` or bytes that are not UTF-8 is refused by
    Envoy or logged as it came: every entry still parses into the same fields, and the
    batch holding one of them keeps every other entry."""
    xds, got = logged
    _served(xds, envoy, mesh)
    tricky = ["-", "a\tb", "%REQ(:PATH)%", "x" * 2000, "caf\xe9"]  # é: one byte 0xE9
    for value in tricky:
        assert _status(mesh.listener_port, "/t", {"x-request-id": value}) == 200
    refused = _status(mesh.listener_port, "/t", {"x-request-id": "a\x1fb"})
    assert refused == 400
    assert wait_for(lambda: len(got) >= len(tricky) + 1, timeout=5)
    served = [g for g in got if g.status == 200]
    # Not UTF-8: Envoy passes the byte on as it came; it costs its own entry one character.
    assert [g.request_id for g in served] == ["", "a\tb", "%REQ(:PATH)%", "x" * 2000, "caf\ufffd"]
    assert all((g.path, g.upstream_cluster) == ("/t", "api|v1") for g in served)
