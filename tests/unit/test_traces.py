"""Traces without Docker: the OTLP decoding, the bounded store and its filters, the
waterfall, the Envoy tracing config, the forwarder's bounds and the UDP relay."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from devmesh.adapters.envoy_binary import validate
from devmesh.adapters.otlp import (
    count_spans,
    count_spans_bytes,
    scope_spans,
    spans_of,
    spans_of_bytes,
    upstream_words,
    zipkin,
)
from devmesh.adapters.trace_collector import SpanForwarder, TraceCollector
from devmesh.adapters.udp_relay import Relays, RelaySpec, UdpRelay
from devmesh.api import types as api
from devmesh.api import waterfall
from devmesh.core.load import load
from devmesh.core.model import HostAddress, TraceForward
from devmesh.daemon.api import Refusal
from devmesh.daemon.traces import TraceStore, parse_status
from devmesh.daemon.tracing import relay_specs
from devmesh.envoy import bootstrap, tracing
from devmesh.envoy.render import render, render_mesh
from devmesh.envoy.resources import placeholder_endpoints
from devmesh.plan.desired import STATSD_SOCKET, XDS_SOCKET
from tests.envoy_check import envoy_rejections

MESH = """\
mesh: m
ingress:
  port: 8080
  routes: [{name: site, match: {path_prefix: /}, service: front}]
services:
  front: {image: x, port: 8000, calls: [back]}
  back:
    image: x
    port: 8001
    versions: {v1: {}, v2: {}}
    routes:
      - {name: main, match: {path_prefix: /}, to: {v1: 50, v2: 50}}
"""


def _span(
    trace: str = "a" * 32,
    span: str = "1" * 16,
    parent: str = "",
    service: str = "front",
    start: float = 100.0,
    ms: float = 10.0,
    status: int | None = 200,
    kind: api.SpanKind = api.SpanKind.SERVER,
    name: str = "front/default",
) -> api.Span:
    return api.Span(
        trace,
        span,
        parent,
        name,
        kind,
        start,
        ms,
        service,
        status=status,
        error=(status or 0) >= 500,
    )


# -- OTLP ---------------------------------------------------------------------------------


def _otlp() -> Any:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "front"
    s = scope_spans(rs).add().spans.add()
    s.trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    s.span_id = bytes.fromhex("00f067aa0ba902b7")
    s.parent_span_id = bytes.fromhex("53995c3f42cd8ad8")
    s.name = "back/main"
    s.kind = trace_pb2.Span.SPAN_KIND_CLIENT
    s.start_time_unix_nano = 1_000_000_000_000_000_000
    s.end_time_unix_nano = s.start_time_unix_nano + 4_200_000
    for key, value in (
        ("devmesh.service", "front"),
        ("devmesh.version", "default"),
        ("devmesh.route", "main"),
        ("upstream_cluster", "back|v2"),
        ("http.status_code", "503"),
        ("response_flags", "URX"),
        ("guid:x-request-id", "rid"),
        ("node_id", "m-front-default-0-sidecar"),
    ):
        a = s.attributes.add()
        a.key, a.value.string_value = key, value
    return req


def test_an_envoy_span_is_read_in_mesh_terms() -> None:
    (span,) = spans_of(_otlp())
    assert span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_id == "53995c3f42cd8ad8"
    assert span.kind is api.SpanKind.CLIENT
    assert (span.service, span.version, span.route, span.upstream) == (
        "front",
        "default",
        "main",
        "back/v2",
    )
    assert span.status == 503 and span.error and span.flags == "URX"
    assert span.duration_ms == pytest.approx(4.2)
    assert span.node == "m-front-default-0-sidecar" and span.request_id == "rid"


def test_a_span_with_status_0_has_no_status() -> None:
    """Envoy tags a stream that ended with no response (a reset) `http.status_code: 0`:
    the waterfall showed `0`, where the access log shows none."""
    req = _otlp()
    attributes = scope_spans(req.resource_spans[0])[0].spans[0].attributes
    next(a for a in attributes if a.key == "http.status_code").value.string_value = "0"
    (span,) = spans_of(req)
    assert span.status is None and waterfall.status_text(span).startswith("-")


@pytest.mark.parametrize(
    ("cluster", "words"),
    [("back|v2", "back/v2"), ("_app", "app"), ("_hop|front", "front"), ("", "")],
    ids=["version", "app", "hop", "none"],
)
def test_cluster_names_in_mesh_words(cluster: str, words: str) -> None:
    assert upstream_words(cluster) == words


def test_zipkin_json_keeps_ids_parent_and_kind() -> None:
    (item,) = zipkin(spans_of(_otlp()))
    assert item["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert item["parentId"] == "53995c3f42cd8ad8"
    assert item["kind"] == "CLIENT" and item["duration"] == 4200
    assert item["localEndpoint"] == {"serviceName": "front"}
    assert item["tags"]["http.status_code"] == "503"


def _export(spans_per_scope: list[list[int]], resources: int = 1, first: int = 0) -> bytes:
    """An export request of `resources` resources, each with scopes of these many spans
    (a trace each, numbered from `first` + 1), serialized, with a resource attribute and
    a scope name between."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    n = first
    for _ in range(resources):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", "front"
        for count in (len(x) for x in spans_per_scope):
            scope = scope_spans(rs).add()
            # field 1: `scope` in OTLP 1.x, `instrumentation_library` before (otlp.scope_spans)
            getattr(scope, scope.DESCRIPTOR.fields_by_number[1].name).name = "envoy"
            for _ in range(count):
                s = scope.spans.add()
                n += 1
                s.trace_id = n.to_bytes(16, "big")
                s.span_id = n.to_bytes(8, "big")
                s.start_time_unix_nano = 1_000_000_000 * n
                s.end_time_unix_nano = s.start_time_unix_nano + 1_000_000
                s.kind = trace_pb2.Span.SPAN_KIND_SERVER
                a = s.attributes.add()
                a.key, a.value.string_value = "devmesh.service", "front"
    return req.SerializeToString()


@pytest.mark.parametrize(
    ("scopes", "resources"),
    [([], 1), ([[]], 1), ([[1]], 1), ([[1, 2, 3], [4]], 1), ([[1] * 300, [1] * 7], 3)],
    ids=["no-scope", "empty-scope", "one", "two-scopes", "big"],
)
def test_spans_are_counted_from_the_framing_as_a_full_parse_counts_them(
    scopes: list[list[int]], resources: int
) -> None:
    data = _export(scopes, resources)
    parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(data)
    assert count_spans_bytes(data) == count_spans(parsed) == resources * sum(map(len, scopes))
    assert len(spans_of_bytes(data)) == count_spans(parsed)


def test_an_undecodable_export_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not an OTLP export"):
        spans_of_bytes(b"\x0a\x05\x12\x03")


# -- the store ----------------------------------------------------------------------------


def test_the_store_keeps_the_last_n_traces_and_counts_what_it_lets_go() -> None:
    store = TraceStore(capacity=3, max_spans=2)
    for i in range(5):
        store.add([_span(trace=f"{i:032x}", span=f"{i:016x}")])
    assert len(store) == 3
    assert (store.evicted, store.dropped) == (2, 0)  # two traces of one span each made room
    store.add([_span(trace=f"{4:032x}", span=f"{j:016x}") for j in range(10, 13)])
    assert (store.evicted, store.dropped) == (2, 2)  # it had one span: the 3rd and 4th lost
    assert next(t.trace_id for t in store.query(api.TracesRequest())) == f"{4:032x}"


def test_traces_are_listed_newest_started_first_whatever_order_they_came_in() -> None:
    store = TraceStore()
    store.add([_span(trace="2" * 32, start=101.0, ms=5)])  # begun later, ended first
    store.add([_span(trace="1" * 32, start=100.0, ms=2000)])  # slowed: its spans come last
    store.add([_span(trace="3" * 32, start=102.0, ms=5)])
    assert [t.trace_id[0] for t in store.query(api.TracesRequest())] == ["3", "2", "1"]
    assert [t.trace_id[0] for t in store.query(api.TracesRequest(limit=1))] == ["3"]


def test_the_store_filters_by_service_status_and_duration() -> None:
    store = TraceStore()
    store.add([_span(trace="1" * 32, service="front", ms=5, status=200)])
    store.add(
        [
            _span(trace="2" * 32, service="front", ms=300, status=200),
            _span(
                trace="2" * 32,
                span="2" * 16,
                parent="1" * 16,
                service="back",
                start=100.1,
                ms=100,
                status=503,
            ),
        ]
    )

    def ids(**kw: Any) -> list[str]:
        return [t.trace_id[0] for t in store.query(api.TracesRequest(**kw))]

    assert ids() == ["2", "1"]
    assert ids(service="back") == ["2"]
    assert ids(status="5xx") == ["2"]
    assert ids(status="503") == ["2"]
    assert ids(status="4xx") == []
    assert ids(slower_ms=100) == ["2"]
    assert ids(limit=1) == ["2"]
    (two,) = store.query(api.TracesRequest(service="back"))
    assert two.services == ("front", "back") and two.error and two.spans == 2


def test_a_trace_is_found_by_a_unique_start_of_its_id() -> None:
    store = TraceStore()
    store.add([_span(trace="abcdef" + "0" * 26), _span(trace="abcdee" + "0" * 26)])
    assert len(store.find("abcdef")) == 1
    assert len(store.find("abcde")) == 2
    assert store.find("ffffff") == []


@pytest.mark.parametrize(
    ("text", "bounds"),
    [("5xx", (500, 599)), ("2XX", (200, 299)), ("503", (503, 503))],
    ids=["class", "upper", "code"],
)
def test_status_filters(text: str, bounds: tuple[int, int]) -> None:
    assert parse_status(text) == bounds


@pytest.mark.parametrize("text", ["9xx", "5x", "abc", "600", "", "5xxx"])
def test_bad_status_filters_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="5xx"):
        parse_status(text)


# -- the waterfall ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "kind", "url", "copy"),
    [
        ("back", api.SpanKind.SERVER, "http://back-shadow:8000/items", True),
        ("back", api.SpanKind.SERVER, "http://BACK-shadow/items", True),
        ("back", api.SpanKind.SERVER, "http://back:8000/items", False),
        ("back-shadow", api.SpanKind.SERVER, "http://back-shadow/x", False),  # its own name
        ("front", api.SpanKind.CLIENT, "http://back-shadow/x", False),
        ("back", api.SpanKind.SERVER, "http://[::1/x", False),  # not a URL
        ("back", api.SpanKind.SERVER, "", False),
    ],
)
def test_a_mirrored_copy_is_told_by_the_shadow_host(
    service: str, kind: api.SpanKind, url: str, copy: bool
) -> None:
    span = dataclasses.replace(_span(service=service, kind=kind), url=url, version="v2")
    assert waterfall.mirrored(span) is copy
    assert waterfall.describe(span).endswith("(mirrored copy)") is copy


def test_the_callers_span_of_a_mirrored_copy_is_named_mirror_by_envoy() -> None:
    call = dataclasses.replace(_span(kind=api.SpanKind.CLIENT, name="mirror"), upstream="b/v2")
    assert waterfall.mirrored(call) and waterfall.describe(call) == "front -> b/v2 (mirror)"
    decorated = dataclasses.replace(call, name="back/main")  # devmesh's route decorators
    assert not waterfall.mirrored(decorated)


def test_the_waterfall_nests_each_span_under_its_parent_on_one_time_line() -> None:
    root = _span(span="1" * 16, ms=100, name="gateway/site", service="gateway")
    call = _span(
        span="2" * 16,
        parent="1" * 16,
        start=100.02,
        ms=50,
        kind=api.SpanKind.CLIENT,
        name="back/main",
    )
    call = dataclasses.replace(call, upstream="back/v2", route="main")
    inner = dataclasses.replace(
        _span(span="3" * 16, parent="2" * 16, start=100.03, ms=40, service="back"),
        version="v2",
        name="back/v2",
    )
    trace = api.Trace("a" * 32, (inner, root, call))
    rows = waterfall.rows(trace)
    assert [r.depth for r in rows] == [0, 1, 2]
    assert rows[1].label == "  front -> back/v2 via main"
    assert rows[2].label == "    back/v2 in"
    assert rows[1].offset_ms == pytest.approx(20)
    lines = waterfall.text(trace, width=100)
    assert lines[0].startswith("trace " + "a" * 32 + "  100.0 ms  3 spans")
    bars = [line[line.index("|") + 1 : line.rindex("|")] for line in lines[1:]]
    assert all(len(b) == len(bars[0]) for b in bars)
    assert bars[0].startswith("█") and bars[0].strip("█") == ""  # the root spans it all
    assert bars[1].index("█") > 0  # the call starts later


def test_a_span_whose_parent_is_missing_is_shown_as_a_root() -> None:
    orphan = _span(span="9" * 16, parent="8" * 16)
    assert [r.depth for r in waterfall.rows(api.Trace("a" * 32, (orphan,)))] == [0]
    assert waterfall.text(api.Trace("a" * 32)) == ["trace " + "a" * 32 + ": no spans"]


# -- Envoy config -------------------------------------------------------------------------


def _listeners(mesh_text: str) -> dict[str, list[Any]]:
    mesh = load(mesh_text)
    rendered = render(mesh, placeholder_endpoints(mesh), "172.30.0.1")
    return {group: list(r.listeners) for group, r in rendered.items()}


def _hcms(listeners: list[Any]) -> list[Any]:
    return [
        f["typed_config"]
        for listener in listeners
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["typed_config"]["@type"].endswith("HttpConnectionManager")
    ]


def test_every_http_listener_traces_to_the_daemons_collector_by_default() -> None:
    for group, listeners in _listeners(MESH).items():
        for hcm in _hcms(listeners):
            provider = hcm["tracing"]["provider"]
            assert provider["name"] == "envoy.tracers.opentelemetry", group
            grpc = provider["typed_config"]["grpc_service"]["envoy_grpc"]
            assert grpc["cluster_name"] == bootstrap.XDS_CLUSTER
            tags = {t["tag"]: t["literal"]["value"] for t in hcm["tracing"]["custom_tags"]}
            service = group.split("/")[1]
            assert tags[tracing.SERVICE_TAG] == service


def test_tracing_false_renders_no_tracing_at_all() -> None:
    text = MESH.replace("ingress:", "observability: {tracing: false}\ningress:")
    mesh = load(text)
    for resources in render(mesh, placeholder_endpoints(mesh)).values():
        assert "tracing" not in str(resources) and "decorator" not in str(resources)


def test_xray_sends_to_the_mesh_networks_gateway_on_the_configured_port() -> None:
    text = MESH.replace(
        "ingress:",
        'observability: {tracing: {provider: xray, address: "127.0.0.1:2999"}}\ningress:',
    )
    for listeners in _listeners(text).values():
        for hcm in _hcms(listeners):
            config = hcm["tracing"]["provider"]["typed_config"]
            assert config["daemon_endpoint"] == {
                "protocol": "UDP",
                "address": "172.30.0.1",
                "port_value": 2999,
            }
    mesh = load(text)
    specs = relay_specs(mesh, __import__("pathlib").Path("/s/xds"), "172.30.0.1")
    assert specs == [RelaySpec("xray", ("172.30.0.1", 2999), ("127.0.0.1", 2999))]
    assert relay_specs(mesh, __import__("pathlib").Path("/s/xds"), None) == []


@pytest.mark.parametrize("flavor", ["statsd", "dogstatsd"])
def test_statsd_sinks_write_to_the_relay_socket_every_pod_mounts(flavor: str) -> None:
    text = MESH.replace(
        "ingress:",
        f'observability: {{statsd: {{address: "127.0.0.1:8125", flavor: {flavor}}}}}\ningress:',
    )
    mesh = load(text)
    (sink,) = tracing.stats_sinks(mesh, STATSD_SOCKET)
    assert sink["typed_config"]["address"] == {"pipe": {"path": STATSD_SOCKET}}
    assert sink["name"] == f"envoy.stat_sinks.{'dog_statsd' if flavor == 'dogstatsd' else flavor}"
    assert STATSD_SOCKET.rsplit("/", 1)[0] == XDS_SOCKET.rsplit("/", 1)[0]
    assert bootstrap.XDS_SOCKET == XDS_SOCKET


def test_route_decorators_name_spans_and_are_not_propagated() -> None:
    mesh = load(MESH)
    rendered = render(mesh, placeholder_endpoints(mesh))
    front = rendered["m/front/default"]
    (route_config,) = [r for r in front.routes if r["name"] == "out|back"]
    route = route_config["virtual_hosts"][0]["routes"][0]
    assert route["decorator"] == {"operation": "back/main", "propagate": False}
    inbound = _hcms(list(front.listeners))[0]
    app_route = inbound["route_config"]["virtual_hosts"][0]["routes"][0]
    assert app_route["decorator"]["operation"] == "front/default"


# -- the forwarder ------------------------------------------------------------------------


def test_a_forward_endpoint_nobody_listens_on_drops_and_counts_without_blocking() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens
    target = TraceForward(
        f"http://127.0.0.1:{port}/v1/traces", "otlp", HostAddress("127.0.0.1", port), "/v1/traces"
    )
    forwarder = SpanForwarder(target, batches=2)
    data = _otlp().SerializeToString()
    t0 = time.monotonic()
    offered = [forwarder.offer(data, 1) for _ in range(10)]
    assert time.monotonic() - t0 < 0.1  # never waits
    assert offered.count(False) >= 8  # the queue holds 2: the rest are dropped at once
    forwarder.start()
    deadline = time.monotonic() + 5
    while forwarder.counters().dropped < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    forwarder.stop()
    counters = forwarder.counters()
    assert counters.dropped == 10 and counters.forwarded == 0
    assert counters.error and str(port) in counters.error


@pytest.mark.parametrize("kind", ["otlp", "zipkin"])
def test_the_forwarder_posts_otlp_protobuf_or_zipkin_json(kind: str) -> None:
    got: list[bytes] = []
    types: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            types.append(self.headers["Content-Type"])
            self.send_response(202 if kind == "zipkin" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        path = "/api/v2/spans" if kind == "zipkin" else "/v1/traces"
        target = TraceForward("u", kind, HostAddress("127.0.0.1", port), path)  # type: ignore[arg-type]
        forwarder = SpanForwarder(target)
        forwarder.start()
        request = _otlp()
        forwarder.offer(request.SerializeToString(), 1)
        deadline = time.monotonic() + 5
        while forwarder.counters().forwarded < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        forwarder.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert forwarder.counters().forwarded == 1
    if kind == "zipkin":
        assert types == ["application/json"]
        assert json.loads(got[0]) == zipkin(spans_of(request))
    else:
        assert types == ["application/x-protobuf"]
        assert got[0] == request.SerializeToString()  # the bytes Envoy sent, not re-encoded


def test_batches_that_wait_go_in_one_post_on_one_kept_alive_connection() -> None:
    bodies: list[bytes] = []
    peers: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as collectors answer

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            peers.append(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = TraceForward("u", "otlp", HostAddress("127.0.0.1", server.server_address[1]), "/")
    forwarder = SpanForwarder(target)
    one = _otlp().SerializeToString()
    try:
        for _ in range(3):  # waiting before the thread runs: they go together
            forwarder.offer(one, 1)
        forwarder.start()
        deadline = time.monotonic() + 5
        while forwarder.counters().forwarded < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        forwarder.offer(one, 1)
        while forwarder.counters().forwarded < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        forwarder.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert forwarder.counters().forwarded == 4
    assert len(bodies) == 2 and len(set(peers)) == 1  # two POSTs, one connection
    joined = trace_service_pb2.ExportTraceServiceRequest.FromString(bodies[0])
    assert len(spans_of(joined)) == 3  # requests concatenated are one request


# -- the relay ----------------------------------------------------------------------------


def test_the_relay_passes_datagrams_on_and_counts_refusals(tmp_path: Any) -> None:
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(2)
    path = str(tmp_path / "statsd.sock")
    relay = UdpRelay(RelaySpec("statsd", path, target.getsockname()))
    relay.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as pod:
            pod.sendto(b"envoy.x:1|c", path)
        assert target.recv(100) == b"envoy.x:1|c"
    finally:
        relay.stop()
        target.close()
    assert relay.relayed == 1


# -- the real Envoy -----------------------------------------------------------------------

SINKS = MESH.replace(
    "ingress:",
    "observability:\n"
    '  tracing: {provider: xray, address: "127.0.0.1:2999", sampling: 12.5}\n'
    '  statsd: {address: "127.0.0.1:8125", flavor: dogstatsd}\n'
    "ingress:",
)


@pytest.mark.parametrize("text", [MESH, SINKS], ids=["otel", "xray"])
def test_real_envoy_accepts_the_tracing_configs(text: str, tmp_path: Any) -> None:
    assert envoy_rejections(render_mesh(load(text)), tmp_path) == []


@pytest.mark.parametrize("flavor", ["statsd", "dogstatsd"])
def test_real_envoy_accepts_a_pods_bootstrap_with_stats_sinks(flavor: str, tmp_path: Any) -> None:
    mesh = load(SINKS.replace("dogstatsd", flavor))
    config = bootstrap.ads_bootstrap(
        "node-1",
        "m/front/default",
        XDS_SOCKET,
        "/devmesh/admin.sock",
        tracing.stats_sinks(mesh, STATSD_SOCKET),
        tracing.runtime(mesh),
    )
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    verdict = validate(path)
    assert verdict.ok, verdict.detail


# -- the collector's backlog --------------------------------------------------------------


def test_unread_batches_are_bounded_dropped_whole_and_counted() -> None:
    store = TraceStore(decode=spans_of_bytes, count=count_spans_bytes, pending_spans=5)
    for i in range(4):
        assert store.offer(_export([[1, 1]], first=2 * i)) == 2
    # 8 spans came, at most 5 wait: the two oldest batches made room, whole
    assert (store.received, store.unread, store.dropped) == (8, 4, 4)
    assert store.offer(b"\x0a\x05") == 0  # not OTLP: not kept, not counted
    assert store.received == 8
    assert len(store.query(api.TracesRequest())) == 4
    assert (store.unread, store.dropped) == (0, 4)


def test_spans_are_decoded_only_when_someone_reads_and_only_once() -> None:
    decoded: list[bytes] = []

    def decode(data: bytes) -> list[api.Span]:
        decoded.append(data)
        return spans_of_bytes(data)

    store = TraceStore(decode=decode, count=count_spans_bytes)
    first, second = _export([[1]]), _export([[1, 1]], first=1)
    store.offer(first)
    store.offer(second)
    assert decoded == [] and len(store) == 0 and store.unread == 3  # nothing decoded yet
    assert len(store.query(api.TracesRequest())) == 3
    assert decoded == [first, second] and store.unread == 0
    store.find("0")
    store.services()
    assert decoded == [first, second]  # read once, kept decoded
    assert store.received == 3 and len(store) == 3


def test_a_batch_that_does_not_decode_is_dropped_and_counted() -> None:
    def decode(data: bytes) -> list[api.Span]:
        raise ValueError("broken")

    store = TraceStore(decode=decode, count=lambda data: 3)
    store.offer(b"x")
    assert store.query(api.TracesRequest()) == []
    assert (store.received, store.dropped, store.unread) == (3, 3, 0)


def test_the_collector_takes_an_export_as_its_bytes_over_the_xds_socket(tmp_path: Any) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    from devmesh.adapters.xds_server import XdsServer

    got: list[bytes] = []
    collector = TraceCollector(got.append)
    server = XdsServer(tmp_path / "xds.sock", services=[collector.register])
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{tmp_path / 'xds.sock'}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            answer = stub.Export(_otlp(), timeout=5)
    finally:
        server.stop()
    assert isinstance(answer, trace_service_pb2.ExportTraceServiceResponse)
    assert got == [_otlp().SerializeToString()]  # not parsed: the bytes as they came


def test_a_relay_that_cannot_listen_is_told_once_and_others_still_run(tmp_path: Any) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    relays = Relays()
    specs = [
        RelaySpec("xray", taken.getsockname(), ("127.0.0.1", 2000)),
        RelaySpec("statsd", str(tmp_path / "statsd.sock"), ("127.0.0.1", 8125)),
    ]
    try:
        first = relays.sync(specs)
        assert len(first) == 1 and "cannot relay xray" in first[0]
        assert relays.sync(specs) == []  # the same problem is not told again
        assert set(relays.counters()) == {"statsd"}
        relays.sync([])
        assert relays.counters() == {} and relays.errors == {}
    finally:
        relays.close()
        taken.close()


def test_a_pods_bootstrap_flushes_spans_every_5_s_and_keeps_the_admin_runtime() -> None:
    mesh = load(MESH)
    config = bootstrap.ads_bootstrap(
        "n", "c", XDS_SOCKET, "/devmesh/admin.sock", (), tracing.runtime(mesh)
    )
    static, rtds, admin = config["layered_runtime"]["layers"]
    # between them, the daemon's RTDS layer (adaptive tracing), over ADS
    assert rtds["rtds_layer"] == {
        "name": "devmesh",
        "rtds_config": {"ads": {}, "resource_api_version": "V3"},
    }
    assert static["static_layer"] == {
        "tracing.opentelemetry.flush_interval_ms": 5000,
        "tracing.opentelemetry.min_flush_spans": 100,
    }
    assert admin == {"name": "admin", "admin_layer": {}}
    # tracing off or on, the same bootstrap: switching it recreates no container
    off = load(MESH.replace("ingress:", "observability: {tracing: false}\ningress:"))
    assert tracing.runtime(off) == tracing.runtime(mesh)


# -- the API's refusals -------------------------------------------------------------------


def _handlers(text: str = MESH) -> Any:
    """The trace endpoints over a store, with a stand-in for the loop's view (they read
    only its mesh, project and file)."""
    from types import SimpleNamespace

    from devmesh.daemon.handlers import Handlers

    mesh = load(text)
    handlers = Handlers.__new__(Handlers)
    view = SimpleNamespace(mesh=mesh, served=mesh)
    handlers._loop = SimpleNamespace(view=view, project="m", mesh_file="/x/devmesh.yaml")  # type: ignore[assignment]
    store = TraceStore()
    store.add([_span(trace="abcdef" + "0" * 26, service="back")])
    handlers.telemetry = SimpleNamespace(store=store)  # type: ignore[assignment]
    return handlers


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (api.TracesRequest(service="bakc"), "not_found", "did you mean 'back'"),
        (api.TracesRequest(status="9xx"), "bad_request", "5xx"),
        (api.TracesRequest(limit=0), "bad_request", "limit"),
        (api.TraceRequest("xyz"), "bad_request", "hex digits"),
        (api.TraceRequest("ffffff"), "not_found", "no trace ffffff"),
        (api.TracesRequest(service="gatewya"), "not_found", "did you mean 'gateway'"),
        (api.TracesRequest(service="ingres"), "not_found", "did you mean 'ingress'"),
        (api.TraceRequest("x" * 100_000), "bad_request", "(100000 char"),
    ],
    ids=[
        "unknown-service",
        "bad-status",
        "limit",
        "bad-id",
        "no-such-trace",
        "gateway",
        "ingress",
        "huge",
    ],
)
def test_the_trace_endpoints_refuse_with_located_words(
    request_: Any, code: str, words: str
) -> None:
    handlers = _handlers()
    call = handlers.traces if isinstance(request_, api.TracesRequest) else handlers.trace
    with pytest.raises(Refusal) as caught:
        call(request_)
    assert caught.value.error.code.value == code
    assert words in caught.value.error.message
    assert len(caught.value.error.message) < 400  # what was sent is not all echoed back
    if code == "not_found" and "service" in words:
        assert "/x/devmesh.yaml" in caught.value.error.message


def test_the_trace_endpoints_answer_and_say_when_tracing_is_off() -> None:
    handlers = _handlers()
    assert [t.trace_id[:6] for t in handlers.traces(api.TracesRequest(service="back")).traces] == [
        "abcdef"
    ]
    assert handlers.traces(api.TracesRequest(service="gateway")).traces == ()
    gateway = _span(trace="fedcba" + "0" * 26, service="gateway")
    handlers.telemetry.store.add([gateway])
    for name in ("gateway", "ingress"):  # `logs --access ingress` names it so
        found = handlers.traces(api.TracesRequest(service=name)).traces
        assert [t.trace_id[:6] for t in found] == ["fedcba"]
    assert handlers.trace(api.TraceRequest("ABCDEF")).spans[0].service == "back"
    off = _handlers(MESH.replace("ingress:", "observability: {tracing: false}\ningress:"))
    with pytest.raises(Refusal) as caught:
        off.traces(api.TracesRequest())
    assert caught.value.error.code is api.ErrorCode.CONFLICT
    assert "tracing: false" in caught.value.error.message


def test_ps_tells_traces_that_made_room_from_spans_lost() -> None:
    from devmesh.cli.views import tracing_line

    line = tracing_line(api.TracingStatus("otel", 100.0, traces=1000, spans=5200, evicted=4000))
    assert "1000 traces kept, 5200 spans received" in line
    assert "4000 of older traces made room, 0 lost" in line


def test_ps_says_when_the_share_traced_is_chosen_by_auto() -> None:
    from devmesh.cli.views import tracing_line

    assert tracing_line(api.TracingStatus("otel", 10.0, adaptive=True)).startswith(
        "tracing: 10% sampled (auto), "
    )
    assert tracing_line(api.TracingStatus("otel", 25.0)).startswith("tracing: 25% sampled, ")


@pytest.mark.parametrize(
    ("tracing_block", "adapts"),
    [("{}", True), ("{sampling: 100}", False), ("{provider: xray}", False), ("false", False)],
)
def test_the_daemon_chooses_a_share_only_for_auto_with_its_own_collector(
    tmp_path: Any, tracing_block: str, adapts: bool
) -> None:
    from devmesh.daemon.tracing import Telemetry

    mesh = load(MESH.replace("ingress:", f"observability: {{tracing: {tracing_block}}}\ningress:"))
    telemetry = Telemetry(lambda: mesh, tmp_path)
    changes = []
    for second in range(10):  # 2,000 spans a second at 100 %: over auto's budget
        telemetry.store.received += round(2000 * (telemetry.chosen or 100.0) / 100)
        changes.append(telemetry.adapt(float(second)))
    assert (telemetry.chosen, any(changes)) == ((2.0, True) if adapts else (None, False))
    status = telemetry.status()
    if status is not None:
        assert status.adaptive is adapts
        assert status.sampling == (2.0 if adapts else 100.0)
