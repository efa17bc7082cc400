"""Tracing with the real Envoy binary (a host process, no Docker): which requests Envoy
traces, whatever request id the client sent, and that the id is logged as it was sent.

Every address is loopback or a UNIX socket in the test's tmp_path (fixtures: conftest.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmesh.adapters.access_log_service import AccessLogService, Batch, EnvoyAccess, decode
from devmesh.adapters.otlp import spans_of_bytes
from devmesh.adapters.trace_collector import TraceCollector
from devmesh.adapters.xds_server import XdsServer
from devmesh.api import types as api
from devmesh.core.model import Tracing
from devmesh.envoy import tracing as traces
from devmesh.envoy.access_log import with_access_logs
from devmesh.envoy.resources import outbound_listener
from tests.integration.conftest import GROUP, Mesh, StartEnvoy, wait_for
from tests.integration.test_access_log_envoy import _status

pytestmark = pytest.mark.envoy


@dataclasses.dataclass
class Got:
    spans: list[api.Span] = dataclasses.field(default_factory=list)
    entries: list[EnvoyAccess] = dataclasses.field(default_factory=list)


@pytest.fixture
def collected(tmp_path: Path) -> Iterator[tuple[XdsServer, Got]]:
    """An xDS server that also takes spans and access logs, as the daemon's does."""
    got = Got()

    def on_logs(node_id: str, cluster: str, log_name: str, data: Batch, _n: int) -> None:
        got.entries.extend(decode(node_id, cluster, log_name, data))

    def on_spans(data: bytes) -> None:
        got.spans.extend(spans_of_bytes(data))

    services = [TraceCollector(on_spans).register, AccessLogService(on_logs).register]
    server = XdsServer(tmp_path / "xds.sock", services=services)
    server.start()
    try:
        yield server, got
    finally:
        server.stop(grace=0.5)


def test_a_clients_request_id_is_logged_as_sent_and_a_uuid_one_traced(
    collected: tuple[XdsServer, Got], envoy: StartEnvoy, mesh: Mesh
) -> None:
    """Envoy's default request-id handling writes its trace decision into the id: a
    client's UUID id was logged changed. devmesh's connection managers leave it alone.
    Envoy samples by the id's UUID value: an id of another form is not traced (README)."""
    xds, got = collected
    tracing = {
        "random_sampling": {"value": 100},
        "provider": traces.provider(Tracing(), "api", None),
    }
    resources = mesh.resources(to="v1")
    listener = outbound_listener(mesh.service, [("127.0.0.1", mesh.listener_port)], tracing)
    resources = dataclasses.replace(resources, listeners=tuple(with_access_logs(True, [listener])))
    xds.set_snapshot(GROUP, resources)
    envoy("api-caller")
    assert xds.wait_synced(["api-caller"], timeout=10)

    ids = [f"r500-{i}" for i in range(5)] + [str(uuid.uuid4()) for _ in range(5)]
    statuses = [_status(mesh.listener_port, "/items", {"x-request-id": rid}) for rid in ids]
    assert statuses == [200] * len(ids)
    assert wait_for(lambda: len(got.entries) >= len(ids), timeout=5)
    assert sorted(e.request_id for e in got.entries) == sorted(ids)
    # Envoy exports every 5 spans (its default batch here) or every 5 s
    assert wait_for(lambda: len(got.spans) >= 5, timeout=12)
    assert sorted(s.request_id for s in got.spans) == sorted(ids[5:])
