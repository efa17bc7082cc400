"""TUI tests. Here: pure ones, no Docker and no daemon (the screens as values, the poller,
keys through Pilot and snapshots against recorded daemon documents, time from a manual
clock); `live/`: Pilot and terminal tests against a real daemon, marked `docker`.

    .venv/bin/pytest tests/tui -m "not docker"      # the pure ones, in seconds
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from textual.pilot import Pilot

from devmesh.tui.app import MeshApp

__all__ = ["feed", "utc"]


async def feed(app: MeshApp, pilot: Pilot[None], reads: int) -> None:
    """Run the poller's reads in the test (no thread, no clock): deterministic frames."""
    for _ in range(reads):
        app.apply_frame(app.poller.read_once())
    await pilot.pause()


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times print in local time: pin it for snapshots."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
