"""The daemon's span collector: OTLP's TraceService, served by the xDS server's grpc.aio
server on the socket every pod mounts (`XdsServer(services=...)`), and the forwarder that
also sends the spans to a user's OTLP/HTTP or Zipkin endpoint.

Neither may hold a request up or stall the daemon. The collector's servicer only queues
each batch (the xDS loop serves the Envoys' config too, so it decodes nothing); a thread
decodes them and hands the spans on. Its queue is bounded: a backlog is dropped, counted
(`on_dropped`), never grown. The forwarder posts from a thread of its own, from a bounded
queue too: when the endpoint is slow or gone, batches are dropped and counted, and every
post has a short timeout. Envoy's tracer never waits for us either: it exports in the
background, and a refused export only loses that batch.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from devmesh.adapters.otlp import count_spans, spans_of, zipkin
from devmesh.api import types as api
from devmesh.core.model import TraceForward

log = logging.getLogger("devmesh.traces")

QUEUE_BATCHES = 64  # Envoy sends a batch per flush (1 s) per Envoy: a minute of 1 Envoy
POST_TIMEOUT = 2.0  # seconds, connect and answer: a stalled endpoint costs one slot


BACKLOG_BATCHES = 256  # export requests waiting to be decoded (an Envoy sends one a second)


class TraceCollector:
    """OTLP TraceService.Export: each request's spans to `on_spans(spans, request)`, from a
    thread of its own (`start`); what the backlog cannot hold to `on_dropped(spans)`."""

    def __init__(
        self,
        on_spans: Callable[[list[api.Span], Any], None],
        on_dropped: Callable[[int], None] = lambda n: None,
        backlog: int = BACKLOG_BATCHES,
    ) -> None:
        self._on_spans = on_spans
        self._on_dropped = on_dropped
        self._backlog: queue.Queue[Any] = queue.Queue(backlog)
        self._thread = threading.Thread(target=self._run, name="trace-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._backlog.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(2)

    def offer(self, request: Any) -> None:
        """On the xDS loop: queue the batch, or count it dropped. Never blocks."""
        try:
            self._backlog.put_nowait(request)
        except queue.Full:
            self._on_dropped(count_spans(request))

    def _run(self) -> None:
        while True:
            request = self._backlog.get()
            if request is None:
                return
            try:
                self.export(request)
            except Exception:  # a bug must not end the collector
                log.exception("handling a span batch failed")

    def register(self, server: Any) -> None:
        # generated without annotations, unlike the messages (which ship .pyi files)
        add = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add(_Servicer(self), server)  # type: ignore[no-untyped-call]

    def export(self, request: Any) -> None:
        try:
            spans = spans_of(request)
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            log.warning("spans that do not decode, dropped: %s", exc)
            return
        self._on_spans(spans, request)


class _Servicer:
    def __init__(self, collector: TraceCollector) -> None:
        self._collector = collector

    async def Export(self, request: Any, context: Any) -> Any:
        self._collector.offer(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass(frozen=True, slots=True)
class ForwardCounters:
    forwarded: int
    dropped: int
    error: str | None


class SpanForwarder:
    """Posts span batches to `target` from a thread of its own; bounded, never blocking."""

    def __init__(self, target: TraceForward, batches: int = QUEUE_BATCHES) -> None:
        self.target = target
        self._queue: queue.Queue[tuple[Any, list[api.Span]] | None] = queue.Queue(batches)
        self._lock = threading.Lock()
        self._forwarded = 0
        self._dropped = 0
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="trace-forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            with self._lock:
                self._dropped += sum(len(s) for s in _drain(self._queue))
            self._queue.put_nowait(None)
        self._thread.join(POST_TIMEOUT * 2 + 1)

    def offer(self, request: Any, spans: list[api.Span]) -> bool:
        """Queue a batch; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((request, spans))
            return True
        except queue.Full:
            with self._lock:
                self._dropped += len(spans) or count_spans(request)
            return False

    def counters(self) -> ForwardCounters:
        with self._lock:
            return ForwardCounters(self._forwarded, self._dropped, self._error)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, spans = item
            try:
                self._post(request, spans)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with self._lock:
                    self._dropped += len(spans)
                    self._error = f"{self.target.url}: {exc}"
                log.debug("forwarding spans to %s failed: %s", self.target.url, exc)
            else:
                with self._lock:
                    self._forwarded += len(spans)
                    self._error = None

    def _post(self, request: Any, spans: list[api.Span]) -> None:
        if self.target.kind == "zipkin":
            body = json.dumps(zipkin(spans)).encode()
            content_type = "application/json"
        else:
            body = request.SerializeToString()
            content_type = "application/x-protobuf"
        address = self.target.address
        conn = http.client.HTTPConnection(address.host, address.port, timeout=POST_TIMEOUT)
        try:
            conn.request(
                "POST", self.target.path or "/", body, headers={"Content-Type": content_type}
            )
            answer = conn.getresponse()
            answer.read()
        finally:
            conn.close()
        if answer.status >= 300:
            raise ValueError(f"answered {answer.status} {answer.reason}")


def _drain(q: queue.Queue[tuple[Any, list[api.Span]] | None]) -> list[list[api.Span]]:
    out: list[list[api.Span]] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return out
        if item is not None:
            out.append(item[1])
