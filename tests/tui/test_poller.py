"""The poller: a UI that falls behind gets one frame with everything, not a queue; the
daemon's events come once each, whether from its history or from the state."""

from __future__ import annotations

from dataclasses import replace

from devmesh.api import types as api
from devmesh.tui.poller import Frame, Mailbox, Poller
from tests.tui.fake import RecordedClient


def event(t: float, detail: str) -> api.Event:
    return api.Event(t, api.EventKind.SAVE, api.Severity.INFO, "", detail)


def state(n: int) -> api.MeshState:
    return api.MeshState(mesh=f"m{n}", project="p", phase=api.Phase.SERVING, ready=True)


def test_frames_waiting_for_the_ui_merge_into_one() -> None:
    box = Mailbox()
    routes = api.Routes("m")
    assert box.put(Frame(state=state(1), routes=routes, events=(event(1, "a"),), at=1))
    assert not box.put(Frame(state=state(2), events=(event(2, "b"),), log=("p", ("x",)), at=2))
    assert not box.put(Frame(state=state(3), events=(event(3, "c"),), at=3))
    frame = box.take()
    assert frame is not None
    assert frame.state == state(3) and frame.at == 3  # the newest read wins
    assert frame.routes == routes and frame.log == ("p", ("x",))  # kept until replaced
    assert [e.detail for e in frame.events] == ["a", "b", "c"]  # events are never dropped
    assert box.take() is None
    assert box.put(Frame(at=4))  # empty again: the UI must be told


def test_events_come_once_from_the_history_then_from_the_state() -> None:
    client = RecordedClient("trouble")
    poller = Poller(client, wall=lambda: 5.0)
    first = poller.read_once()
    history = client.events().events
    assert first.events == history and first.at == 5.0
    assert poller.read_once().events == ()  # the state's recent events: all shown already
    later = event(history[-1].time, "same time, another event")
    client._state = replace(client.state(), events=(*history[-3:], later))
    assert poller.read_once().events == (later,)
    assert poller.read_once().events == ()
