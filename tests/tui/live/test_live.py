"""The TUI's flows with Pilot against a real daemon running a real mesh (Docker, Envoy)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from textual.pilot import Pilot

from devmesh.daemon.state import StateDir
from devmesh.tui.app import MeshApp, make_app
from devmesh.tui.source import connect
from devmesh.tui.widgets import RowTable
from tests.e2e.conftest import Mesh
from tests.e2e.test_live import MAIN, live_shop, weights
from tests.e2e.test_runtime import served_by

pytestmark = pytest.mark.docker


@contextmanager
def traffic(mesh: Mesh, path: str = "/catalog/x", every: float = 0.05) -> Iterator[Counter[str]]:
    """GETs through the ingress (127.0.0.1 only) until the block ends, at most two minutes."""
    seen: Counter[str] = Counter()
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                r = mesh.get(path)
                seen[f"{r.status} {served_by(r)}"] += 1
            except OSError:
                seen["error"] += 1
            stop.wait(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def status(counts: Counter[str], code: str) -> int:
    return sum(n for k, n in counts.items() if k.startswith(code))


def cell(app: MeshApp, table: str, row: str, column: str) -> str:
    return app.query_one(f"#{table}", RowTable).cell_text(row, column)


async def until(pilot: Pilot[None], check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        await pilot.pause(0.2)
        last = check()
        if last:
            return last
    raise AssertionError(f"not true within {timeout}s (last: {last!r})")


def attach(mesh: Mesh, script: Callable[[MeshApp, Pilot[None]], Awaitable[None]]) -> None:
    client = connect(StateDir.for_project(mesh.project).api_socket, timeout=5)
    app = make_app(client)

    async def run() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await script(app, pilot)

    asyncio.run(run())


async def select(pilot: Pilot[None], app: MeshApp, table: str, key: str) -> None:
    t = app.query_one(f"#{table}", RowTable)
    await until(pilot, lambda: t.row(key) is not None)
    t.focus()
    assert t.select_key(key)
    await pilot.pause()


def test_shows_pods_routes_live_numbers_and_the_app_log(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    v1_pod = f"{mesh.project}-catalog-v1-0"

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: cell(app, "pods", "svc:catalog", "state") == "● 2/2 ready")
        assert cell(app, "pods", f"pod:{v1_pod}", "xds") == "ACK"
        assert cell(app, "pods", "gateway", "state") == "● ready"
        await select(pilot, app, "pods", f"pod:{v1_pod}")
        assert cell(app, "routes", "version:catalog/main/v2", "weight") == "20"
        with traffic(mesh):
            await until(
                pilot, lambda: cell(app, "routes", "route:catalog/main", "rps") not in ("-", "0")
            )
            # Latency comes from Envoy's histograms, summarised once per stats flush (5 s).
            await until(pilot, lambda: cell(app, "routes", "route:catalog/main", "p50") != "-", 20)
            await until(
                pilot, lambda: cell(app, "routes", "version:catalog/main/v1", "seen") != "-"
            )
            await until(pilot, lambda: cell(app, "routes", "ingress:api", "rps") not in ("-", "0"))
        await pilot.press("l")
        log = app.query_one("#log")
        await until(pilot, lambda: any("catalog/v1" in line for line in log.lines))  # type: ignore[attr-defined]

    attach(mesh, script)


def test_shift_by_keys_moves_traffic_writes_the_file_and_the_split_follows(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    original = mesh.file.read_text()
    seen: dict[str, Any] = {}

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await select(pilot, app, "pods", "svc:catalog")
        await select(pilot, app, "routes", "version:catalog/main/v2")
        with traffic(mesh) as counts:
            await until(
                pilot, lambda: cell(app, "routes", "version:catalog/main/v2", "seen") != "-"
            )
            await pilot.press(*["right_square_bracket"] * 8)  # 20 -> 100, sent as one shift
            await until(
                pilot, lambda: cell(app, "routes", "version:catalog/main/v2", "weight") == "100"
            )
            counts.clear()
            await until(pilot, lambda: counts["200 catalog/v2"] >= 20, 15)
            seen["counts"] = dict(counts)
            # The observed split (summed over the last five reads) follows within seconds.
            await until(
                pilot, lambda: cell(app, "routes", "version:catalog/main/v2", "seen") == "100%", 15
            )
        seen["events"] = list(app.query_one("#events").lines)  # type: ignore[attr-defined]
        seen["notes"] = [n.message for n in app._notifications]

    attach(mesh, script)
    assert mesh.file.read_text() == original.replace(MAIN, weights(0, 100))
    assert set(seen["counts"]) == {"200 catalog/v2"}
    assert any("catalog/main: v1 0, v2 100" in note for note in seen["notes"])
    # The daemon's own event of the change, as it tells it (not rebuilt from two states),
    # and only that one: the TUI writes no second line of its own for a change made.
    assert sum("shift: applied in" in line for line in seen["events"]) == 1
    assert not any("v1 0, v2 100 (applied" in line for line in seen["events"])


def test_fault_toggle_and_pod_restart(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    v1_pod = f"{mesh.project}-catalog-v1-0"

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        await select(pilot, app, "pods", "svc:catalog")
        await select(pilot, app, "routes", "route:catalog/main")
        await pilot.press("a", "y")  # live traffic: it asks first
        await until(
            pilot, lambda: "⚡abort 503 50%" in cell(app, "routes", "route:catalog/main", "policy")
        )
        with traffic(mesh) as counts:
            # The callee's sidecar aborts: the 503 still says who it came from.
            await until(pilot, lambda: status(counts, "503") >= 3 and sum(counts.values()) >= 20)
        await pilot.press("a")  # clearing it undoes: no question
        await until(
            pilot, lambda: "abort" not in cell(app, "routes", "route:catalog/main", "policy")
        )
        with traffic(mesh) as counts:
            await until(pilot, lambda: sum(counts.values()) >= 20, 20)
            assert status(counts, "503") == 0
        await select(pilot, app, "pods", f"pod:{v1_pod}")
        await pilot.press("r", "y")
        events = app.query_one("#events")
        await until(pilot, lambda: any(f"restarted {v1_pod}-app" in x for x in events.lines))  # type: ignore[attr-defined]
        await until(pilot, lambda: cell(app, "pods", f"pod:{v1_pod}", "state") == "● ready", 30)

    attach(mesh, script)
    pods = {p["pod"]: p for p in mesh.ps()["pods"]}
    assert pods[v1_pod]["state"] == "ready"  # `ps --json`: the PodState, as encoded


def test_file_problems_show_in_a_banner_as_they_happen(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    good = mesh.file.read_text()

    async def script(app: MeshApp, pilot: Pilot[None]) -> None:
        banner = app.query_one("#banner")
        await until(pilot, lambda: cell(app, "pods", "svc:catalog", "state") == "● 2/2 ready")
        assert not banner.has_class("shown")
        mesh.file.write_text(good.replace("    port: 7000", "    port: seven"))
        await until(pilot, lambda: banner.has_class("shown"), 15)
        text = str(banner.render())
        assert "services.stock.port: expected an integer, got 'seven'" in text
        mesh.file.write_text(good)
        await until(pilot, lambda: not banner.has_class("shown"), 15)

    attach(mesh, script)
