"""Stats pushed by the Envoys (transport tcp): Envoy's `envoy.stat_sinks.metrics_service`
streams every Envoy's stats to the daemon (`envoy.service.metrics.v3.MetricsService`) once
a flush interval, over the xDS cluster (envoy/bootstrap.py `metrics_sink`). The daemon keeps
the latest message per node, as bytes: nothing is decoded on the xDS loop but a stream's
first message (its node). `PushedStats.read_targets` decodes what a reader asks for into
the very shape `envoy_admin.parse_stats` gives from an admin socket, so the stats consumers
(`/v1/stats`, `ps`, the TUI, `/metrics`, the percentiles from histogram buckets) cannot tell
the two apart.

Envoy's sink sends counters as they are (cumulative) but each histogram's *interval*
statistics: the buckets of the samples since its previous flush (measured with Envoy 1.40:
requests made once show in one message's buckets and are gone from the next). The daemon
adds them up per Envoy as they come, so a read has cumulative buckets, as the admin's
`histogram_buckets=cumulative` gives them; samples in a message that never arrived (the
stream broke) are missing from the sums.

xds-protos ships no Python for envoy.service.metrics.v3, nor for the Prometheus client
model it carries (io.prometheus.client.MetricFamily): the few messages read are declared
here, wire-compatible, with the protobuf runtime's descriptors (field numbers as in
envoy/service/metrics/v3/metrics_service.proto and prometheus/client_model metrics.proto;
what is not declared is skipped by the parser).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from devmesh.adapters.envoy_admin import STATS_FILTER, StatsTarget
from devmesh.envoy.names import BUCKET_MARK

log = logging.getLogger("devmesh.metrics_service")

METHOD = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
_PACKAGE = "devmesh.pushed"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# (message, ((field, number, type, label, message type name or ""), ...))
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, int, int, str], ...]], ...] = (
    (
        "Node",
        (("id", 1, _F.TYPE_STRING, _OPTIONAL, ""), ("cluster", 2, _F.TYPE_STRING, _OPTIONAL, "")),
    ),
    ("Identifier", (("node", 1, _F.TYPE_MESSAGE, _OPTIONAL, "Node"),)),
    ("Value", (("value", 1, _F.TYPE_DOUBLE, _OPTIONAL, ""),)),  # Counter, Gauge, Untyped
    (
        "Bucket",
        (
            ("cumulative_count", 1, _F.TYPE_UINT64, _OPTIONAL, ""),
            ("upper_bound", 2, _F.TYPE_DOUBLE, _OPTIONAL, ""),
        ),
    ),
    (
        "Histogram",
        (
            ("sample_count", 1, _F.TYPE_UINT64, _OPTIONAL, ""),
            ("sample_sum", 2, _F.TYPE_DOUBLE, _OPTIONAL, ""),
            ("bucket", 3, _F.TYPE_MESSAGE, _REPEATED, "Bucket"),
        ),
    ),
    (
        "Metric",
        (
            ("gauge", 2, _F.TYPE_MESSAGE, _OPTIONAL, "Value"),
            ("counter", 3, _F.TYPE_MESSAGE, _OPTIONAL, "Value"),
            ("untyped", 5, _F.TYPE_MESSAGE, _OPTIONAL, "Value"),
            ("histogram", 7, _F.TYPE_MESSAGE, _OPTIONAL, "Histogram"),
        ),
    ),
    (
        "MetricFamily",
        (
            ("name", 1, _F.TYPE_STRING, _OPTIONAL, ""),
            ("type", 3, _F.TYPE_INT32, _OPTIONAL, ""),  # an enum: HISTOGRAM = 4
            ("metric", 4, _F.TYPE_MESSAGE, _REPEATED, "Metric"),
        ),
    ),
    (
        "StreamMetricsMessage",
        (
            ("identifier", 1, _F.TYPE_MESSAGE, _OPTIONAL, "Identifier"),
            ("envoy_metrics", 2, _F.TYPE_MESSAGE, _REPEATED, "MetricFamily"),
        ),
    ),
    ("StreamMetricsResponse", ()),
)


def _classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="devmesh/pushed_metrics.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            f = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name, _ in _MESSAGES
    }


_CLASSES = _classes()
StreamMetricsMessage: Any = _CLASSES["StreamMetricsMessage"]
StreamMetricsResponse: Any = _CLASSES["StreamMetricsResponse"]


HISTOGRAM = 4  # io.prometheus.client.MetricType


def parse_pushed(message: Any, wanted: re.Pattern[str] | None = None) -> dict[str, float]:
    """One StreamMetricsMessage in `envoy_admin.parse_stats`'s terms: counters and gauges
    by name, histograms as buckets `NAME@BOUND` (cumulative over the bounds; over time, the
    message's interval only: see `add_buckets`). Only the names `wanted` matches."""
    out: dict[str, float] = {}
    for family in message.envoy_metrics:
        name = str(family.name)
        if wanted is not None and not wanted.match(name):
            continue
        for metric in family.metric:
            if metric.HasField("histogram"):
                for bucket in metric.histogram.bucket:
                    out[f"{name}{BUCKET_MARK}{float(bucket.upper_bound):g}"] = int(
                        bucket.cumulative_count
                    )
            else:
                for kind in ("counter", "gauge", "untyped"):
                    if metric.HasField(kind):
                        out[name] = int(getattr(metric, kind).value)
    return out


def add_buckets(sums: dict[str, float], message: Any, wanted: re.Pattern[str]) -> None:
    """Add a message's histogram buckets (one flush interval's samples) to `sums`."""
    for family in message.envoy_metrics:
        if family.type != HISTOGRAM or not wanted.match(family.name):
            continue
        for metric in family.metric:
            for bucket in metric.histogram.bucket:
                key = f"{family.name}{BUCKET_MARK}{float(bucket.upper_bound):g}"
                sums[key] = sums.get(key, 0) + int(bucket.cumulative_count)


class PushedStats:
    """The latest stats message of each Envoy (by node id), as it came; read like
    `envoy_admin.StatsReader` (`read_targets`). Streams end when the Envoy goes: its
    stats go with it."""

    def __init__(self, regex: str = STATS_FILTER) -> None:
        self._wanted = re.compile(regex)
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}  # node id -> its last StreamMetricsMessage
        self._buckets: dict[str, dict[str, float]] = {}  # node id -> histogram sums

    def register(self, server: Any) -> None:
        """The hook `XdsServer(services=...)` calls with its grpc.aio server."""
        handler = grpc.stream_unary_rpc_method_handler(
            self._stream,
            request_deserializer=StreamMetricsMessage.FromString,
            response_serializer=StreamMetricsResponse.SerializeToString,
        )
        service, _, method = METHOD.strip("/").partition("/")
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )

    async def _stream(self, requests: AsyncIterator[Any], context: Any) -> Any:
        node, last = "", None
        try:
            async for message in requests:
                if not node:  # the node comes with a stream's first message only
                    node = str(message.identifier.node.id)
                    if not node:
                        continue
                with self._lock:
                    self._latest[node] = last = message
                    add_buckets(self._buckets.setdefault(node, {}), message, self._wanted)
        except Exception:  # the stream broke: Envoy opens a new one at its next flush
            log.debug("a stats stream ended", exc_info=True)
        finally:
            with self._lock:  # the Envoy went (unless a newer stream of it took over)
                if node and last is not None and self._latest.get(node) is last:
                    del self._latest[node]
                    self._buckets.pop(node, None)
        return StreamMetricsResponse()

    def nodes(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._latest)

    def read_targets(self, targets: Mapping[str, StatsTarget]) -> dict[str, dict[str, float] | str]:
        """name -> its Envoy's stats, or why there are none (as StatsReader.read_targets)."""
        with self._lock:
            latest = {
                name: (self._latest.get(t.node_id), dict(self._buckets.get(t.node_id, {})))
                for name, t in targets.items()
            }
        out: dict[str, dict[str, float] | str] = {}
        for name, (message, buckets) in latest.items():
            if message is None:
                out[name] = "unreadable: no stats pushed yet"
                continue
            out[name] = {**parse_pushed(message, self._wanted), **buckets}
        return out

    def close(self) -> None:
        with self._lock:
            self._latest.clear()
            self._buckets.clear()
