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


async def settled(app: App[None], pilot: Pilot[None], note: str) -> None:
    """Until the screen has taken its worker's answer (no Static that `note` selects says
    loading): the worker's message can still be queued when `wait_for_complete` returns,
    and a snapshot taken then shows "loading…" (one failed so in CI's full run)."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    for _ in range(200):
        await pilot.pause()
        shown = [str(w.render()) for w in app.screen.query(note).results(Static)]
        if not any(text.startswith("loading") for text in shown):
            break
        await pilot.pause(0.02)
    await pilot.pause()


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times print in local time: pin it for snapshots."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
