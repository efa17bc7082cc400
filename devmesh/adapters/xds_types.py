"""Envoy's protobuf types, registered so proto-JSON with `@type` Any fields can be parsed.

The builders in `devmesh.envoy` emit plain dicts; this turns them into the protobuf messages
the ADS server sends, and rejects any dict whose field names Envoy's API does not have.
"""

from __future__ import annotations

import copy
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

# Imported for their side effect: they register the typed_config types Any fields name.
from envoy.config.metrics.v3 import stats_pb2  # noqa: F401  StatsD sinks (bootstrap)
from envoy.config.route.v3 import route_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, xray_pb2  # noqa: F401  tracers
from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401  access logs
from envoy.extensions.access_loggers.open_telemetry.v3 import (  # noqa: F401
    logs_service_pb2 as otel_logs_pb2,
)
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import (  # noqa: F401
    local_rate_limit_pb2 as http_local_rate_limit_pb2,
)
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.local_ratelimit.v3 import (  # noqa: F401
    local_rate_limit_pb2 as tcp_local_rate_limit_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: F401  tracing's request ids
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import json_format

from devmesh.envoy.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME, SECRET

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "MESSAGES",
    "ROUTE",
    "RUNTIME",
    "SECRET",
    "bootstrap_proto",
    "to_proto",
]

MESSAGES: dict[str, Any] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
    RUNTIME: rtds_pb2.Runtime,
}


def to_proto(type_url: str, data: dict[str, Any]) -> Any:
    """Parse a resource dict strictly: an unknown field raises json_format.ParseError."""
    # A copy: ParseDict takes '@type' out of every Any and puts it back last, reordering the
    # caller's dicts (rendered resources are shared between node groups and renders).
    return json_format.ParseDict(copy.deepcopy(data), MESSAGES[type_url]())


def bootstrap_proto(data: dict[str, Any]) -> Any:
    return json_format.ParseDict(copy.deepcopy(data), bootstrap_pb2.Bootstrap())
