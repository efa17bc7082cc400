"""Envoy resource and stat names devmesh gives, as build/parse pairs in one place.

The rendered config builds names here; the daemon parses the stats Envoy reports under
those names back into mesh terms (service, version, route) here, so no other module knows
what `cluster.catalog|v2.upstream_rq_5xx` means. Pure: no I/O.

Service, version and route names never contain `|` or `.` (the mesh file's name pattern),
which is what makes every name below parse back unambiguously.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from devmesh.api.histogram import Bucket, quantile
from devmesh.api.types import (
    INGRESS,
    Denial,
    RouteTraffic,
    SidecarStats,
    Traffic,
    UpstreamTraffic,
)

INBOUND_STAT_PREFIX: Final = "in"  # the pod's inbound HTTP connection manager
INGRESS_STAT_PREFIX: Final = INGRESS  # the gateway's connection manager and virtual host
INGRESS_ROUTE_CONFIG: Final = INGRESS  # the gateway's route configuration
INGRESS_SECRET: Final = "ingress-cert"  # SDS: the ingress's HTTPS certificate and key


# -- identities (mTLS) ------------------------------------------------------------------------

TRUST_DOMAIN: Final = "devmesh.local"
IDENTITY_SECRET: Final = "identity"  # SDS: this Envoy's own certificate and key
CA_SECRET: Final = "mesh-ca"  # SDS: the local CA, what peers' certificates must chain to
# GATEWAY_CALLER and UNKNOWN_CALLER (api.types): the gateway, and a peer no policy names.


def spiffe_id(mesh: str, service: str) -> str:
    """A service's identity: the URI SAN of its pods' certificates."""
    return f"spiffe://{TRUST_DOMAIN}/mesh/{mesh}/service/{service}"


def gateway_spiffe_id(mesh: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/mesh/{mesh}/gateway"


# The inbound HTTP RBAC filter's `rules_stat_prefix`: with per-policy counters on, Envoy
# reports `http.in.rbac.caller.policy.C.denied` for policy C (policies are named by caller).
DENIAL_STAT_PREFIX: Final = "caller."


def denial_stat_prefix(caller: str) -> str:
    """The network RBAC filter's stat prefix that counts denials of one caller (tcp
    services: Envoy reports `in.caller.C.rbac.denied`)."""
    return f"caller.{caller}."


def parse_denial(name: str) -> str | None:
    """The caller of a denial counter (a service name, GATEWAY_CALLER or UNKNOWN_CALLER):
    an HTTP policy's (`DENIAL_STAT_PREFIX`) or a tcp filter's (`denial_stat_prefix`)."""
    for head, tail in (
        (f"http.{INBOUND_STAT_PREFIX}.rbac.{DENIAL_STAT_PREFIX}policy.", ".denied"),
        (f"{INBOUND_STAT_PREFIX}.caller.", ".rbac.denied"),
    ):
        if name.startswith(head) and name.endswith(tail):
            caller = name[len(head) : -len(tail)]
            if caller and "." not in caller:
                return caller
    return None


def cluster_name(service: str, version: str) -> str:
    """A version's cluster: `catalog|v2`."""
    return f"{service}|{version}"


def out_name(service: str) -> str:
    """A caller's listener and route configuration for `service` (`out|catalog`)."""
    return f"out|{service}"


def hop_name(service: str) -> str:
    """The gateway's cluster to its own hop listener for `service` (`_hop|catalog`)."""
    return f"_hop|{service}"


def parse_hop_name(name: str) -> str | None:
    """The service of a gateway hop cluster (`_hop|catalog` -> catalog), else None."""
    head, sep, service = name.partition("|")
    return service if sep and head == "_hop" and service and "|" not in service else None


def parse_cluster_name(name: str) -> tuple[str, str] | None:
    """(service, version) of a version cluster; None for devmesh's own clusters (`_app`, the
    gateway's `_hop|SERVICE`: their names start with `_`, which no service name does)."""
    service, sep, version = name.partition("|")
    if not sep or not service or not version or "|" in version or service.startswith("_"):
        return None
    return service, version


def route_entry_name(service: str, route: str) -> str:
    """The Envoy name of a service's route (`catalog/main`), as access-log entries carry it.
    It names the service too: an entry for a request that never reached a host (overflow
    UO, no healthy upstream UH) has no upstream cluster, and a gateway's hop no service in
    its authority, so the route's name is all that says where the request was going."""
    return f"{service}/{route}"


def parse_route_entry_name(name: str) -> tuple[str, str] | None:
    """(service, route) of `route_entry_name`; None for any other name (an ingress route's)."""
    service, sep, route = name.partition("/")
    return (service, route) if sep and service and route else None


def route_stat_prefix(service: str, route: str) -> str:
    """A route's `stat_prefix`: Envoy reports `vhost.VHOST.route.PREFIX.*` under it."""
    return f"{service}.{route}"


def ingress_route_stat_prefix(route: str) -> str:
    return f"{INGRESS}.{route}"


# Envoy counter (or gauge, or histogram quantile) -> the Traffic field it fills.
_UPSTREAM: Final = {
    "upstream_rq_total": "requests",
    "upstream_rq_completed": "completed",
    "upstream_rq_2xx": "rq_2xx",
    "upstream_rq_4xx": "rq_4xx",
    "upstream_rq_5xx": "rq_5xx",
    "upstream_rq_retry": "retries",
    "upstream_rq_retry_overflow": "retry_overflow",
    "upstream_rq_pending_overflow": "overflow",
    "upstream_cx_active": "connections",
    "outlier_detection.ejections_active": "ejections",
    "upstream_rq_time.p50": "p50_ms",
    "upstream_rq_time.p99": "p99_ms",
}
_DOWNSTREAM: Final = {
    "downstream_rq_total": "requests",
    "downstream_rq_2xx": "rq_2xx",
    "downstream_rq_4xx": "rq_4xx",
    "downstream_rq_5xx": "rq_5xx",
    "downstream_cx_active": "connections",
}
_FLOATS: Final = {"p50_ms", "p99_ms"}
# A latency bucket as the stats reader names it: `cluster.catalog|v2.upstream_rq_time@25`
# is the count of samples <= 25 ms (adapters/envoy_admin.py).
BUCKET_MARK: Final = "@"
LATENCY: Final = "upstream_rq_time"


def _field(table: Mapping[str, str], tail: str) -> str | None:
    return table.get(tail)


def sidecar_stats(
    source: str, service: str, version: str, counters: Mapping[str, float]
) -> SidecarStats:
    """One Envoy's filtered stats (`name -> value`) in mesh terms. `service` is INGRESS for
    the gateway. Names this module did not build are ignored."""
    inbound: dict[str, float] = {}
    upstreams: dict[tuple[str, str], dict[str, float]] = {}
    routes: dict[tuple[str, str], dict[str, float]] = {}
    denials: dict[str, int] = {}
    down_prefix = f"http.{INGRESS_STAT_PREFIX if service == INGRESS else INBOUND_STAT_PREFIX}."
    buckets: dict[tuple[str, str, str], list[Bucket]] = {}  # ("up"|"route", a, b)
    for name, value in counters.items():
        if BUCKET_MARK in name:
            stat, _, le = name.rpartition(BUCKET_MARK)
            row = _latency_row(stat)
            if row is not None:
                buckets.setdefault(row, []).append(Bucket(float(le), int(value)))
            continue
        if name.startswith("cluster."):
            head, _, tail = name[len("cluster.") :].partition(".")
            key = parse_cluster_name(head)
            f = _field(_UPSTREAM, tail)
            if key is not None and f is not None:
                upstreams.setdefault(key, {})[f] = value
        elif name.startswith("vhost."):
            # vhost.VHOST.route.SERVICE.ROUTE.COUNTER (COUNTER may itself hold a dot)
            parts = name.split(".", 5)
            if len(parts) == 6 and parts[2] == "route":
                f = _field(_UPSTREAM, parts[5])
                if f is not None:
                    routes.setdefault((parts[3], parts[4]), {})[f] = value
        elif (caller := parse_denial(name)) is not None:
            if value:
                denials[caller] = denials.get(caller, 0) + int(value)
        elif name.startswith(down_prefix):
            f = _field(_DOWNSTREAM, name[len(down_prefix) :])
            if f is not None:
                inbound[f] = value
    for kind, a, b in buckets:
        (upstreams if kind == "up" else routes).setdefault((a, b), {})
    return SidecarStats(
        source=source,
        service=service,
        version=version,
        inbound=_traffic(inbound),
        upstreams=tuple(
            UpstreamTraffic(s, v, _traffic(values, buckets.get(("up", s, v))))
            for (s, v), values in sorted(upstreams.items())
        ),
        routes=tuple(
            RouteTraffic(s, r, _traffic(values, buckets.get(("route", s, r))))
            for (s, r), values in sorted(routes.items())
        ),
        denials=tuple(Denial(c, n) for c, n in sorted(denials.items())),
    )


def _latency_row(stat: str) -> tuple[str, str, str] | None:
    """The row a latency histogram belongs to: ("up", service, version) for a version
    cluster's, ("route", service, route) for a route's."""
    if stat.startswith("cluster.") and stat.endswith("." + LATENCY):
        key = parse_cluster_name(stat[len("cluster.") : -len(LATENCY) - 1])
        return None if key is None else ("up", *key)
    parts = stat.split(".", 5)
    if stat.startswith("vhost.") and len(parts) == 6 and parts[2:6:3] == ["route", LATENCY]:
        return ("route", parts[3], parts[4])
    return None


def unreadable(source: str, service: str, version: str, why: str) -> SidecarStats:
    return SidecarStats(source=source, service=service, version=version, error=why)


def _traffic(values: Mapping[str, float], latency: list[Bucket] | None = None) -> Traffic:
    out = Traffic()
    changes: dict[str, object] = {
        f: (float(v) if f in _FLOATS else int(v)) for f, v in values.items()
    }
    if latency:
        ordered = tuple(sorted(latency, key=lambda b: b.le))
        changes["latency"] = ordered
        # Since the Envoy started; a window's are the TUI's (api/histogram.py)
        changes["p50_ms"] = quantile(0.5, ordered)
        changes["p99_ms"] = quantile(0.99, ordered)
    return replace(out, **changes) if changes else out  # type: ignore[arg-type]
