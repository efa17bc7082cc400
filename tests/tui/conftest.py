"""TUI tests: pure ones, snapshots against recorded daemon documents, and Pilot and terminal
tests against a real daemon (the end-to-end fixtures: a real engine, real Envoy)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from textual.pilot import Pilot

from devmesh.tui.app import MeshApp
from tests.e2e.conftest import docker_client, make_mesh  # noqa: F401 - fixtures used here

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
