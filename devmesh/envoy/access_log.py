"""Access logs: every HTTP connection manager and TCP proxy of every sidecar and of the
gateway logs every request (every connection, for TCP) to the daemon.

Over the xDS socket every pod already mounts: each logger's cluster is the bootstrap's
`devmesh-xds`, and the daemon's gRPC server answers beside ADS. No file per pod to tail,
nothing on the network, and Envoy batches entries (`FLUSH`, `BUFFER_BYTES`): one gRPC
message carries every entry of a flush interval.

- HTTP: Envoy's OpenTelemetry access logger (`envoy.access_loggers.open_telemetry`), whose
  log record's body is one line of the fields devmesh shows (`HTTP_FIELDS`), NUL between
  them, to the daemon's OTLP logs service. Envoy's gRPC logger (`http_grpc`) builds a
  protobuf entry of everything it knows for every request: measured with one host Envoy,
  two hops, saturated (bench/observability_cpu.py --alternatives), it added 13-28 us of
  Envoy's CPU a request against 8-13 for this line (5-10 for the same line written to
  /dev/null by the file logger, the floor; each field an OTLP attribute instead: 44).
  NUL is the separator because no field can hold one: Envoy refuses a header value with a
  NUL, CR or LF (and, measured, answers 400 to one with other control characters), and
  every other field is Envoy's own (codes, numbers, addresses, devmesh's names).
- TCP: Envoy's gRPC logger (`tcp_grpc`): one entry a connection, not a request.

The logger's name says which side of a hop logged (`REPORTERS`); the node (the OTLP
resource's labels, or a gRPC stream's first message) says which Envoy. The daemon maps
both, with the upstream cluster (`catalog|v2`) and the addresses, to mesh terms
(`daemon/accesslog.py`).
"""

from __future__ import annotations

from typing import Any, Final

Json = dict[str, Any]

_T = "type.googleapis.com/"
OTEL_LOGGER = _T + "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"
TCP_GRPC = _T + "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
HCM_TYPE = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

COLLECTOR_CLUSTER: Final = "devmesh-xds"  # bootstrap.XDS_CLUSTER (it imports resources)
# Which side logged: a pod's outbound listener (the caller's sidecar), its inbound
# listener (the callee's), or the gateway's public listener.
OUTBOUND: Final = "outbound"
INBOUND: Final = "inbound"
INGRESS: Final = "ingress"
REPORTERS: Final = (OUTBOUND, INBOUND, INGRESS)
FLUSH: Final = "0.5s"  # Envoy's default is 1 s; half of it keeps `logs --follow` lively
# Flushed sooner when this much is buffered. Each message costs the daemon's xDS loop about
# 1 ms whatever it holds (grpc.aio's read of it), so fewer, fuller messages are cheaper; but
# Envoy holds the buffered entries as protobuf objects and its allocator keeps the peak.
# Measured with the gRPC logger (entries of 410 bytes, 919 under mTLS): at 256 KiB under
# ~850 requests a second a sidecar's private memory was 2.0-2.2 MiB higher with access logs
# than without, and at 128 KiB 0.3-1.3 MiB lower than that, for +1.5 us of the daemon's CPU
# a request (bench/mtls.py, bench/observability_cpu.py). A line's record is about 300 bytes
# whether or not the hop is mTLS, so 128 KiB is some 400 entries, about the 0.5 s flush's
# worth at 850 a second; at dev rates the flush sends first.
BUFFER_BYTES: Final = 131_072
# Trace context, logged so an entry links to its trace (W3C, and X-Ray's header).
TRACE_HEADERS: Final = ("traceparent", "x-amzn-trace-id")

SEPARATOR: Final = "\x00"
# The HTTP line's fields, in order: (name, Envoy's command). Envoy writes `-` for a value
# it does not have. The request's start time is the log record's own `time_unix_nano`.
HTTP_FIELDS: Final = (
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),  # short codes, comma-separated: UO,URX
    # From the request's first byte to the response's last (the gRPC logger's `duration`
    # ran to the stream's end, later only when a response ends before its request does);
    # in whole milliseconds (`%DURATION%`) when no response's last byte went out (a reset).
    ("duration_us", "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%"),
    ("duration_ms", "%DURATION%"),
    ("upstream_us", "%COMMON_DURATION(US_TX_BEG:US_RX_BEG:us)%"),  # the upstream's answer
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("route_name", "%ROUTE_NAME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),  # its name, never an alt_stat_name
    ("upstream_ip", "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("downstream_ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("detail", "%RESPONSE_CODE_DETAILS%"),
    ("method", "%REQ(:METHOD)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("path", "%REQ(:PATH)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("trace_header", f"%REQ({TRACE_HEADERS[0].upper()}?{TRACE_HEADERS[1].upper()})%"),
)
HTTP_LINE: Final = SEPARATOR.join(command for _, command in HTTP_FIELDS)


def _common(reporter: str) -> Json:
    return {
        "log_name": reporter,
        "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}},
        "transport_api_version": "V3",
        "buffer_flush_interval": FLUSH,
        "buffer_size_bytes": BUFFER_BYTES,
    }


def http_access_log(reporter: str) -> Json:
    # `common_config`, which Envoy 1.40 calls deprecated (for `grpc_service`, `log_name` and
    # the buffer settings beside it) but still takes: the xds-protos wheel the daemon
    # encodes xDS with knows only this form.
    return {
        "name": "envoy.access_loggers.open_telemetry",
        "typed_config": {
            "@type": OTEL_LOGGER,
            "common_config": _common(reporter),
            "body": {"string_value": HTTP_LINE},
        },
    }


def tcp_access_log(reporter: str) -> Json:
    return {
        "name": "envoy.access_loggers.tcp_grpc",
        "typed_config": {"@type": TCP_GRPC, "common_config": _common(reporter)},
    }


def add_access_logs(listener: Json, reporter: str) -> Json:
    """`listener` with every HTTP connection manager and TCP proxy in it logging as
    `reporter`. Changes the listener it is given (a fresh one from its builder) and
    returns it."""
    for chain in listener.get("filter_chains", ()):
        for f in chain.get("filters", ()):
            typed = f.get("typed_config", {})
            if typed.get("@type") == HCM_TYPE:
                typed["access_log"] = [http_access_log(reporter)]
            elif typed.get("@type") == TCP_PROXY_TYPE:
                typed["access_log"] = [tcp_access_log(reporter)]
    return listener


def reporter_of(listener: Json) -> str:
    """Which side of a hop a listener logs as, from its name (resources' names)."""
    name = listener.get("name", "")
    if name == "in":
        return INBOUND
    if name == "ingress":
        return INGRESS
    return OUTBOUND  # `out|SERVICE`: a pod's way to SERVICE, or the gateway's hop to it


def with_access_logs(on: bool, listeners: list[Json]) -> list[Json]:
    """The hook in resources' node builders: every listener logging, when `on`."""
    if on:
        for listener in listeners:
            add_access_logs(listener, reporter_of(listener))
    return listeners


def uses_collector(listener: Json) -> bool:
    """Whether a listener logs to the daemon (a static bootstrap then needs its cluster)."""
    for chain in listener.get("filter_chains", ()):
        for f in chain.get("filters", ()):
            if f.get("typed_config", {}).get("access_log"):
                return True
    return False
