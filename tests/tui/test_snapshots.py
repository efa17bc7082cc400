"""Snapshots of the main screens, from API documents recorded from a real daemon.

Update after a deliberate change: .venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from devmesh.tui.app import make_app
from tests.tui.conftest import feed
from tests.tui.fake import RecordedClient

pytestmark = pytest.mark.usefixtures("utc")


def recorded_app(name: str) -> Any:
    client = RecordedClient(name)
    return make_app(client, poll=False), client.frames


def test_main_view_80x24(snap_compare: Any) -> None:
    app, frames = recorded_app("shop")

    async def run_before(pilot: Pilot[None]) -> None:
        await feed(app, pilot, frames)
        await pilot.press("down", "down", "down", "tab", "down", "down", "down")

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_main_view_wide_160x48(snap_compare: Any) -> None:
    app, frames = recorded_app("shop")

    async def run_before(pilot: Pilot[None]) -> None:
        await feed(app, pilot, frames)
        await pilot.press("down", "down", "down", "down")
        await feed(app, pilot, 1)  # the newly selected pod's log comes with the next read

    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)


def test_trouble_banner_nack_and_failed_version(snap_compare: Any) -> None:
    app, frames = recorded_app("trouble")

    async def run_before(pilot: Pilot[None]) -> None:
        await feed(app, pilot, frames)
        await pilot.press("down")  # the web pod: NACKed

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_app_log_of_the_selected_pod(snap_compare: Any) -> None:
    app, frames = recorded_app("trouble")

    async def run_before(pilot: Pilot[None]) -> None:
        await pilot.press("down", "down", "down", "down", "down", "l")  # flaky's pod
        await feed(app, pilot, frames)

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_help_lists_every_key(snap_compare: Any) -> None:
    app, frames = recorded_app("shop")

    async def run_before(pilot: Pilot[None]) -> None:
        await feed(app, pilot, frames)
        await pilot.press("question_mark")

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_typing_a_weight(snap_compare: Any) -> None:
    app, frames = recorded_app("shop")

    async def run_before(pilot: Pilot[None]) -> None:
        await feed(app, pilot, frames)
        await pilot.press("down", "down", "down", "tab", "down", "down", "down", "down", "down")
        await pilot.press("w", "4", "0")

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_no_color(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app, frames = recorded_app("trouble")

    async def run_before(pilot: Pilot[None]) -> None:
        await feed(app, pilot, frames)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
