"""Keys to API calls, against the recorded daemon (the real daemon's flows: test_live.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from devmesh.tui.app import MeshApp, make_app
from tests.tui.conftest import feed
from tests.tui.fake import RecordedClient

# Rows of the recorded shop's routes table once catalog is selected:
# canary, → v1, → v2, main, → v1, → v2, ingress, ...
TO_MAIN_V2 = ("down", "down", "down", "tab", "down", "down", "down", "down", "down")
SETTLE = 0.6  # past the shift's settle time, and a worker's round trip


def drive(script: Callable[[MeshApp, Pilot[None]], Awaitable[None]]) -> RecordedClient:
    client = RecordedClient("shop")
    app = make_app(client, poll=False)

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await feed(app, pilot, client.frames)
            await script(app, pilot)

    asyncio.run(run())
    return client


@pytest.mark.parametrize(
    ("keys", "weights"),
    [
        (("plus",), {"v1": 75, "v2": 25}),
        (("plus", "plus", "right_square_bracket"), {"v1": 60, "v2": 40}),
        (("minus", "left_square_bracket"), {"v1": 95, "v2": 5}),
        (("w", "backspace", "backspace", "9", "0", "enter"), {"v1": 10, "v2": 90}),
        (("enter", "backspace", "backspace", "3", "3", "enter"), {"v1": 67, "v2": 33}),
    ],
    ids=["plus-5", "quick-presses-make-one-shift", "minus", "typed", "enter-types"],
)
def test_weight_keys_make_one_shift_call(keys: tuple[str, ...], weights: dict[str, int]) -> None:
    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press(*TO_MAIN_V2)
        row = app.query_one("#routes").current()  # type: ignore[attr-defined]
        assert row.key == "version:catalog/main/v2"
        await pilot.press(*keys)
        await asyncio.sleep(SETTLE)
        await pilot.pause()

    assert drive(script).calls == [("shift", ("catalog", weights, "main"))]


def test_fault_keys_toggle_a_delay_and_an_abort() -> None:
    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press(*TO_MAIN_V2, "d")
        await asyncio.sleep(SETTLE)
        await pilot.press("a")
        await asyncio.sleep(SETTLE)

    delay = {"fixed_ms": 300, "percent": 50}
    abort = {"status": 503, "percent": 50}
    # The recorded routes never show an override, so each key starts from the file's fault.
    assert drive(script).calls == [
        ("fault", ("catalog", "main", delay, None)),
        ("fault", ("catalog", "main", None, abort)),
    ]


def test_restart_asks_first() -> None:
    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press("down", "down", "down", "r", "n")
        await asyncio.sleep(SETTLE)
        await pilot.press("r", "y")
        await asyncio.sleep(SETTLE)

    assert drive(script).calls == [("restart", (None, "tuidev-catalog-v1-0"))]


def test_keys_on_the_wrong_row_say_what_to_select() -> None:
    texts: list[str] = []

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press("tab", *["down"] * 12, "plus")  # an ingress route: no weights there
        await pilot.press("shift+tab", *["down"] * 12, "r")  # the gateway: no pod to restart
        await pilot.pause()
        texts.extend(n.message for n in app._notifications)

    assert drive(script).calls == []
    assert any("ingress routes go to one service" in t for t in texts)
    assert any("select a pod or a service" in t for t in texts)


def test_help_lists_every_key() -> None:
    seen: dict[str, Any] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.press("question_mark")
        seen["text"] = str(app.screen.query_one("#help-text").render())
        await pilot.press("escape")
        seen["after"] = app.screen.id

    drive(script)
    for shown, what in MeshApp.KEYS:
        assert f"{shown}" in seen["text"] and what in seen["text"]
    assert len(MeshApp.KEYS) == len(MeshApp.BINDINGS)
    assert seen["after"] != "help"


def test_mouse_click_selects_a_row_and_its_routes() -> None:
    seen: dict[str, Any] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await pilot.click("#pods", offset=(5, 3))  # the header is line 0: this is catalog
        seen["pod"] = app.query_one("#pods").current().key  # type: ignore[attr-defined]
        seen["routes"] = [r.key for r in app.query_one("#routes").shown][:2]  # type: ignore[attr-defined]

    drive(script)
    assert seen["pod"] == "svc:catalog"
    assert seen["routes"] == ["route:catalog/canary", "version:catalog/canary/v1"]
