"""A trace as a waterfall: one row per span, indented under its parent, with a bar placed
on the trace's time line. Plain text, shared by `devmesh traces ID` and the TUI's trace view.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from devmesh.api.types import Span, SpanKind, Trace


@dataclass(frozen=True, slots=True)
class Row:
    span: Span
    depth: int  # how far under the root (parent chain length)
    offset_ms: float  # from the trace's start
    label: str  # indented: "  catalog/main -> catalog/v2"


def rows(trace: Trace) -> list[Row]:
    """Spans in call order: each after its parent, siblings by start."""
    spans = list(trace.spans)
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: s.start):
        if s.parent_id and s.parent_id in ids and s.parent_id != s.span_id:
            children.setdefault(s.parent_id, []).append(s)
        else:
            roots.append(s)
    start = min(s.start for s in spans)
    out: list[Row] = []
    seen: set[str] = set()

    def walk(span: Span, depth: int) -> None:
        if span.span_id in seen:  # a cycle in bad data: show each span once
            return
        seen.add(span.span_id)
        out.append(Row(span, depth, (span.start - start) * 1000, "  " * depth + describe(span)))
        for child in children.get(span.span_id, ()):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return out


def describe(span: Span) -> str:
    """What the span is, in mesh words: a call `frontend -> catalog/v2 via main` (the
    caller, the version it reached, the route), a pod's own `catalog/v2 in`, the gateway's
    `gateway in via api` (its ingress route), a copy a route mirrored `catalog/v2 in
    (mirrored copy)`."""
    via = f" via {span.route}" if span.route else ""
    if span.kind is SpanKind.SERVER:
        who = f"{span.service}/{span.version}" if span.version else span.service
        return f"{who} in{via}{' (mirrored copy)' if mirrored(span) else ''}"
    mirror = " (mirror)" if mirrored(span) else ""
    return f"{span.service} -> {span.upstream or span.name}{via}{mirror}"


def mirrored(span: Span) -> bool:
    """Whether the span belongs to a copy a route mirrored (`mirror:`), whose answer goes
    nowhere. The caller's Envoy makes a client span named `mirror` for the copy (route
    decorators are never that: devmesh's are `service/route`), and sends the copy with
    `-shadow` after the host the caller used (`api` -> `api-shadow`), which the pod's side
    shows. A service named `x-shadow` called as itself is not one."""
    if span.kind is SpanKind.CLIENT:
        return span.name == "mirror"
    if span.kind is not SpanKind.SERVER:
        return False
    try:
        host = urlsplit(span.url).hostname or ""
    except ValueError:  # a URL Envoy wrote from a hostile Host header
        return False
    return host.endswith("-shadow") and host != span.service


def bar(offset_ms: float, duration_ms: float, total_ms: float, width: int) -> str:
    """The span's place on a line `width` characters long for `total_ms`."""
    if width <= 0:
        return ""
    total = max(total_ms, 1e-6)
    begin = min(width - 1, int(offset_ms / total * width))
    length = max(1, round(duration_ms / total * width))
    length = min(length, width - begin)
    return " " * begin + "█" * length + " " * (width - begin - length)


def status_text(span: Span) -> str:
    code = "-" if span.status is None else str(span.status)
    return f"{code} {span.flags}".strip() if span.flags else code


def text(trace: Trace, width: int = 100) -> list[str]:
    """The waterfall as lines of at most about `width` characters."""
    laid = rows(trace)
    if not laid:
        return [f"trace {trace.trace_id}: no spans"]
    total = max(r.offset_ms + r.span.duration_ms for r in laid)
    label_width = min(48, max(len(r.label) for r in laid))
    bar_width = max(10, width - label_width - 30)
    head = f"trace {trace.trace_id}  {total:.1f} ms  {len(laid)} spans"
    request_id = next((r.span.request_id for r in laid if r.span.request_id), "")
    lines = [head + (f"  request {request_id}" if request_id else "")]
    for r in laid:
        label = r.label[:label_width].ljust(label_width)
        lines.append(
            f"{label}  {status_text(r.span):>7}  {r.span.duration_ms:8.1f} ms  "
            f"|{bar(r.offset_ms, r.span.duration_ms, total, bar_width)}|"
        )
    return lines
