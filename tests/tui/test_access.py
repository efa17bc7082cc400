"""The request-log view through Pilot, over an access log recorded from a real daemon
(tests/tui/recorded/access: gateway -> front -> back, eight requests and two 503s that
back's sidecar injected).

Update the snapshot after a deliberate change:
    .venv/bin/pytest tests/tui/test_access.py --snapshot-update
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from devmesh.tui.access import AccessScreen
from devmesh.tui.app import KEYMAP, make_app
from devmesh.tui.traces import TraceScreen
from tests.tui.conftest import feed, settled
from tests.tui.fake import RecordedClient

pytestmark = pytest.mark.usefixtures("utc")

FAILED_TRACE = "f67afc3d5d5b69deab822ca54043bb64"  # the last injected 503


class _Host(App[None]):
    def __init__(self, screen: Any) -> None:
        super().__init__()
        self._first = screen

    def compose(self) -> ComposeResult:
        yield Static("")

    def on_mount(self) -> None:
        self.push_screen(self._first)


async def _settle(app: App[None], pilot: Pilot[None]) -> None:
    await settled(app, pilot, "#access-note, #waterfall")


def _detail(app: App[None]) -> str:
    return str(app.screen.query_one("#access-detail", Static).render())


def test_capital_l_opens_the_selected_services_request_log() -> None:
    async def run() -> None:
        client = RecordedClient("shop")
        app = make_app(client, poll=False)
        async with app.run_test(size=(140, 40)) as pilot:
            await feed(app, pilot, 2)
            await pilot.press("L")
            await _settle(app, pilot)
            assert isinstance(app.screen, AccessScreen)
            assert client.calls[-1][0] == "access"
            await pilot.press("escape")
            assert not isinstance(app.screen, AccessScreen)

    asyncio.run(run())


def test_lines_show_who_called_whom_and_flags_in_words_and_enter_opens_the_trace() -> None:
    async def run() -> None:
        client = RecordedClient("shop")
        app = _Host(AccessScreen(client, "back"))
        async with app.run_test(size=(140, 24)) as pilot:
            await _settle(app, pilot)
            table = app.screen.query_one("#access-list", DataTable)
            assert table.row_count == 20
            # The cursor follows the newest line: back's own sidecar injecting the 503.
            detail = _detail(app)
            assert "FI: injected fault (abort)" in detail, detail
            assert FAILED_TRACE in detail
            last = [str(c) for c in table.get_row_at(table.row_count - 1)]
            assert last[1:4] == ["inbound", "ingress", "back/v1"] and last[6] == "503"
            await pilot.press("enter")
            await _settle(app, pilot)
            assert isinstance(app.screen, TraceScreen)
            assert app.screen.trace_id == FAILED_TRACE
            await pilot.press("escape")
            await pilot.press("f")  # 5xx only
            await _settle(app, pilot)
            assert client.calls[-1] == ("access", ("back", "5xx"))
            assert app.screen.query_one("#access-list", DataTable).row_count == 4

    asyncio.run(run())


def test_the_help_lists_the_request_log_key() -> None:
    assert any(keys == "L" and action == "access_log" for keys, _, action, _, _ in KEYMAP)


def test_request_log_140x24(snap_compare: Any) -> None:
    app = _Host(AccessScreen(RecordedClient("shop"), "back"))

    async def run_before(pilot: Pilot[None]) -> None:
        await settled(app, pilot, "#access-note", "#access-list")
        await pilot.press("up")

    assert snap_compare(app, terminal_size=(140, 24), run_before=run_before)
