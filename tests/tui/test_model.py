"""The screens as values: rows from recorded daemon documents, weights, states, events."""

from __future__ import annotations

from typing import Any

import pytest

from devmesh.api import types as api
from devmesh.tui.model import (
    POD_STATES,
    EventFeed,
    PendingShifts,
    appended,
    banner,
    event_line,
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


def pod(state: api.PodState, reason: str = "", restarts: int = 0) -> api.Pod:
    return api.Pod("p", "s", "v1", 0, state, reason, restarts=restarts)


@pytest.mark.parametrize(
    ("state", "label"),
    [
        (api.PodState.READY, "● ready"),
        (api.PodState.FAILED, "✗ failed"),
        (api.PodState.ENGINE_DOWN, "? engine down"),
        (api.PodState.STARTING, "◐ starting"),
        (api.PodState.CRASHING, "↻ restarting"),
        (api.PodState.SIDECAR_DOWN, "✗ no sidecar"),
        (api.PodState.NACKED, "✗ NACKed"),
        (api.PodState.SYNCING, "◐ syncing"),
        (api.PodState.UNHEALTHY, "◐ unhealthy"),
    ],
    ids=lambda v: str(v),
)
def test_pod_state_labels_come_from_the_state_not_the_reason(
    state: api.PodState, label: str
) -> None:
    # A reason is for people: whatever it says, the state decides the label.
    assert pod_state(pod(state, reason="cannot start: image x not found")) == POD_STATES[state]
    assert POD_STATES[state][0] == label


def test_every_pod_state_has_a_symbol_and_a_word() -> None:
    assert set(POD_STATES) == set(api.PodState)
    assert all(" " in text and style for text, style in POD_STATES.values())


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


def event(t: float, severity: api.Severity, subject: str, detail: str) -> api.Event:
    return api.Event(t, api.EventKind.CONTAINER, severity, subject, detail)


def test_event_lines_mark_the_severity(utc: None) -> None:
    line = event_line(event(0.0, api.Severity.WARNING, "p-app", "die"))
    assert line == "00:00:00 ! p-app: die"
    assert event_line(event(1.0, api.Severity.ERROR, "", "no")) == "00:00:01 ✗ no"
    assert event_line(event(2.0, api.Severity.INFO, "p", "healthy")) == "00:00:02 p: healthy"


def test_the_event_feed_gives_each_event_once() -> None:
    feed = EventFeed()
    a, b = event(1, api.Severity.INFO, "p", "a"), event(2, api.Severity.INFO, "p", "b")
    assert feed.new([a, b]) == [a, b]
    assert feed.new([a, b]) == []
    c = event(2, api.Severity.INFO, "q", "c")  # the same time as the last one shown
    assert feed.new([b, c]) == [c]
    assert feed.new([b, c, event(3, api.Severity.INFO, "", "d")])[0].detail == "d"


def test_quick_asks_are_sent_once_when_the_keys_are_quiet() -> None:
    shifts = PendingShifts(settle=0.35)
    key = ("catalog", "main")
    shifts.ask(key, {"v1": 75, "v2": 25}, now=10.0)
    shifts.ask(key, {"v1": 70, "v2": 30}, now=10.2)
    assert shifts.take_due(10.5) == [] and shifts.due_in(10.5) == pytest.approx(0.05)
    assert shifts.take_due(10.55) == [(key, {"v1": 70, "v2": 30})]
    assert shifts.take_due(20.0) == [] and shifts.due_in(20.0) is None  # sent once
    served = api.Routes(
        "m",
        (
            api.ServiceRoutes(
                "catalog", "http", 80, {}, (api.RouteInfo("main", "", {"v1": 70, "v2": 30}),)
            ),
        ),
    )
    shifts.settle_with(served, 11.0)
    assert shifts.asked == {}  # served: forgotten


def test_sent_weights_never_served_are_dropped_after_a_while() -> None:
    shifts = PendingShifts(settle=0.35, give_up=15)
    key = ("catalog", "main")
    shifts.ask(key, {"v1": 0, "v2": 100}, now=0.0)
    shifts.take_due(1.0)
    shifts.settle_with(None, 10.0)
    assert key in shifts.asked
    shifts.settle_with(None, 16.0)
    assert key not in shifts.asked


def test_the_banner_says_what_the_state_reports_beyond_the_pods() -> None:
    state = api.MeshState(
        "m",
        "m",
        api.Phase.SERVING,
        False,
        engine=api.EngineStatus(False, "connection refused"),
        push_error="Listener out|x: bad",
        errors=("create m-web-v1-0-app: port taken",),
    )
    lines = banner(state, "the daemon does not answer").lines
    assert [style for _, style in lines] == ["bad", "bad", "bad", "warn"]
    assert lines[1][0] == "✗ the container engine does not answer: connection refused"
    assert "config not delivered: Listener out|x: bad" in lines[2][0]
    assert banner(api.MeshState("m", "m", api.Phase.SERVING, True), None).lines == ()


def test_a_pod_whose_stats_cannot_be_read_says_why() -> None:
    from devmesh.tui.stats import Rates

    state = api.MeshState("m", "m", api.Phase.SERVING, True, pods=(pod(api.PodState.READY),))
    rows = pod_rows(state, None, Rates(1.0, unreadable={"p": "admin: connection refused"}))
    assert rows[1].detail.endswith("; stats unreadable: admin: connection refused")


def test_the_banner_shows_a_build_under_way_and_a_failed_one_with_its_line() -> None:
    error = "build failed: Dockerfile:3: unknown instruction: RUNN"
    state = api.MeshState(
        "m",
        "m",
        api.Phase.SERVING,
        False,
        failed=(api.Failure("web", "v1", error),),
        builds=(
            api.BuildStatus("web", "v1", False, "", error),
            api.BuildStatus("api", "v2", True, "step 2/3 RUN make"),
        ),
    )
    lines = banner(state, None).lines
    assert lines == (
        (f"✗ web/v1 cannot run: {error}", "bad"),
        ("… building api/v2: step 2/3 RUN make", "warn"),
    )


def test_a_roll_shows_the_old_pod_draining_beside_the_new_one() -> None:
    from devmesh.tui.model import pod_rows

    new = api.Pod("m-s-v1-0-g1", "s", "v1", 0, api.PodState.READY)
    old = api.Pod(
        "m-s-v1-0", "s", "v1", 0, api.PodState.DRAINING, "replaced: draining", retiring=True
    )
    state = api.MeshState(
        mesh="m",
        project="m",
        phase=api.Phase.SERVING,
        ready=True,
        file="f",
        pid=1,
        pods=(new, old),
    )
    rows = {r.pod: r for r in pod_rows(state, None, None) if r.kind == "pod"}
    assert set(rows) == {"m-s-v1-0-g1", "m-s-v1-0"}
    texts = [text for text, _ in rows["m-s-v1-0"].cells]
    assert "⇣ draining" in texts


def test_a_pods_detail_names_its_mtls_identity_mode_and_certificate_expiry() -> None:
    import dataclasses
    import time

    from devmesh.tui.stats import Rates

    tls = api.PodTls("spiffe://devmesh.local/mesh/m/service/s", "PERMISSIVE", 1795000000.0)
    with_tls = dataclasses.replace(pod(api.PodState.READY), tls=tls)
    state = api.MeshState("m", "m", api.Phase.SERVING, True, pods=(with_tls,))
    detail = pod_rows(state, None, Rates(1.0))[1].detail
    until = time.strftime("%H:%M:%S", time.localtime(1795000000.0))
    assert f"; mTLS PERMISSIVE as {tls.identity} (certificate until {until})" in detail
    plain = api.MeshState("m", "m", api.Phase.SERVING, True, pods=(pod(api.PodState.READY),))
    assert "mTLS" not in pod_rows(plain, None, Rates(1.0))[1].detail


def test_details_name_what_authorization_and_circuit_breakers_turned_away() -> None:
    from devmesh.tui.stats import Rates, guards

    sidecars = (
        api.SidecarStats(
            "p",
            "s",
            "v1",
            denials=(api.Denial(api.UNKNOWN_CALLER, 1), api.Denial("front", 3)),
        ),
        api.SidecarStats(
            "f-0",
            "front",
            "v1",
            upstreams=(
                api.UpstreamTraffic("s", "v1", api.Traffic(requests=20, overflow=9)),
                api.UpstreamTraffic("s", "v2", api.Traffic(requests=20)),
            ),
        ),
        api.SidecarStats(
            "gw",
            api.INGRESS,
            "",
            upstreams=(api.UpstreamTraffic("s", "v1", api.Traffic(requests=5, overflow=3)),),
        ),
    )
    denied, overflow = guards(api.Stats(time=1.0, sidecars=sidecars))
    assert denied == {"p": "unknown peer 1, front 3"}  # in the order `ps` gives
    assert overflow == {"s": "v1 12 (from front 9, ingress 3)"}
    state = api.MeshState("m", "m", api.Phase.SERVING, True, pods=(pod(api.PodState.READY),))
    service, pod_row = pod_rows(state, None, Rates(1.0, denied=denied, overflow=overflow))[:2]
    assert "; circuit breakers refused (UO): v1 12 (from front 9, ingress 3)" in service.detail
    assert "; denied (RBAC): unknown peer 1, front 3" in pod_row.detail
    quiet = pod_rows(state, None, Rates(1.0))
    assert "refused" not in quiet[0].detail and "denied" not in quiet[1].detail
