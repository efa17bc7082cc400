"""Percentiles from Envoy's cumulative buckets: known distributions, merges, windows."""

from __future__ import annotations

import random

import pytest

from devmesh.api.histogram import Bucket, merge, quantile, total, window
from devmesh.envoy.names import sidecar_stats

# Envoy's default histogram bounds (ms), as /stats?histogram_buckets=cumulative lists them.
ENVOY_BOUNDS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip


def histogram(samples: list[float], bounds: tuple[float, ...] = ENVOY_BOUNDS) -> list[Bucket]:
    """What Envoy would report for these samples: counts at most each bound."""
    return [Bucket(float(le), sum(1 for s in samples if s <= le)) for le in bounds]


def test_an_empty_histogram_has_no_percentile() -> None:
    assert quantile(0.5, histogram([])) is None
    assert quantile(0.5, []) is None


def test_uniform_samples_within_one_bucket_interpolate_to_the_true_quantile() -> None:
    # 1000 samples evenly over (100, 250]: the bucket's own shape, so interpolation is exact.
    samples = [100 + 150 * (i + 1) / 1000 for i in range(1000)]
    h = histogram(samples)
    assert quantile(0.5, h) == pytest.approx(175.0)
    assert quantile(0.99, h) == pytest.approx(248.5)
    assert quantile(0.0, h) == pytest.approx(100.0)


def test_a_percentile_always_lands_in_the_bucket_that_holds_the_true_one() -> None:
    rng = random.Random(12)
    samples = [rng.lognormvariate(3.0, 1.0) for _ in range(5000)]  # a latency-like tail
    h = histogram(samples)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99):
        true = ordered[int(q * len(ordered)) - 1]
        upper = min(b for b in ENVOY_BOUNDS if b >= true)
        lower = max((b for b in ENVOY_BOUNDS if b < true), default=0.0)
        got = quantile(q, h)
        assert got is not None and lower <= got <= upper, (q, true, got)


def test_a_bimodal_mix_is_not_the_mean_of_its_parts() -> None:
    # 90 requests at 2 ms, 10 at 400 ms: p50 is fast, p99 slow; a mean (41.8) is neither.
    h = histogram([2.0] * 90 + [400.0] * 10)
    assert quantile(0.5, h) == pytest.approx(1 + 4 * 50 / 90)  # within (1, 5]
    assert 250 < (quantile(0.99, h) or 0) <= 500


def test_merging_adds_counts_so_the_merge_equals_the_histogram_of_all_samples() -> None:
    rng = random.Random(7)
    a = [rng.uniform(0, 40) for _ in range(300)]
    b = [rng.uniform(30, 900) for _ in range(100)]
    assert merge([histogram(a), histogram(b)]) == tuple(histogram(a + b))
    assert total(merge([histogram(a), histogram(b)])) == 400


def test_merging_histograms_with_different_bounds_keeps_every_bound() -> None:
    merged = merge([[Bucket(10, 1), Bucket(100, 3)], [Bucket(50, 2), Bucket(100, 2)]])
    assert merged == (Bucket(10, 1), Bucket(50, 3), Bucket(100, 5))
    assert merge([]) == ()


def test_a_window_is_the_difference_and_a_restart_counts_anew() -> None:
    before = histogram([5.0] * 10)
    now = histogram([5.0] * 10 + [200.0] * 4)
    assert total(window(now, before)) == 4
    assert quantile(0.5, window(now, before)) == pytest.approx(175.0)
    restarted = histogram([1.0])
    assert window(restarted, now) == tuple(restarted)
    assert window(now, None) == tuple(now)


def test_the_stats_api_reads_a_sidecars_buckets_into_its_rows() -> None:
    counters = {
        "cluster.catalog|v2.upstream_rq_total": 4.0,
        "cluster.catalog|v2.upstream_rq_time@10": 1.0,
        "cluster.catalog|v2.upstream_rq_time@50": 3.0,
        "cluster.catalog|v2.upstream_rq_time@100": 4.0,
        "vhost.catalog.route.catalog.main.upstream_rq_time@10": 2.0,
        "vhost.catalog.route.catalog.main.upstream_rq_time@50": 2.0,
        "cluster._app.upstream_rq_time@10": 9.0,  # devmesh's own cluster: not a row
    }
    stats = sidecar_stats("pod", "frontend", "default", counters)
    (up,) = stats.upstreams
    assert (up.service, up.version, up.traffic.requests) == ("catalog", "v2", 4)
    assert up.traffic.latency == (Bucket(10, 1), Bucket(50, 3), Bucket(100, 4))
    assert up.traffic.p50_ms == pytest.approx(10 + 40 * (2 - 1) / 2)
    (route,) = stats.routes
    assert (route.service, route.route, route.traffic.p50_ms) == ("catalog", "main", 5.0)
