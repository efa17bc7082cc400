"""Live numbers from the daemon's /v1/stats: cumulative counters turned into rates.

Pure: no I/O, no Textual. The poller thread owns one `StatsTracker` and feeds it each read;
the result is an immutable `Rates` value that the UI only displays.

The daemon gives each sidecar's (and the gateway's) counters in mesh terms (`api.Stats`); the
rows here are sums over those Envoys, one read a second:

- per version (`UpstreamTraffic`, summed over every caller): requests, 5xx, connections and
  the interval p50/p99. Upstream counts include retries and mirrored requests.
- per route (`RouteTraffic`, summed over callers; the gateway's own routes under service
  `api.INGRESS`): requests, 5xx, latency.
- per pod (`SidecarStats.inbound` of the pod's own sidecar): requests into the pod; for the
  gateway, into its listener (or, without those counters, over its routes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from devmesh.api import types as api
from devmesh.api.guards import denials, refusals
from devmesh.api.histogram import Buckets, merge, quantile, total, window

HISTORY = 30  # samples kept per row: about half a minute at one read a second
SPLIT_WINDOW = 5  # reads the observed split is summed over: steady, yet it follows a shift
# Reads latency percentiles are taken over: Envoy adds samples to its histograms at its
# stats flush, every 5 s, so a window must hold at least one flush.
LATENCY_WINDOW = 10
INGRESS = api.INGRESS  # the service name of the gateway's own routes


@dataclass(frozen=True, slots=True)
class Live:
    """One row's live numbers; None where there is nothing to show (yet).

    p50 and p99 are over the last `LATENCY_WINDOW` reads (about 10 s: Envoy adds samples
    to its histograms at each 5 s stats flush), from every Envoy's latency buckets in that
    window added up (every caller of a version or route has its own histogram; bucket
    counts add up, percentiles do not), interpolated within the bucket as Prometheus'
    histogram_quantile does (`devmesh.api.histogram`). `merged`: how many Envoys' buckets.
    """

    rps: float | None = None
    success: float | None = None  # share of responses that were not 5xx, 0..1
    p50: float | None = None  # milliseconds; see above
    p99: float | None = None
    cx: int | None = None  # active connections (a gauge)
    merged: int = 0  # Envoys whose latency buckets p50/p99 come from


@dataclass(frozen=True, slots=True)
class Split:
    """The share of a route's requests each version received, in percent."""

    shares: Mapping[str, float]
    exact: bool  # False: the service's traffic over all its routes (not separable)


@dataclass(frozen=True, slots=True)
class Rates:
    interval: float  # seconds between the two reads these rates come from; 0: first read
    services: Mapping[str, Live] = field(default_factory=dict)
    versions: Mapping[tuple[str, str], Live] = field(default_factory=dict)
    routes: Mapping[tuple[str, str], Live] = field(default_factory=dict)
    pods: Mapping[str, Live] = field(default_factory=dict)  # by pod, and the gateway's name
    splits: Mapping[tuple[str, str], Split] = field(default_factory=dict)
    history: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)  # sidecar -> why
    # What the mesh's guards turned away since each Envoy started (`guards`)
    denied: Mapping[str, str] = field(default_factory=dict)  # pod -> RBAC denials by caller
    overflow: Mapping[str, str] = field(default_factory=dict)  # service -> circuit breakers


def guards(stats: api.Stats) -> tuple[dict[str, str], dict[str, str]]:
    """Counts since each Envoy started, in words (as `ps` words them, `api.guards`): per
    pod, the requests its inbound authorization denied, by caller (`front 3, unknown peer
    1`); per service, the requests its versions' circuit breakers turned away at their
    callers (`v1 12 (from front 9, ingress 3)`)."""
    parts: dict[str, list[str]] = {}
    for (service, version), text in refusals(stats).items():  # sorted: versions in order
        parts.setdefault(service, []).append(f"{version} {text}")
    return denials(stats), {service: "; ".join(p) for service, p in parts.items()}


# History keys: one namespace per kind of row.
def service_key(service: str) -> str:
    return f"svc:{service}"


def version_key(service: str, version: str) -> str:
    return f"ver:{service}|{version}"


def route_key(service: str, route: str) -> str:
    return f"route:{service}/{route}"


def pod_key(pod: str) -> str:
    return f"pod:{pod}"


def share_key(service: str, route: str, version: str) -> str:
    return f"share:{service}/{route}/{version}"


@dataclass(slots=True)
class _Acc:
    """Counters summed over Envoys for one row during one interval."""

    total: float = 0.0
    completed: float = 0.0
    errors: float = 0.0
    cx: int = 0
    has_cx: bool = False
    latency: list[Buckets] = field(default_factory=list)  # one window per Envoy

    def add(
        self,
        now: api.Traffic,
        before: api.Traffic | None,
        cx: bool = True,
        latency: Buckets = (),
    ) -> None:
        """One Envoy's counters; `before` is its previous read (None: no rate yet)."""
        if before is not None:
            self.total += _delta(now.requests, before.requests)
            self.completed += _delta(now.completed, before.completed)
            self.errors += _delta(now.rq_5xx, before.rq_5xx)
        if cx:
            self.cx += now.connections
            self.has_cx = True
        if total(latency) > 0:
            self.latency.append(latency)

    def merge(self, other: _Acc) -> None:
        self.total += other.total
        self.completed += other.completed
        self.errors += other.errors
        if other.has_cx:
            self.cx += other.cx
            self.has_cx = True
        self.latency.extend(other.latency)

    def live(self, interval: float, percentiles: bool = True) -> Live:
        rps = self.total / interval if interval > 0 else None
        # No request completed in this interval (all still in flight): compare with those started.
        answered = self.completed or self.total
        success = None if answered <= 0 else max(0.0, 1.0 - self.errors / answered)
        # Every Envoy's window of buckets added up, then interpolated (see `Live`).
        merged = merge(self.latency) if percentiles else ()
        p50, p99 = quantile(0.5, merged), quantile(0.99, merged)
        n = len(self.latency) if merged else 0
        return Live(rps, success, p50, p99, self.cx if self.has_cx else None, n)


def _delta(now: int, before: int) -> float:
    return float(now - before if now >= before else now)  # a restarted Envoy counts anew


_Key = tuple[str, str, str]  # ("in", "", ""), ("up", service, version), ("route", service, route)


def _traffic_of(sidecar: api.SidecarStats) -> dict[_Key, api.Traffic]:
    out: dict[_Key, api.Traffic] = {}
    if sidecar.inbound is not None:
        out[("in", "", "")] = sidecar.inbound
    for up in sidecar.upstreams:
        out[("up", up.service, up.version)] = up.traffic
    for route in sidecar.routes:
        out[("route", route.service, route.route)] = route.traffic
    return out


class StatsTracker:
    """Keeps the previous read of every sidecar and a short history per row."""

    def __init__(self, history: int = HISTORY) -> None:
        self._previous: dict[str, dict[_Key, api.Traffic]] = {}
        self._time: float | None = None
        self._history: dict[str, deque[float]] = {}
        self._size = history
        # Each Envoy's latency buckets per row, as of its last LATENCY_WINDOW reads
        self._latency: dict[str, deque[dict[_Key, Buckets]]] = {}
        # (seconds, version rates, route rates) of the last reads, for the observed split
        self._window: deque[
            tuple[float, dict[tuple[str, str], float], dict[tuple[str, str], float]]
        ] = deque(maxlen=SPLIT_WINDOW)

    def update(self, stats: api.Stats, routes: api.Routes | None) -> Rates:
        """The rates between the previous read and `stats`; `routes` tells which traffic is
        mirrored or single-version."""
        now = stats.time
        interval = now - self._time if self._time is not None else 0.0
        if interval <= 0:
            interval = 0.0
        current: dict[str, dict[_Key, api.Traffic]] = {}
        unreadable: dict[str, str] = {}
        versions: dict[tuple[str, str], _Acc] = {}
        routes_acc: dict[tuple[str, str], _Acc] = {}
        pods: dict[str, _Acc] = {}
        for sidecar in stats.sidecars:
            if sidecar.error is not None:
                unreadable[sidecar.source] = sidecar.error
                continue
            mine = current[sidecar.source] = _traffic_of(sidecar)
            known = self._previous.get(sidecar.source)
            past = self._latency.setdefault(sidecar.source, deque(maxlen=LATENCY_WINDOW))
            oldest = past[0] if past else {}
            past.append({k: t.latency for k, t in mine.items() if t.latency})
            for key, traffic in mine.items():
                lat = window(traffic.latency, oldest.get(key)) if known is not None else ()
                # A sidecar seen for the first time has no rate yet; a row new in a known
                # sidecar counts from zero.
                before = None if known is None else known.get(key, api.Traffic())
                kind, a, b = key
                if kind == "in":
                    pods.setdefault(sidecar.source, _Acc()).add(traffic, before)
                elif kind == "up":
                    versions.setdefault((a, b), _Acc()).add(traffic, before, latency=lat)
                else:
                    routes_acc.setdefault((a, b), _Acc()).add(traffic, before, latency=lat)
                    if a == INGRESS and sidecar.service == INGRESS and sidecar.inbound is None:
                        # A gateway without inbound counters: what came in over its routes.
                        pods.setdefault(sidecar.source, _Acc()).add(traffic, before, cx=False)
        self._previous = current
        for gone in self._latency.keys() - current.keys():
            del self._latency[gone]
        self._time = now
        denied, overflow = guards(stats)
        if interval == 0.0:
            return Rates(
                0.0,
                unreadable=unreadable,
                history=self._snapshot(),
                denied=denied,
                overflow=overflow,
            )
        services: dict[str, _Acc] = {}
        for (service, _), acc in versions.items():
            services.setdefault(service, _Acc()).merge(acc)
        out_versions = {k: a.live(interval) for k, a in versions.items()}
        out_routes = {k: a.live(interval) for k, a in routes_acc.items()}
        # Into a pod no latency is read; the gateway's routes' percentiles are on their rows.
        out_pods = {k: a.live(interval, percentiles=False) for k, a in pods.items()}
        out_services = {k: a.live(interval) for k, a in services.items()}
        self._window.append(
            (
                interval,
                {k: a.total for k, a in versions.items()},
                {k: a.total for k, a in routes_acc.items()},
            )
        )
        splits = observed_splits(routes, *self._window_rates()) if routes else {}
        for (service, route), split in splits.items():
            for version, share in split.shares.items():
                self._push(share_key(service, route, version), share)
        for (service, version), live in out_versions.items():
            self._push(version_key(service, version), live.rps)
        for (service, route), live in out_routes.items():
            self._push(route_key(service, route), live.rps)
        for pod, live in out_pods.items():
            self._push(pod_key(pod), live.rps)
        for service, live in out_services.items():
            self._push(service_key(service), live.rps)
        return Rates(
            interval=interval,
            services=out_services,
            versions=out_versions,
            routes=out_routes,
            pods=out_pods,
            splits=splits,
            history=self._snapshot(),
            unreadable=unreadable,
            denied=denied,
            overflow=overflow,
        )

    def _window_rates(self) -> tuple[dict[tuple[str, str], Live], dict[tuple[str, str], Live]]:
        seconds = sum(w[0] for w in self._window) or 1.0
        versions: dict[tuple[str, str], float] = {}
        routes: dict[tuple[str, str], float] = {}
        for _, v, r in self._window:
            for key, n in v.items():
                versions[key] = versions.get(key, 0.0) + n
            for key, n in r.items():
                routes[key] = routes.get(key, 0.0) + n
        return (
            {k: Live(rps=n / seconds) for k, n in versions.items()},
            {k: Live(rps=n / seconds) for k, n in routes.items()},
        )

    def _push(self, key: str, value: float | None) -> None:
        if key not in self._history:
            self._history[key] = deque(maxlen=self._size)
        self._history[key].append(value or 0.0)

    def _snapshot(self) -> dict[str, tuple[float, ...]]:
        return {k: tuple(v) for k, v in self._history.items()}


def observed_splits(
    routes: api.Routes,
    versions: Mapping[tuple[str, str], Live],
    route_rates: Mapping[tuple[str, str], Live],
) -> dict[tuple[str, str], Split]:
    """Which share of each route's requests each version received.

    Envoy counts per route and per version cluster, never per route and version. So: from each
    version's upstream requests take away the mirrored copies (route rate x mirror percent) and
    the requests of routes that go to one version only; if one weighted route is left with
    traffic, the rest is its split, exactly. With several weighted routes busy, each shows the
    service's split over all of them (`exact=False`).
    """
    out: dict[tuple[str, str], Split] = {}
    remaining: dict[tuple[str, str], float] = {
        key: live.rps or 0.0 for key, live in versions.items()
    }
    for service in routes.services:
        for route in service.routes:
            mirror = route.mirror
            rate = (route_rates.get((service.name, route.name)) or Live()).rps or 0.0
            if mirror is not None and mirror.version is not None and rate:
                key = (mirror.service, mirror.version)
                if key in remaining:
                    remaining[key] -= rate * mirror.percent / 100
    for service in routes.services:
        name = service.name
        weighted: list[str] = []
        for route in service.routes:
            rate = (route_rates.get((name, route.name)) or Live()).rps or 0.0
            targets = [v for v, w in route.to.items() if w > 0]
            if len(targets) == 1:
                if rate:
                    out[(name, route.name)] = Split({targets[0]: 100.0}, exact=True)
                key = (name, targets[0])
                if key in remaining:
                    remaining[key] -= rate
            elif rate:
                weighted.append(route.name)
        left = {v: max(0.0, remaining.get((name, v), 0.0)) for v in service.versions}
        total = sum(left.values())
        if not weighted or total <= 0:
            continue
        shares = {v: 100.0 * n / total for v, n in left.items()}
        for route_name in weighted:
            out[(name, route_name)] = Split(shares, exact=len(weighted) == 1)
    return out


# -- formatting ---------------------------------------------------------------------------------

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float], width: int = 10, top: float | None = None) -> str:
    """The last `width` values, scaled to `top` (default: their own maximum); zero is the
    lowest bar."""
    window = list(values)[-width:]
    if not window:
        return ""
    top = max(window) if top is None else top
    if top <= 0:
        return SPARK[0] * len(window)
    return "".join(SPARK[0] if v <= 0 else SPARK[1 + min(6, int(v / top * 6.999))] for v in window)


def fmt_rps(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value < 10:
        return f"{value:.1f}"
    if value < 1000:
        return f"{value:.0f}"
    return f"{value / 1000:.1f}k"


def fmt_success(value: float | None) -> str:
    if value is None:
        return "-"
    pct = value * 100
    return "100%" if pct >= 99.95 else f"{pct:.1f}%"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f}ms"
    if value < 1000:
        return f"{value:.0f}ms"
    return f"{value / 1000:.1f}".removesuffix(".0") + "s"


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"
