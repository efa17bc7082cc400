"""Envoy's `/stats?format=json` body read into numbers (the body's shape as Envoy 1.40 sends
it; tests/integration/test_envoy_admin.py reads a real one)."""

from __future__ import annotations

import json

from devmesh.adapters.envoy_admin import parse_stats


def test_counters_gauges_and_two_quantiles_are_kept_text_stats_are_not() -> None:
    body = {
        "stats": [
            {"name": "cluster.api|v1.upstream_rq_total", "value": 7},
            {"name": "http.in.downstream_cx_active", "value": 1},
            {"name": "control_plane.identifier", "value": "devmesh"},  # a text readout
            {
                "histograms": {
                    "supported_quantiles": [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100],
                    "computed_quantiles": [
                        {
                            "name": "cluster.api|v1.upstream_rq_time",
                            "values": [{"cumulative": i, "interval": i * 1.5} for i in range(10)],
                        },
                        {
                            "name": "cluster.api|v2.upstream_rq_time",
                            "values": [{"cumulative": None, "interval": None}] * 10,
                        },
                    ],
                }
            },
        ]
    }
    assert parse_stats(json.dumps(body).encode()) == {
        "cluster.api|v1.upstream_rq_total": 7,
        "http.in.downstream_cx_active": 1,
        "cluster.api|v1.upstream_rq_time.p50": 3.0,  # the third column: 50
        "cluster.api|v1.upstream_rq_time.p99": 9.0,  # the seventh: 99
    }


def test_an_empty_answer_is_no_stats() -> None:
    assert parse_stats(b'{"stats": []}') == {}
    assert parse_stats(b"{}") == {}
