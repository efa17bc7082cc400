"""Envoy stat names devmesh builds, parsed back into mesh terms."""

from __future__ import annotations

from typing import Any

import pytest

from devmesh.api.types import INGRESS, RouteTraffic, Traffic, UpstreamTraffic
from devmesh.envoy.names import cluster_name, parse_cluster_name, sidecar_stats


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        pytest.param("catalog|v2", ("catalog", "v2"), id="version-cluster"),
        pytest.param("_hop|catalog", None, id="gateway-hop"),
        pytest.param("_app", None, id="app"),
        pytest.param("a|b|c", None, id="two-bars"),
        pytest.param("|v1", None, id="no-service"),
    ],
)
def test_only_version_clusters_parse_into_mesh_terms(name: str, parsed: Any) -> None:
    assert parse_cluster_name(name) == parsed
    if parsed is not None:
        assert cluster_name(*parsed) == name


def test_a_sidecars_counters_in_mesh_terms() -> None:
    stats = sidecar_stats(
        "shop-frontend-default-0",
        "frontend",
        "default",
        {
            "cluster.catalog|v2.upstream_rq_total": 10,
            "cluster.catalog|v2.upstream_rq_5xx": 2,
            "cluster.catalog|v2.upstream_rq_pending_overflow": 1,
            "cluster.catalog|v2.upstream_rq_time.p99": 12.5,
            "cluster._hop|catalog.upstream_rq_total": 99,  # not a version: left out
            "vhost.catalog.route.catalog.main.upstream_rq_total": 10,
            "http.in.downstream_rq_total": 7,
            "http.in.downstream_rq_2xx": 7,
            "something.else": 1,
        },
    )
    assert stats.upstreams == (
        UpstreamTraffic("catalog", "v2", Traffic(requests=10, rq_5xx=2, overflow=1, p99_ms=12.5)),
    )
    assert stats.routes == (RouteTraffic("catalog", "main", Traffic(requests=10)),)
    assert stats.inbound == Traffic(requests=7, rq_2xx=7)


def test_the_gateways_routes_and_inbound() -> None:
    stats = sidecar_stats(
        "shop-gateway",
        INGRESS,
        "",
        {
            "vhost.ingress.route.ingress.api.upstream_rq_total": 3,
            "http.ingress.downstream_rq_total": 3,
            "http.in.downstream_rq_total": 100,  # not the gateway's manager
        },
    )
    assert stats.routes == (RouteTraffic(INGRESS, "api", Traffic(requests=3)),)
    assert stats.inbound == Traffic(requests=3)
