"""Reading a sidecar's counters through its admin API's UNIX socket (never a port: admin
has /quitquitquit). Filtered queries only: a full /stats dump is 300-500 KB per sidecar."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import quote

from devmesh.envoy.names import BUCKET_MARK
from devmesh.unixhttp import STALE, UnixHTTPConnection

# Requests, errors and retries per version cluster, per route, and into the pod; the latency
# histograms (`upstream_rq_time`) of version clusters and routes, read as two quantiles.
STATS_FILTER = (
    r"^(cluster\.[^.]+\|[^.]+\.(upstream_rq_total|upstream_rq_completed|upstream_rq_[245]xx"
    r"|upstream_rq_retry|upstream_rq_retry_overflow"
    r"|upstream_cx_active|upstream_rq_pending_overflow|outlier_detection\.ejections_active"
    r"|upstream_rq_time)"
    r"|vhost\.[^.]+\.route\..+\.upstream_rq_(total|completed|[245]xx|retry|time)"
    r"|http\.(in|ingress)\.downstream_rq_(total|[245]xx)"
    r"|http\.(in|ingress)\.downstream_cx_active"
    # RBAC denials into the pod, per caller (envoy.names.parse_denial)
    r"|http\.in\.rbac\.caller\.policy\.[^.]+\.denied|in\.caller\.[^.]+\.rbac\.denied)$"
)
# Histogram quantile -> stat name suffix (`NAME.p50`, `NAME.p99`: milliseconds, Envoy's
# "interval" values over its last stats flush, 5 s by default; absent when it saw no sample).
# Envoy lists `supported_quantiles` in percent: [0, 25, 50, ..., 99, 99.5, 99.9, 100].
QUANTILES = {50.0: "p50", 99.0: "p99"}
# Sidecars asked at once: a mesh of 20 services has 21 Envoys (the gateway's too).
PARALLEL_READS = 24


class StatsTarget(NamedTuple):
    """One Envoy whose stats are read: its admin socket (transport unix) and its node id
    (transport tcp: its stats are pushed, adapters/metrics_service.py)."""

    admin_socket: Path
    node_id: str


class StatsSource(Protocol):
    def read_targets(self, targets: Mapping[str, StatsTarget]) -> dict[str, dict[str, float] | str]:
        """name -> stats, or the reason they could not be read."""
        ...

    def close(self) -> None: ...


class StatsReader:
    """Reads many sidecars' stats at once, each on a connection kept open from one read to
    the next, from a pool of `parallel` threads kept for the reader's life.

    One after another, a read of 21 sidecars took 155-315 ms on this (loaded) machine, almost
    all of it waiting for each Envoy to be scheduled and answer (parsing took 3-5 ms); asked
    all at once, 26-91 ms. A /metrics scrape is such a read. One read at a time; a read
    gives up on the sidecars that have not answered after `budget` seconds (a paused
    container must not hold the API), and each request times out after `timeout`."""

    def __init__(
        self,
        regex: str = STATS_FILTER,
        timeout: float = 2,
        budget: float = 5,
        parallel: int = PARALLEL_READS,
    ) -> None:
        self._path = _stats_path(regex)
        self._timeout = timeout
        self._budget = budget
        self._parallel = max(1, parallel)
        self._pool: ThreadPoolExecutor | None = None
        self._conns: dict[Path, UnixHTTPConnection] = {}
        self._lock = threading.Lock()  # one read at a time
        self._conns_lock = threading.Lock()  # the kept connections, from the pool's threads

    def read_many(self, sockets: dict[str, Path]) -> dict[str, dict[str, float] | str]:
        """name -> stats, or the reason they could not be read."""
        deadline = time.monotonic() + self._budget  # a caller waiting its turn counts too
        if not self._lock.acquire(timeout=self._budget):
            return {name: "unreadable: another read took the time" for name in sockets}
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._parallel, thread_name_prefix="stats")
            pending = {
                name: self._pool.submit(self._read_one, path) for name, path in sockets.items()
            }
            futures.wait(pending.values(), timeout=max(0.0, deadline - time.monotonic()))
            out: dict[str, dict[str, float] | str] = {}
            for name, future in pending.items():
                if future.done():
                    out[name] = future.result()
                else:
                    future.cancel()  # not started: dropped; started: ends at its timeout
                    out[name] = "unreadable: it did not answer within the read's time"
            with self._conns_lock:
                for gone in self._conns.keys() - set(sockets.values()):
                    self._conns.pop(gone).close()
            return out
        finally:
            self._lock.release()

    def read_targets(self, targets: Mapping[str, StatsTarget]) -> dict[str, dict[str, float] | str]:
        return self.read_many({name: t.admin_socket for name, t in targets.items()})

    def _read_one(self, path: Path) -> dict[str, float] | str:
        try:
            return parse_stats(self._read(path))
        except (OSError, http.client.HTTPException) as exc:
            return f"unreadable: {exc}"
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            return f"unreadable: not Envoy's stats JSON ({exc})"

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            with self._conns_lock:
                for conn in self._conns.values():
                    conn.close()
                self._conns.clear()

    def _take(self, path: Path) -> UnixHTTPConnection | None:
        with self._conns_lock:
            return self._conns.pop(path, None)

    def _keep(self, path: Path, conn: UnixHTTPConnection) -> None:
        with self._conns_lock:
            old = self._conns.get(path)
            self._conns[path] = conn
        if old is not None and old is not conn:
            old.close()  # a read that outlived its budget came back after a newer one

    def _read(self, path: Path) -> bytes:
        conn = self._take(path)
        if conn is not None:
            try:
                body = _get(conn, self._path)
                self._keep(path, conn)
                return body
            except STALE:
                conn.close()  # the sidecar restarted, or Envoy closed it: once more, anew
            except BaseException:
                conn.close()  # a timeout or an answer: asking again would not help
                raise
        conn = UnixHTTPConnection(path, self._timeout)
        try:
            body = _get(conn, self._path)
        except BaseException:
            conn.close()
            raise
        self._keep(path, conn)
        return body


def _stats_path(regex: str) -> str:
    # Cumulative buckets, not Envoy's own percentiles: those cannot be merged across
    # Envoys nor taken over a window (api/histogram.py).
    return f"/stats?format=json&usedonly&histogram_buckets=cumulative&filter={quote(regex)}"


def _get(conn: UnixHTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise OSError(f"admin answered {resp.status}")
    return body


def parse_stats(body: bytes) -> dict[str, float]:
    """Envoy's `/stats?format=json` as name -> number: counters and gauges as they are,
    histograms as `NAME.p50` / `NAME.p99`. Text stats (a filter may match one) are left out."""
    out: dict[str, float] = {}
    for item in json.loads(body).get("stats", []):
        if "value" in item:
            value = item["value"]
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[str(item["name"])] = int(value)
        elif "histograms" in item and isinstance(item["histograms"], list):
            # histogram_buckets=cumulative: each histogram's buckets, `NAME@BOUND` -> count
            for h in item["histograms"]:
                for b in h.get("buckets", ()):
                    out[f"{h['name']}{BUCKET_MARK}{float(b['upper_bound']):g}"] = int(
                        b["cumulative"]
                    )
        elif "histograms" in item:
            histograms = item["histograms"]
            columns = {
                i: QUANTILES[float(q)]
                for i, q in enumerate(histograms.get("supported_quantiles", []))
                if float(q) in QUANTILES
            }
            for h in histograms.get("computed_quantiles", []):
                for i, suffix in columns.items():
                    value = h["values"][i].get("interval")
                    if value is not None:
                        out[f"{h['name']}.{suffix}"] = round(float(value), 3)
    return out
