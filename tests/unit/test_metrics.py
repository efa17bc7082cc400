"""The daemon's /metrics text: Prometheus' format 0.0.4, labels in mesh terms."""

from __future__ import annotations

import json
import re
from pathlib import Path

from devmesh.api import types as api
from devmesh.api.histogram import Bucket
from devmesh.daemon.metrics import render

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r'^([a-z_]+)(\{([a-z_]+="(?:[^"\\]|\\.)*"(,[a-z_]+="(?:[^"\\]|\\.)*")*)\})? (\S+)$'
)

LAT = (Bucket(5, 3), Bucket(25, 9), Bucket(100, 10))
STATS = api.Stats(
    1.0,
    (
        api.SidecarStats(
            "shop-frontend-default-0",
            "frontend",
            "default",
            inbound=api.Traffic(requests=12, rq_2xx=11, rq_5xx=1),
            upstreams=(
                api.UpstreamTraffic(
                    "catalog",
                    "v2",
                    api.Traffic(requests=10, rq_2xx=9, rq_5xx=1, overflow=1, latency=LAT),
                ),
            ),
            routes=(api.RouteTraffic("catalog", "main", api.Traffic(rq_2xx=9, latency=LAT)),),
        ),
        api.SidecarStats("shop-gateway", api.INGRESS, "", error="unreadable: refused"),
    ),
)
STATE = api.MeshState(
    mesh="shop",
    project="shop",
    phase=api.Phase.SERVING,
    ready=True,
    pods=(
        api.Pod(
            "shop-catalog-v2-0",
            "catalog",
            "v2",
            0,
            api.PodState.READY,
            xds=api.XdsStatus(connected=True, synced=True, version="ab12"),
        ),
    ),
)


def test_every_line_is_prometheus_text_and_every_family_has_help_and_type() -> None:
    text = render(STATS, STATE, api.AccessCounters(kept=3, received=5, dropped=2))
    assert text.endswith("\n")
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        found = LINE.match(line)
        assert found, line
        name = found[1]
        assert any(name == f or name.startswith(f + "_") for f in families), line


def test_mesh_labels_counts_and_envoys_buckets() -> None:
    text = render(STATS, STATE, api.AccessCounters(dropped=2))
    assert (
        'devmesh_requests_total{service="catalog",version="v2",source_service="frontend",'
        'response_code_class="5xx"} 1' in text
    )
    assert (
        'devmesh_request_duration_ms_bucket{service="catalog",version="v2",'
        'source_service="frontend",le="25"} 9' in text
    )
    assert (
        'devmesh_request_duration_ms_bucket{service="catalog",version="v2",'
        'source_service="frontend",le="+Inf"} 10' in text
    )
    assert (
        'devmesh_requests_overflow_total{service="catalog",version="v2",'
        'source_service="frontend"} 1' in text
    )
    assert 'devmesh_route_requests_total{service="catalog",route="main"' in text
    assert (
        'devmesh_inbound_requests_total{service="frontend",version="default",'
        'pod="shop-frontend-default-0",response_code_class="5xx"} 1' in text
    )
    assert 'devmesh_pod_ready{service="catalog",version="v2",pod="shop-catalog-v2-0"} 1' in text
    assert 'devmesh_config_info{service="catalog",version="v2",pod="shop-catalog-v2-0",' in text
    assert 'devmesh_sidecar_stats_up{pod="shop-gateway",service="ingress"} 0' in text
    assert "devmesh_access_log_dropped_total 2" in text


def test_label_values_are_escaped() -> None:
    stats = api.Stats(1.0, (api.SidecarStats('a"b\\c', "x", "y", inbound=api.Traffic(rq_2xx=1)),))
    assert 'pod="a\\"b\\\\c"' in render(stats, None, None)


def test_the_grafana_dashboard_asks_only_for_metrics_the_daemon_serves() -> None:
    text = render(STATS, STATE, api.AccessCounters())
    served = {m.split("{")[0].split(" ")[0] for m in text.splitlines() if not m.startswith("#")}
    served |= {"devmesh_traces_spans_dropped_total"}  # with tracing on (state.tracing)
    dashboard = json.loads((ROOT / "examples" / "grafana" / "devmesh.json").read_text())
    asked = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            asked |= set(re.findall(r"devmesh_[a-z_]+", target["expr"]))
    assert asked and asked <= served, asked - served


def test_ps_names_what_each_versions_circuit_breaker_refused_and_at_which_callers() -> None:
    from devmesh.cli.views import overflow_line, ps_table

    def caller(service: str, refused: dict[tuple[str, str], int]) -> api.SidecarStats:
        ups = tuple(
            api.UpstreamTraffic(s, v, api.Traffic(overflow=n)) for (s, v), n in refused.items()
        )
        return api.SidecarStats(f"shop-{service}-0", service, "default", upstreams=ups)

    stats = api.Stats(
        1.0,
        (
            caller("frontend", {("catalog", "v2"): 9, ("catalog", "v1"): 0}),
            caller(api.INGRESS, {("catalog", "v2"): 3}),
            caller("orders", {("db", "default"): 1}),
        ),
    )
    assert overflow_line(stats) == (
        "circuit breakers refused (UO): catalog/v2 12 (from frontend 9, ingress 3); "
        "db/default 1 (from orders 1)"
    )
    assert overflow_line(api.Stats(1.0, ())) is None and overflow_line(None) is None
    assert "circuit breakers refused (UO): catalog/v2 12" in ps_table(STATE, stats)
