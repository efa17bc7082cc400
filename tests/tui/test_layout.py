"""Issue 15's TUI items, against the recorded daemon: nothing clipped at 80×24 or 160×48,
the URL whole, `d` describes, `/` filters, faults ask first, an action's event shows once,
one-version routes list one version. (The pictures themselves: test_snapshots.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Log

from devmesh.api import types as api
from devmesh.tui.app import MeshApp, make_app
from devmesh.tui.clock import ManualClock
from devmesh.tui.model import bring_up_progress, header_text
from devmesh.tui.widgets import Line, RowTable
from tests.tui.conftest import feed
from tests.tui.fake import RecordedClient, load


def run(
    size: tuple[int, int],
    script: Callable[[MeshApp, Pilot[None]], Awaitable[None]],
    owns_mesh: bool = False,
) -> RecordedClient:
    client = RecordedClient("shop")
    app = make_app(client, poll=False, clock=ManualClock(), owns_mesh=owns_mesh)

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await feed(app, pilot, client.frames)
            await script(app, pilot)

    asyncio.run(go())
    return client


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_no_table_row_is_wider_than_its_table_and_the_url_is_whole(size) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press("down", "down", "down")  # catalog: the widest routes
        await pilot.pause()
        for name in ("pods", "routes"):
            table = app.query_one(f"#{name}", RowTable)
            seen[name] = (table.content_width, table.size.width, table.drawn_columns)
            seen[name + "-right"] = table.region.right
        seen["bottom-left"] = app.query_one("#bottom").region.x
        seen["title"] = str(app.query_one("#title", Line).text)
        seen["wide"] = app.screen.has_class("-wide")

    run(size, script, owns_mesh=True)
    for name in ("pods", "routes"):
        content, width, columns = seen[name]
        assert content <= width, f"{name}: rows of {content} cells in {width}"
        assert columns[:3] == (
            ["name", "state", "version"] if name == "pods" else ["route", "weight", "seen"]
        )
    if seen["wide"]:  # side by side: the tables end before the log and events pane starts
        assert seen["routes-right"] <= seen["bottom-left"]
        assert "match" in seen["routes"][2] and "policy" in seen["routes"][2]
    assert "http://127.0.0.1:18080/" in seen["title"]
    assert len(seen["title"]) <= size[0]


def test_header_drops_the_least_needed_parts_first_never_the_url() -> None:
    state = load("shop", "state.json", api.MeshState)
    wide = header_text(state, True, 200)
    assert "q stops the mesh" in wide and "5/5 pods ready" in wide and "(tuidev)" in wide
    for width in (70, 60, 50):
        narrow = header_text(state, True, width)
        assert "http://127.0.0.1:18080/" in narrow and narrow.startswith("shop")
        assert len(narrow) <= width - 2 or "(" not in narrow


def test_one_version_route_lists_that_version_only() -> None:
    seen: list[str] = []

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press("down", "down", "down")
        seen.extend(r.key for r in app.query_one("#routes", RowTable).shown)

    run((100, 30), script)
    assert "version:catalog/canary/v2" in seen
    assert "version:catalog/canary/v1" not in seen  # no "→ v1 0" under `to: v2`
    assert {"version:catalog/main/v1", "version:catalog/main/v2"} <= set(seen)


def test_d_describes_the_selected_service_and_changes_nothing() -> None:
    seen: dict[str, str] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press("down", "down", "d")  # catalog
        await pilot.pause()
        seen["screen"] = str(app.screen.id)
        seen["text"] = str(app.screen.query_one("#describe-text").render())
        await pilot.press("escape", "down", "d")  # its first pod
        await pilot.pause()
        seen["pod"] = str(app.screen.query_one("#describe-text").render())
        await pilot.press("escape")
        seen["after"] = str(app.screen.id)

    client = run((100, 30), script)
    assert client.calls == []
    assert seen["screen"] == "describe"
    assert "Service:   catalog (http)" in seen["text"]
    assert "tuidev-catalog-v2-1" in seen["text"] and "catalog/main:" in seen["text"]
    assert "Pod:       tuidev-catalog-v1-0" in seen["pod"] and "192.168.80.4" in seen["pod"]
    assert seen["after"] != "describe"


def test_slash_filters_the_services_and_esc_clears() -> None:
    seen: dict[str, list[str]] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        table = app.query_one("#pods", RowTable)
        await pilot.press("slash", "c", "a", "t")
        await pilot.pause()
        seen["filtered"] = [r.key for r in table.shown]
        await pilot.press("enter", "escape")
        await pilot.pause()
        seen["cleared"] = [r.key for r in table.shown]

    run((100, 30), script)
    assert [k for k in seen["filtered"] if k.startswith("svc:")] == ["svc:catalog"]
    assert "gateway" in seen["filtered"]
    assert {"svc:frontend", "svc:catalog", "svc:stock"} <= set(seen["cleared"])


def test_a_fault_asks_first_says_how_to_undo_and_its_event_shows_once() -> None:
    seen: dict[str, Any] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        keys = ("down", "down", "down", "tab", "down", "down", "down", "down")
        await pilot.press(*keys, "f")
        await pilot.pause()
        seen["asked"] = str(app.screen.id)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        seen["notes"] = [n.message for n in app._notifications]
        seen["events"] = list(app.query_one("#events", Log).lines)

    client = run((100, 30), script)
    assert seen["asked"] == "confirm"
    assert client.calls == [
        ("fault", ("catalog", "main", api.DelaySpec(fixed_ms=300, percent=50), None))
    ]
    assert any("f on this route again clears it" in n for n in seen["notes"])
    # The daemon's own `fault` event is the one line for it; the TUI adds none of its own.
    assert not any("fault on catalog/main" in line for line in seen["events"])


def test_refused_action_is_written_to_the_events_pane() -> None:
    seen: list[str] = []

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        from devmesh.tui.app import ActionDone

        app.post_message(ActionDone("shift catalog/main refused: no", False))
        await pilot.pause()
        seen.extend(app.query_one("#events", Log).lines)

    run((100, 30), script)
    assert any("✗ shift catalog/main refused: no" in line for line in seen)


def test_bring_up_progress_names_the_image_then_the_pods() -> None:
    state = load("shop", "state.json", api.MeshState)
    events = load("shop", "events.json", api.Events).events
    building = next(e for e in events if e.kind == api.EventKind.IMAGE)
    import dataclasses

    empty = dataclasses.replace(state, phase=api.Phase.STARTING, ready=False, pods=())
    assert bring_up_progress(empty, [building]) == building.text
    starting = dataclasses.replace(
        state,
        phase=api.Phase.STARTING,
        ready=False,
        pods=(dataclasses.replace(state.pods[0], state=api.PodState.STARTING), *state.pods[1:]),
    )
    assert bring_up_progress(starting, events) == "pods starting: 4/5 ready"
    assert bring_up_progress(state, events) == ""
    assert "pods starting" in header_text(starting, True, 160, bring_up_progress(starting, []))


@pytest.mark.parametrize("recording", ["shop", "trouble"])
def test_event_lines_are_the_daemons_words_never_a_python_repr(recording, utc) -> None:
    from devmesh.tui.model import event_line

    for event in load(recording, "events.json", api.Events).events:
        line = event_line(event)
        assert line.endswith(event.text)
        assert "{'" not in line and "Event(" not in line and "EventKind." not in line
