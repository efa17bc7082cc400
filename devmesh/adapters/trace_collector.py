"""The daemon's span collector: OTLP's TraceService, served by the xDS server's grpc.aio
server on the socket every pod mounts (`XdsServer(services=...)`), and the forwarder that
also sends the spans to a user's OTLP/HTTP or Zipkin endpoint.

Neither may hold a request up or stall the daemon. The collector takes each export as the
bytes it came as (no protobuf parse on the xDS loop, which serves the Envoys' config too)
and hands them to `on_batch`, which keeps them as they are (`daemon/traces.py`): spans are
decoded only when someone reads traces, and forwarded to an OTLP sink as those same bytes.
Measured (bench/observability.py): decoding every span as it came cost the daemon about
30 us a span, 60 us a request through two sidecars, whether or not anyone looked.

The forwarder posts from a thread of its own, from a bounded queue: when the endpoint is
slow or gone, batches are dropped and counted, and every post has a short timeout. Only a
Zipkin endpoint makes it decode (into Zipkin JSON). Envoy's tracer never waits for us
either: it exports in the background, and a refused export only loses that batch.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from devmesh.adapters.otlp import spans_of_bytes, zipkin
from devmesh.core.model import TraceForward

log = logging.getLogger("devmesh.traces")

# Envoy sends a batch per flush (5 s, or 100 spans: envoy/tracing.py) per Envoy: at ~1,000
# traced requests a second through two Envoys, 640 batches are about 30 s of spans
QUEUE_BATCHES = 640
POST_TIMEOUT = 2.0  # seconds, connect and answer: a stalled endpoint costs one slot
# Batches waiting are sent together, up to this much in one POST: a serialized
# ExportTraceServiceRequest is a repeated field, so requests concatenated are one request.
POST_BYTES = 4 << 20

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_ANSWER = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class TraceCollector:
    """OTLP TraceService.Export: each request's bytes, unparsed, to `on_batch(data)` on the
    xDS loop. `on_batch` must not block."""

    def __init__(self, on_batch: Callable[[bytes], None]) -> None:
        self._on_batch = on_batch

    def register(self, server: Any) -> None:
        """The hook `XdsServer(services=...)` calls with its grpc.aio server. A generic
        handler with no request deserializer: grpc hands over the request's bytes."""
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=None, response_serializer=None
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
        )

    async def _export(self, data: bytes, context: Any) -> bytes:
        try:
            self._on_batch(data)
        except Exception:  # a bug must not fail the Envoy's export
            log.exception("taking a span batch in failed")
        return _ANSWER


@dataclass(frozen=True, slots=True)
class ForwardCounters:
    forwarded: int
    dropped: int
    error: str | None


class SpanForwarder:
    """Posts span batches to `target` from a thread of its own; bounded, never blocking."""

    def __init__(self, target: TraceForward, batches: int = QUEUE_BATCHES) -> None:
        self.target = target
        self._queue: queue.Queue[tuple[bytes, int] | None] = queue.Queue(batches)
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
                self._dropped += sum(_drain(self._queue))
            self._queue.put_nowait(None)
        self._thread.join(POST_TIMEOUT * 2 + 1)

    def offer(self, data: bytes, spans: int) -> bool:
        """Queue an export request's bytes (holding `spans` spans); False (and counted)
        when the queue is full."""
        try:
            self._queue.put_nowait((data, spans))
            return True
        except queue.Full:
            with self._lock:
                self._dropped += spans
            return False

    def counters(self) -> ForwardCounters:
        with self._lock:
            return ForwardCounters(self._forwarded, self._dropped, self._error)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            item = self._queue.get()
            if item is None:
                break
            batches, size, stop = [item], len(item[0]), False
            while size < POST_BYTES:  # what waits goes along
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batches.append(more)
                size += len(more[0])
            spans = sum(b[1] for b in batches)
            try:
                conn = self._post([b[0] for b in batches], conn)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                with self._lock:
                    self._dropped += spans
                    self._error = f"{self.target.url}: {exc}"
                log.debug("forwarding spans to %s failed: %s", self.target.url, exc)
            else:
                with self._lock:
                    self._forwarded += spans
                    self._error = None
            if stop:
                break
        if conn is not None:
            conn.close()

    def _post(
        self, batches: list[bytes], conn: http.client.HTTPConnection | None
    ) -> http.client.HTTPConnection:
        """One POST of these batches, on `conn` (kept alive from the last one) when given;
        the connection for the next (a closed one reconnects by itself on its next use)."""
        if self.target.kind == "zipkin":  # ValueError when the bytes do not decode
            body = json.dumps(zipkin([s for b in batches for s in spans_of_bytes(b)])).encode()
            content_type = "application/json"
        else:  # OTLP/HTTP takes the very protobuf Envoy sent us, requests concatenated
            body = b"".join(batches)
            content_type = "application/x-protobuf"
        address = self.target.address
        for reused in (conn is not None, False):
            if conn is None:
                conn = http.client.HTTPConnection(address.host, address.port, timeout=POST_TIMEOUT)
            try:
                conn.request(
                    "POST", self.target.path or "/", body, headers={"Content-Type": content_type}
                )
                answer = conn.getresponse()
                answer.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                if not reused:  # a fresh connection failed: the endpoint's fault
                    raise
                # a kept-alive connection the endpoint had closed meanwhile: once more, anew
        assert conn is not None
        if answer.will_close:
            conn.close()
        if answer.status >= 300:
            raise ValueError(f"answered {answer.status} {answer.reason}")
        return conn


def _drain(q: queue.Queue[tuple[bytes, int] | None]) -> list[int]:
    """The span counts of the batches still queued, taking them off."""
    out: list[int] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return out
        if item is not None:
            out.append(item[1])
