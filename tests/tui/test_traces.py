"""The trace views through Pilot, over traces recorded from a real daemon
(tests/tui/recorded/traces: gateway -> frontend -> catalog, one 200 and one 503).

Update the snapshots after a deliberate change:
    .venv/bin/pytest tests/tui/test_traces.py --snapshot-update
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from devmesh.tui.app import KEYMAP, make_app
from devmesh.tui.traces import TraceScreen, TracesScreen
from tests.tui.conftest import feed, settled
from tests.tui.fake import RecordedClient

pytestmark = pytest.mark.usefixtures("utc")

OK = "4fc00b5cab3ce1b1ef360ca2ec03b3b1"  # 5 spans, 200
FAILED = "1682a9a09c18b022f8b051adcda829f6"  # 3 spans, 503 from frontend


class _Host(App[None]):
    """Just the trace screen, for its snapshot."""

    def __init__(self, screen: Any) -> None:
        super().__init__()
        self._first = screen

    def compose(self) -> ComposeResult:
        yield Static("")

    def on_mount(self) -> None:
        self.push_screen(self._first)


def _waterfall(app: App[None]) -> str:
    return str(app.screen.query_one("#waterfall", Static).render())


def test_t_opens_the_selected_services_traces_and_enter_opens_the_waterfall() -> None:
    asyncio.run(_t_opens_traces())


async def _t_opens_traces() -> None:
    client = RecordedClient("shop")
    app = make_app(client, poll=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await feed(app, pilot, 2)
        await pilot.press("t")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, TracesScreen)
        table = app.screen.query_one("#trace-list", DataTable)
        assert table.row_count == 2
        await pilot.press("enter")  # the newest: the 503
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, TraceScreen)
        assert app.screen.trace_id == FAILED
        text = _waterfall(app)
        assert "frontend/default in" in text and "503" in text
        detail = str(app.screen.query_one("#span-detail", Static).render())
        assert "gateway" in detail and "status 503" in detail
        await pilot.press("down")
        detail = str(app.screen.query_one("#span-detail", Static).render())
        assert "gateway -> frontend/default via default" in detail
        await pilot.press("escape")
        await pilot.press("f")  # failing only
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert client.calls[-1] == ("traces", ("frontend", None, "5xx", 50))
        await pilot.press("escape")
        assert not isinstance(app.screen, (TraceScreen, TracesScreen))


def test_an_unknown_trace_says_so_in_the_screen() -> None:
    async def run() -> None:
        app = _Host(TraceScreen(RecordedClient("shop"), "0123456789abcdef"))
        async with app.run_test(size=(100, 20)) as pilot:
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert "no trace 0123456789abcdef" in _waterfall(app)

    asyncio.run(run())


def test_the_help_lists_the_traces_key() -> None:
    assert any(keys == "t" and action == "traces" for keys, _, action, _, _ in KEYMAP)


def test_waterfall_140x20(snap_compare: Any) -> None:
    app = _Host(TraceScreen(RecordedClient("shop"), OK))

    async def run_before(pilot: Pilot[None]) -> None:
        await settled(app, pilot, "#waterfall")
        await pilot.press("down", "down", "down")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(140, 20), run_before=run_before)


def test_trace_list_120x16(snap_compare: Any) -> None:
    app = _Host(TracesScreen(RecordedClient("shop"), "frontend"))

    async def run_before(pilot: Pilot[None]) -> None:
        await settled(app, pilot, "#traces-note", "#trace-list")

    assert snap_compare(app, terminal_size=(120, 16), run_before=run_before)
