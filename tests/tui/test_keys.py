"""Keys to API calls, against the recorded daemon (the real daemon's flows: live/test_live.py).

Time is a `ManualClock` moved on by the test: quick presses add up to one shift because the
clock says so, not because the machine was fast enough. Nothing here sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from devmesh.api import types as api
from devmesh.tui.app import MeshApp, make_app
from devmesh.tui.clock import ManualClock
from devmesh.tui.model import SHIFT_SETTLE
from tests.tui.conftest import feed
from tests.tui.fake import RecordedClient

# Rows of the recorded shop's routes table once catalog is selected:
# canary, → v2 (its one version), main, → v1, → v2, ingress, ...
TO_MAIN_V2 = ("down", "down", "down", "tab", "down", "down", "down", "down")
QUICK = SHIFT_SETTLE / 4  # between two presses of one burst


async def settle(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
    """Let the keys' quiet time pass, and the action workers finish and report."""
    clock.advance(SHIFT_SETTLE)
    await app.workers.wait_for_complete()
    await pilot.pause()


async def press(pilot: Pilot[None], clock: ManualClock, *keys: str, gap: float = QUICK) -> None:
    """Press `keys` with `gap` seconds of the clock between them."""
    for key in keys:
        await pilot.press(key)
        clock.advance(gap)


def drive(
    script: Callable[[MeshApp, Pilot[None], ManualClock], Awaitable[None]],
) -> RecordedClient:
    client = RecordedClient("shop")
    clock = ManualClock()
    app = make_app(client, poll=False, clock=clock)

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await feed(app, pilot, client.frames)
            await script(app, pilot, clock)

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
    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
        await pilot.press(*TO_MAIN_V2)
        row = app.query_one("#routes").current()  # type: ignore[attr-defined]
        assert row.key == "version:catalog/main/v2"
        await press(pilot, clock, *keys)
        await app.workers.wait_for_complete()
        assert client_calls(app) == []  # still within the quiet time: nothing sent yet
        await settle(app, pilot, clock)

    assert drive(script).calls == [("shift", ("catalog", weights, "main"))]


def client_calls(app: MeshApp) -> list[tuple[str, tuple[Any, ...]]]:
    client = app.client
    assert isinstance(client, RecordedClient)
    return client.calls


def test_presses_apart_by_more_than_the_quiet_time_make_two_shifts() -> None:
    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
        await pilot.press(*TO_MAIN_V2)
        await press(pilot, clock, "plus", gap=SHIFT_SETTLE)  # sent: the next press is later
        await app.workers.wait_for_complete()
        assert len(client_calls(app)) == 1
        await press(pilot, clock, "plus", "plus")
        await settle(app, pilot, clock)

    # The second shift starts from the weights asked for, not yet served, by the first.
    assert drive(script).calls == [
        ("shift", ("catalog", {"v1": 75, "v2": 25}, "main")),
        ("shift", ("catalog", {"v1": 65, "v2": 35}, "main")),
    ]


def test_fault_keys_ask_first_then_set_a_delay_and_an_abort() -> None:
    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
        await pilot.press(*TO_MAIN_V2, "f", "n")  # asks first: no
        await settle(app, pilot, clock)
        await pilot.press("f", "y")
        await settle(app, pilot, clock)
        await pilot.press("a", "y")
        await settle(app, pilot, clock)

    delay = api.DelaySpec(fixed_ms=300, percent=50)
    abort = api.AbortSpec(percent=50, status=503)
    # The recorded routes never show an override, so each key starts from the file's fault.
    assert drive(script).calls == [
        ("fault", ("catalog", "main", delay, None)),
        ("fault", ("catalog", "main", None, abort)),
    ]


def test_restart_asks_first() -> None:
    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
        await pilot.press("down", "down", "down", "r", "n")
        await settle(app, pilot, clock)
        await pilot.press("r", "y")
        await settle(app, pilot, clock)

    assert drive(script).calls == [("restart", (None, "tuidev-catalog-v1-0"))]


def test_keys_on_the_wrong_row_say_what_to_select() -> None:
    texts: list[str] = []

    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
        await pilot.press("tab", *["down"] * 12, "plus")  # an ingress route: no weights there
        await pilot.press("shift+tab", *["down"] * 12, "r")  # the gateway: no pod to restart
        await pilot.pause()
        texts.extend(n.message for n in app._notifications)

    assert drive(script).calls == []
    assert any("ingress routes go to one service" in t for t in texts)
    assert any("select a pod or a service" in t for t in texts)


def test_help_lists_every_key() -> None:
    seen: dict[str, Any] = {}

    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
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

    async def script(app: MeshApp, pilot: Pilot[None], clock: ManualClock) -> None:
        await pilot.click("#pods", offset=(5, 3))  # the header is line 0: this is catalog
        seen["pod"] = app.query_one("#pods").current().key  # type: ignore[attr-defined]
        seen["routes"] = [r.key for r in app.query_one("#routes").shown][:2]  # type: ignore[attr-defined]

    drive(script)
    assert seen["pod"] == "svc:catalog"
    assert seen["routes"] == ["route:catalog/canary", "version:catalog/canary/v2"]
