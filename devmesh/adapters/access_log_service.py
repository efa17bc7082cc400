"""The daemon's side of Envoy's access loggers (envoy/access_log.py), served by the xDS
server's grpc.aio server on the socket every pod mounts (`XdsServer(services=)`):

- OTLP's logs service (`opentelemetry.proto.collector.logs.v1.LogsService`, unary
  `Export`), for the HTTP logger: each export's resource labels name its Envoy and its
  logger; each log record's body is the NUL-separated line of `access_log.HTTP_FIELDS`.
- Envoy's gRPC access-log service (`envoy.service.accesslog.v3.AccessLogService`), for
  the TCP logger: a stream's node comes on its first message only.

The servicer does no decoding on the xDS loop: grpc hands it each message's bytes (no
request deserializer), it counts the entries from the protobuf framing (`framing`,
`wire.Counter`) and reads only the small part that names the node, and passes the bytes on
to `on_batch`, which must not block (the daemon keeps them as they are, and decodes them
with `decode` when someone first reads them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from devmesh.adapters import wire
from devmesh.api.response_flags import RESPONSE_FLAGS
from devmesh.envoy.access_log import HTTP_FIELDS, SEPARATOR


@dataclass(frozen=True, slots=True)
class OtlpLogs:
    """A serialized ExportLogsServiceRequest (as `Batch`, told apart from the gRPC
    logger's messages)."""

    data: bytes


# A batch as the servicer keeps it: a StreamAccessLogsMessage's bytes, or an OTLP export's.
Batch = bytes | OtlpLogs
# (node id, node cluster, log name, the batch, its entries)
OnBatch = Callable[[str, str, str, Batch, int], None]

log = logging.getLogger("devmesh.access")

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
OTLP_LOGS = "opentelemetry.proto.collector.logs.v1.LogsService"
_ANSWER: bytes = als_pb2.StreamAccessLogsResponse().SerializeToString()
# ExportLogsServiceRequest: resource_logs (1); ResourceLogs: resource (1), scope_logs (2);
# ScopeLogs: log_records (2). (The older copy of these modules that xds-protos installs
# names the last two `instrumentation_library_logs` and `logs`: the same numbers.)
_RECORDS = (1, 2, 2)
_RESOURCE = (1, 1)
_FIELD_NAMES = tuple(name for name, _ in HTTP_FIELDS)
# StreamAccessLogsMessage's fields: identifier (1), http_logs (2), tcp_logs (3); each
# of the two holds its entries as `log_entry` (1).
_IDENTIFIER, _HTTP, _TCP, _ENTRY = 1, 2, 3, 1
_COUNT_RECORDS = wire.Counter(_RECORDS)
_ENTRIES = wire.Counter((_ENTRY,))  # in http_logs or tcp_logs


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


def framing(data: bytes) -> tuple[bytes | None, int]:
    """A serialized StreamAccessLogsMessage's identifier (still serialized; None when it
    has none) and how many entries it holds, from its framing. ValueError when the bytes
    are not protobuf."""
    identifier = None
    entries = 0
    for number, a, b in wire.fields(data):
        if number == _IDENTIFIER:
            identifier = data[a:b]
        elif number in (_HTTP, _TCP):
            entries += _ENTRIES(data[a:b])
    return identifier, entries


def otlp_framing(data: bytes) -> tuple[dict[str, str], int]:
    """A serialized ExportLogsServiceRequest's first resource's string labels (Envoy's
    `log_name`, `node_name`, `cluster_name`) and how many log records it holds, without
    decoding the records. ValueError when the bytes are not protobuf."""
    labels: dict[str, str] = {}
    first = next(wire.at(data, _RESOURCE), None)
    if first is not None:
        resource = resource_pb2.Resource.FromString(data[first[0] : first[1]])
        labels = {kv.key: kv.value.string_value for kv in resource.attributes}
    return labels, _COUNT_RECORDS(data)


class AccessLogService:
    def __init__(self, on_batch: OnBatch) -> None:
        self._on_batch = on_batch

    def register(self, server: Any) -> None:
        """The hook `XdsServer(services=...)` calls with its grpc.aio server. Generic
        handlers with no request deserializer: grpc hands over each message's bytes."""
        stream = grpc.stream_unary_rpc_method_handler(
            self._stream, request_deserializer=None, response_serializer=None
        )
        export = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=None, response_serializer=None
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE, {"StreamAccessLogs": stream}),
                grpc.method_handlers_generic_handler(OTLP_LOGS, {"Export": export}),
            )
        )

    async def _export(self, data: bytes, context: Any) -> bytes:
        """One OTLP logs export: one Envoy logger's flush. Always answered (an empty
        ExportLogsServiceResponse): what cannot be read is logged and dropped, and the
        logger's next flush is not held up by it."""
        try:
            labels, entries = otlp_framing(data)
        except Exception as exc:
            log.warning("an OTLP logs export that does not decode: %s", exc)
            return b""
        self._on_batch(
            labels.get("node_name", ""),
            labels.get("cluster_name", ""),
            labels.get("log_name", ""),
            OtlpLogs(data),
            entries,
        )
        return b""

    async def _stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        node_id = node_cluster = log_name = ""
        try:
            async for data in requests:
                try:
                    identifier, entries = framing(data)
                    if identifier is not None:
                        ident = als_pb2.StreamAccessLogsMessage.Identifier.FromString(identifier)
                        node_id, node_cluster = ident.node.id, ident.node.cluster
                        log_name = ident.log_name
                except Exception as exc:  # not Envoy's message: nothing to keep of it
                    log.warning("an access-log message that does not decode: %s", exc)
                    continue
                self._on_batch(node_id, node_cluster, log_name, data, entries)
        except Exception:  # the stream broke: Envoy opens a new one with its next flush
            log.debug("an access-log stream ended", exc_info=True)
        return _ANSWER


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
    return tuple(f.code for f in RESPONSE_FLAGS if f.field and _set(flags, f.field))


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


def _digits(text: str) -> bool:
    """Envoy's numbers: ASCII digits, at most 19 (`isdigit` alone takes `²`)."""
    return text.isascii() and text.isdigit() and len(text) < 20


def _number(text: str) -> int:
    return int(text) if _digits(text) else 0


def _us_to_ms(text: str) -> float | None:
    return int(text) / 1000 if _digits(text) else None


def from_line(node: tuple[str, str, str], start_ns: int, line: str) -> EnvoyAccess | None:
    """One HTTP entry from its log record: the body's line (`access_log.HTTP_LINE`) and the
    record's time. None when the line does not have the fields the logger writes."""
    values = line.split(SEPARATOR)
    if len(values) != len(_FIELD_NAMES):
        return None
    f = {k: ("" if v == "-" else v) for k, v in zip(_FIELD_NAMES, values, strict=True)}
    duration = _us_to_ms(f["duration_us"])
    if duration is None and _digits(f["duration_ms"]):
        duration = float(f["duration_ms"])
    return EnvoyAccess(
        node_id=node[0],
        node_cluster=node[1],
        log_name=node[2],
        tcp=False,
        start=start_ns / 1e9,
        duration_ms=duration,
        upstream_ms=_us_to_ms(f["upstream_us"]),
        route_name=f["route_name"],
        upstream_cluster=f["upstream_cluster"],
        upstream_ip=f["upstream_ip"],
        downstream_ip=f["downstream_ip"],
        flags=tuple(x for x in f["flags"].split(",") if x),
        method=f["method"],
        authority=f["authority"],
        path=f["path"],
        status=_number(f["status"]) or None,
        bytes_received=_number(f["bytes_received"]),
        bytes_sent=_number(f["bytes_sent"]),
        request_id=f["request_id"],
        trace_header=f["trace_header"],
        detail=f["detail"],
    )


# LogRecord: time_unix_nano (1, fixed64), body (5, an AnyValue: string_value, 1).
_TIME, _BODY, _STRING = 1, 5, 1


def _record(data: bytes, start: int, end: int) -> tuple[int, str]:
    """A log record's time and body, read from its wire form: a header value Envoy passed
    on may not be UTF-8 (Envoy takes bytes 0x80-0xFF in one, and its formatter copies them
    as they are), which protobuf's own parser refuses for the whole export. Here such a
    byte becomes U+FFFD in its own entry only."""
    start_ns, body = 0, ""
    for number, kind, a, b in wire.items(data, start, end):
        if number == _TIME and kind == wire.I64:
            start_ns = int.from_bytes(data[a:b], "little")
        elif number == _BODY and kind == wire.LEN:
            for inner, c, d in wire.fields(data, a, b):
                if inner == _STRING:
                    body = data[c:d].decode("utf-8", "replace")
    return start_ns, body


def _decode_otlp(node: tuple[str, str, str], data: bytes) -> list[EnvoyAccess]:
    """Every HTTP entry of an ExportLogsServiceRequest's bytes. A record whose body is not
    the logger's line is left out (the ring counts it dropped)."""
    entries = (from_line(node, *_record(data, a, b)) for a, b in wire.at(data, _RECORDS))
    return [e for e in entries if e is not None]


def decode(node_id: str, node_cluster: str, log_name: str, message: Any) -> list[EnvoyAccess]:
    """Every entry of one batch: an OTLP logs export (`OtlpLogs`), or a
    StreamAccessLogsMessage (or its bytes, as the servicer keeps them)."""
    if isinstance(message, OtlpLogs):
        return _decode_otlp((node_id, node_cluster, log_name), message.data)
    # The gRPC logger's: TCP entries, and HTTP ones from Envoys still on a config of a
    # devmesh before the line (until the daemon's first push replaces their listeners).
    if isinstance(message, bytes):
        message = als_pb2.StreamAccessLogsMessage.FromString(message)
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
