"""The daemon's trace store: the last N traces the Envoys' spans make, bounded.

Spans arrive on the xDS server's event loop (the collector, `adapters/trace_collector.py`)
and are read by API threads, so the store has a lock of its own; it is not mesh state (the
loop's), only a window on recent traffic, like the event log.

Bounded twice: at most `capacity` traces (the oldest trace is evicted whole) and at most
`max_spans` spans in one trace (a runaway trace cannot eat the store). Evicted or refused
spans are counted in `dropped`, which `ps` shows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from devmesh.api import types as api

CAPACITY = 1000  # traces kept
MAX_SPANS = 256  # spans kept of one trace


class TraceStore:
    def __init__(self, capacity: int = CAPACITY, max_spans: int = MAX_SPANS) -> None:
        self.capacity = capacity
        self.max_spans = max_spans
        self._traces: OrderedDict[str, list[api.Span]] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self.received = 0
        self.dropped = 0

    def add(self, spans: Iterable[api.Span]) -> None:
        with self._lock:
            for span in spans:
                self.received += 1
                trace = self._traces.get(span.trace_id)
                if trace is None:
                    trace = self._traces[span.trace_id] = []
                    while len(self._traces) > self.capacity:
                        _, evicted = self._traces.popitem(last=False)
                        self.dropped += len(evicted)
                else:
                    self._traces.move_to_end(span.trace_id)  # still active: keep it longer
                if len(trace) >= self.max_spans:
                    self.dropped += 1
                    continue
                trace.append(span)

    def drop(self, count: int) -> None:
        """Spans lost before they reached the store (the collector's backlog was full)."""
        with self._lock:
            self.dropped += count

    def __len__(self) -> int:
        with self._lock:
            return len(self._traces)

    def services(self) -> frozenset[str]:
        with self._lock:
            return frozenset(s.service for t in self._traces.values() for s in t)

    def find(self, trace_id: str) -> list[api.Trace]:
        """The trace with this id, or every trace whose id starts with it."""
        want = trace_id.lower()
        with self._lock:
            exact = self._traces.get(want)
            if exact is not None:
                return [_trace(want, exact)]
            return [_trace(k, v) for k, v in self._traces.items() if k.startswith(want)]

    def query(self, req: api.TracesRequest) -> list[api.TraceSummary]:
        """Newest first, filtered as the request says, at most `req.limit`."""
        with self._lock:
            items = [(k, list(v)) for k, v in reversed(self._traces.items())]
        out: list[api.TraceSummary] = []
        status = parse_status(req.status) if req.status else None
        for trace_id, spans in items:
            if not spans:
                continue
            summary = summarize(trace_id, spans)
            if req.service is not None and req.service not in summary.services:
                continue
            if req.slower_ms is not None and summary.duration_ms <= req.slower_ms:
                continue
            if status is not None and not any(_status_matches(s.status, status) for s in spans):
                continue
            out.append(summary)
            if len(out) >= req.limit:
                break
        return out


def parse_status(text: str) -> tuple[int, int]:
    """ "5xx" -> (500, 599), "503" -> (503, 503). ValueError for anything else."""
    t = text.strip().lower()
    if len(t) == 3 and t.endswith("xx") and t[0] in "12345":
        low = int(t[0]) * 100
        return low, low + 99
    if len(t) == 3 and t.isdigit() and 100 <= int(t) <= 599:
        return int(t), int(t)
    raise ValueError(f"status: expected a class like 5xx or a code like 503, got {text!r}")


def _status_matches(status: int | None, bounds: tuple[int, int]) -> bool:
    return status is not None and bounds[0] <= status <= bounds[1]


def _ordered(spans: Iterable[api.Span]) -> list[api.Span]:
    return sorted(spans, key=lambda s: (s.start, s.kind != api.SpanKind.SERVER, s.span_id))


def _trace(trace_id: str, spans: list[api.Span]) -> api.Trace:
    return api.Trace(trace_id, tuple(_ordered(spans)))


def summarize(trace_id: str, spans: list[api.Span]) -> api.TraceSummary:
    ordered = _ordered(spans)
    ids = {s.span_id for s in ordered}
    # The root: a span whose parent is not here (the first request's, or a caller that
    # did not trace); the earliest of those.
    root = next((s for s in ordered if not s.parent_id or s.parent_id not in ids), ordered[0])
    start = ordered[0].start
    end = max(s.start + s.duration_ms / 1000 for s in ordered)
    services: list[str] = []
    for s in ordered:
        if s.service not in services:
            services.append(s.service)
    return api.TraceSummary(
        trace_id=trace_id,
        start=start,
        duration_ms=round((end - start) * 1000, 3),
        root=root.name,
        services=tuple(services),
        spans=len(ordered),
        status=root.status,
        error=any(s.error for s in ordered),
    )
