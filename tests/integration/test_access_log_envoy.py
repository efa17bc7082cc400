"""Access-log entries from the real Envoy binary (a host process, no Docker), through the
daemon's own AccessLogService and `to_entry`: what Envoy leaves out of an entry for a
request that never reached a host, and that the entry still names the service.

Every address is loopback or a UNIX socket in the test's tmp_path (fixtures: conftest.py).
"""

from __future__ import annotations

import dataclasses
import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmesh.adapters.access_log_service import AccessLogService, EnvoyAccess, decode
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

    def on_batch(node_id: str, cluster: str, log_name: str, data: bytes, _n: int) -> None:
        got.extend(decode(node_id, cluster, log_name, data))

    server = XdsServer(tmp_path / "xds.sock", services=[AccessLogService(on_batch).register])
    server.start()
    try:
        yield server, got
    finally:
        server.stop(grace=0.5)


def _status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/items")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_a_request_no_host_took_is_logged_against_its_service_and_route(
    logged: tuple[XdsServer, list[EnvoyAccess]], envoy: StartEnvoy, mesh: Mesh
) -> None:
    """Routed to v2, which has no endpoint: 503 UH. Envoy sends no upstream cluster for
    it (measured: nor for UO, an overflow), and the authority is the client's, so only the
    route's name says where it was going."""
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
    assert (raw.flags, raw.upstream_cluster, raw.status) == (("UH",), "", 503)

    e = to_entry(raw, Directory(services=frozenset({"api"})))
    assert (e.reporter, e.service, e.version, e.pod) == (api.Reporter.OUTBOUND, "api", "", "")
    assert e.route == "default"
