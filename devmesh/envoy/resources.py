"""Envoy resources for each node of a mesh, as proto-JSON dicts.

These builders are the only place Envoy configuration is made: `devmesh render` packs their
output into static bootstraps (`bootstrap.static_bootstrap`) and the xDS server serves the
very same dicts as LDS/RDS/CDS/EDS resources, so what `envoy --mode validate` accepted is
what runs.

Names (they show up in Envoy stats, so keep them stable):
  listener / route config  `out|SERVICE`    a pod's way to SERVICE (and the gateway's hop)
  cluster / EDS            `SERVICE|VERSION` the pods of one version
  listener                 `in`             mesh traffic into the pod, to `_app`
  listener / route config  `ingress`        the gateway's public listener
  cluster                  `_hop|SERVICE`   gateway → its own `out|SERVICE` listener
A leading `_` keeps devmesh's own clusters apart from `SERVICE|VERSION` ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from devmesh.api.types import GATEWAY_CALLER, UNKNOWN_CALLER
from devmesh.core.addressing import (
    GATEWAY_HOP_BASE,
    GATEWAY_PORT,
    INBOUND_PORT,
    outbound_ports,
    service_addresses,
)
from devmesh.core.durations import envoy_duration
from devmesh.core.model import (
    Allow,
    Fault,
    IngressRoute,
    Match,
    Mesh,
    PathMatch,
    Route,
    Service,
    ValueMatch,
    Version,
)
from devmesh.envoy import tracing as traces
from devmesh.envoy.access_log import with_access_logs
from devmesh.envoy.names import (
    CA_SECRET,
    DENIAL_STAT_PREFIX,
    IDENTITY_SECRET,
    INBOUND_STAT_PREFIX,
    INGRESS_ROUTE_CONFIG,
    INGRESS_SECRET,
    INGRESS_STAT_PREFIX,
    cluster_name,
    denial_stat_prefix,
    gateway_spiffe_id,
    hop_name,
    ingress_route_stat_prefix,
    out_name,
    route_entry_name,
    route_stat_prefix,
    spiffe_id,
)

Json = dict[str, Any]
# (service, version) -> the addresses of its pods
Endpoints = Mapping[tuple[str, str], Sequence[str]]

_T = "type.googleapis.com/"
HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = _T + "envoy.extensions.filters.http.router.v3.Router"
FAULT = _T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT = _T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
TCP_LOCAL_RATELIMIT = _T + "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
HTTP_OPTIONS = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
NETWORK_RBAC = _T + "envoy.extensions.filters.network.rbac.v3.RBAC"
HTTP_RBAC = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
TLS_INSPECTOR = _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
UPSTREAM_TLS = _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"

FAULT_FILTER = "envoy.filters.http.fault"
RATELIMIT_FILTER = "envoy.filters.http.local_ratelimit"
ADS: Json = {"ads": {}, "resource_api_version": "V3"}

SERVED_BY_HEADER = "x-devmesh-served-by"  # added by each pod's inbound sidecar: "catalog/v2"

# Concurrent retries per cluster when the mesh file sets no `max_retries`. Envoy's own
# default is 3 for the whole cluster, so with four callers in retry at once the fourth's
# retry overflows and the caller gets the 503 however many `attempts` the route has.
# A route's `attempts` already bound each request; like Istio, no second, hidden limit.
UNLIMITED = 4_294_967_295  # UInt32 max

# The sidecar's own hop to its app: retried when no request reached the app (refused
# connection, or a kept connection the app closed just as the request went out), so a
# healthy app behind an idle mesh answers every request. Never on a response: that is
# the caller's route's to retry.
APP_RETRY_ON = "connect-failure,reset-before-request"
APP_RETRIES = 2
APP_CONNECT_ATTEMPTS = 3  # tcp services: the first try and two more


@dataclass(frozen=True, slots=True)
class Resources:
    """One node's complete configuration, in xDS terms."""

    listeners: tuple[Json, ...]
    routes: tuple[Json, ...]
    clusters: tuple[Json, ...]
    endpoints: tuple[Json, ...]
    # SDS: this node's certificate and the CA (see `tls_secrets`). Not rendered: the daemon
    # issues certificates and adds them per node group, so they never reach a file.
    secrets: tuple[Json, ...] = ()
    # RTDS: the runtime layer (`runtime_layer`). Not rendered: the daemon's adaptive
    # tracing sets it for every node group.
    runtimes: tuple[Json, ...] = ()


# The RTDS layer every ADS bootstrap names (envoy/bootstrap.py) and waits for at start.
RUNTIME_LAYER = "devmesh"
# The runtime key that overrides every HTTP connection manager's `random_sampling`.
SAMPLING_KEY = "tracing.random_sampling"


def runtime_layer(sampling_percent: float | None) -> Json:
    """The RTDS resource: empty (each connection manager's own `random_sampling` holds), or
    with tracing's share of requests set for the whole Envoy, in ten-thousandths: Envoy
    samples by the request id's value (`x-request-id`), so every Envoy with the same share
    makes the same choice for one request and a trace stays whole across hops."""
    layer: Json = {}
    if sampling_percent is not None:
        layer[SAMPLING_KEY] = {
            "numerator": round(sampling_percent * 100),
            "denominator": "TEN_THOUSAND",
        }
    return {"name": RUNTIME_LAYER, "layer": layer}


# -- names ----------------------------------------------------------------------------------


def sidecar_node(mesh: Mesh, service: str, version: str) -> str:
    """Envoy's node cluster for a version's pods: all replicas share one configuration."""
    return f"{mesh.name}/{service}/{version}"


GATEWAY_NODE = "gateway"


# -- small pieces ---------------------------------------------------------------------------


def _socket(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def _percent(value: float) -> Json:
    """A FractionalPercent exact to 1/10000 of a percent (5.5% -> 55000 per million)."""
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def _string_match(kind: str, value: str) -> Json:
    if kind == "regex":
        return {"safe_regex": {"regex": value}}
    return {kind: value}  # exact, prefix


def _header_matcher(m: ValueMatch) -> Json:
    if m.kind in ("present", "absent"):
        return {"name": m.name, "present_match": m.kind == "present"}
    return {"name": m.name, "string_match": _string_match(m.kind, m.value)}


def _query_matcher(m: ValueMatch) -> Json:
    if m.kind in ("present", "absent"):
        return {"name": m.name, "present_match": m.kind == "present"}
    return {"name": m.name, "string_match": _string_match(m.kind, m.value)}


def route_match(match: Match) -> Json:
    out: Json
    if match.path.kind == "prefix":
        out = {"prefix": match.path.value}
    elif match.path.kind == "exact":
        out = {"path": match.path.value}
    else:
        out = {"safe_regex": {"regex": match.path.value}}
    headers = [_header_matcher(h) for h in match.headers]
    if match.methods:
        method = (
            {"exact": match.methods[0]}
            if len(match.methods) == 1
            else {"safe_regex": {"regex": "|".join(match.methods)}}
        )
        headers.append({"name": ":method", "string_match": method})
    if headers:
        out["headers"] = headers
    if match.query:
        out["query_parameters"] = [_query_matcher(q) for q in match.query]
    return out


# Envoy's header-controlled faults. A route with a fault asks for it in these headers; the
# target pod's inbound sidecar injects it. So every attempt, retries included, meets the
# fault where a real failing upstream would be, and the caller's retries and timeouts act on
# it: a fault injected in the caller's own sidecar would answer before its router, and no
# retry policy could ever be seen at work.
FAULT_ABORT = "x-envoy-fault-abort-request"
FAULT_ABORT_GRPC = "x-envoy-fault-abort-grpc-request"
FAULT_ABORT_PERCENT = "x-envoy-fault-abort-request-percentage"
FAULT_DELAY = "x-envoy-fault-delay-request"
FAULT_DELAY_PERCENT = "x-envoy-fault-delay-request-percentage"
FAULT_HEADERS = (
    FAULT_ABORT,
    FAULT_ABORT_GRPC,
    FAULT_ABORT_PERCENT,
    FAULT_DELAY,
    FAULT_DELAY_PERCENT,
)
_ALL = {"numerator": 1_000_000, "denominator": "MILLION"}  # header percentages are per million


def _fault_headers(fault: Fault) -> list[Json]:
    headers: dict[str, str] = {}
    if fault.delay:
        headers[FAULT_DELAY] = str(fault.delay.fixed_ms)
        headers[FAULT_DELAY_PERCENT] = str(_percent(fault.delay.percent)["numerator"])
    if fault.abort:
        if fault.abort.grpc_status is not None:
            headers[FAULT_ABORT_GRPC] = str(fault.abort.grpc_status)
        else:
            headers[FAULT_ABORT] = str(fault.abort.http_status)
        headers[FAULT_ABORT_PERCENT] = str(_percent(fault.abort.percent)["numerator"])
    return [
        {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for k, v in headers.items()
    ]


INBOUND_FAULT_FILTER: Json = {
    "name": FAULT_FILTER,
    "typed_config": {
        "@type": FAULT,
        "delay": {"header_delay": {}, "percentage": _ALL},
        "abort": {"header_abort": {}, "percentage": _ALL},
    },
}


def http_options(protocol: str) -> Json:
    if protocol in ("http2", "grpc"):
        explicit: Json = {"http2_protocol_options": {}}
    else:
        explicit = {"http_protocol_options": {}}
    # Keyed by the extension's name, which is its type name without the URL prefix.
    return {
        HTTP_OPTIONS.removeprefix(_T): {"@type": HTTP_OPTIONS, "explicit_http_config": explicit}
    }


def _hcm(
    stat_prefix: str, route: Json, filters: Iterable[Json] = (), tracing: Json | None = None
) -> Json:
    """An HTTP connection manager. `route` is {"rds": ...} or {"route_config": ...}."""
    out: Json = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",  # HTTP/1.1 or h2c by the connection preface
            **route,
            "http_filters": [
                *filters,
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
            ],
        },
    }
    if tracing is not None:
        out["typed_config"]["tracing"] = tracing  # envoy/tracing.py
        out["typed_config"]["request_id_extension"] = traces.REQUEST_ID
    return out


def _rds(name: str) -> Json:
    return {"rds": {"route_config_name": name, "config_source": ADS}}


def _listener(
    name: str, addresses: Sequence[tuple[str, int]], filters: list[Json], direction: str
) -> Json:
    first, *rest = addresses
    out: Json = {
        "name": name,
        "address": _socket(*first),
        "traffic_direction": direction,
        "filter_chains": [{"filters": filters}],
    }
    if rest:
        out["additional_addresses"] = [{"address": _socket(*a)} for a in rest]
    return out


# -- clusters -------------------------------------------------------------------------------


def version_cluster(service: Service, version: Version, mesh: str = "") -> Json:
    """The pods of one version, by EDS; the calling sidecar's pool and ejection policy.
    With `mesh` named and the service's mode not DISABLED, the caller's sidecar speaks
    mTLS to them and accepts only the service's own identity."""
    pool = service.connection_pool
    out: Json = {
        "name": cluster_name(service.name, version.name),
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ADS},
        "connect_timeout": envoy_duration(pool.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
    }
    if service.is_http:
        out["typed_extension_protocol_options"] = http_options(service.protocol)
    if mesh and service.tls_mode != "DISABLED":
        out["transport_socket"] = upstream_tls(spiffe_id(mesh, service.name), service.protocol)
    thresholds = {
        key: value
        for key, value in (
            ("max_connections", pool.max_connections),
            ("max_pending_requests", pool.max_pending_requests),
            ("max_requests", pool.max_requests),
            ("max_retries", UNLIMITED if pool.max_retries is None else pool.max_retries),
        )
        if value is not None
    }
    out["circuit_breakers"] = {"thresholds": [thresholds]}
    od = service.outlier_detection
    if od is not None:
        out["outlier_detection"] = {
            "consecutive_5xx": od.consecutive_5xx,
            "interval": envoy_duration(od.interval_ms),
            "base_ejection_time": envoy_duration(od.base_ejection_ms),
            "max_ejection_percent": od.max_ejection_percent,
        }
    return out


def load_assignment(cluster: str, addresses: Iterable[str], port: int = INBOUND_PORT) -> Json:
    return {
        "cluster_name": cluster,
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _socket(a, port)}} for a in addresses]}
        ],
    }


def _static_cluster(
    name: str, address: str, port: int, protocol: str, connect_timeout_ms: int = 1000
) -> Json:
    out: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": envoy_duration(connect_timeout_ms),
        "load_assignment": load_assignment(name, (address,), port),
        # Retries on this hop (APP_RETRY_ON, a route's through the gateway) are never
        # capped by Envoy's default of 3 at a time.
        "circuit_breakers": {"thresholds": [{"max_retries": UNLIMITED}]},
    }
    if protocol != "tcp":
        out["typed_extension_protocol_options"] = http_options(protocol)
    return out


# -- mTLS -----------------------------------------------------------------------------------


def _sds(name: str) -> Json:
    return {"name": name, "sds_config": ADS}


def _alpn(protocol: str) -> list[str]:
    if protocol in ("http2", "grpc"):
        return ["h2"]
    return ["http/1.1"] if protocol == "http" else []


def _common_tls(alpn: list[str], validation: Json) -> Json:
    out: Json = {
        "tls_certificate_sds_secret_configs": [_sds(IDENTITY_SECRET)],
        "combined_validation_context": {
            "default_validation_context": validation,
            "validation_context_sds_secret_config": _sds(CA_SECRET),
        },
    }
    if alpn:
        out["alpn_protocols"] = alpn
    return out


def upstream_tls(peer: str, protocol: str) -> Json:
    """A caller's side: present this node's certificate, accept only `peer`'s, chained to
    the local CA. Both by SDS over ADS: a rotation updates them in place."""
    validation = {
        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}]
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS,
            "common_tls_context": _common_tls(_alpn(protocol), validation),
        },
    }


def downstream_tls(protocol: str) -> Json:
    """The pod's side: a client certificate chained to the local CA is required. Who may
    call is RBAC's to decide (any valid mesh identity completes the handshake), so a
    denial is a counted 403 and not an anonymous handshake failure."""
    alpn = ["h2", "http/1.1"] if protocol != "tcp" else []
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": _common_tls(alpn, {}),
        },
    }


def ingress_tls() -> Json:
    """HTTPS at the ingress: the certificate by SDS (`ingress_secret`), so a new one (a
    renewal, other files) reaches the listener without draining it; no client certificate
    is asked for. HTTP/2 and HTTP/1.1 by ALPN, as browsers expect."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [_sds(INGRESS_SECRET)],
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }


def ingress_secret(cert_pem: str, key_pem: str) -> Json:
    """The gateway's SDS secret for `ingress_tls`: a certificate chain and its key."""
    return {
        "name": INGRESS_SECRET,
        "tls_certificate": {
            "certificate_chain": {"inline_string": cert_pem},
            "private_key": {"inline_string": key_pem},
        },
    }


def tls_secrets(cert_pem: str, key_pem: str, ca_pem: str) -> tuple[Json, Json]:
    """The SDS secrets every TLS-speaking node gets: its identity and the CA."""
    return (
        {
            "name": IDENTITY_SECRET,
            "tls_certificate": {
                "certificate_chain": {"inline_string": cert_pem},
                "private_key": {"inline_string": key_pem},
            },
        },
        {"name": CA_SECRET, "validation_context": {"trusted_ca": {"inline_string": ca_pem}}},
    )


def uses_tls(mesh: Mesh) -> bool:
    return any(s.tls_mode != "DISABLED" for s in mesh.services)


def group_identity(mesh: Mesh, service: str | None) -> str:
    """The SPIFFE ID a node group's certificate carries (None: the gateway)."""
    return gateway_spiffe_id(mesh.name) if service is None else spiffe_id(mesh.name, service)


def _principal(identity: str) -> Json:
    return {"authenticated": {"principal_name": {"exact": identity}}}


def _allow_permission(rule: Allow) -> Json:
    parts: list[Json] = []
    if rule.methods:
        method = (
            {"exact": rule.methods[0]}
            if len(rule.methods) == 1
            else {"safe_regex": {"regex": "|".join(rule.methods)}}
        )
        parts.append({"header": {"name": ":method", "string_match": method}})
    if rule.path is not None:
        kind = {"prefix": "prefix", "exact": "exact"}.get(rule.path.kind)
        path = {kind: rule.path.value} if kind else {"safe_regex": {"regex": rule.path.value}}
        parts.append({"url_path": {"path": path}})
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def _network_rbac(caller: str, action: str, policies: Json) -> Json:
    """One network RBAC filter whose `denied` counter is one caller's denials (Envoy's
    network RBAC has no per-policy counters)."""
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": NETWORK_RBAC,
            "rules": {"action": action, "policies": policies},
            "stat_prefix": f"{INBOUND_STAT_PREFIX}.{denial_stat_prefix(caller)}",
        },
    }


def authorization(mesh: Mesh, service: Service) -> list[Json]:
    """RBAC for mTLS traffic into `service`'s pods (HTTP filters, or network filters for
    tcp): only the services that call it, and the gateway (its door to every HTTP service),
    get in; `allow:` narrows what those may ask.

    HTTP: one DENY filter, with a policy per other mesh identity, per declared caller with
    `allow:` rules, and UNKNOWN_CALLER for a peer that is no identity of the mesh. Policies
    are named by caller and Envoy counts each (`track_per_rule_stats`), so every denial is
    counted against who was denied (`names.parse_denial`). One filter, not one per caller:
    each HTTP filter is a step of every request, and a filter per identity made a request's
    cost grow with the mesh (bench/mtls.py --breakdown: the server sidecar's RBAC was ~16 us
    a request with two filters). The principals are disjoint, so the first policy to match
    (Envoy tries them by name) is the caller's own.

    TCP: network RBAC has no per-policy counters, so one DENY filter per denied caller and an
    ALLOW filter last; it runs once a connection, not a request."""
    http = service.is_http
    allowed: dict[str, str] = {s.name: spiffe_id(mesh.name, s.name) for s in mesh.callers(service)}
    if mesh.has_gateway and any(s.name == service.name for s in mesh.gateway_services()):
        allowed[GATEWAY_CALLER] = gateway_spiffe_id(mesh.name)
    everyone = {s.name: spiffe_id(mesh.name, s.name) for s in mesh.services}
    if mesh.has_gateway:
        everyone[GATEWAY_CALLER] = gateway_spiffe_id(mesh.name)
    denials: dict[str, Json] = {}
    for caller, identity in everyone.items():
        if caller not in allowed:
            permission: Json = {"any": True}
        elif http and service.allow:
            rules = [_allow_permission(r) for r in service.allow]
            permission = {"not_rule": {"or_rules": {"rules": rules}}}
        else:
            continue
        denials[caller] = {"permissions": [permission], "principals": [_principal(identity)]}
    if http:
        known = [_principal(i) for i in everyone.values()]
        denials[UNKNOWN_CALLER] = {
            "permissions": [{"any": True}],
            "principals": [{"not_id": {"or_ids": {"ids": known}}}],
        }
        return [
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": HTTP_RBAC,
                    "rules": {"action": "DENY", "policies": denials},
                    "rules_stat_prefix": DENIAL_STAT_PREFIX,
                    "track_per_rule_stats": True,
                },
            }
        ]
    filters = [_network_rbac(c, "DENY", {c: policy}) for c, policy in denials.items()]
    admitted = {
        "permissions": [{"any": True}],
        "principals": [_principal(i) for i in allowed.values()] or [{"not_id": {"any": True}}],
    }
    filters.append(_network_rbac(UNKNOWN_CALLER, "ALLOW", {"callers": admitted}))
    return filters


# -- routes ---------------------------------------------------------------------------------


def _weighted(service: str, route: Route) -> Json:
    targets = [t for t in route.to if t.weight > 0]
    return {
        "weighted_clusters": {
            "clusters": [
                {"name": cluster_name(service, t.version), "weight": t.weight} for t in targets
            ]
        }
    }


def http_route(service: Service, route: Route, traced: bool = False) -> Json:
    action: Json = _weighted(service.name, route)
    if route.timeout_ms is not None:
        action["timeout"] = envoy_duration(route.timeout_ms)
    if route.retries is not None:
        policy: Json = {
            "retry_on": ",".join(route.retries.on),
            "num_retries": route.retries.attempts,
        }
        if route.retries.per_try_timeout_ms is not None:
            policy["per_try_timeout"] = envoy_duration(route.retries.per_try_timeout_ms)
        action["retry_policy"] = policy
    if route.mirror is not None:
        action["request_mirror_policies"] = [
            {
                "cluster": cluster_name(route.mirror.service, route.mirror.version),
                "runtime_fraction": {"default_value": _percent(route.mirror.percent)},
            }
        ]
    out: Json = {
        "name": route_entry_name(service.name, route.name),
        "match": route_match(route.match),
        "route": action,
        "stat_prefix": route_stat_prefix(service.name, route.name),
    }
    if traced:  # the caller's span: `catalog/main`
        out["decorator"] = traces.decorator(f"{service.name}/{route.name}")
        out["tracing"] = {"custom_tags": [traces.route_tag(route.name)]}
    if route.fault is not None:
        out["request_headers_to_add"] = _fault_headers(route.fault)
    else:  # only the mesh asks for faults: an app's own fault headers go no further
        out["request_headers_to_remove"] = list(FAULT_HEADERS)
    return out


def outbound_route_config(service: Service, traced: bool = False) -> Json:
    """How every caller routes to `service`: the same resource for each sidecar and the gateway."""
    return {
        "name": out_name(service.name),
        "virtual_hosts": [
            {
                "name": service.name,
                "domains": ["*"],
                "routes": [http_route(service, r, traced) for r in service.routes],
            }
        ],
    }


def ingress_route_config(mesh: Mesh) -> Json:
    assert mesh.ingress is not None
    routes = []
    for r in mesh.ingress.routes:
        action: Json = {"cluster": hop_name(r.service)}
        if r.timeout_ms is not None:
            action["timeout"] = envoy_duration(r.timeout_ms)
        else:
            action["timeout"] = "0s"  # the service's own route timeout applies on the hop
        action.update(path_rewrite(r.match.path, r.rewrite_prefix))
        route = _ingress_route(r, action)
        if mesh.observability.tracing is not None:  # the gateway's span: `gateway/api`
            route["decorator"] = traces.decorator(f"{traces.GATEWAY_SERVICE}/{r.name}")
            route["tracing"] = {"custom_tags": [traces.route_tag(r.name)]}
        routes.append(route)
    return {
        "name": INGRESS_ROUTE_CONFIG,
        "virtual_hosts": [{"name": INGRESS_STAT_PREFIX, "domains": ["*"], "routes": routes}],
    }


def path_rewrite(path: PathMatch, rewrite_prefix: str | None) -> Json:
    """The RouteAction fields that replace the matched prefix with `rewrite_prefix`.

    Envoy's prefix_rewrite splices strings: `path_prefix: /red` with `rewrite_prefix: /`
    sends `/red/tell` as `//tell`. devmesh follows App Mesh, Istio and the Gateway API's
    ReplacePrefixMatch instead: a '/' where the prefix meets the rest is neither doubled
    nor lost (`explain.rewritten_path` is the same rule, applied to one path):

      path_prefix  rewrite_prefix  /red/tell ->
      /red         /               /tell        regex ^/red/? -> /
      /red         /blue/          /blue/tell   regex ^/red/? -> /blue/
      /red/        /blue           /blue/tell   prefix_rewrite /blue/
      /red/, /red  /, /blue        /tell, /blue/tell   prefix_rewrite as written
    """
    if rewrite_prefix is None or path.kind == "regex":
        return {}
    if path.kind == "prefix":
        if rewrite_prefix.endswith("/") and not path.value.endswith("/"):
            return {
                "regex_rewrite": {
                    # re.escape's backslashes precede non-word characters only: literal in RE2 too
                    "pattern": {"regex": f"^{re.escape(path.value)}/?"},
                    "substitution": rewrite_prefix,
                }
            }
        if path.value.endswith("/") and not rewrite_prefix.endswith("/"):
            return {"prefix_rewrite": rewrite_prefix + "/"}
    return {"prefix_rewrite": rewrite_prefix}


def _ingress_route(r: IngressRoute, action: Json) -> Json:
    return {
        "name": r.name,
        "match": route_match(r.match),
        "route": action,
        "stat_prefix": ingress_route_stat_prefix(r.name),
    }


# -- listeners ------------------------------------------------------------------------------


def outbound_listener(
    upstream: Service, addresses: Sequence[tuple[str, int]], tracing: Json | None = None
) -> Json:
    if upstream.is_http:
        filters = [_hcm(out_name(upstream.name), _rds(out_name(upstream.name)), (), tracing)]
    else:
        route = upstream.routes[0]
        filters = [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": TCP_PROXY,
                    "stat_prefix": out_name(upstream.name),
                    **_weighted(upstream.name, route),
                },
            }
        ]
    return _listener(out_name(upstream.name), addresses, filters, "OUTBOUND")


def inbound_listener(
    service: Service, version: Version, mesh: Mesh | None = None, tracing: Json | None = None
) -> Json:
    """Mesh traffic into the pod: count it, rate-limit it, tag it, hand it to the app.

    With `mesh` given and the service's mode not DISABLED, mTLS is terminated here: a
    `tls` filter chain (authorized by `authorization`) and, in PERMISSIVE, a plaintext
    chain beside it, told apart by the TLS inspector. STRICT and PERMISSIVE differ only by
    that second chain, so switching between them is a filter-chain-only update: Envoy
    keeps the connections of the unchanged `tls` chain open (0 failed requests)."""
    if mesh is None or service.tls_mode == "DISABLED":
        return _listener(
            "in",
            [("0.0.0.0", INBOUND_PORT)],
            _inbound_filters(service, version, [], tracing),
            "INBOUND",
        )
    mtls: Json = {
        "name": "mtls",
        "filter_chain_match": {"transport_protocol": "tls"},
        "filters": _inbound_filters(service, version, authorization(mesh, service), tracing),
        "transport_socket": downstream_tls(service.protocol),
    }
    chains = [mtls]
    if service.tls_mode == "PERMISSIVE":  # plaintext peers: not mesh identities, not authorized
        chains.append(
            {
                "name": "plaintext",
                "filter_chain_match": {"transport_protocol": "raw_buffer"},
                "filters": _inbound_filters(service, version, [], tracing),
            }
        )
    return {
        "name": "in",
        "address": _socket("0.0.0.0", INBOUND_PORT),
        "traffic_direction": "INBOUND",
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ],
        # A server-first tcp client in PERMISSIVE sends nothing to inspect: go on after 1 s.
        "listener_filters_timeout": "1s",
        "continue_on_listener_filters_timeout": True,
        "filter_chains": chains,
    }


def _inbound_filters(
    service: Service, version: Version, rbac: list[Json], tracing: Json | None = None
) -> list[Json]:
    """The inbound chain's network filters; `rbac` first (HTTP or network RBAC filters)."""
    rl = service.rate_limit
    if not service.is_http:
        filters: list[Json] = list(rbac)
        if rl is not None:
            filters.append(
                {
                    "name": "envoy.filters.network.local_ratelimit",
                    "typed_config": {
                        "@type": TCP_LOCAL_RATELIMIT,
                        "stat_prefix": INBOUND_STAT_PREFIX,
                        "token_bucket": _bucket(rl.requests, rl.per_ms),
                    },
                }
            )
        filters.append(
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": TCP_PROXY,
                    "stat_prefix": INBOUND_STAT_PREFIX,
                    "cluster": "_app",
                    "max_connect_attempts": APP_CONNECT_ATTEMPTS,
                },
            }
        )
        return filters
    http_filters: list[Json] = list(rbac)  # before the rate limit: a denial spends no token
    if rl is not None:
        always = {
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            "runtime_key": "rl",
        }
        http_filters.append(
            {
                "name": RATELIMIT_FILTER,
                "typed_config": {
                    "@type": LOCAL_RATELIMIT,
                    "stat_prefix": INBOUND_STAT_PREFIX,
                    "token_bucket": _bucket(rl.requests, rl.per_ms),
                    "filter_enabled": always,
                    "filter_enforced": always,
                },
            }
        )
    http_filters.append(INBOUND_FAULT_FILTER)  # what callers' routes ask for in fault headers
    route_config: Json = {
        "name": "in",
        "virtual_hosts": [
            {
                "name": "app",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        # The caller's route timeout governs; none here to cut it short.
                        "route": {
                            "cluster": "_app",
                            "timeout": "0s",
                            "retry_policy": {
                                "retry_on": APP_RETRY_ON,
                                "num_retries": APP_RETRIES,
                            },
                        },
                    }
                ],
            }
        ],
        "response_headers_to_add": [
            {
                "header": {"key": SERVED_BY_HEADER, "value": f"{service.name}/{version.name}"},
                "append_action": "APPEND_IF_EXISTS_OR_ADD",
            }
        ],
    }
    if tracing is not None:  # the pod's own span: `catalog/v2`
        app_route: Json = route_config["virtual_hosts"][0]["routes"][0]
        app_route["decorator"] = traces.decorator(f"{service.name}/{version.name}")
    return [_hcm(INBOUND_STAT_PREFIX, {"route_config": route_config}, http_filters, tracing)]


def _bucket(requests: int, per_ms: int) -> Json:
    return {
        "max_tokens": requests,
        "tokens_per_fill": requests,
        "fill_interval": envoy_duration(per_ms),
    }


# -- nodes ----------------------------------------------------------------------------------


Shared = dict[tuple[str, ...], Json]  # one render's resources every caller gets alike


def _shared(shared: Shared | None, key: tuple[str, ...], build: Callable[[], Json]) -> Json:
    """`build()`, made once per render when `shared` is given: every caller of a service
    gets the very same route config, clusters and endpoints, so hashing and checking the
    snapshots does each once (146 distinct of 1,780 resources with 20 services)."""
    if shared is None:
        return build()
    found = shared.get(key)
    if found is None:
        found = shared[key] = build()
    return found


def _upstream_resources(
    upstreams: Iterable[Service], mesh: Mesh, endpoints: Endpoints, shared: Shared | None = None
) -> tuple[list[Json], list[Json], list[Json]]:
    traced = mesh.observability.tracing is not None
    """Route configs, clusters and endpoints for calling `upstreams` (and their mirrors)."""
    routes: list[Json] = []
    clusters: dict[str, Json] = {}

    def cluster(service: Service, version: Version) -> Json:
        name = cluster_name(service.name, version.name)
        build = partial(version_cluster, service, version, mesh.name)
        return _shared(shared, ("cds", name), build)

    for upstream in upstreams:
        if upstream.is_http:
            build = partial(outbound_route_config, upstream, traced)
            routes.append(_shared(shared, ("rds", upstream.name), build))
        for version in upstream.versions:
            clusters[cluster_name(upstream.name, version.name)] = cluster(upstream, version)
        for route in upstream.routes:
            if route.mirror is not None:
                target = mesh.service(route.mirror.service)
                version = target.version(route.mirror.version)
                clusters.setdefault(
                    cluster_name(target.name, version.name), cluster(target, version)
                )
    assignments = [
        _shared(
            shared, ("eds", name), partial(load_assignment, name, endpoints.get(_split(name), ()))
        )
        for name in clusters
    ]
    return routes, list(clusters.values()), assignments


def _split(name: str) -> tuple[str, str]:
    service, version = name.split("|", 1)
    return service, version


def sidecar_resources(
    mesh: Mesh,
    service: Service,
    version: Version,
    endpoints: Endpoints,
    shared: Shared | None = None,
    host_address: str | None = None,
    host_app: tuple[str, int] | None = None,
) -> Resources:
    """Everything the sidecar of one version's pods needs. `host_address`: the host as the
    pods reach it (the mesh network's gateway), where X-Ray segments are relayed from. A
    version on the host (`host: {port}`) has its `_app` at `host_app`: the daemon's relay to
    the host process on the mesh network's gateway address (the port itself until the relay
    runs)."""
    upstreams = mesh.upstreams(service)
    addresses = service_addresses(s.name for s in mesh.services)
    tracing = traces.hcm_tracing(mesh, service.name, version.name, host_address)
    listeners = [inbound_listener(service, version, mesh, tracing)]
    for upstream in upstreams:
        ip = addresses[upstream.name]
        ports = outbound_ports(service.port, upstream)
        listeners.append(outbound_listener(upstream, [(ip, p) for p in ports], tracing))
    with_access_logs(mesh.observability.access_log, listeners)  # envoy/access_log.py
    routes, clusters, assignments = _upstream_resources(upstreams, mesh, endpoints, shared)
    app_address, app_port = "127.0.0.1", service.port
    if version.host is not None:
        app_address, app_port = host_app or ("127.0.0.1", version.host.port)
    clusters.insert(
        0,
        _static_cluster(
            "_app", app_address, app_port, service.protocol, service.app_connect_timeout_ms
        ),
    )
    return Resources(tuple(listeners), tuple(routes), tuple(clusters), tuple(assignments))


def host_only(host_address: str) -> Json:
    """A network RBAC filter admitting connections from `host_address` alone.

    The gateway's hop listeners must bind 0.0.0.0: Docker publishes a port by forwarding
    to the container's address (docker-proxy, or DNAT), never to its loopback. So any pod
    on the mesh network could reach them too, and through them every service, whatever
    its `calls`. What tells the host apart is the source address: the host's connections
    to a published port arrive from the network's gateway address (docker-proxy dials
    from it; without the proxy, Docker masquerades loopback clients to it). Measured on
    Docker 20.10: host -> 127.0.0.1:PORT arrives from 172.18.0.1, a pod's from its own IP.
    The gateway's own ingress routes hop to these listeners from 127.0.0.1, which only a
    process inside the gateway's namespace can be.
    """
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": NETWORK_RBAC,
            "stat_prefix": "hop.",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "host": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {"direct_remote_ip": {"address_prefix": a, "prefix_len": 32}}
                            # the ingress listener's own hops arrive over the gateway's loopback
                            for a in (host_address, "127.0.0.1")
                        ],
                    }
                },
            },
        },
    }


def gateway_resources(
    mesh: Mesh, endpoints: Endpoints, host_address: str | None = None
) -> Resources:
    """The gateway: the public ingress listener (if any), and one hop per HTTP service.

    A hop listener serves a service's own routes (`out|SERVICE`), so the gateway is an
    ordinary caller: weights, retries and faults apply to ingress traffic exactly as to any
    pod's calls. Each hop is also published on a 127.0.0.1 port of its own, the service's
    URL from the host, and admits only the host: `host_address` is the mesh network's
    gateway address (see `host_only`). Without it (a config rendered with no network),
    the hops admit any caller.
    """
    targets = mesh.gateway_services()
    listeners = []
    tracing = traces.hcm_tracing(mesh, traces.GATEWAY_SERVICE, "", host_address)
    if mesh.ingress is not None:
        public = _listener(
            "ingress",
            [("0.0.0.0", GATEWAY_PORT)],
            [_hcm(INGRESS_STAT_PREFIX, _rds(INGRESS_ROUTE_CONFIG), (), tracing)],
            "INBOUND",
        )
        if mesh.ingress.tls is not None:
            public["filter_chains"][0]["transport_socket"] = ingress_tls()
        listeners.append(public)
    hops = []
    for i, service in enumerate(targets):
        port = GATEWAY_HOP_BASE + i
        # 0.0.0.0, as Docker's publishing needs; host_only keeps the pods out.
        hop = outbound_listener(service, [("0.0.0.0", port)], tracing)
        if host_address is not None:
            hop["filter_chains"][0]["filters"].insert(0, host_only(host_address))
        listeners.append(hop)
        hops.append(_static_cluster(hop_name(service.name), "127.0.0.1", port, service.protocol))
    with_access_logs(mesh.observability.access_log, listeners)  # envoy/access_log.py
    routes, clusters, assignments = _upstream_resources(targets, mesh, endpoints)
    ingress = (ingress_route_config(mesh),) if mesh.ingress is not None else ()
    return Resources(
        tuple(listeners),
        (*ingress, *routes),
        (*hops, *clusters),
        tuple(assignments),
    )


def placeholder_endpoints(mesh: Mesh) -> dict[tuple[str, str], tuple[str, ...]]:
    """Addresses for a config rendered without a running mesh: 127.255.0.0/16, one per pod.

    Loopback on purpose: a rendered file started by hand can never send traffic off the
    machine. A running mesh's daemon serves the pods' real addresses by EDS instead.
    """
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    n = 0
    for service in mesh.services:
        for version in service.versions:
            ips = []
            for _ in range(version.replicas):
                n += 1
                ips.append(f"127.255.{n // 250}.{n % 250 + 1}")
            out[(service.name, version.name)] = tuple(ips)
    return out
