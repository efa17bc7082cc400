"""Envoy's gRPC access-log service (`envoy.service.accesslog.v3.AccessLogService`), served
by the xDS server's grpc.aio server on the socket every pod mounts (`XdsServer(services=)`).

The servicer does no decoding on the xDS loop: it hands each message, with the node its
stream named, to `on_batch`, which must not block (the daemon keeps it as it is, and decodes
it with `decode` when someone first reads it). A stream's node comes on its first message
only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from devmesh.api.response_flags import RESPONSE_FLAGS

log = logging.getLogger("devmesh.access")

# (node id, node cluster, log name, StreamAccessLogsMessage)
OnBatch = Callable[[str, str, str, Any], None]


@dataclass(frozen=True, slots=True)
class EnvoyAccess:
    """One access-log entry in Envoy's own terms (addresses, cluster names)."""

    node_id: str
    node_cluster: str
    log_name: str
    tcp: bool
    start: float  # unix seconds
    duration_ms: float | None
    upstream_ms: float | None
    route_name: str
    upstream_cluster: str
    upstream_ip: str
    downstream_ip: str
    flags: tuple[str, ...]
    method: str = ""
    authority: str = ""
    path: str = ""
    status: int | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    request_id: str = ""
    trace_header: str = ""  # traceparent, or x-amzn-trace-id
    detail: str = ""


class AccessLogService:
    def __init__(self, on_batch: OnBatch) -> None:
        self._on_batch = on_batch

    def register(self, server: Any) -> None:
        """The hook `XdsServer(services=...)` calls with its grpc.aio server."""
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(_Servicer(self._on_batch), server)


class _Servicer:
    def __init__(self, on_batch: OnBatch) -> None:
        self._on_batch = on_batch

    async def StreamAccessLogs(self, requests: AsyncIterator[Any], context: Any) -> Any:
        node_id = node_cluster = log_name = ""
        try:
            async for message in requests:
                if message.HasField("identifier"):
                    node = message.identifier.node
                    node_id, node_cluster = node.id, node.cluster
                    log_name = message.identifier.log_name
                self._on_batch(node_id, node_cluster, log_name, message)
        except Exception:  # the stream broke: Envoy opens a new one with its next flush
            log.debug("an access-log stream ended", exc_info=True)
        return als_pb2.StreamAccessLogsResponse()


def _ms(duration: Any, present: bool) -> float | None:
    if not present:
        return None
    return float(duration.seconds * 1000 + duration.nanos / 1e6)


def _ip(address: Any) -> str:
    return str(address.socket_address.address) if address.HasField("socket_address") else ""


def _flags(common: Any) -> tuple[str, ...]:
    if not common.HasField("response_flags"):
        return ()
    flags = common.response_flags
    return tuple(f.code for f in RESPONSE_FLAGS if _set(flags, f.field))


def _set(flags: Any, name: str) -> bool:
    # Every flag is a bool but `unauthorized_details`, a message (set when present).
    if name in _MESSAGE_FLAGS:
        return bool(flags.HasField(name))
    return bool(getattr(flags, name, False))


_MESSAGE_FLAGS = {
    f.name for f in accesslog_pb2.ResponseFlags.DESCRIPTOR.fields if f.message_type is not None
}


def _common(node: tuple[str, str, str], common: Any, tcp: bool) -> dict[str, Any]:
    start = common.start_time.seconds + common.start_time.nanos / 1e9
    last = "time_to_last_downstream_tx_byte"  # before Envoy had `duration`
    if common.HasField("duration"):
        duration = _ms(common.duration, True)
    else:
        duration = _ms(getattr(common, last), common.HasField(last))
    upstream = None
    if common.HasField("time_to_first_upstream_rx_byte") and common.HasField(
        "time_to_first_upstream_tx_byte"
    ):
        rx = _ms(common.time_to_first_upstream_rx_byte, True) or 0.0
        tx = _ms(common.time_to_first_upstream_tx_byte, True) or 0.0
        upstream = max(0.0, rx - tx)
    return {
        "node_id": node[0],
        "node_cluster": node[1],
        "log_name": node[2],
        "tcp": tcp,
        "start": start,
        "duration_ms": duration,
        "upstream_ms": upstream,
        "route_name": common.route_name,
        "upstream_cluster": common.upstream_cluster,
        "upstream_ip": _ip(common.upstream_remote_address),
        "downstream_ip": _ip(common.downstream_remote_address),
        "flags": _flags(common),
    }


def decode(node_id: str, node_cluster: str, log_name: str, message: Any) -> list[EnvoyAccess]:
    """Every entry of one StreamAccessLogsMessage."""
    node = (node_id, node_cluster, log_name)
    out: list[EnvoyAccess] = []
    if message.HasField("http_logs"):
        for entry in message.http_logs.log_entry:
            request, response = entry.request, entry.response
            headers = request.request_headers
            out.append(
                EnvoyAccess(
                    **_common(node, entry.common_properties, False),
                    method=als_method(request.request_method),
                    authority=request.authority,
                    path=request.path,
                    status=response.response_code.value
                    if response.HasField("response_code") and response.response_code.value
                    else None,
                    bytes_received=int(request.request_body_bytes),
                    bytes_sent=int(response.response_body_bytes),
                    request_id=request.request_id,
                    trace_header=headers.get("traceparent") or headers.get("x-amzn-trace-id", ""),
                    detail=response.response_code_details,
                )
            )
    if message.HasField("tcp_logs"):
        for entry in message.tcp_logs.log_entry:
            conn = entry.connection_properties
            out.append(
                EnvoyAccess(
                    **_common(node, entry.common_properties, True),
                    bytes_received=int(conn.received_bytes),
                    bytes_sent=int(conn.sent_bytes),
                )
            )
    return out


_METHODS: dict[int, str] = {}


def als_method(value: int) -> str:
    """envoy.config.core.v3.RequestMethod's number -> its name (`GET`); "" when unset."""
    if not _METHODS:
        from envoy.config.core.v3 import base_pb2

        for v in base_pb2.RequestMethod.DESCRIPTOR.values:
            _METHODS[v.number] = "" if v.name == "METHOD_UNSPECIFIED" else v.name
    return _METHODS.get(value, "")
