"""Counters to rates, the observed split, and the formats of the numbers."""

from __future__ import annotations

from typing import Any

import pytest

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


def read(t: float, **sidecars: Any) -> dict[str, Any]:
    return {"time": t, "sidecars": sidecars}


ROUTES = {
    "services": [
        {
            "name": "catalog",
            "versions": {"v1": 1, "v2": 2},
            "routes": [
                {"name": "canary", "to": {"v2": 100}, "mirror": None},
                {
                    "name": "main",
                    "to": {"v1": 80, "v2": 20},
                    "mirror": {"service": "catalog", "version": "v2", "percent": 10.0},
                },
            ],
        }
    ]
}


def test_first_read_gives_no_rates_and_the_second_gives_differences_per_second() -> None:
    tracker = StatsTracker()
    first = tracker.update(read(100.0, gw={"cluster.catalog|v1.upstream_rq_total": 10}), None)
    assert first.interval == 0 and first.versions == {}
    second = tracker.update(
        read(
            102.0,
            gw={
                "cluster.catalog|v1.upstream_rq_total": 30,
                "cluster.catalog|v1.upstream_rq_5xx": 2,
                "cluster.catalog|v1.upstream_cx_active": 3,
                "cluster.catalog|v1.upstream_rq_time.p50": 2.5,
                "cluster.catalog|v1.upstream_rq_time.p99": 40.0,
            },
        ),
        None,
    )
    assert second.interval == 2.0
    assert second.versions[("catalog", "v1")] == Live(
        rps=10.0, success=0.9, p50=2.5, p99=40.0, cx=3
    )
    assert second.services["catalog"].rps == 10.0


def test_rates_sum_over_callers_and_percentiles_merge_by_traffic() -> None:
    tracker = StatsTracker()
    names = ("cluster.catalog|v1.upstream_rq_total", "cluster.catalog|v1.upstream_rq_time.p50")
    tracker.update(read(0.0, a={names[0]: 0}, b={names[0]: 0}), None)
    rates = tracker.update(
        read(1.0, a={names[0]: 30, names[1]: 2.0}, b={names[0]: 10, names[1]: 10.0}), None
    )
    live = rates.versions[("catalog", "v1")]
    assert live.rps == 40.0
    assert live.p50 == pytest.approx((30 * 2.0 + 10 * 10.0) / 40)


def test_a_restarted_sidecar_counts_from_zero_and_a_new_one_waits_a_read() -> None:
    tracker = StatsTracker()
    name = "http.in.downstream_rq_total"
    tracker.update(read(0.0, pod={name: 500}), None)
    rates = tracker.update(read(1.0, pod={name: 7}, new={name: 1000}), None)
    assert rates.pods["pod"].rps == 7.0
    assert rates.pods["new"].rps == 0.0


def test_route_and_ingress_counters_and_unreadable_sidecars() -> None:
    tracker = StatsTracker()
    main = "vhost.catalog.route.catalog.main.upstream_rq_"
    api = "vhost.ingress.route.ingress.api.upstream_rq_"
    tracker.update(read(0.0, gw={main + "total": 0, api + "total": 0}), None)
    rates = tracker.update(
        read(
            1.0,
            gw={
                main + "total": 10,
                main + "completed": 10,
                main + "5xx": 5,
                api + "total": 4,
                "cluster._hop|catalog.upstream_rq_total": 4,  # the gateway's own hop: not shown
            },
            broken="unreadable: connection refused",
        ),
        None,
    )
    assert rates.routes[("catalog", "main")].success == 0.5
    assert rates.routes[("ingress", "api")].rps == 4.0
    assert ("_hop", "catalog") not in rates.versions
    assert rates.unreadable == {"broken": "unreadable: connection refused"}
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
    versions = {("catalog", "v1"): Live(rps=v1), ("catalog", "v2"): Live(rps=v2)}
    routes = {("catalog", "main"): Live(rps=main), ("catalog", "canary"): Live(rps=canary)}
    split = observed_splits(ROUTES, versions, routes)[("catalog", "main")]
    assert split.exact is exact
    assert split.shares == pytest.approx(expected)


def test_two_busy_weighted_routes_show_the_service_split_marked_inexact() -> None:
    routes_doc = {
        "services": [
            {
                "name": "s",
                "versions": {"a": 1, "b": 1},
                "routes": [
                    {"name": "x", "to": {"a": 50, "b": 50}},
                    {"name": "y", "to": {"a": 90, "b": 10}},
                ],
            }
        ]
    }
    versions = {("s", "a"): Live(rps=70.0), ("s", "b"): Live(rps=30.0)}
    splits = observed_splits(
        routes_doc, versions, {("s", "x"): Live(rps=50.0), ("s", "y"): Live(rps=50.0)}
    )
    assert not splits[("s", "x")].exact and splits[("s", "x")].shares == {"a": 70.0, "b": 30.0}


def test_the_split_is_summed_over_recent_reads_and_kept_as_a_share_history() -> None:
    tracker = StatsTracker()
    v1, v2 = "cluster.catalog|v1.upstream_rq_total", "cluster.catalog|v2.upstream_rq_total"
    main = "vhost.catalog.route.catalog.main.upstream_rq_total"
    counts = {v1: 0, v2: 0, main: 0}
    routes = {
        "services": [
            {
                "name": "catalog",
                "versions": {"v1": 1, "v2": 1},
                "routes": [{"name": "main", "to": {"v1": 50, "v2": 50}}],
            }
        ]
    }
    tracker.update(read(0.0, gw=dict(counts)), routes)
    for t, (d1, d2) in enumerate([(10, 0), (0, 10)], start=1):
        counts[v1] += d1
        counts[v2] += d2
        counts[main] += 10
        rates = tracker.update(read(float(t), gw=dict(counts)), routes)
    split = rates.splits[("catalog", "main")]
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
