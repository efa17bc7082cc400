"""The daemon's trace store: the last N traces the Envoys' spans make, bounded.

Span batches arrive on the xDS server's event loop (the collector,
`adapters/trace_collector.py`) as the bytes Envoy sent, and are read by API threads, so
the store has a lock of its own; it is not mesh state (the loop's), only a window on
recent traffic, like the event log and the access log.

Taking a batch in (`offer`) is a count of its spans (from the protobuf framing, no
decoding) and an append to a ring of raw batches: the xDS loop decodes nothing, and no
CPU goes to spans nobody reads (measured, bench/observability.py: decoding every span as
it came cost about 30 us a span, on the cores the Envoys need). The first reader after
new batches came (`devmesh traces`, the TUI, the API) decodes them, oldest first, into
the traces.

Bounded three times: at most `pending_spans` spans wait undecoded (whole batches, oldest
first, make room for newer ones), at most `capacity` traces are kept (the oldest trace is
evicted whole) and at most `max_spans` spans in one trace (a runaway trace cannot eat the
store). `ps` shows both counts apart: `evicted`, the spans of old traces that made room
for newer ones (the window moving on, as it should), and `dropped`, spans lost (the unread
ring full, past a trace's `max_spans`, or not decodable).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from devmesh.api import types as api

log = logging.getLogger("devmesh.traces")

CAPACITY = 1000  # traces kept
MAX_SPANS = 256  # spans kept of one trace
# Spans kept undecoded until someone reads: enough for CAPACITY traces of 10 spans, and
# a read decodes at most this many (Envoy's batches hold up to 1,000, about 0.5 MB).
PENDING_SPANS = 10_000

Decode = Callable[[bytes], list[api.Span]]  # ValueError when the bytes do not decode
Count = Callable[[bytes], int]


def _no_decoder(data: bytes) -> list[api.Span]:
    raise ValueError("this store takes decoded spans only")


class TraceStore:
    def __init__(
        self,
        capacity: int = CAPACITY,
        max_spans: int = MAX_SPANS,
        decode: Decode = _no_decoder,
        count: Count = lambda data: 0,
        pending_spans: int = PENDING_SPANS,
    ) -> None:
        self.capacity = capacity
        self.max_spans = max_spans
        self.pending_spans = pending_spans
        self._decode = decode
        self._count = count
        self._traces: OrderedDict[str, list[api.Span]] = OrderedDict()  # oldest first
        self._pending: collections.deque[tuple[bytes, int]] = collections.deque()
        self._pending_count = 0
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one reader decodes at a time; others wait for it
        self.received = 0
        self.evicted = 0
        self.dropped = 0

    # -- in

    def offer(self, data: bytes) -> int:
        """From the xDS loop: keep one export request as it came; how many spans it holds
        (0 when it is not OTLP: then it is not kept). Never blocks for long."""
        try:
            n = self._count(data)
        except ValueError as exc:
            log.warning("a span batch that is not OTLP, dropped: %s", exc)
            return 0
        if not n:
            return 0
        with self._lock:
            self.received += n
            self._pending.append((data, n))
            self._pending_count += n
            while self._pending_count > self.pending_spans and len(self._pending) > 1:
                _, gone = self._pending.popleft()
                self._pending_count -= gone
                self.dropped += gone
        return n

    def add(self, spans: Iterable[api.Span]) -> None:
        """Spans already decoded (tests, and anything not from Envoy)."""
        spans = list(spans)
        with self._lock:
            self.received += len(spans)
            self._add(spans)

    def _add(self, spans: list[api.Span]) -> None:
        for span in spans:
            trace = self._traces.get(span.trace_id)
            if trace is None:
                trace = self._traces[span.trace_id] = []
                while len(self._traces) > self.capacity:
                    _, evicted = self._traces.popitem(last=False)
                    self.evicted += len(evicted)
            else:
                self._traces.move_to_end(span.trace_id)  # still active: keep it longer
            if len(trace) >= self.max_spans:
                self.dropped += 1
                continue
            trace.append(span)

    def _read_pending(self) -> None:
        """Decode the batches that came since the last read, oldest first (outside the
        store's lock: the xDS loop keeps offering meanwhile)."""
        with self._reading:
            with self._lock:
                batches = list(self._pending)
                self._pending.clear()
                self._pending_count = 0
            for data, n in batches:
                try:
                    spans = self._decode(data)
                except ValueError as exc:
                    log.warning("spans that do not decode, dropped: %s", exc)
                    with self._lock:
                        self.dropped += n
                    continue
                with self._lock:
                    self._add(spans)

    def drop(self, count: int) -> None:
        """Spans lost before they reached the store."""
        with self._lock:
            self.dropped += count

    # -- out

    def __len__(self) -> int:
        """Traces kept of the spans read so far (`unread` have not been decoded yet)."""
        with self._lock:
            return len(self._traces)

    @property
    def unread(self) -> int:
        """Spans received and kept as they came, decoded when someone next reads."""
        with self._lock:
            return self._pending_count

    def services(self) -> frozenset[str]:
        self._read_pending()
        with self._lock:
            return frozenset(s.service for t in self._traces.values() for s in t)

    def find(self, trace_id: str) -> list[api.Trace]:
        """The trace with this id, or every trace whose id starts with it."""
        self._read_pending()
        want = trace_id.lower()
        with self._lock:
            exact = self._traces.get(want)
            if exact is not None:
                return [_trace(want, exact)]
            return [_trace(k, v) for k, v in self._traces.items() if k.startswith(want)]

    def query(self, req: api.TracesRequest) -> list[api.TraceSummary]:
        """Newest first (by the trace's first span's start: a slow trace's spans come
        after those of quicker ones begun after it), filtered as the request says, at most
        `req.limit`."""
        self._read_pending()
        with self._lock:
            items = [(k, list(v)) for k, v in reversed(self._traces.items())]
        items.sort(key=lambda item: min((s.start for s in item[1]), default=0.0), reverse=True)
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
