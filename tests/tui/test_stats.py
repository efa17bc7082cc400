"""Counters to rates, the observed split, and the formats of the numbers."""

from __future__ import annotations

from typing import Any

import pytest

from devmesh.api import types as api
from devmesh.tui.stats import (
    Live,
    StatsTracker,
    fmt_ms,
    fmt_rps,
    fmt_success,
    observed_splits,
    route_key,
    share_key,
    sparkline,
)

T = api.Traffic


def read(t: float, *sidecars: api.SidecarStats) -> api.Stats:
    return api.Stats(t, sidecars)


def gateway(
    ups: dict[tuple[str, str], T] | None = None, routes: dict[tuple[str, str], T] | None = None
) -> api.SidecarStats:
    return sidecar("gw", api.INGRESS, "", ups=ups, routes=routes)


def sidecar(
    source: str,
    service: str = "frontend",
    version: str = "default",
    inbound: T | None = None,
    ups: dict[tuple[str, str], T] | None = None,
    routes: dict[tuple[str, str], T] | None = None,
) -> api.SidecarStats:
    return api.SidecarStats(
        source,
        service,
        version,
        inbound,
        tuple(api.UpstreamTraffic(s, v, t) for (s, v), t in (ups or {}).items()),
        tuple(api.RouteTraffic(s, r, t) for (s, r), t in (routes or {}).items()),
    )


def catalog_routes(*routes: api.RouteInfo, versions: dict[str, int] | None = None) -> api.Routes:
    return api.Routes("m", (api.ServiceRoutes("catalog", "http", 8000, versions or {}, routes),))


ROUTES = catalog_routes(
    api.RouteInfo("canary", "headers x-canary=1", {"v2": 100}),
    api.RouteInfo(
        "main",
        "path_prefix /",
        {"v1": 80, "v2": 20},
        mirror=api.MirrorSpec("catalog", "v2", 10.0),
    ),
    versions={"v1": 1, "v2": 2},
)
V1 = ("catalog", "v1")


def lat(*buckets: tuple[float, int]) -> tuple[api.Bucket, ...]:
    """Cumulative latency buckets: (upper bound in ms, samples at most that)."""
    return tuple(api.Bucket(le, n) for le, n in buckets)


def test_first_read_gives_no_rates_and_the_second_gives_differences_per_second() -> None:
    tracker = StatsTracker()
    first = tracker.update(read(100.0, gateway({V1: T(requests=10)})), None)
    assert first.interval == 0 and first.versions == {}
    second = tracker.update(
        read(
            102.0,
            gateway({V1: T(requests=30, rq_5xx=2, connections=3, latency=lat((5, 10), (50, 20)))}),
        ),
        None,
    )
    assert second.interval == 2.0
    # 20 samples: the 10th (p50) is the last of the bucket up to 5 ms; the 19.8th (p99) is
    # 98 % of the way through the bucket from 5 to 50 ms.
    live = second.versions[V1]
    assert (live.rps, live.success, live.p50, live.cx, live.merged) == (10.0, 0.9, 5.0, 3, 1)
    assert live.p99 == pytest.approx(49.1)
    assert second.services["catalog"].rps == 10.0


def test_rates_sum_over_callers_and_percentiles_come_from_their_buckets_added_up() -> None:
    """Caller a: 30 fast requests (<= 10 ms); caller b: 10 slow ones (50-100 ms). Of all 40
    the median is fast and the p99 slow: neither caller's own percentile, nor their mean."""
    tracker = StatsTracker()
    tracker.update(read(0.0, sidecar("a", ups={V1: T()}), sidecar("b", ups={V1: T()})), None)
    rates = tracker.update(
        read(
            1.0,
            sidecar("a", ups={V1: T(requests=30, latency=lat((10, 30), (50, 30), (100, 30)))}),
            sidecar("b", ups={V1: T(requests=10, latency=lat((10, 0), (50, 0), (100, 10)))}),
        ),
        None,
    )
    live = rates.versions[V1]
    assert live.rps == 40.0
    assert live.p50 == pytest.approx(20 / 30 * 10)  # rank 20 of 30 in the bucket 0-10 ms
    assert live.p99 == pytest.approx(50 + 50 * (39.6 - 30) / 10)  # rank 39.6 in 50-100 ms
    assert live.merged == 2


def test_percentiles_are_over_a_window_of_reads_not_since_the_envoy_started() -> None:
    """1000 old slow requests, then 10 new fast ones: the window sees only the new ones."""
    tracker = StatsTracker()
    old = lat((10, 0), (1000, 1000))
    tracker.update(read(0.0, sidecar("a", ups={V1: T(requests=1000, latency=old)})), None)
    new = lat((10, 10), (1000, 1010))
    rates = tracker.update(read(1.0, sidecar("a", ups={V1: T(requests=1010, latency=new)})), None)
    assert rates.versions[V1].p99 == pytest.approx(9.9)


def test_a_restarted_sidecar_counts_from_zero_and_a_new_one_waits_a_read() -> None:
    tracker = StatsTracker()
    tracker.update(read(0.0, sidecar("pod", inbound=T(requests=500))), None)
    rates = tracker.update(
        read(1.0, sidecar("pod", inbound=T(requests=7)), sidecar("new", inbound=T(requests=1000))),
        None,
    )
    assert rates.pods["pod"].rps == 7.0
    assert rates.pods["new"].rps == 0.0


def test_route_and_ingress_counters_and_unreadable_sidecars() -> None:
    tracker = StatsTracker()
    main, api_route = ("catalog", "main"), (api.INGRESS, "api")
    tracker.update(read(0.0, gateway(routes={main: T(), api_route: T()})), None)
    rates = tracker.update(
        read(
            1.0,
            gateway(
                routes={
                    main: T(requests=10, completed=10, rq_5xx=5),
                    api_route: T(requests=4, completed=4, p99_ms=3.0),
                }
            ),
            api.SidecarStats("broken", "stock", "default", error="connection refused"),
        ),
        None,
    )
    assert rates.routes[main].success == 0.5
    assert rates.routes[api_route].rps == 4.0
    # A gateway without inbound counters: its row counts what came over its own routes.
    assert rates.pods["gw"].rps == 4.0 and rates.pods["gw"].p99 is None
    assert rates.unreadable == {"broken": "connection refused"}
    assert rates.history[route_key("catalog", "main")] == (10.0,)


@pytest.mark.parametrize(
    ("v1", "v2", "main", "canary", "expected", "exact"),
    [
        # 100 req/s on main at 80/20 with a 10% mirror to v2: v2's cluster sees 20 + 10.
        (80.0, 30.0, 100.0, 0.0, {"v1": 80.0, "v2": 20.0}, True),
        # The single-version canary's 50 req/s go to v2 only: taken away before the split.
        (80.0, 80.0, 100.0, 50.0, {"v1": 80.0, "v2": 20.0}, True),
        (0.0, 110.0, 100.0, 0.0, {"v1": 0.0, "v2": 100.0}, True),
    ],
    ids=["mirror-removed", "single-version-route-removed", "all-on-v2"],
)
def test_observed_split_of_a_weighted_route(
    v1: float, v2: float, main: float, canary: float, expected: dict[str, float], exact: bool
) -> None:
    versions = {V1: Live(rps=v1), ("catalog", "v2"): Live(rps=v2)}
    routes = {("catalog", "main"): Live(rps=main), ("catalog", "canary"): Live(rps=canary)}
    split = observed_splits(ROUTES, versions, routes)[("catalog", "main")]
    assert split.exact is exact
    assert split.shares == pytest.approx(expected)


def test_two_busy_weighted_routes_show_the_service_split_marked_inexact() -> None:
    routes_doc = api.Routes(
        "m",
        (
            api.ServiceRoutes(
                "s",
                "http",
                8000,
                {"a": 1, "b": 1},
                (
                    api.RouteInfo("x", "", {"a": 50, "b": 50}),
                    api.RouteInfo("y", "", {"a": 90, "b": 10}),
                ),
            ),
        ),
    )
    versions = {("s", "a"): Live(rps=70.0), ("s", "b"): Live(rps=30.0)}
    splits = observed_splits(
        routes_doc, versions, {("s", "x"): Live(rps=50.0), ("s", "y"): Live(rps=50.0)}
    )
    assert not splits[("s", "x")].exact and splits[("s", "x")].shares == {"a": 70.0, "b": 30.0}


def test_the_split_is_summed_over_recent_reads_and_kept_as_a_share_history() -> None:
    tracker = StatsTracker()
    v2, main = ("catalog", "v2"), ("catalog", "main")
    counts = {V1: 0, v2: 0, main: 0}
    routes = catalog_routes(
        api.RouteInfo("main", "", {"v1": 50, "v2": 50}), versions={"v1": 1, "v2": 1}
    )

    def now(t: float) -> api.Stats:
        return read(
            t,
            gateway({k: T(requests=counts[k]) for k in (V1, v2)}, {main: T(requests=counts[main])}),
        )

    tracker.update(now(0.0), routes)
    for t, (d1, d2) in enumerate([(10, 0), (0, 10)], start=1):
        counts[V1] += d1
        counts[v2] += d2
        counts[main] += 10
        rates = tracker.update(now(float(t)), routes)
    split = rates.splits[main]
    assert split.shares == pytest.approx({"v1": 50.0, "v2": 50.0})  # both reads, not the last
    assert rates.history[share_key("catalog", "main", "v2")] == pytest.approx((0.0, 50.0))


@pytest.mark.parametrize(
    ("values", "top", "expected"),
    [
        ([], None, ""),
        ([0, 0, 0], None, "▁▁▁"),
        ([1, 2, 4, 8], None, "▂▃▅█"),
        ([0, 50, 100], 100, "▁▅█"),
        (list(range(20)), None, "▅▆▆▆▇▇▇███"),
    ],
    ids=["empty", "idle", "scaled-to-max", "fixed-scale", "last-ten"],
)
def test_sparkline(values: list[float], top: float | None, expected: str) -> None:
    assert sparkline(values, 10, top) == expected


@pytest.mark.parametrize(
    ("fmt", "value", "text"),
    [
        (fmt_rps, None, "-"),
        (fmt_rps, 0.0, "0"),
        (fmt_rps, 2.345, "2.3"),
        (fmt_rps, 123.4, "123"),
        (fmt_rps, 4567.0, "4.6k"),
        (fmt_success, 1.0, "100%"),
        (fmt_success, 0.9954, "99.5%"),
        (fmt_ms, 2.04, "2.0ms"),
        (fmt_ms, 207.5, "208ms"),
        (fmt_ms, 5000.0, "5s"),
        (fmt_ms, 1500.0, "1.5s"),
    ],
)
def test_number_formats(fmt: Any, value: float | None, text: str) -> None:
    assert fmt(value) == text


def test_a_pods_ok_counts_what_its_inbound_listener_answered_its_sidecars_503s_too() -> None:
    """The issue's case: the pod's inbound sidecar answered 163 of 520 with 503 (its own
    local replies: an injected fault, the app refusing connections). OK% is what the pod's
    inbound listener answered, whoever made the answer, not what callers' routes saw."""
    tracker = StatsTracker()
    tracker.update(read(0.0, sidecar("pod", inbound=T())), None)
    rates = tracker.update(
        read(1.0, sidecar("pod", inbound=T(requests=520, rq_2xx=357, rq_5xx=163))), None
    )
    assert rates.pods["pod"].success == pytest.approx(357 / 520)
    assert fmt_success(rates.pods["pod"].success) != fmt_success(1.0)
