"""Envoy bootstrap files: a complete static one (`devmesh render`) or one that asks the
daemon's ADS server for everything (running pods). Both carry the same resources.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devmesh.envoy import tracing
from devmesh.envoy.access_log import uses_collector
from devmesh.envoy.resources import HCM, RUNTIME_LAYER, Json, Resources, http_options

ADMIN_SOCKET = "/devmesh/admin.sock"  # inside the pod; the host reads stats through it
XDS_CLUSTER = tracing.COLLECTOR_CLUSTER  # ADS, and the span collector on the same socket
XDS_SOCKET = "/devmesh-xds/xds.sock"  # inside the pod (plan.desired mounts it there)


def _node(node_id: str, cluster: str) -> Json:
    return {"id": node_id, "cluster": cluster}


def _admin(path: str) -> Json:
    # A UNIX socket, never a port: admin has /quitquitquit and must not be reachable by pods.
    return {"address": {"pipe": {"path": path, "mode": 0o600}}}


# Where a static export's TLS material comes from (`devmesh render`): the daemon never writes
# certificates to files (it serves them by SDS over ADS); an exported file reads each secret
# from `STATIC_TLS_DIR/NAME.yaml` (file-based SDS: an SDS response in YAML, reloaded when a
# new file is moved into place), which whoever runs it by hand provides.
STATIC_TLS_DIR = "/devmesh/tls"


def _static_sds(node: Any) -> Any:
    """A copy with every SDS reference over ADS (`{name, sds_config}`) read from a file."""
    if isinstance(node, dict):
        if "sds_config" in node and "name" in node:
            path = f"{STATIC_TLS_DIR}/{node['name']}.yaml"
            return {"name": node["name"], "sds_config": {"path_config_source": {"path": path}}}
        return {k: _static_sds(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_static_sds(v) for v in node]
    return node


def static_bootstrap(
    node_id: str, cluster: str, resources: Resources, admin_socket: str = ADMIN_SOCKET
) -> Json:
    """Inline every RDS route config into its listener and every EDS assignment into its
    cluster, so the file stands alone. SDS references read files under STATIC_TLS_DIR."""
    routes = {r["name"]: r for r in resources.routes}
    assignments = {a["cluster_name"]: a for a in resources.endpoints}
    listeners = [_inline_routes(listener, routes) for listener in resources.listeners]
    clusters = []
    for cluster_json in resources.clusters:
        c = copy.deepcopy(cluster_json)
        if c.get("type") == "EDS":
            c["type"] = "STATIC"
            del c["eds_cluster_config"]
            c["load_assignment"] = assignments[c["name"]]
        clusters.append(c)
    if any(_traces_to_collector(x) or uses_collector(x) for x in listeners):
        clusters.append(_xds_cluster(XDS_SOCKET))  # where spans and access logs go, as in a pod
    static: Json = {"listeners": listeners, "clusters": clusters}
    if '"sds_config"' in json.dumps(static):
        static = _static_sds(static)
    return {
        "node": _node(node_id, cluster),
        "admin": _admin(admin_socket),
        "static_resources": static,
    }


def _traces_to_collector(listener: Json) -> bool:
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            provider = f["typed_config"].get("tracing", {}).get("provider", {})
            if provider.get("typed_config", {}).get("@type") == tracing.OTEL:
                return True
    return False


@dataclass(frozen=True, slots=True)
class XdsTcp:
    """The daemon over TCP (transport `tcp`): where the pods dial it, and the mesh's token
    every stream to it carries."""

    host: str  # an IP address, or a name the pod's /etc/hosts has (host.docker.internal)
    port: int
    token: str


METRICS_SERVICE = "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig"
HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)
UPSTREAM_CODEC = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
STATS_FLUSH = "1s"  # transport tcp: how often each Envoy pushes its stats to the daemon


def _xds_cluster(xds_socket: str, tcp: XdsTcp | None = None) -> Json:
    options = http_options("grpc")
    if tcp is None:
        address: Json = {"pipe": {"path": xds_socket}}
    else:
        address = {"socket_address": {"address": tcp.host, "port_value": tcp.port}}
        # The token on every request of the cluster: ADS (with SDS), the access log, the
        # span export and the stats sink all go through it. An upstream filter of the
        # cluster rather than each grpc_service's initial_metadata: the access log's and
        # the tracer's services are served by xDS, and the token stays out of snapshots.
        options = copy.deepcopy(options)
        next(iter(options.values()))["http_filters"] = [
            {
                "name": "devmesh.token",
                "typed_config": {
                    "@type": HEADER_MUTATION,
                    "mutations": {
                        "request_mutations": [
                            {
                                "append": {
                                    "header": {
                                        "key": "authorization",
                                        "value": f"Bearer {tcp.token}",
                                    },
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            }
                        ]
                    },
                },
            },
            {
                "name": "envoy.filters.http.upstream_codec",
                "typed_config": {"@type": UPSTREAM_CODEC},
            },
        ]
    cluster: Json = {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": options,
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if tcp is not None and not _is_ip(tcp.host):
        # A name from the pod's /etc/hosts (Envoy's c-ares resolver reads it first); the pod
        # resolves nothing else (its DNS is 127.0.0.1).
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_ONLY"
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def metrics_sink() -> Json:
    """Transport tcp: Envoy pushes its stats to the daemon (envoy.service.metrics.v3) over
    the xDS cluster, every STATS_FLUSH; the admin socket is not reachable from the host.
    Counters cumulative (as the admin's /stats reads them), histograms as buckets."""
    return {
        "name": "envoy.stat_sinks.metrics_service",
        "typed_config": {
            "@type": METRICS_SERVICE,
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
            "emit_tags_as_labels": False,
            "report_counters_as_deltas": False,
            "histogram_emit_mode": "HISTOGRAM",
        },
    }


def _inline_routes(listener: Json, routes: dict[str, Json]) -> Json:
    out = copy.deepcopy(listener)
    for chain in out["filter_chains"]:
        for f in chain["filters"]:
            typed: dict[str, Any] = f["typed_config"]
            if typed["@type"] == HCM and "rds" in typed:
                name = typed.pop("rds")["route_config_name"]
                typed["route_config"] = routes[name]
    return out


def ads_bootstrap(
    node_id: str,
    cluster: str,
    xds_socket: str,
    admin_socket: str = ADMIN_SOCKET,
    stats_sinks: Sequence[Json] = (),
    runtime: Json | None = None,
    tcp: XdsTcp | None = None,
) -> Json:
    """Everything from the daemon's ADS server over a UNIX socket bind-mounted into the pod,
    or with `tcp` over TCP with the mesh's token (and the stats pushed to the daemon).
    `stats_sinks` and `runtime` (a static runtime layer) are bootstrap-only settings
    (envoy/tracing.py makes them)."""
    xds_cluster = _xds_cluster(xds_socket, tcp)
    ads = {"ads": {}, "resource_api_version": "V3"}
    extra: Json = {}
    if tcp is not None:
        stats_sinks = [*stats_sinks, metrics_sink()]
        extra["stats_flush_interval"] = STATS_FLUSH
    if stats_sinks:
        extra["stats_sinks"] = list(stats_sinks)
    # Envoy's own default is a static layer and an admin layer (/runtime_modify): keep them,
    # with the daemon's RTDS layer between (later layers override earlier ones). Envoy waits
    # for the layer at start; every snapshot serves it (envoy/snapshot.py).
    layers: list[Json] = []
    if runtime:
        layers.append({"name": "devmesh", "static_layer": runtime})
    layers.append(
        {"name": "devmesh-rtds", "rtds_layer": {"name": RUNTIME_LAYER, "rtds_config": ads}}
    )
    layers.append({"name": "admin", "admin_layer": {}})
    extra["layered_runtime"] = {"layers": layers}
    return {
        "node": _node(node_id, cluster),
        "admin": _admin(admin_socket),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [xds_cluster]},
        **extra,
    }
