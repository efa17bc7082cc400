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
from devmesh.api import waterfall
from devmesh.core.model import Mirror, Route, Target, Tracing
from devmesh.envoy import tracing as traces
from devmesh.envoy.access_log import with_access_logs
from devmesh.envoy.resources import (
    HCM,
    ROUTER,
    load_assignment,
    outbound_listener,
    outbound_route_config,
)
from tests.integration.conftest import GROUP, Mesh, StartEnvoy, free_port, wait_for
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


def test_a_mirrored_copy_shows_as_one_at_the_pod_it_reached(
    collected: tuple[XdsServer, Got], envoy: StartEnvoy, mesh: Mesh
) -> None:
    """A route mirroring to v2: the caller's span has the copy's span under it, at v2's
    inbound side; Envoy sends the copy to `api-shadow`, which the waterfall names a
    mirrored copy. Here v2's inbound side is a second listener of the same Envoy, traced,
    answering itself."""
    xds, got = collected
    tracing = {
        "random_sampling": {"value": 100},
        "provider": traces.provider(Tracing(), "api", None),
    }
    mirror = Route("default", (Target("v1", 100),), mirror=Mirror("api", "v2", 100.0))
    service = dataclasses.replace(mesh.service, routes=(mirror,))
    copy_port = free_port()
    answer = {
        "name": "copy",
        "virtual_hosts": [
            {
                "name": "copy",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 204}}],
            }
        ],
    }
    inbound = {
        "name": "copy-in",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": copy_port}},
        "traffic_direction": "INBOUND",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "hcm",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "copy",
                            "route_config": answer,
                            "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
                            "tracing": tracing,
                        },
                    }
                ]
            }
        ],
    }
    base = mesh.resources(to="v1")
    resources = dataclasses.replace(
        base,
        listeners=tuple(
            with_access_logs(
                True,
                [outbound_listener(service, [("127.0.0.1", mesh.listener_port)], tracing), inbound],
            )
        ),
        routes=(outbound_route_config(service),),
        endpoints=(
            load_assignment("api|v1", ["127.0.0.1"], port=mesh.backend_ports["v1"]),
            load_assignment("api|v2", ["127.0.0.1"], port=copy_port),
        ),
    )
    xds.set_snapshot(GROUP, resources)
    envoy("web-caller")
    assert xds.wait_synced(["web-caller"], timeout=10)

    statuses = [_status(mesh.listener_port, "/items", {"host": "api:8000"}) for _ in range(3)]
    assert statuses == [200] * 3  # v1 answered; the copies' answers went nowhere
    assert wait_for(lambda: len(got.spans) >= 6, timeout=12)
    clients = [s for s in got.spans if s.kind is api.SpanKind.CLIENT]
    calls = {s.span_id: s for s in clients if not waterfall.mirrored(s)}
    mirrors = {s.span_id: s for s in clients if waterfall.mirrored(s)}
    copies = [s for s in got.spans if s.kind is api.SpanKind.SERVER and waterfall.mirrored(s)]
    shown = [(s.kind.value, s.name, s.url, s.span_id[:4], s.parent_id[:4]) for s in got.spans]
    assert (len(calls), len(mirrors), len(copies), len(got.spans)) == (3, 3, 3, 9), shown
    # the caller's span -> its Envoy's span of the copy -> v2's side of the copy
    assert {m.parent_id for m in mirrors.values()} == set(calls)
    assert {c.parent_id for c in copies} == set(mirrors)
    assert all("api-shadow" in c.url and c.status == 204 for c in copies)
    assert all(waterfall.describe(c).endswith("in (mirrored copy)") for c in copies)
    assert all(waterfall.describe(m) == "api -> api/v2 (mirror)" for m in mirrors.values())
    assert all(waterfall.describe(c) == "api -> api/v1" for c in calls.values())
    # the access log: the caller's side has the call alone, and the copy is logged where
    # it arrived with the host Envoy sent it to (port kept), which names it a mirrored copy
    assert wait_for(lambda: len(got.entries) >= 6, timeout=5)
    hosts = sorted(e.authority for e in got.entries)
    assert hosts == ["api-shadow:8000"] * 3 + ["api:8000"] * 3, hosts
    for host in set(hosts):
        entry = api.AccessEntry(0.0, api.Reporter.INBOUND, "n", "web", "", "", "api", "", "", "")
        entry = dataclasses.replace(entry, authority=host)
        assert entry.mirrored_copy is (host == "api-shadow:8000")
