"""Access logs: the Envoy config that sends them, Envoy's entries decoded and put in mesh
terms, the bounded ring, its filters and its followers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from devmesh.adapters.access_log_service import (
    AccessLogService,
    EnvoyAccess,
    OtlpLogs,
    decode,
    framing,
    from_line,
    otlp_framing,
)
from devmesh.api import types as api
from devmesh.api.response_flags import BY_CODE, RESPONSE_FLAGS, explain_flags
from devmesh.core.load import load
from devmesh.daemon.accesslog import (
    AccessLog,
    Directory,
    Filter,
    status_problem,
    to_entry,
    trace_id_of,
)
from devmesh.envoy import access_log
from devmesh.envoy.render import render

MESH = """
mesh: shop
ingress:
  port: 8080
  routes: [{name: site, service: front}]
services:
  front: {image: app:1, port: 8000, calls: [back, db]}
  back:
    image: app:1
    port: 8000
    versions: {v1: {}, v2: {}}
  db: {image: db:1, port: 5432, protocol: tcp}
"""

DIRECTORY = Directory(
    nodes={
        "shop-front-default-0-sidecar": ("front", "default", "shop-front-default-0"),
        "shop-back-v2-0-sidecar": ("back", "v2", "shop-back-v2-0"),
        "shop-gateway": (api.INGRESS, "", "shop-gateway"),
    },
    ips={
        "172.18.0.2": ("front", "default", "shop-front-default-0"),
        "172.18.0.3": ("back", "v2", "shop-back-v2-0"),
        "172.18.0.9": (api.INGRESS, "", "shop-gateway"),
    },
    services=frozenset({"front", "back", "db"}),
)


def raw(**kw: Any) -> EnvoyAccess:
    base: dict[str, Any] = {
        "node_id": "shop-front-default-0-sidecar",
        "node_cluster": "shop/front/default",
        "log_name": "outbound",
        "tcp": False,
        "start": 1000.0,
        "duration_ms": 12.0,
        "upstream_ms": 10.0,
        "route_name": "back/main",  # resources.route_entry_name
        "upstream_cluster": "back|v2",
        "upstream_ip": "172.18.0.3",
        "downstream_ip": "127.0.0.1",
        "flags": (),
        "method": "GET",
        "authority": "back",
        "path": "/items",
        "status": 200,
    }
    return EnvoyAccess(**{**base, **kw})


# -- the Envoy side -----------------------------------------------------------------------


def test_every_listener_of_every_node_logs_to_the_daemon_as_its_side() -> None:
    resources = render(load(MESH), {})
    seen: dict[str, set[str]] = {}
    for group, res in resources.items():
        for listener in res.listeners:
            for f in listener["filter_chains"][0]["filters"]:
                typed = f["typed_config"]
                if "access_log" not in typed:
                    continue
                (logger,) = typed["access_log"]
                common = logger["typed_config"]["common_config"]
                assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == "devmesh-xds"
                seen.setdefault(group, set()).add(f"{listener['name']}:{common['log_name']}")
    assert seen == {
        "shop/front/default": {"in:inbound", "out|back:outbound", "out|db:outbound"},
        "shop/back/v1": {"in:inbound"},
        "shop/back/v2": {"in:inbound"},
        "shop/db/default": {"in:inbound"},
        "shop/gateway": {"ingress:ingress", "out|front:outbound", "out|back:outbound"},
    }


def test_tcp_listeners_use_the_tcp_logger_and_http_ones_a_line_with_the_trace_headers() -> None:
    front = render(load(MESH), {})["shop/front/default"]
    by_name = {x["name"]: x for x in front.listeners}
    tcp = by_name["out|db"]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0]
    http = by_name["out|back"]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0]
    assert tcp["name"] == "envoy.access_loggers.tcp_grpc"
    assert http["name"] == "envoy.access_loggers.open_telemetry"
    line = http["typed_config"]["body"]["string_value"]
    assert line.split("\x00")[-1] == "%REQ(TRACEPARENT?X-AMZN-TRACE-ID)%"
    assert http["typed_config"]["common_config"]["log_name"] == "outbound"


def test_access_log_false_renders_no_logger() -> None:
    mesh = load(MESH.replace("ingress:", "observability: {access_log: false}\ningress:", 1))
    for res in render(mesh, {}).values():
        assert not any(access_log.uses_collector(x) for x in res.listeners)


# -- decoding Envoy's message -------------------------------------------------------------


def test_an_http_entry_decodes_with_its_flags_times_and_trace_header() -> None:
    msg = als_pb2.StreamAccessLogsMessage()
    entry = msg.http_logs.log_entry.add()
    common = entry.common_properties
    common.start_time.seconds, common.start_time.nanos = 1000, 500_000_000
    common.duration.nanos = 25_000_000
    common.time_to_first_upstream_tx_byte.nanos = 1_000_000
    common.time_to_first_upstream_rx_byte.nanos = 21_000_000
    common.route_name = "main"
    common.upstream_cluster = "back|v2"
    common.upstream_remote_address.socket_address.address = "172.18.0.3"
    common.downstream_remote_address.socket_address.address = "127.0.0.1"
    common.response_flags.upstream_retry_limit_exceeded = True
    common.response_flags.upstream_connection_failure = True
    entry.request.request_method = 1  # GET
    entry.request.authority = "back"
    entry.request.path = "/items"
    entry.request.request_id = "rid-1"
    entry.request.request_headers["traceparent"] = (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    entry.response.response_code.value = 503
    entry.response.response_body_bytes = 19
    entry.response.response_code_details = "upstream_reset_before_response_started"

    (got,) = decode("node-1", "shop/front/default", "outbound", msg)

    assert got.start == pytest.approx(1000.5)
    assert got.duration_ms == pytest.approx(25.0)
    assert got.upstream_ms == pytest.approx(20.0)
    assert (got.method, got.authority, got.path, got.status) == ("GET", "back", "/items", 503)
    assert set(got.flags) == {"UF", "URX"}
    assert got.trace_header.startswith("00-0af7651916cd43dd")
    assert (got.upstream_ip, got.downstream_ip, got.bytes_sent) == ("172.18.0.3", "127.0.0.1", 19)


def test_a_message_flag_is_set_only_when_present() -> None:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.http_logs.log_entry.add().common_properties.response_flags.fault_injected = True
    (got,) = decode("n", "c", "inbound", msg)
    assert got.flags == ("FI",)


def test_a_tcp_entry_has_bytes_and_no_status() -> None:
    msg = als_pb2.StreamAccessLogsMessage()
    entry = msg.tcp_logs.log_entry.add()
    entry.connection_properties.received_bytes = 7
    entry.connection_properties.sent_bytes = 40
    (got,) = decode("n", "c", "outbound", msg)
    assert (got.tcp, got.status, got.bytes_received, got.bytes_sent) == (True, None, 7, 40)


@pytest.mark.parametrize(
    ("http", "tcp", "named"),
    [(0, 0, False), (3, 0, True), (0, 2, False), (0, 4, True), (250, 0, False)],
    ids=["empty", "http-first", "tcp", "tcp-first", "big"],
)
def test_entries_are_counted_from_the_framing_and_the_node_found(
    http: int, tcp: int, named: bool
) -> None:
    msg = _message(http)
    for _ in range(tcp):
        msg.tcp_logs.log_entry.add().connection_properties.sent_bytes = 1
    if named:
        msg.identifier.node.id = "n-1"
        msg.identifier.log_name = "inbound"
    identifier, entries = framing(msg.SerializeToString())
    assert entries == http + tcp
    if named:
        assert identifier is not None
        ident = als_pb2.StreamAccessLogsMessage.Identifier.FromString(identifier)
        assert (ident.node.id, ident.log_name) == ("n-1", "inbound")
    else:
        assert identifier is None
    assert len(decode("n", "c", "inbound", msg.SerializeToString())) == http + tcp


def test_the_service_takes_each_message_as_bytes_with_its_streams_node(tmp_path: Any) -> None:
    import grpc
    from envoy.service.accesslog.v3 import als_pb2_grpc

    from devmesh.adapters.xds_server import XdsServer

    got: list[tuple[str, str, str, bytes, int]] = []
    service = AccessLogService(lambda *batch: got.append(batch))
    server = XdsServer(tmp_path / "xds.sock", services=[service.register])
    server.start()
    first, second = _message(2), _message(1)
    first.identifier.node.id, first.identifier.node.cluster = "n-1", "shop/front/default"
    first.identifier.log_name = "outbound"
    try:
        with grpc.insecure_channel(f"unix:{tmp_path / 'xds.sock'}") as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)
            stub.StreamAccessLogs(iter([first, second]), timeout=5)
    finally:
        server.stop()
    assert got == [
        ("n-1", "shop/front/default", "outbound", first.SerializeToString(), 2),
        ("n-1", "shop/front/default", "outbound", second.SerializeToString(), 1),
    ]


def test_every_flag_names_a_real_field_of_envoys_message_once() -> None:
    fields = {f.name for f in accesslog_pb2.ResponseFlags.DESCRIPTOR.fields}
    assert {f.field for f in RESPONSE_FLAGS} - {""} == fields
    assert [f.code for f in RESPONSE_FLAGS if not f.field] == ["DO"]  # the line's only
    assert len(BY_CODE) == len(RESPONSE_FLAGS)
    assert explain_flags(("UO", "URX", "DI", "FI", "UT")) == (
        "overflow: the connection pool limit was hit; retry limit reached; "
        "injected delay (fault); injected fault (abort); "
        "upstream timeout (the route's timeout; 15s unless set)"
    )


def test_the_readme_explains_every_flag() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("| flag | meaning |") :].split("\n\n")[0]
    cells = {c.strip() for line in table.splitlines()[2:] for c in line.strip("|").split("|")}
    codes = {code for cell in cells for code in cell.split(" / ")}
    assert {f.code for f in RESPONSE_FLAGS} <= codes


# -- mesh terms ---------------------------------------------------------------------------


def test_an_outbound_entry_is_from_the_node_to_the_cluster_and_pod_it_reached() -> None:
    e = to_entry(raw(), DIRECTORY)
    assert (e.reporter, e.source_service, e.source_version, e.source_pod) == (
        api.Reporter.OUTBOUND,
        "front",
        "default",
        "shop-front-default-0",
    )
    assert (e.service, e.version, e.pod, e.route) == ("back", "v2", "shop-back-v2-0", "main")


def test_an_inbound_entry_is_from_the_calling_pods_address_to_the_node() -> None:
    e = to_entry(
        raw(
            node_id="shop-back-v2-0-sidecar",
            node_cluster="shop/back/v2",
            log_name="inbound",
            upstream_cluster="_app",
            downstream_ip="172.18.0.2",
            route_name="",
        ),
        DIRECTORY,
    )
    assert (e.source_service, e.source_pod) == ("front", "shop-front-default-0")
    assert (e.service, e.version, e.pod, e.route) == ("back", "v2", "shop-back-v2-0", "")


def test_an_ingress_entry_is_from_outside_to_the_hops_service() -> None:
    e = to_entry(
        raw(
            node_id="shop-gateway",
            node_cluster="shop/gateway",
            log_name="ingress",
            upstream_cluster="_hop|front",
            route_name="site",
        ),
        DIRECTORY,
    )
    assert (e.source_service, e.service, e.route) == ("", "front", "site")


def test_an_overflow_at_the_gateways_hop_is_logged_against_the_routes_service() -> None:
    """Envoy gives no upstream cluster when no host was reached (UO, UH), and the hop's
    authority is the client's: the route's name says the service (and no version)."""
    e = to_entry(
        raw(
            node_id="shop-gateway",
            node_cluster="shop/gateway",
            upstream_cluster="",
            upstream_ip="",
            authority="127.0.0.1:8080",
            status=503,
            flags=("UO",),
        ),
        DIRECTORY,
    )
    assert (e.source_service, e.service, e.version, e.pod) == (api.INGRESS, "back", "", "")
    assert e.route == "main"


def test_no_route_names_the_service_the_app_called_by_its_authority() -> None:
    e = to_entry(
        raw(upstream_cluster="", route_name="", authority="back:8000", status=404, flags=("NR",)),
        DIRECTORY,
    )
    assert (e.service, e.version, e.pod, e.flags) == ("back", "", "", ("NR",))


def test_a_node_the_directory_does_not_know_yet_is_read_from_its_node_cluster() -> None:
    e = to_entry(raw(node_id="new-sidecar", node_cluster="shop/back/v1"), DIRECTORY)
    assert (e.source_service, e.source_version, e.source_pod) == ("back", "v1", "")


@pytest.mark.parametrize(
    ("header", "trace"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0af7651916cd43dd8448eb211c80319c",
        ),
        (
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            "1-5759e988-bd862e3fe1be46a994272793",
        ),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", ""),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0", ""),
        ("", ""),
        ("garbage", ""),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz", ""),
    ],
    ids=["w3c", "xray", "w3c-not-sampled", "xray-not-sampled", "none", "garbage", "bad-flags"],
)
def test_the_trace_id_is_read_from_either_header(header: str, trace: str) -> None:
    assert trace_id_of(header) == trace


# -- filters and the ring -----------------------------------------------------------------


def entry(n: float, **kw: Any) -> api.AccessEntry:
    base: dict[str, Any] = {
        "time": float(n),
        "reporter": api.Reporter.OUTBOUND,
        "node": "x",
        "source_service": "front",
        "source_version": "default",
        "source_pod": "p",
        "service": "back",
        "version": "v1",
        "pod": "q",
        "route": "main",
        "status": 200,
        "duration_ms": 5.0,
    }
    return api.AccessEntry(**{**base, **kw})


@pytest.mark.parametrize(
    ("authority", "service", "copy"),
    [
        ("back-shadow:8000", "back", True),
        ("back-shadow", "back", True),
        ("back:8000", "back", False),
        ("x-shadow:80", "x-shadow", False),  # a service so named, called as itself
        ("X-Shadow:80", "x-shadow", False),  # host names are not case-sensitive
        ("Back-Shadow:80", "back", True),
        ("x-shadow-shadow:80", "x-shadow", True),
        ("[::1]:80", "back", False),
        ("", "back", False),
        ("-shadow:", "", False),  # whatever a Host header says: no error
    ],
)
def test_a_mirrored_copy_is_told_by_the_host_envoy_sent_it_to(
    authority: str, service: str, copy: bool
) -> None:
    from devmesh.cli.access_views import access_line
    from devmesh.tui.access import entry_detail, entry_row

    e = entry(1, authority=authority, service=service, method="GET", path="/x")
    assert e.mirrored_copy is copy
    assert ("(mirrored copy)" in access_line(e)) is copy
    assert ("(mirrored copy)" in entry_row(e)[5]) is copy
    assert ("its answer goes nowhere" in entry_detail(e)) is copy


@pytest.mark.parametrize(
    ("keep", "e", "taken"),
    [
        (Filter(service="front"), entry(1), True),
        (Filter(service="back"), entry(1), True),
        (Filter(service="db"), entry(1), False),
        (Filter(status="5xx"), entry(1, status=503), True),
        (Filter(status="5xx"), entry(1, status=200), False),
        (Filter(status="5XX"), entry(1, status=500), True),
        (Filter(status="503"), entry(1, status=503), True),
        (Filter(status="503"), entry(1, status=502), False),
        (Filter(status="5xx"), entry(1, status=None), False),
        (Filter(route="main"), entry(1), True),
        (Filter(route="canary"), entry(1), False),
        (Filter(slower_ms=100), entry(1, duration_ms=150.0), True),
        (Filter(slower_ms=100), entry(1, duration_ms=100.0), False),
        (Filter(slower_ms=100), entry(1, duration_ms=None), False),
    ],
)
def test_a_filter_keeps_what_it_says(keep: Filter, e: api.AccessEntry, taken: bool) -> None:
    assert keep(e) is taken


@pytest.mark.parametrize("status", ["2xx", "5xx", "404", "100", "599"])
def test_status_filters_that_are_fine(status: str) -> None:
    assert status_problem(status) is None


@pytest.mark.parametrize("status", ["6xx", "5x", "99", "600", "five", ""])
def test_status_filters_that_are_refused(status: str) -> None:
    assert "neither a class" in (status_problem(status) or "")


def test_the_ring_keeps_the_newest_and_counts_what_made_room() -> None:
    ring = AccessLog(Directory, capacity=5)
    for n in range(8):  # one batch each, as Envoy's flushes come
        ring.add([entry(n)])
    result = ring.query(Filter(), limit=100)
    assert [e.time for e in result.entries] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert result.counters == api.AccessCounters(
        kept=5, capacity=5, received=8, evicted=3, dropped=0
    )
    assert [e.time for e in ring.query(Filter(), limit=2).entries] == [6.0, 7.0]


def test_whole_batches_make_room_and_never_more_than_the_capacity_is_kept() -> None:
    ring = AccessLog(Directory, capacity=5)
    ring.add([entry(n) for n in range(3)])
    ring.add([entry(n) for n in range(3, 6)])  # 6 > 5: the first batch goes
    assert ring.counters() == api.AccessCounters(
        kept=3, capacity=5, received=6, evicted=3, dropped=0
    )


def test_a_list_is_in_time_order_whatever_order_the_batches_came_in() -> None:
    ring = AccessLog(Directory)
    ring.add([entry(5), entry(6)])
    ring.add([entry(1), entry(2)])
    assert [e.time for e in ring.query(Filter(), 10).entries] == [1.0, 2.0, 5.0, 6.0]


def _message(entries: int) -> Any:
    msg = als_pb2.StreamAccessLogsMessage()
    for _ in range(entries):
        e = msg.http_logs.log_entry.add()
        e.common_properties.upstream_cluster = "back|v2"
        e.response.response_code.value = 200
    return msg


def test_a_batch_is_kept_as_envoy_sent_it_and_decoded_once_when_first_read() -> None:
    calls: list[int] = []

    def counting(*args: Any) -> list[EnvoyAccess]:
        calls.append(1)
        return decode(*args)

    ring = AccessLog(lambda: DIRECTORY, decoder=counting)
    data = _message(2).SerializeToString()
    ring.offer("shop-front-default-0-sidecar", "shop/front/default", "outbound", data, 2)
    assert calls == [] and ring.counters().kept == 2  # taking it in decodes nothing
    first = ring.query(Filter(), 10).entries
    assert [(e.source_service, e.service, e.version, e.status) for e in first] == [
        ("front", "back", "v2", 200)
    ] * 2
    assert ring.query(Filter(), 10).entries == first
    assert calls == [1]


def test_a_batch_that_does_not_decode_is_counted_as_dropped() -> None:
    def broken(*args: Any) -> list[EnvoyAccess]:
        raise ValueError("not Envoy's message")

    ring = AccessLog(Directory, decoder=broken)
    ring.offer("n", "c", "outbound", _message(3).SerializeToString(), 3)
    assert ring.query(Filter(), 10).entries == ()
    assert ring.counters().dropped == 3


def test_a_follower_gets_the_tail_then_new_matches_and_keepalives() -> None:
    ring = AccessLog(Directory)
    ring.add([entry(1, status=503), entry(2), entry(3, status=500)])
    stop = threading.Event()
    follow = ring.follow(Filter(status="5xx"), tail=1, stop=stop, idle=0.05, reorder=0)
    assert next(follow) == entry(3, status=500)
    ring.add([entry(4), entry(5, status=502)])
    assert next(follow) == entry(5, status=502)
    assert next(follow) is None  # nothing new within `idle`: the API's keepalive
    stop.set()
    assert list(follow) in ([], [None])


def test_a_followers_backlog_and_what_comes_within_a_flush_are_in_time_order() -> None:
    ring = AccessLog(Directory)
    # two Envoys' batches, each flushed on its own: arrival order is not time order
    ring.add([entry(2), entry(4)])
    ring.add([entry(1), entry(3)])
    stop = threading.Event()
    follow = ring.follow(Filter(), tail=3, stop=stop, idle=5.0, reorder=0.3)
    assert [next(follow).time for _ in range(3)] == [2.0, 3.0, 4.0]  # type: ignore[union-attr]
    got: list[float] = []

    def read() -> None:
        got.extend(next(follow).time for _ in range(4))  # type: ignore[union-attr]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.1)  # the follower waits for news
    ring.add([entry(7)])  # the callee's Envoy flushed first
    time.sleep(0.1)
    ring.add([entry(5), entry(6)])  # the caller's, a wake-up later, began earlier
    time.sleep(0.5)
    ring.add([entry(4.5)])  # a flush past the hold: it comes when it comes
    reader.join(timeout=5)
    assert got == [5.0, 6.0, 7.0, 4.5]
    stop.set()


def _access_handlers(ring: AccessLog, text: str = MESH) -> Any:
    """The access-log endpoints over a ring, with a stand-in for the loop's view (they read
    only its mesh and project)."""
    from types import SimpleNamespace

    from devmesh.core.load import load
    from devmesh.daemon.handlers import Handlers

    handlers = Handlers.__new__(Handlers)
    mesh = load(text)
    handlers._loop = SimpleNamespace(view=SimpleNamespace(mesh=mesh, served=mesh), project="shop")  # type: ignore[assignment]
    handlers.access = ring
    return handlers


def test_a_route_the_mesh_has_not_is_refused_with_did_you_mean() -> None:
    from devmesh.daemon.api import Refusal

    ring = AccessLog(Directory)
    ring.add([entry(1, route="default"), entry(2, route="site"), entry(3, route="gone")])
    handlers = _access_handlers(ring)
    with pytest.raises(Refusal) as caught:
        handlers.access_entries(api.AccessRequest(route="defualt"))
    assert caught.value.error.code is api.ErrorCode.NOT_FOUND
    message = caught.value.error.message
    assert "no route 'defualt' in mesh 'shop'" in message and "did you mean 'default'" in message
    assert "routes: default, site" in message
    with pytest.raises(Refusal):
        next(iter(handlers.follow_access(api.AccessFollowRequest(route="defualt"))))
    # the mesh's routes (a service's default, the ingress's) and one a reload took out that
    # kept entries still carry
    for route, times in (("default", [1.0]), ("site", [2.0]), ("gone", [3.0])):
        found = handlers.access_entries(api.AccessRequest(route=route)).entries
        assert [e.time for e in found] == times


def test_with_access_logs_turned_off_a_list_says_so_and_a_follow_is_refused() -> None:
    from devmesh.daemon.api import Refusal

    ring = AccessLog(Directory)
    ring.add([entry(1, route="default")])
    assert _access_handlers(ring).access_entries(api.AccessRequest()).logging
    off = _access_handlers(
        ring, MESH.replace("services:", "observability: {access_log: false}\nservices:")
    )
    result = off.access_entries(api.AccessRequest())
    assert [e.time for e in result.entries] == [1.0] and not result.logging
    with pytest.raises(Refusal) as caught:
        next(iter(off.follow_access(api.AccessFollowRequest())))
    assert caught.value.error.code is api.ErrorCode.CONFLICT
    assert "access_log: false" in caught.value.error.message


def test_a_follow_running_when_access_logs_are_turned_off_ends_within_a_keepalive() -> None:
    import time

    ring = AccessLog(Directory)
    handlers = _access_handlers(ring)
    on = handlers._loop.view.served
    off = load(MESH.replace("services:", "observability: {access_log: false}\nservices:"))
    stream = handlers.follow_access(api.AccessFollowRequest(tail=0))
    got: list[api.AccessEntry | None] = []
    ended = threading.Event()

    def read() -> None:
        got.extend(stream)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    ring.add([entry(1, route="default")])
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.time for e in got if e is not None] == [1.0]  # followed while logs were on
    assert not ended.is_set() and on.observability.access_log
    handlers._loop.view.served = off  # a reload applied it
    assert ended.wait(3)  # the next keepalive (every second) sees it and ends the stream


def test_the_gateway_is_found_by_its_trace_name_too() -> None:
    from devmesh.daemon.api import Refusal

    ring = AccessLog(Directory)
    ring.add(
        [
            # the gateway's hop, and its public listener (a caller from outside: no source)
            entry(1, source_service=api.INGRESS, service="front"),
            entry(2),
            entry(3, reporter=api.Reporter.INGRESS, source_service="", service="front"),
        ]
    )
    handlers = _access_handlers(ring)
    for name in ("gateway", api.INGRESS):  # `traces --service gateway` names it so
        got = handlers.access_entries(api.AccessRequest(service=name)).entries
        assert [e.time for e in got] == [1.0, 3.0]
    got = handlers.access_entries(api.AccessRequest(service="back")).entries
    assert [e.time for e in got] == [2.0]  # the public listener's are not a service's
    for typo, meant in (("ingres", "ingress"), ("gatewy", "gateway")):
        with pytest.raises(Refusal) as caught:
            handlers.access_entries(api.AccessRequest(service=typo))
        assert f"did you mean '{meant}'" in caught.value.error.message


def test_the_gateways_envoy_log_is_followed_by_either_name_with_proxy() -> None:
    from devmesh.daemon.api import Refusal

    handlers = _access_handlers(AccessLog(Directory))
    asked: list[api.FollowRequest] = []

    def follow(req: api.FollowRequest, stop: object) -> Iterator[None]:
        asked.append(req)
        return iter([None])

    handlers._follow = follow
    for name in ("gateway", api.INGRESS):
        assert list(handlers.follow_logs(api.FollowRequest(name, proxy=True))) == [None]
        with pytest.raises(Refusal) as caught:  # its app logs: it has no app
            next(iter(handlers.follow_logs(api.FollowRequest(name))))
        assert caught.value.error.code is api.ErrorCode.NOT_FOUND
        assert f"`devmesh logs --proxy {name}` shows its Envoy's log" in caught.value.error.message
    assert [r.service for r in asked] == ["gateway", api.INGRESS]
    with pytest.raises(Refusal) as caught:
        next(iter(handlers.follow_logs(api.FollowRequest("gatewy", proxy=True))))
    assert "--proxy" not in caught.value.error.message
    assert "did you mean 'gateway'" in caught.value.error.message


# -- the HTTP logger's OTLP line -----------------------------------------------------------


def _line(**values: str) -> str:
    fields = dict.fromkeys((name for name, _ in access_log.HTTP_FIELDS), "-")
    fields.update(values)
    return access_log.SEPARATOR.join(fields.values())


NODE = ("shop-front-default-0-sidecar", "shop/front/default", "outbound")


def test_a_line_becomes_an_entry_with_its_times_in_milliseconds() -> None:
    line = _line(
        status="503",
        flags="UO,URX",
        duration_us="1250",
        duration_ms="1",
        upstream_us="800",
        bytes_received="12",
        bytes_sent="81",
        route_name="back/main",
        upstream_cluster="back|v2",
        upstream_ip="172.18.0.3",
        downstream_ip="127.0.0.1",
        detail="upstream_reset_before_response_started{overflow}",
        method="POST",
        authority="back:8000",
        path="/a?b=c",
        request_id="rid",
        trace_header="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    e = from_line(NODE, 1_700_000_000_500_000_000, line)
    assert e is not None
    assert (e.node_id, e.node_cluster, e.log_name, e.tcp) == (*NODE, False)
    assert e.start == pytest.approx(1_700_000_000.5)
    assert (e.duration_ms, e.upstream_ms) == (1.25, 0.8)
    assert (e.status, e.flags, e.bytes_received, e.bytes_sent) == (503, ("UO", "URX"), 12, 81)
    assert (e.method, e.authority, e.path, e.request_id) == ("POST", "back:8000", "/a?b=c", "rid")
    assert (e.route_name, e.upstream_cluster, e.upstream_ip) == (
        "back/main",
        "back|v2",
        "172.18.0.3",
    )
    assert to_entry(e, DIRECTORY).trace_id == "a" * 32


def test_what_envoy_did_not_have_is_empty_and_a_reset_keeps_its_millisecond_duration() -> None:
    e = from_line(NODE, 0, _line(status="0", duration_ms="7"))
    assert e is not None
    assert (e.status, e.flags, e.duration_ms, e.upstream_ms) == (None, (), 7.0, None)
    assert (e.method, e.path, e.upstream_cluster, e.trace_header) == ("", "", "", "")


@pytest.mark.parametrize("line", ["", "a\x00b", _line() + "\x00extra", "only text"])
def test_a_line_without_the_loggers_fields_is_no_entry(line: str) -> None:
    assert from_line(NODE, 0, line) is None


@pytest.mark.parametrize("odd", ["\u00b2", "1" * 5000, "-3", "1.5", "\u0661"])
def test_numbers_that_are_not_envoys_read_as_unknown(odd: str) -> None:
    e = from_line(NODE, 0, _line(status=odd, duration_us=odd, duration_ms=odd, bytes_sent=odd))
    assert e is not None
    assert (e.status, e.duration_ms, e.bytes_sent) == (None, None, 0)


def test_records_that_are_not_lines_or_not_utf8_cost_only_themselves() -> None:
    """Counted as dropped when the batch is read; a byte that is not UTF-8 in a header
    Envoy passed on is replaced, not a reason to lose the export."""
    data = _export([_line(status="200"), "junk", _line(status="201", path="/caf\u20ac")], LABELS)
    data = data.replace(b"/caf\xe2\x82\xac", b"/caf\xe9AB")  # a raw 0xE9, the same length
    ring = AccessLog(lambda: DIRECTORY)
    labels, n = otlp_framing(data)
    ring.offer(labels["node_name"], labels["cluster_name"], labels["log_name"], OtlpLogs(data), n)
    result = ring.query(Filter(), 10)
    assert [(e.status, e.path) for e in result.entries] == [(200, ""), (201, "/caf\ufffdAB")]
    assert (result.counters.received, result.counters.dropped) == (3, 1)


def _export(lines: list[str], labels: dict[str, str]) -> bytes:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    request = logs_service_pb2.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in labels.items():
        kv = resource_logs.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    scope = getattr(resource_logs, resource_logs.DESCRIPTOR.fields_by_number[2].name).add()
    records = getattr(scope, scope.DESCRIPTOR.fields_by_number[2].name)
    for i, line in enumerate(lines):
        record = records.add()
        record.time_unix_nano = 1_000_000_000 * (i + 1)
        record.body.string_value = line
    return request.SerializeToString()


LABELS = {
    "log_name": "outbound",
    "zone_name": "",
    "cluster_name": "shop/front/default",
    "node_name": "shop-front-default-0-sidecar",
}


def test_an_export_is_framed_for_its_node_and_count_and_decoded_later() -> None:
    data = _export([_line(status="200"), "not a line", _line(status="404")], LABELS)
    labels, n = otlp_framing(data)
    assert (labels["node_name"], labels["cluster_name"], labels["log_name"], n) == (
        "shop-front-default-0-sidecar",
        "shop/front/default",
        "outbound",
        3,
    )
    entries = decode(*NODE, OtlpLogs(data))
    assert [(e.status, e.start) for e in entries] == [(200, 1.0), (404, 3.0)]
    with pytest.raises(ValueError):
        otlp_framing(b"\xff\xff\xff")


def test_the_service_takes_each_otlp_export_as_bytes_with_its_resources_node(
    tmp_path: Any,
) -> None:
    import grpc

    from devmesh.adapters.xds_server import XdsServer

    got: list[tuple[str, str, str, Any, int]] = []
    service = AccessLogService(lambda *batch: got.append(batch))
    server = XdsServer(tmp_path / "xds.sock", services=[service.register])
    server.start()
    data = _export([_line(status="200")] * 2, LABELS)
    try:
        with grpc.insecure_channel(f"unix:{tmp_path / 'xds.sock'}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                request_serializer=None,
                response_deserializer=None,
            )
            assert export(data, timeout=5) == b""
            assert export(b"\xff\xff", timeout=5) == b""  # answered, and dropped
    finally:
        server.stop()
    assert got == [
        ("shop-front-default-0-sidecar", "shop/front/default", "outbound", OtlpLogs(data), 2)
    ]
