"""TUI tests. Here: pure ones, no Docker and no daemon (the screens as values, the poller,
keys through Pilot and snapshots against recorded daemon documents, time from a manual
clock); `live/`: Pilot and terminal tests against a real daemon, marked `docker`.

    .venv/bin/pytest tests/tui -m "not docker"      # the pure ones, in seconds
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Static

from devmesh.tui.app import MeshApp

__all__ = ["feed", "settled", "utc"]


async def feed(app: MeshApp, pilot: Pilot[None], reads: int) -> None:
    """Run the poller's reads in the test (no thread, no clock): deterministic frames."""
    for _ in range(reads):
        app.apply_frame(app.poller.read_once())
    await pilot.pause()


async def settled(
    app: App[None], pilot: Pilot[None], note: str, focused: str | None = None
) -> None:
    """Until the screen has taken its worker's answer (no Static that `note` selects says
    loading) and, if `focused` is given, the widget it selects has the focus. The worker's
    message can still be queued when `wait_for_complete` returns: a snapshot taken then
    shows "loading…" or the table without focus (the second seen under xdist)."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    # By the clock, not a count of rounds: on a loaded machine (the suite's parallel run
    # beside Docker tests) 200 rounds of 20 ms were not always enough for the focus to land.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await pilot.pause()
        shown = [str(w.render()) for w in app.screen.query(note).results(Static)]
        loaded = not any(text.startswith("loading") for text in shown)
        # focus() takes effect later, through the message queue: a snapshot taken before it
        # shows the table's unfocused colours (one did under `make test`'s parallel run).
        if loaded and (focused is None or _has_focus(app, focused)):
            break
        await pilot.pause(0.02)
    await pilot.pause()


def _has_focus(app: App[None], selector: str) -> bool:
    # `app.focused` is set at once; the widget's :focus colours follow its Focus event, which
    # sets `has_focus` (Textual's Widget._on_focus). A snapshot between the two showed the
    # same text in other colours (test_trace_list_120x16, 2 of 5 parallel runs).
    return any(widget is app.focused and widget.has_focus for widget in app.screen.query(selector))


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times print in local time: pin it for snapshots."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
