"""The screens as values: rows from recorded daemon documents, weights, states, events."""

from __future__ import annotations

from typing import Any

import pytest

from devmesh.tui.model import (
    EventFeed,
    appended,
    banner,
    pod_rows,
    pod_state,
    route_rows,
    set_weight,
    step_weight,
    weights_to_send,
)
from devmesh.tui.stats import StatsTracker
from tests.tui.fake import RecordedClient


@pytest.mark.parametrize(
    ("weights", "versions", "version", "value", "expected"),
    [
        ({"v1": 80, "v2": 20}, ["v1", "v2"], "v2", 25, {"v1": 75, "v2": 25}),
        ({"v1": 80, "v2": 20}, ["v1", "v2"], "v2", 130, {"v1": 0, "v2": 100}),
        ({"v1": 80, "v2": 20}, ["v1", "v2"], "v2", -5, {"v1": 100, "v2": 0}),
        ({"a": 50, "b": 30, "c": 20}, ["a", "b", "c"], "c", 40, {"a": 38, "b": 22, "c": 40}),
        ({"a": 100}, ["a", "b", "c"], "a", 0, {"a": 0, "b": 50, "c": 50}),
        ({"a": 0, "b": 0, "c": 100}, ["a", "b", "c"], "c", 0, {"a": 50, "b": 50, "c": 0}),
        ({"a": 1, "b": 1, "c": 98}, ["a", "b", "c"], "c", 97, {"a": 2, "b": 1, "c": 97}),
    ],
    ids=["two", "clamped-up", "clamped-down", "proportional", "from-one", "even", "rounding"],
)
def test_set_weight_keeps_the_total_at_100(
    weights: dict[str, int], versions: list[str], version: str, value: int, expected: Any
) -> None:
    result = set_weight(weights, versions, version, value)
    assert result == expected and sum(result.values()) == 100


def test_steps_and_what_is_sent() -> None:
    assert step_weight({"v1": 80, "v2": 20}, ["v1", "v2"], "v2", 10) == {"v1": 70, "v2": 30}
    assert weights_to_send({"v1": 0, "v2": 100, "v3": 0}, {"v1": 80, "v2": 20}) == {
        "v1": 0,
        "v2": 100,
    }


@pytest.mark.parametrize(
    ("pod", "label"),
    [
        ({"ready": True}, "● ready"),
        ({"ready": False, "reason": "cannot start: image x"}, "✗ failed"),
        ({"ready": False, "reason": "config NACKed: Error adding"}, "✗ NACKed"),
        (
            {"ready": False, "reason": "app exiting (exit code 1, restarted 3 times)"},
            "↻ restarting",
        ),
        ({"ready": False, "reason": "pod starting"}, "◐ starting"),
        ({"ready": False, "reason": "sidecar has not ACKed its config yet"}, "◐ starting"),
        ({"ready": False, "reason": "health failing (not checked yet)"}, "◐ starting"),
        ({"ready": False, "reason": "health failing (HTTP 500)", "restarts": 0}, "◐ unhealthy"),
        ({"ready": False, "reason": "health failing (HTTP 500)", "restarts": 2}, "↻ restarting"),
        ({"ready": False, "reason": "sidecar not running"}, "✗ no sidecar"),
    ],
)
def test_pod_state_labels(pod: dict[str, Any], label: str) -> None:
    assert pod_state(pod)[0] == label


@pytest.mark.parametrize(
    ("before", "after", "new"),
    [
        ([], ["a", "b"], ["a", "b"]),
        (["a", "b"], ["a", "b"], []),
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),
        (["a", "b"], ["x", "y"], None),
    ],
    ids=["first", "unchanged", "appended", "moved-on"],
)
def test_log_lines_appended_between_two_reads(
    before: list[str], after: list[str], new: list[str] | None
) -> None:
    assert appended(before, after) == new


def rates_of(client: RecordedClient) -> Any:
    tracker = StatsTracker()
    rates = None
    for _ in range(client.frames):
        rates = tracker.update(client.stats(), client.routes())
    return rates


def test_recorded_shop_rows_show_each_service_its_pods_and_the_gateway() -> None:
    client = RecordedClient("shop")
    rows = pod_rows(client.state(), client.routes(), rates_of(client))
    kinds = [(r.kind, r.service) for r in rows]
    assert kinds[0] == ("service", "frontend") and kinds[-1] == ("gateway", None)
    catalog = next(r for r in rows if r.key == "svc:catalog")
    assert catalog.cells[1][0] == "● 3/3 ready" and catalog.cells[2][0] == "v1 v2×2"
    assert float(catalog.cells[4][0]) > 0  # requests per second from the recorded counters


def test_recorded_routes_show_weights_observed_split_and_the_ingress() -> None:
    client = RecordedClient("shop")
    rows = route_rows(
        client.routes(), "catalog", rates_of(client), {("catalog", "main"): {"v1": 70, "v2": 30}}
    )
    by_key = {r.key: r for r in rows}
    v2 = by_key["version:catalog/main/v2"]
    assert v2.cells[1][0] == "20→30"  # asked for, not served yet
    assert v2.cells[2][0].endswith("%")  # the observed share
    assert "mirror 10% to catalog/v2" in by_key["route:catalog/main"].detail
    assert "ingress:api" in by_key


def test_recorded_trouble_shows_nack_failure_restarts_and_problems() -> None:
    client = RecordedClient("trouble")
    state = client.state()
    rows = {r.key: r for r in pod_rows(state, client.routes(), rates_of(client))}
    assert rows["pod:tuitrouble-web-default-0"].cells[1][0] == "✗ NACKed"
    assert "cannot bind" in rows["pod:tuitrouble-web-default-0"].detail
    assert rows["pod:tuitrouble-flaky-default-0"].cells[1][0] == "↻ restarting"
    assert rows["failed:legacy|default"].cells[1][0] == "✗ failed"
    lines = [text for text, _ in banner(state, None).lines]
    assert any("services.stock.port: expected an integer, got 'seven'" in t for t in lines)
    assert any("legacy/default cannot run" in t for t in lines)


def test_events_seen_between_two_states() -> None:
    feed = EventFeed()
    pod = {"pod": "p", "restarts": 0, "xds": {"version": "a", "synced": True, "nack": None}}
    assert feed.seen({"pods": [pod]}, 1.0) == []
    pushed = {**pod, "xds": {"version": "b", "synced": True, "nack": None}}
    assert [e.text for e in feed.seen({"pods": [pushed]}, 2.0)] == ["p: config b pushed and ACKed"]
    nacked = {
        **pushed,
        "restarts": 1,
        "xds": {"version": "b", "synced": False, "nack": {"type": "Listener", "message": "no"}},
    }
    texts = [e.text for e in feed.seen({"pods": [nacked]}, 3.0)]
    assert texts == ["p: NACK (Listener: no)", "p: app restarted (1 so far)"]
    assert [e.text for e in feed.daemon_events([{"time": 1, "text": "x"}])] == ["x"]
    assert feed.daemon_events([{"time": 1, "text": "x"}, {"time": 2, "text": "y"}])[0].text == "y"
