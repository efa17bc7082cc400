"""The poller's mailbox: a UI that falls behind gets one frame with everything, not a queue."""

from __future__ import annotations

from devmesh.tui.model import Event
from devmesh.tui.poller import Frame, Mailbox


def test_frames_waiting_for_the_ui_merge_into_one() -> None:
    box = Mailbox()
    assert box.put(Frame(state={"n": 1}, routes={"r": 1}, events=(Event(1, "a"),), at=1))
    assert not box.put(Frame(state={"n": 2}, events=(Event(2, "b"),), log=("p", ("x",)), at=2))
    assert not box.put(Frame(state={"n": 3}, events=(Event(3, "c"),), at=3))
    frame = box.take()
    assert frame is not None
    assert frame.state == {"n": 3} and frame.at == 3  # the newest read wins
    assert frame.routes == {"r": 1} and frame.log == ("p", ("x",))  # kept until replaced
    assert [e.text for e in frame.events] == ["a", "b", "c"]  # events are never dropped
    assert box.take() is None
    assert box.put(Frame(at=4))  # empty again: the UI must be told
