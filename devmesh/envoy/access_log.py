"""Access logs: every HTTP connection manager and TCP proxy of every sidecar and of the
gateway logs every request (every connection, for TCP) to the daemon.

Envoy's gRPC access-log service (`envoy.access_loggers.http_grpc` / `tcp_grpc`) over the
xDS socket every pod already mounts: the logger's cluster is the bootstrap's `devmesh-xds`,
and the daemon's gRPC server answers `AccessLogService` beside ADS. No file per pod to
tail, nothing on the network, and Envoy batches entries (`FLUSH`, `BUFFER_BYTES`): one
gRPC message carries every entry of a flush interval.

The logger's `log_name` says which side of a hop logged (`REPORTERS`); the node (sent on
each stream's first message) says which Envoy. The daemon maps both, with the upstream
cluster (`catalog|v2`) and the addresses, to mesh terms (`daemon/accesslog.py`).
"""

from __future__ import annotations

from typing import Any, Final

Json = dict[str, Any]

_T = "type.googleapis.com/"
HTTP_GRPC = _T + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
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
# 1 ms whatever it holds (grpc.aio's read of it): at 32 KiB (about 90 entries) 1,000
# requests a second through two sidecars made 10 messages a second, 13 us of the daemon's
# CPU a request; at 256 KiB the 0.5 s flush sends first (3 a second, 4-7 us a request).
# But Envoy holds the buffered entries as protobuf objects, several times their wire size,
# and its allocator keeps the peak: at 256 KiB under ~850 requests a second a sidecar's
# private memory was 2.0-2.2 MiB higher with access logs than without (3.2 under mTLS, whose
# entries carry both certificates' subjects and SANs, 919 bytes against 410), and mTLS
# server sidecars were +0.9 to +1.8 MiB over plaintext ones. At 128 KiB: mTLS +0.21 to +0.58 MiB
# over plaintext, each sidecar 0.3-1.3 MiB lower than at 256 KiB, for
# +1.5 us of the daemon's CPU a request at ~850 a second (bench/mtls.py,
# bench/observability_cpu.py; at dev rates the 0.5 s flush sends first, so no change).
BUFFER_BYTES: Final = 131_072
# Trace context, logged so an entry links to its trace (W3C, and X-Ray's header).
TRACE_HEADERS: Final = ("traceparent", "x-amzn-trace-id")


def _common(reporter: str) -> Json:
    return {
        "log_name": reporter,
        "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}},
        "transport_api_version": "V3",
        "buffer_flush_interval": FLUSH,
        "buffer_size_bytes": BUFFER_BYTES,
    }


def http_access_log(reporter: str) -> Json:
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": HTTP_GRPC,
            "common_config": _common(reporter),
            "additional_request_headers_to_log": list(TRACE_HEADERS),
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
