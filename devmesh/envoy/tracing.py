"""Envoy's tracing and stats sinks, from the mesh file's `observability:` block.

Traces (`tracing: {provider: otel}`, the default): every HTTP connection manager of every
sidecar and of the gateway makes a span per request with Envoy's OpenTelemetry tracer
(`envoy.tracers.opentelemetry`), exported over gRPC to the daemon's own collector. The
collector is served by the xDS server on the very socket every pod already mounts, so the
tracer's cluster is the bootstrap's `devmesh-xds` and nothing goes on the network. The
OpenTelemetry tracer over Zipkin: it speaks W3C `traceparent` (what apps and OTel SDKs
forward), and its gRPC export needs no HTTP collector cluster of its own.

`tracing: {provider: xray}`: Envoy's X-Ray tracer sends segment documents over UDP. Its
`daemon_endpoint` must be an IP address, and the user's X-Ray daemon listens on the host's
127.0.0.1, which a container cannot reach, so the sidecars send to the mesh network's
gateway address (the host, seen from the pods) and the daemon relays each datagram to the
configured address (`daemon/relay.py`).

StatsD (`statsd: {address, flavor}`): Envoy's stats sinks are bootstrap-only. They send
to a UNIX datagram socket the daemon binds in the xDS directory every pod mounts
(`STATSD_SOCKET`), and the daemon relays to the configured address: no port is opened on
any network, and the bootstrap (the containers' config hash) does not depend on an
address known only once the network exists.

Spans carry mesh words as custom tags (`SERVICE_TAG`, `VERSION_TAG`, `ROUTE_TAG`); span
names are the routes' decorators: `catalog/main` for the caller's span of a call over
route `main`, `catalog/v2` for the pod's own (inbound) span.
"""

from __future__ import annotations

from typing import Any

from devmesh.core.model import Mesh, Tracing

Json = dict[str, Any]  # proto-JSON, as resources.Json (not imported: resources imports us)

_T = "type.googleapis.com/"
OTEL = _T + "envoy.config.trace.v3.OpenTelemetryConfig"
XRAY = _T + "envoy.config.trace.v3.XRayConfig"
STATSD = _T + "envoy.config.metrics.v3.StatsdSink"
DOGSTATSD = _T + "envoy.config.metrics.v3.DogStatsdSink"

COLLECTOR_CLUSTER = "devmesh-xds"  # bootstrap.XDS_CLUSTER: the collector shares its socket
STATSD_SOCKET_NAME = "statsd.sock"  # beside xds.sock in the mounted xDS directory
GATEWAY_SERVICE = "gateway"  # the service name of the gateway's spans

SERVICE_TAG = "devmesh.service"
VERSION_TAG = "devmesh.version"
ROUTE_TAG = "devmesh.route"

# Envoy's OpenTelemetry tracer exports every 5 s, or as soon as 5 spans wait: under load
# that is hundreds of gRPC calls a second per Envoy, each one a Python call in the daemon
# (measured with bench/observability.py --on-only tracing: saturation throughput 0.36 of
# tracing off). A flush is done on the worker thread, in the path of the request whose span
# fills the batch: it copies and serializes the whole batch while requests wait. Measured
# with one host Envoy, 2 hops, every request traced at ~830 req/s (10 paced connections),
# p99 by batch: 1,000 spans 13.7 ms, 200 5.7, 100 4.4, 50 3.6, 25 3.5 (tracing off: 2.2-2.4).
# Each export costs the daemon about 1 ms of CPU whatever it carries (grpc.aio waking up), so
# the batch is 100: at ~830 traced req/s the daemon's CPU a request is 28 us against 9 us at
# 1,000 (bench/observability_cpu.py), and at dev rates nothing changes (the 5 s timer sends
# first). The interval: a second's made every Envoy that saw a request call once a second
# (20 services at 1 request/s each: the daemon's CPU 4.63 % of a core at 1 s, 4.13 % at 2 s,
# 3.40 % at 5 s, measured on one loaded machine in a row). A trace shows in `devmesh traces`
# up to 5 s after its request ended; its access-log entry within half a second.
FLUSH_RUNTIME: Json = {
    "tracing.opentelemetry.flush_interval_ms": 5000,
    "tracing.opentelemetry.min_flush_spans": 100,
}


# The HTTP connection managers' request ids, when tracing is on. Envoy's default writes its
# trace decision into the `x-request-id` (one of the UUID's hex digits): a client that sent
# its own id found it changed in the logs (found by trying it). Sampling still goes by the
# id's UUID value (`use_request_id_for_trace_sampling` off made Envoy 1.40 trace every
# request whatever the RTDS share, measured by tests/e2e/test_tracing.py), so every Envoy
# at one share makes the same choice for a request; an id that is not a UUID is not traced.
REQUEST_ID: Json = {
    "typed_config": {
        "@type": _T + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
        "pack_trace_reason": False,
    }
}


def _literal(tag: str, value: str) -> Json:
    return {"tag": tag, "literal": {"value": value}}


def provider(tracing: Tracing, service: str, relay_host: str | None) -> Json:
    """The HTTP tracer of one Envoy. `relay_host`: the address the pods reach the host at
    (the mesh network's gateway); None for a config run on the host itself."""
    if tracing.provider == "xray":
        address = tracing.xray_address
        assert address is not None  # the loader fills the default
        return {
            "name": "envoy.tracers.xray",
            "typed_config": {
                "@type": XRAY,
                "daemon_endpoint": {
                    "protocol": "UDP",
                    "address": relay_host or address.host,
                    "port_value": address.port,
                },
                "segment_name": service,
            },
        }
    return {
        "name": "envoy.tracers.opentelemetry",
        "typed_config": {
            "@type": OTEL,
            "grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": "1s"},
            "service_name": service,
        },
    }


def hcm_tracing(mesh: Mesh, service: str, version: str, relay_host: str | None) -> Json | None:
    """The `tracing` of an Envoy's HTTP connection managers, or None when tracing is off."""
    tracing = mesh.observability.tracing
    if tracing is None:
        return None
    tags = [_literal(SERVICE_TAG, service)]
    if version:
        tags.append(_literal(VERSION_TAG, version))
    return {
        "random_sampling": {"value": tracing.sampling_percent},
        "custom_tags": tags,
        "provider": provider(tracing, service, relay_host),
    }


def decorator(operation: str) -> Json:
    """A route's span name. Not propagated: Envoy would send it on in
    `x-envoy-decorator-operation`, and the callee's span would take the caller's route's
    name instead of its own."""
    return {"operation": operation, "propagate": False}


def route_tag(route: str) -> Json:
    """The custom tag naming the mesh route a span took (on the route itself)."""
    return _literal(ROUTE_TAG, route)


def runtime(mesh: Mesh) -> Json:
    """The bootstrap's static runtime layer. The same whatever the tracing settings, which
    are all served by xDS: turning tracing on or off, or to X-Ray, recreates no container."""
    return dict(FLUSH_RUNTIME)


def stats_sinks(mesh: Mesh, socket_path: str) -> list[Json]:
    """The bootstrap's `stats_sinks`: StatsD or DogStatsD datagrams to the daemon's relay
    socket at `socket_path` (inside the pod)."""
    statsd = mesh.observability.statsd
    if statsd is None:
        return []
    address = {"pipe": {"path": socket_path}}
    if statsd.flavor == "dogstatsd":
        return [
            {
                "name": "envoy.stat_sinks.dog_statsd",
                "typed_config": {"@type": DOGSTATSD, "address": address},
            }
        ]
    return [
        {"name": "envoy.stat_sinks.statsd", "typed_config": {"@type": STATSD, "address": address}}
    ]
