"""Traces, span forwarding, StatsD and X-Ray, end to end: real Docker, real Envoy sidecars,
the real `devmesh` command, and real receivers on 127.0.0.1 in this process.

One mesh for the module (gateway -> frontend -> catalog, the shop's app, which forwards
the trace headers). Its file forwards spans to an OTLP/HTTP receiver here, decoded with
opentelemetry-proto, and sends DogStatsD to a UDP listener here; the last test switches it
to X-Ray and reads the segment documents the daemon relays to another UDP listener.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from devmesh.adapters.otlp import scope_spans
from devmesh.daemon.sampling import HOLD
from tests.e2e.conftest import PROJECTS, Mesh, PacedLoad, free_port, sweep

pytestmark = pytest.mark.docker

TEXT = """\
mesh: traced
observability:
  tracing: {sampling: 100, forward: "http://127.0.0.1:@FWD@/v1/traces"}
  statsd: {address: "127.0.0.1:@STATSD@", flavor: dogstatsd}
defaults:
  health: {path: /healthz, interval: 1s}
ingress:
  port: @PORT@
  routes:
    - {name: site, match: {path_prefix: /}, service: frontend}
services:
  frontend:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    env: {UPSTREAMS: catalog}
    calls: [catalog]
  catalog:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8001
"""


class OtlpReceiver:
    """An OTLP/HTTP endpoint (protobuf): every span it gets, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.posts = 0
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for rs in request.resource_spans:
                    for ss in scope_spans(rs):
                        received.spans.extend(ss.spans)
                received.posts += 1
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UdpListener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]

    def datagrams(self, within: float, until: Any) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(self.sock.recv(65535))
                if until(got):
                    break
        return got


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[tuple[Mesh, OtlpReceiver, UdpListener]]:
    receiver, statsd = OtlpReceiver(), UdpListener()
    mesh = Mesh(
        tmp_path_factory.mktemp("traced"), f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client
    )
    PROJECTS.append(mesh.project)
    mesh.write(TEXT.replace("@FWD@", str(receiver.port)).replace("@STATSD@", str(statsd.port)))
    try:
        mesh.up_ok()
        yield mesh, receiver, statsd
    finally:
        mesh.run("down", timeout=60)
        sweep(docker_client, mesh.project)
        receiver.close()
        statsd.sock.close()


def _traces(mesh: Mesh, *args: str) -> dict[str, Any]:
    result = mesh.run("traces", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _trace_of(mesh: Mesh, path: str, services: set[str]) -> dict[str, Any]:
    """The trace of the request for `path` (a unique one), once every service has its span.
    (Found by its URL: the gateway gives a request from outside an x-request-id of its own.)
    """
    deadline = time.monotonic() + 15
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for summary in _traces(mesh, "--limit", "50")["traces"]:
            trace: dict[str, Any] = json.loads(
                mesh.run("traces", summary["trace_id"], "--json").stdout
            )
            if any(s["url"].endswith(path) for s in trace["spans"]):
                last = trace
                if services <= {s["service"] for s in trace["spans"]}:
                    return trace
        time.sleep(0.5)
    raise AssertionError(f"no complete trace for {path}: {last} {_traces(mesh)} {mesh.ps()}")


def test_a_request_through_the_gateway_is_one_trace_across_every_sidecar(
    traced: tuple[Mesh, OtlpReceiver, UdpListener],
) -> None:
    mesh, _, _ = traced
    path = f"/shop-{uuid.uuid4().hex[:12]}"
    answer = mesh.get(path)
    assert answer.status == 200, answer.body
    assert "-> catalog: catalog/default" in answer.body  # the app did call catalog

    trace = _trace_of(mesh, path, {"gateway", "frontend", "catalog"})
    request_id = trace["spans"][0]["request_id"]
    assert request_id and all(s["request_id"] == request_id for s in trace["spans"])
    spans = {s["span_id"]: s for s in trace["spans"]}
    # The call tree: each span's parent is the one before it, in this order.
    chain = [
        ("gateway", "server"),  # the public ingress listener
        ("gateway", "client"),  # its hop to frontend's route
        ("frontend", "server"),  # frontend's inbound sidecar
        ("frontend", "client"),  # frontend's call to catalog, from its sidecar
        ("catalog", "server"),
    ]
    leaf = next(s for s in trace["spans"] if (s["service"], s["kind"]) == chain[-1])
    walked = []
    span: dict[str, Any] | None = leaf
    while span is not None:
        walked.append((span["service"], span["kind"]))
        span = spans.get(span["parent_id"])
    assert walked[::-1] == chain, trace["spans"]
    by = {(s["service"], s["kind"]): s for s in trace["spans"]}
    assert by[("frontend", "client")]["upstream"] == "catalog/default"
    assert by[("frontend", "client")]["route"] == "default"
    assert by[("frontend", "client")]["name"] == "catalog/default"
    assert by[("catalog", "server")]["name"] == "catalog/default"
    assert by[("catalog", "server")]["version"] == "default"
    assert by[("gateway", "server")]["route"] == "site"
    assert all(s["status"] == 200 for s in trace["spans"])

    # the waterfall: every span on a row of its own, indented by depth
    shown = mesh.run("traces", trace["trace_id"][:10])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace['trace_id']}")
    assert request_id in lines[0]
    assert len(lines) == 1 + len(trace["spans"])
    assert lines[-1].startswith("        catalog/default in"), shown.stdout


def test_traces_filter_by_service_status_and_duration(
    traced: tuple[Mesh, OtlpReceiver, UdpListener],
) -> None:
    mesh, _, _ = traced
    assert mesh.get("/status/503").status == 503
    failing = _trace_of(mesh, "/status/503", {"gateway", "frontend"})

    five = {t["trace_id"] for t in _traces(mesh, "--status", "5xx")["traces"]}
    assert failing["trace_id"] in five
    two = {t["trace_id"] for t in _traces(mesh, "--status", "2xx")["traces"]}
    assert failing["trace_id"] not in two
    catalog = {t["trace_id"] for t in _traces(mesh, "--service", "catalog")["traces"]}
    assert failing["trace_id"] not in catalog  # /status/ never calls catalog
    assert catalog  # the first test's trace went there
    assert _traces(mesh, "--slower", "1h")["traces"] == []

    wrong = mesh.run("traces", "--service", "catalgo")
    assert wrong.returncode != 0
    assert "did you mean 'catalog'" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    bad_status = mesh.run("traces", "--status", "9xx")
    assert bad_status.returncode != 0 and "5xx" in bad_status.stderr
    missing = mesh.run("traces", "0123456789abcdef")
    assert missing.returncode != 0 and "no trace" in missing.stderr


def test_spans_are_forwarded_to_an_otlp_receiver_as_a_call_tree(
    traced: tuple[Mesh, OtlpReceiver, UdpListener],
) -> None:
    mesh, receiver, _ = traced
    path = f"/fwd-{uuid.uuid4().hex[:12]}"
    assert mesh.get(path).status == 200
    deadline = time.monotonic() + 15
    mine: list[Any] = []
    while time.monotonic() < deadline:
        mine = [
            s
            for s in list(receiver.spans)
            if any(
                kv.key == "http.url" and kv.value.string_value.endswith(path) for kv in s.attributes
            )
        ]
        if len(mine) >= 5:
            break
        time.sleep(0.3)
    assert len(mine) == 5, [s.name for s in mine]
    assert len({s.trace_id for s in mine}) == 1
    ids = {s.span_id for s in mine}
    roots = [s for s in mine if s.parent_span_id not in ids]
    assert len(roots) == 1 and roots[0].name == "gateway/site"
    names = sorted(s.name for s in mine)
    assert names.count("catalog/default") == 2  # frontend's call and catalog's own span
    state = mesh.ps()["tracing"]
    assert state["forwarded"] >= 5 and state["forward"].endswith("/v1/traces")


def test_statsd_metrics_reach_a_udp_listener_on_the_host(
    traced: tuple[Mesh, OtlpReceiver, UdpListener],
) -> None:
    mesh, _, statsd = traced
    mesh.get("/stats-check")
    got = statsd.datagrams(20, lambda g: any(b"upstream_rq" in d for d in g))
    lines = [line for d in got for line in d.decode().splitlines()]
    assert lines, "no StatsD datagram arrived"
    # DogStatsD: `name:value|type` with optional `|#tag:value,...`
    for line in lines[:50]:
        name, _, rest = line.partition(":")
        assert name and rest.split("|")[1] in ("c", "g", "ms", "h", "d"), line
    assert any(".upstream_rq" in line for line in lines), lines[:20]


def test_xray_segments_reach_a_udp_listener_through_the_daemon(
    traced: tuple[Mesh, OtlpReceiver, UdpListener],
) -> None:
    mesh, _, _ = traced
    xray = UdpListener()
    try:
        text = mesh.file.read_text()
        start = text.index("  tracing:")
        end = text.index("\n", start)
        mesh.file.write_text(
            text[:start]
            + f'  tracing: {{provider: xray, address: "127.0.0.1:{xray.port}"}}'
            + text[end:]
        )
        before = mesh.containers()
        mesh.up_ok()  # a second `up` reloads the file
        assert mesh.containers() == before  # tracers come by xDS: no container is recreated
        deadline = time.monotonic() + 20
        segments: list[dict[str, Any]] = []
        by_trace: dict[str, set[str]] = {}
        every = {"gateway", "frontend", "catalog"}
        while time.monotonic() < deadline and not any(n >= every for n in by_trace.values()):
            mesh.get("/xray")
            for d in xray.datagrams(1, lambda g: False):
                header, _, body = d.decode().partition("\n")
                assert json.loads(header) == {"format": "json", "version": 1}
                segment = json.loads(body)
                segments.append(segment)
                by_trace.setdefault(segment["trace_id"], set()).add(segment["name"])
        assert segments, "no X-Ray segment arrived"
        # one request, one X-Ray trace through all three: the app forwarded x-amzn-trace-id
        assert any(names >= every for names in by_trace.values()), by_trace
        one = segments[0]
        assert len(one["trace_id"].split("-")) == 3 and one["trace_id"].startswith("1-")
        assert one["end_time"] >= one["start_time"]
        state = mesh.ps()["tracing"]
        assert state["provider"] == "xray"
    finally:
        xray.sock.close()


def test_a_sink_nobody_listens_on_blocks_no_request(
    traced: tuple[Mesh, OtlpReceiver, UdpListener], tmp_path: Path
) -> None:
    """The forward endpoint and the StatsD address closed: requests are as fast as ever."""
    mesh, _, statsd = traced
    text = mesh.file.read_text()
    start = text.index("  tracing:")
    end = text.index("\n", start)
    dead = free_port()  # nothing listens there
    mesh.file.write_text(
        text[:start] + f'  tracing: {{forward: "http://127.0.0.1:{dead}/v1/traces"}}' + text[end:]
    )
    mesh.up_ok()
    # Back from xray to otel replaces every listener's filter chains (the tracer is the
    # HTTP connection manager's): drained with no request lost (test_listener_changes.py).
    statsd.sock.close()
    times = []
    for _ in range(30):
        t0 = time.monotonic()
        assert mesh.get("/").status == 200
        times.append(time.monotonic() - t0)
    assert max(times) < 2.0, times
    deadline = time.monotonic() + 15
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = mesh.ps()["tracing"]
        if state["forward_dropped"] > 0:
            break
        time.sleep(0.5)
    assert state["forward_dropped"] > 0 and state["forward_error"], state
    ps = mesh.run("ps")
    assert "dropped" in ps.stdout and str(dead) in ps.stdout


def test_auto_sampling_traces_fewer_requests_under_load_and_every_one_again_after(
    traced: tuple[Mesh, OtlpReceiver, UdpListener],
) -> None:
    """`sampling: auto`: under load the daemon lowers the share it pushes to every Envoy
    (RTDS), the spans that come fall to a fraction of the requests, and once the load ends
    every request is traced again; no request fails meanwhile."""
    mesh, _, _ = traced
    text = mesh.file.read_text()
    start = text.index("  tracing:")
    end = text.index("\n", start)
    mesh.file.write_text(text[:start] + "  tracing: {sampling: auto}" + text[end:])
    mesh.up_ok()
    state = mesh.ps()["tracing"]
    assert state["adaptive"] is True and state["sampling"] == 100, state

    def share() -> dict[str, Any]:
        return dict(mesh.ps()["tracing"])

    # ~250 requests a second, each traced at the gateway and frontend's sidecar (2 spans):
    # about 500 spans a second at 100 %, over what auto keeps (sampling.TARGET, 50)
    with PacedLoad(mesh.port, path="/healthz", rate=250, threads=5) as load:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and (state := share())["sampling"] == 100:
            time.sleep(0.5)
        assert state["sampling"] < 100, (state, load.ok)
        time.sleep(HOLD + 1)  # the spans the Envoys still held at 100 % have come
        spans, served = share()["spans"], load.ok
        time.sleep(6)
        spans, served = share()["spans"] - spans, load.ok - served
    assert not load.failures, load.failures[:5]
    assert served > 300, served
    assert spans / served < 1.0, (spans, served, state)  # 2 a request when every one is traced
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (state := share())["sampling"] != 100:
        time.sleep(0.5)
    assert state["sampling"] == 100, state
