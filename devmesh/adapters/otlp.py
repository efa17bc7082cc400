"""OTLP spans from the Envoys, in mesh terms (`api.Span`), and Zipkin JSON for forwarding.

Envoy's OpenTelemetry tracer tags every span with what it knows (`upstream_cluster`,
`http.status_code`, `response_flags`, `node_id`, `guid:x-request-id`, ...); devmesh's own
custom tags (`devmesh.service`, `devmesh.version`, `devmesh.route`, set in
`envoy/tracing.py`) name the mesh's parts. Cluster names are parsed with envoy/names.py's
rules, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from devmesh.adapters import wire
from devmesh.api import types as api
from devmesh.envoy.tracing import ROUTE_TAG, SERVICE_TAG, VERSION_TAG

ExportRequest = trace_service_pb2.ExportTraceServiceRequest

_COUNT_SPANS = wire.Counter((1, 2, 2))
_KIND = {
    trace_pb2.Span.SPAN_KIND_SERVER: api.SpanKind.SERVER,
    trace_pb2.Span.SPAN_KIND_CLIENT: api.SpanKind.CLIENT,
}


def _value(v: Any) -> str:
    which = v.WhichOneof("value")
    if which is None:
        return ""
    return str(getattr(v, which))


def upstream_words(cluster: str) -> str:
    """Envoy's cluster name in mesh words: `catalog|v2` -> `catalog/v2`, `_app` -> `app`,
    `_hop|catalog` -> `catalog` (the gateway's hop to that service)."""
    if cluster == "_app":
        return "app"
    if cluster.startswith("_hop|"):
        return cluster.removeprefix("_hop|")
    return cluster.replace("|", "/")


# The tags read; the others (user agent, sizes, addresses, ...) are not decoded at all.
_WANTED = frozenset(
    {
        SERVICE_TAG,
        VERSION_TAG,
        ROUTE_TAG,
        "upstream_cluster",
        "http.status_code",
        "http.method",
        "http.url",
        "response_flags",
        "guid:x-request-id",
        "node_id",
        "error",
    }
)


def to_span(span: Any, resource: dict[str, str]) -> api.Span:
    # Envoy's tags are all strings: read string_value, and only the wanted keys (the
    # collector decodes every span of the mesh; this is most of its CPU).
    tags = {kv.key: kv.value.string_value for kv in span.attributes if kv.key in _WANTED}
    status_text = tags.get("http.status_code", "")
    # 0: no response went out (a reset, a timeout's cut-off copy): none, as access logs say
    status = int(status_text) or None if status_text.isdigit() else None
    start = span.start_time_unix_nano / 1e9
    duration = max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    flags = tags.get("response_flags", "")
    error = (
        tags.get("error") == "true"
        or (status is not None and status >= 500)
        or span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    )
    return api.Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        name=span.name,
        kind=_KIND.get(span.kind, api.SpanKind.OTHER),
        start=start,
        duration_ms=round(duration, 3),
        service=tags.get(SERVICE_TAG) or resource.get("service.name", ""),
        version=tags.get(VERSION_TAG, ""),
        node=tags.get("node_id", ""),
        route=tags.get(ROUTE_TAG, ""),
        upstream=upstream_words(tags.get("upstream_cluster", "")),
        method=tags.get("http.method", ""),
        url=tags.get("http.url", ""),
        status=status,
        flags="" if flags == "-" else flags,
        request_id=tags.get("guid:x-request-id", ""),
        error=error,
    )


def scope_spans(resource_spans: Any) -> Any:
    """ResourceSpans' field 2: `scope_spans` in OTLP 1.x, `instrumentation_library_spans` in
    the older copy of these modules that the xds-protos wheel also installs into the
    `opentelemetry.proto` package (whichever was installed last wins). Same number, same
    wire format, so read it by number."""
    return getattr(resource_spans, resource_spans.DESCRIPTOR.fields_by_number[2].name)


def spans_of(request: Any) -> list[api.Span]:
    """Every span of an ExportTraceServiceRequest, in mesh terms."""
    out: list[api.Span] = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in scope_spans(rs):
            out.extend(to_span(s, resource) for s in ss.spans)
    return out


def count_spans(request: Any) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in scope_spans(rs))


def spans_of_bytes(data: bytes) -> list[api.Span]:
    """Every span of a serialized ExportTraceServiceRequest (as the collector keeps them),
    in mesh terms. ValueError when it does not decode."""
    try:
        request = ExportRequest.FromString(data)
    except Exception as exc:  # protobuf's DecodeError, and upb's own
        raise ValueError(f"not an OTLP export request: {exc}") from None
    try:
        return spans_of(request)
    except (AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"spans that do not decode: {exc}") from None


def count_spans_bytes(data: bytes) -> int:
    """How many spans a serialized ExportTraceServiceRequest holds, from its framing only
    (`wire.Counter`): resource_spans (1) -> scope_spans (2) -> spans (2). ValueError when
    it is not one."""
    return _COUNT_SPANS(data)


def zipkin(spans: Iterable[api.Span]) -> list[dict[str, Any]]:
    """Zipkin v2 JSON (`POST /api/v2/spans`) for these spans."""
    out: list[dict[str, Any]] = []
    for s in spans:
        tags = {
            k: v
            for k, v in (
                ("devmesh.service", s.service),
                ("devmesh.version", s.version),
                ("devmesh.route", s.route),
                ("upstream", s.upstream),
                ("http.method", s.method),
                ("http.url", s.url),
                ("http.status_code", "" if s.status is None else str(s.status)),
                ("response_flags", s.flags),
                ("guid:x-request-id", s.request_id),
                ("error", "true" if s.error else ""),
            )
            if v
        }
        item: dict[str, Any] = {
            "traceId": s.trace_id,
            "id": s.span_id,
            "name": s.name,
            "timestamp": int(s.start * 1e6),
            "duration": max(1, int(s.duration_ms * 1000)),
            "localEndpoint": {"serviceName": s.service or "unknown"},
            "tags": tags,
        }
        if s.parent_id:
            item["parentId"] = s.parent_id
        if s.kind is not api.SpanKind.OTHER:
            item["kind"] = s.kind.value.upper()
        out.append(item)
    return out
