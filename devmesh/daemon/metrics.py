"""The daemon's Prometheus endpoint: `/metrics` on 127.0.0.1:PORT, text format 0.0.4.

Every scrape reads the sidecars' and the gateway's stats through their admin sockets, all
of them at once (the same read as `/v1/stats`: counters and Envoy's cumulative latency
buckets; adapters/envoy_admin.StatsReader), and the daemon's own state, and renders them
with labels in mesh terms (`render`, pure):

  devmesh_requests_total{service, version, source_service, response_code_class}
      requests a caller's sidecar (or the gateway: source_service "ingress") sent to a
      version, by the class of the answer it got (retries count as requests)
  devmesh_requests_overflow_total{service, version, source_service}
      requests the version's circuit breaker refused at the caller (503, flag UO)
  devmesh_request_duration_ms_bucket{service, version, source_service, le}, _count
      their latency, in Envoy's own buckets (cumulative, since each Envoy started)
  devmesh_route_requests_total{service, route, source_service, response_code_class}
  devmesh_route_request_duration_ms_bucket{service, route, source_service, le}, _count
      the same per route (the ingress' own routes: service "ingress")
  devmesh_inbound_requests_total{service, version, pod, response_code_class}
      what each pod's own inbound sidecar answered (its local replies included)
  devmesh_pod_ready{service, version, pod}          1 when ready
  devmesh_xds_synced{service, version, pod}         1 when the sidecar ACKed what was pushed
  devmesh_xds_nack{service, version, pod}           1 while its last answer is a NACK
  devmesh_config_info{service, version, pod, config}  1; `config` the ACKed version
  devmesh_access_log_*  and  devmesh_traces_*       the daemon's own counters and drops

Envoy's JSON stats carry no sum of samples, so the histograms have `_bucket` and `_count`
and no `_sum`; histogram_quantile() needs only the buckets. Counters restart from zero
when an Envoy restarts, which Prometheus' rate() expects.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from devmesh.api import types as api
from devmesh.core.problems import MeshError

log = logging.getLogger("devmesh.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLASSES = (("2xx", "rq_2xx"), ("4xx", "rq_4xx"), ("5xx", "rq_5xx"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    lines: list[str] = field(default_factory=list)

    def add(self, labels: Iterable[tuple[str, str]], value: float, suffix: str = "") -> None:
        self.lines.append(f"{self.name}{suffix}{_labels(labels)} {_number(value)}")


def _histogram(
    family: _Family, labels: tuple[tuple[str, str], ...], buckets: tuple[api.Bucket, ...]
) -> None:
    if not buckets:
        return
    for b in buckets:
        family.add((*labels, ("le", _number(b.le))), b.count, "_bucket")
    family.add((*labels, ("le", "+Inf")), buckets[-1].count, "_bucket")
    family.add(labels, buckets[-1].count, "_count")


def render(
    stats: api.Stats,
    state: api.MeshState | None,
    access: api.AccessCounters | None,
) -> str:
    """The text of one scrape."""
    requests = _Family("devmesh_requests_total", "counter", "Requests callers sent to a version")
    overflow = _Family(
        "devmesh_requests_overflow_total",
        "counter",
        "Requests a version's circuit breaker refused at the caller (UO)",
    )
    duration = _Family(
        "devmesh_request_duration_ms", "histogram", "Latency of requests to a version, ms"
    )
    route_requests = _Family(
        "devmesh_route_requests_total", "counter", "Requests sent over a route"
    )
    route_duration = _Family(
        "devmesh_route_request_duration_ms", "histogram", "Latency over a route, ms"
    )
    inbound = _Family(
        "devmesh_inbound_requests_total", "counter", "Requests a pod's own sidecar answered"
    )
    unreadable = _Family(
        "devmesh_sidecar_stats_up", "gauge", "1 when a sidecar's stats could be read"
    )
    for sidecar in stats.sidecars:
        who = (("pod", sidecar.source), ("service", sidecar.service))
        unreadable.add(who, 0 if sidecar.error else 1)
        if sidecar.error:
            continue
        source = sidecar.service  # the gateway's is "ingress"
        for up in sidecar.upstreams:
            labels = (
                ("service", up.service),
                ("version", up.version),
                ("source_service", source),
            )
            for word, attr in CLASSES:
                requests.add((*labels, ("response_code_class", word)), getattr(up.traffic, attr))
            overflow.add(labels, up.traffic.overflow)
            _histogram(duration, labels, up.traffic.latency)
        for route in sidecar.routes:
            labels = (
                ("service", route.service),
                ("route", route.route),
                ("source_service", source),
            )
            for word, attr in CLASSES:
                route_requests.add(
                    (*labels, ("response_code_class", word)), getattr(route.traffic, attr)
                )
            _histogram(route_duration, labels, route.traffic.latency)
        if sidecar.inbound is not None and sidecar.service != api.INGRESS:
            labels = (
                ("service", sidecar.service),
                ("version", sidecar.version),
                ("pod", sidecar.source),
            )
            for word, attr in CLASSES:
                inbound.add(
                    (*labels, ("response_code_class", word)), getattr(sidecar.inbound, attr)
                )
    families = [requests, overflow, duration, route_requests, route_duration, inbound, unreadable]
    if state is not None:
        ready = _Family("devmesh_pod_ready", "gauge", "1 when the pod is ready")
        synced = _Family("devmesh_xds_synced", "gauge", "1 when the sidecar ACKed its config")
        nack = _Family("devmesh_xds_nack", "gauge", "1 while the sidecar's last answer is a NACK")
        config = _Family("devmesh_config_info", "gauge", "The config version a sidecar ACKed")
        for pod in state.pods:
            labels = (("service", pod.service), ("version", pod.version), ("pod", pod.pod))
            ready.add(labels, 1 if pod.ready else 0)
            synced.add(labels, 1 if pod.xds.synced else 0)
            nack.add(labels, 1 if pod.xds.nack is not None else 0)
            if pod.xds.version:
                config.add((*labels, ("config", pod.xds.version)), 1)
        if state.gateway is not None:
            gw = state.gateway
            labels = (("service", api.INGRESS), ("version", ""), ("pod", gw.name))
            ready.add(labels, 1 if gw.ready else 0)
            synced.add(labels, 1 if gw.xds.synced else 0)
            nack.add(labels, 1 if gw.xds.nack is not None else 0)
            if gw.xds.version:
                config.add((*labels, ("config", gw.xds.version)), 1)
        families += [ready, synced, nack, config]
        tracing = getattr(state, "tracing", None)
        if tracing is not None:
            spans = _Family("devmesh_traces_spans_received_total", "counter", "Spans received")
            spans.add((), tracing.spans)
            dropped = _Family(
                "devmesh_traces_spans_dropped_total", "counter", "Spans lost before they were kept"
            )
            dropped.add((), tracing.dropped)
            evicted = _Family(
                "devmesh_traces_spans_evicted_total",
                "counter",
                "Spans of the oldest traces, out of the store to make room for newer ones",
            )
            evicted.add((), tracing.evicted)
            families += [spans, dropped, evicted]
    if access is not None:
        for name, kind, text, value in (
            ("devmesh_access_log_entries", "gauge", "Access-log entries kept", access.kept),
            (
                "devmesh_access_log_received_total",
                "counter",
                "Access-log entries received",
                access.received,
            ),
            (
                "devmesh_access_log_evicted_total",
                "counter",
                "Entries that made room for newer ones",
                access.evicted,
            ),
            (
                "devmesh_access_log_dropped_total",
                "counter",
                "Entries dropped: they could not be decoded",
                access.dropped,
            ),
        ):
            family = _Family(name, kind, text)
            family.add((), value)
            families.append(family)
    out: list[str] = []
    for f in families:
        if not f.lines:
            continue
        out.append(f"# HELP {f.name} {f.help}")
        out.append(f"# TYPE {f.name} {f.kind}")
        out.extend(f.lines)
    return "\n".join(out) + "\n"


# -- the server ------------------------------------------------------------------------------


class MetricsServer:
    """`GET /metrics` on 127.0.0.1:`port`; `scrape()` gives the text. One thread."""

    def __init__(self, port: int, scrape: Callable[[], str], host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._scrape = scrape
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        scrape = self._scrape

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                try:
                    body = scrape().encode()
                except Exception:
                    log.exception("a scrape failed")
                    self.send_error(500, "the scrape failed; see the daemon's log")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        try:
            server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise MeshError(
                f"metrics port {self.host}:{self.port} is in use or refused ({exc.strerror}); "
                "free it or choose another (observability.metrics.port, or --metrics-port)"
            ) from None
        server.daemon_threads = True
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics on %s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
