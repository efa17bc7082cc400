"""Live numbers from the daemon's /v1/stats: cumulative Envoy counters turned into rates.

Pure: no I/O, no Textual. The poller thread owns one `StatsTracker` and feeds it each read;
the result is an immutable `Rates` value that the UI only displays.

Where the numbers come from (every sidecar's and the gateway's admin API, one read a second):

- per version (`cluster.SERVICE|VERSION.*`, summed over every caller): upstream requests,
  5xx, active connections, and (when the daemon's stats filter includes them) the interval
  p50/p99 of `upstream_rq_time`. Upstream counts include retries and mirrored requests.
- per route (`vhost.SERVICE.route.SERVICE.ROUTE.*`, summed over callers; ingress routes as
  `vhost.ingress.route.ingress.NAME.*` in the gateway): requests, 5xx, latency.
- per pod (`http.in.downstream_*` in the pod's own sidecar): requests into the pod.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

HISTORY = 30  # samples kept per row: about half a minute at one read a second
SPLIT_WINDOW = 5  # reads the observed split is summed over: steady, yet it follows a shift
INGRESS = "ingress"  # the gateway's virtual host and the service name used for its routes
ROUTE_STATS = (
    "upstream_rq_total",
    "upstream_rq_completed",
    "upstream_rq_2xx",
    "upstream_rq_4xx",
    "upstream_rq_5xx",
    "upstream_rq_retry",
    "upstream_rq_time.p50",
    "upstream_rq_time.p99",
)


@dataclass(frozen=True, slots=True)
class Live:
    """One row's live numbers; None where there is nothing to show (yet)."""

    rps: float | None = None
    success: float | None = None  # share of responses that were not 5xx, 0..1
    p50: float | None = None  # milliseconds, Envoy's last stats interval
    p99: float | None = None
    cx: int | None = None  # active connections (a gauge)


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
    pods: Mapping[str, Live] = field(default_factory=dict)
    splits: Mapping[tuple[str, str], Split] = field(default_factory=dict)
    history: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)  # sidecar -> why


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
    """Counters summed over sidecars for one row during one interval."""

    total: float = 0.0
    completed: float = 0.0
    errors: float = 0.0
    cx: int = 0
    has_cx: bool = False
    p50: list[tuple[float, float]] = field(default_factory=list)  # (value, requests)
    p99: list[float] = field(default_factory=list)

    def merge(self, other: _Acc) -> None:
        """Add one sidecar's numbers; its p50 counts as much as its requests did."""
        self.total += other.total
        self.completed += other.completed
        self.errors += other.errors
        if other.has_cx:
            self.cx += other.cx
            self.has_cx = True
        self.p50.extend((value, other.total) for value, _ in other.p50)
        self.p99.extend(other.p99)

    def live(self, interval: float) -> Live:
        rps = self.total / interval if interval > 0 else None
        answered = self.completed or self.total
        success = None if answered <= 0 else max(0.0, 1.0 - self.errors / answered)
        weight = sum(w for _, w in self.p50)
        if self.p50 and weight > 0:
            p50: float | None = sum(v * w for v, w in self.p50) / weight
        elif self.p50:
            p50 = sum(v for v, _ in self.p50) / len(self.p50)
        else:
            p50 = None
        # Percentiles of several callers cannot be merged exactly: p50 is their mean weighted
        # by requests, p99 the largest (an upper bound, which is what one looks for).
        return Live(
            rps=rps,
            success=success,
            p50=p50,
            p99=max(self.p99) if self.p99 else None,
            cx=self.cx if self.has_cx else None,
        )


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class StatsTracker:
    """Keeps the previous read of every sidecar and a short history per row."""

    def __init__(self, history: int = HISTORY) -> None:
        self._previous: dict[str, dict[str, float]] = {}
        self._time: float | None = None
        self._history: dict[str, deque[float]] = {}
        self._size = history
        # (seconds, version rates, route rates) of the last reads, for the observed split
        self._window: deque[
            tuple[float, dict[tuple[str, str], float], dict[tuple[str, str], float]]
        ] = deque(maxlen=SPLIT_WINDOW)

    def update(self, stats: Mapping[str, Any], routes: Mapping[str, Any] | None) -> Rates:
        """The rates between the previous read and `stats` (a /v1/stats document); `routes`
        (a /v1/routes document) tells which traffic is mirrored or single-version."""
        now = _num(stats.get("time")) or 0.0
        interval = now - self._time if self._time is not None else 0.0
        if interval <= 0:
            interval = 0.0
        sidecars: Mapping[str, Any] = stats.get("sidecars") or {}
        current: dict[str, dict[str, float]] = {}
        unreadable: dict[str, str] = {}
        for name, values in sidecars.items():
            if isinstance(values, Mapping):
                current[name] = {k: n for k, v in values.items() if (n := _num(v)) is not None}
            else:
                unreadable[name] = str(values)
        versions: dict[tuple[str, str], _Acc] = {}
        routes_acc: dict[tuple[str, str], _Acc] = {}
        pods: dict[str, _Acc] = {}
        for sidecar, values in current.items():
            before = self._previous.get(sidecar)
            mine: tuple[dict[tuple[str, str], _Acc], dict[tuple[str, str], _Acc]] = ({}, {})
            for name, value in values.items():
                self._account(sidecar, name, value, before, mine[0], mine[1], pods)
            for key, acc in mine[0].items():
                versions.setdefault(key, _Acc()).merge(acc)
            for key, acc in mine[1].items():
                routes_acc.setdefault(key, _Acc()).merge(acc)
        self._previous = current
        self._time = now
        if interval == 0.0:
            return Rates(0.0, unreadable=unreadable, history=self._snapshot())
        services: dict[str, _Acc] = {}
        for (service, _), acc in versions.items():
            whole = services.setdefault(service, _Acc())
            weights = list(acc.p50)  # already weighted by each sidecar's requests
            acc_copy = _Acc(acc.total, acc.completed, acc.errors, acc.cx, acc.has_cx)
            whole.merge(acc_copy)
            whole.p50.extend(weights)
            whole.p99.extend(acc.p99)
        out_versions = {k: a.live(interval) for k, a in versions.items()}
        out_routes = {k: a.live(interval) for k, a in routes_acc.items()}
        out_pods = {k: a.live(interval) for k, a in pods.items()}
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

    @staticmethod
    def _account(
        sidecar: str,
        name: str,
        value: float,
        before: Mapping[str, float] | None,
        versions: dict[tuple[str, str], _Acc],
        routes: dict[tuple[str, str], _Acc],
        pods: dict[str, _Acc],
    ) -> None:
        def delta() -> float:
            if before is None:
                return 0.0  # a sidecar seen for the first time: no rate yet
            old = before.get(name, 0.0)
            return value - old if value >= old else value  # a restarted Envoy counts anew

        if name.startswith("cluster."):
            cluster, _, stat = name[len("cluster.") :].partition(".")
            service, bar, version = cluster.partition("|")
            if not bar or service.startswith("_"):
                return  # the sidecar's own `_app` or the gateway's `_hop|...` clusters
            acc = versions.setdefault((service, version), _Acc())
            _add(acc, stat, value, delta)
        elif name.startswith("vhost."):
            parsed = _route_stat(name)
            if parsed is None:
                return
            service, route, stat = parsed
            _add(routes.setdefault((service, route), _Acc()), stat, value, delta)
        elif name.startswith(("http.in.", "http.ingress.")):
            stat = name.split(".", 2)[2]
            acc = pods.setdefault(sidecar, _Acc())
            if stat == "downstream_rq_total":
                acc.total += delta()
            elif stat == "downstream_rq_5xx":
                acc.errors += delta()
            elif stat == "downstream_cx_active":
                acc.cx += int(value)
                acc.has_cx = True


def _add(acc: _Acc, stat: str, value: float, delta: Callable[[], float]) -> None:
    if stat == "upstream_rq_total":
        acc.total += delta()
    elif stat == "upstream_rq_completed":
        acc.completed += delta()
    elif stat == "upstream_rq_5xx":
        acc.errors += delta()
    elif stat == "upstream_cx_active":
        acc.cx += int(value)
        acc.has_cx = True
    elif stat == "upstream_rq_time.p50":
        acc.p50.append((value, 0.0))
    elif stat == "upstream_rq_time.p99":
        acc.p99.append(value)


def _route_stat(name: str) -> tuple[str, str, str] | None:
    """`vhost.catalog.route.catalog.main.upstream_rq_total` -> (catalog, main, stat)."""
    vhost, sep, rest = name[len("vhost.") :].partition(".route.")
    if not sep:
        return None
    for stat in ROUTE_STATS:
        if rest.endswith("." + stat):
            prefix = rest[: -len(stat) - 1]
            owner, dot, route = prefix.partition(".")  # stat_prefix is SERVICE.ROUTE
            if not dot or owner != vhost:
                return None
            return (INGRESS if vhost == INGRESS else vhost), route, stat
    return None


def observed_splits(
    routes: Mapping[str, Any],
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
    services = [s for s in routes.get("services", []) if isinstance(s, Mapping)]
    for service in services:
        for route in service.get("routes", []):
            mirror = route.get("mirror")
            rate = (route_rates.get((service["name"], route["name"])) or Live()).rps or 0.0
            if mirror and rate:
                key = (str(mirror["service"]), str(mirror["version"]))
                if key in remaining:
                    remaining[key] -= rate * float(mirror["percent"]) / 100
    for service in services:
        name = str(service["name"])
        known = list(service.get("versions", {}))
        weighted: list[str] = []
        for route in service.get("routes", []):
            rate = (route_rates.get((name, route["name"])) or Live()).rps or 0.0
            targets = [v for v, w in route.get("to", {}).items() if w > 0]
            if len(targets) == 1:
                if rate:
                    out[(name, route["name"])] = Split({targets[0]: 100.0}, exact=True)
                key = (name, targets[0])
                if key in remaining:
                    remaining[key] -= rate
            elif rate:
                weighted.append(route["name"])
        left = {v: max(0.0, remaining.get((name, v), 0.0)) for v in known}
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
