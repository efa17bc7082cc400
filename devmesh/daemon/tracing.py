"""The daemon's side of traces and sinks: the span collector's store and forwarder, and the
UDP relays for StatsD and X-Ray, kept in step with the mesh the daemon serves.

The collector runs on the xDS server's loop and only calls `on_batch` with the bytes an
Envoy exported: the store keeps them undecoded until someone reads traces, and an OTLP
forwarder sends them on as they are. `sync` (the daemon's
sweep thread, once a second) starts, replaces or stops the forwarder and the relays when
the mesh file changes them. Neither touches the loop's state: they read its published view.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from devmesh.adapters.otlp import count_spans_bytes, spans_of_bytes
from devmesh.adapters.trace_collector import SpanForwarder, TraceCollector
from devmesh.adapters.udp_relay import Relays, RelaySpec
from devmesh.api import types as api
from devmesh.core.model import Mesh, TraceForward
from devmesh.daemon.sampling import AdaptiveSampling
from devmesh.daemon.traces import TraceStore
from devmesh.envoy.tracing import STATSD_SOCKET_NAME

log = logging.getLogger("devmesh.traces")


def relay_specs(mesh: Mesh, xds_dir: Path, host: str | None) -> list[RelaySpec]:
    """What the mesh's sinks need relayed: StatsD from the socket beside xds.sock, X-Ray
    from the mesh network's gateway address (once the network exists: `host`)."""
    out = []
    statsd = mesh.observability.statsd
    if statsd is not None:
        target = (statsd.address.host, statsd.address.port)
        out.append(RelaySpec("statsd", str(xds_dir / STATSD_SOCKET_NAME), target))
    tracing = mesh.observability.tracing
    if tracing is not None and tracing.provider == "xray" and host is not None:
        address = tracing.xray_address
        assert address is not None  # the loader fills the default
        # envoy/tracing.py sends to (host, the X-Ray port): the same port, on the bridge
        out.append(RelaySpec("xray", (host, address.port), (address.host, address.port)))
    return out


class Telemetry:
    def __init__(
        self,
        mesh: Callable[[], Mesh],
        xds_dir: Path,
        on_problem: Callable[[str], object] = lambda text: None,
    ) -> None:
        self._mesh = mesh  # the mesh the Envoys are served (the loop's view)
        self._on_problem = on_problem  # a relay that cannot start: an event
        self._xds_dir = xds_dir
        self.store = TraceStore(decode=spans_of_bytes, count=count_spans_bytes)
        self.collector = TraceCollector(self.on_batch)
        self.relays = Relays()
        self._forwarder: SpanForwarder | None = None
        self._lock = threading.Lock()  # the forwarder is swapped by `sync`, used by the collector
        # `sampling: auto` (daemon/sampling.py): the share chosen, pushed to every Envoy
        # as a runtime layer; None: each one's own (the file's share, or every request).
        self._adaptive: AdaptiveSampling | None = None
        self.chosen: float | None = None

    def on_batch(self, data: bytes) -> None:
        """On the xDS loop: one export request's bytes, kept and forwarded as they are."""
        spans = self.store.offer(data)
        with self._lock:
            forwarder = self._forwarder
        if forwarder is not None and spans:
            forwarder.offer(data, spans)

    def sync(self, host: str | None) -> None:
        mesh = self._mesh()
        tracing = mesh.observability.tracing
        want: TraceForward | None = tracing.forward if tracing is not None else None
        with self._lock:
            old = self._forwarder
            if old is not None and old.target == want:
                old = None
            elif want is None:
                self._forwarder = None
            else:
                self._forwarder = SpanForwarder(want)
                self._forwarder.start()
        if old is not None:
            old.stop()
        for problem in self.relays.sync(relay_specs(mesh, self._xds_dir, host)):
            self._on_problem(problem)

    def adapt(self, now: float) -> bool:
        """The sweep's, once a second: measure the spans that came, choose the share of
        requests traced (`sampling: auto`, the daemon's own collector). True when `chosen`
        changed, to be pushed."""
        tracing = self._mesh().observability.tracing
        wanted = None
        if tracing is not None and tracing.adapts:
            if self._adaptive is None:
                self._adaptive = AdaptiveSampling(tracing.sampling_percent)
            changed = self._adaptive.observe(now, self.store.received)
            if changed is not None:
                log.info("tracing %g%% of requests (sampling: auto)", changed)
            if self._adaptive.percent < self._adaptive.ceiling:
                wanted = self._adaptive.percent
        else:
            self._adaptive = None  # X-Ray's own rules sample; a number in the file holds
        if wanted == self.chosen:
            return False
        self.chosen = wanted
        return True

    def status(self) -> api.TracingStatus | None:
        tracing = self._mesh().observability.tracing
        if tracing is None:
            return None
        with self._lock:
            forwarder = self._forwarder
        counters = forwarder.counters() if forwarder is not None else None
        return api.TracingStatus(
            provider=tracing.provider,
            sampling=self.chosen if self.chosen is not None else tracing.sampling_percent,
            adaptive=tracing.adapts,
            traces=len(self.store),
            unread=self.store.unread,
            spans=self.store.received,
            dropped=self.store.dropped,
            evicted=self.store.evicted,
            forward=tracing.forward.url if tracing.forward is not None else None,
            forwarded=counters.forwarded if counters else 0,
            forward_dropped=counters.dropped if counters else 0,
            forward_error=counters.error if counters else None,
        )

    def close(self) -> None:
        with self._lock:
            forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            forwarder.stop()
        self.relays.close()
