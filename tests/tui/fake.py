"""A client that replays API documents recorded from a real daemon (tests/tui/record.py):
the one place a fake stands in for the daemon, for snapshot tests of the screens."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from devmesh.core.problems import MeshError

RECORDED = Path(__file__).parent / "recorded"


class RecordedClient:
    def __init__(self, name: str) -> None:
        where = RECORDED / name
        self._state: dict[str, Any] = json.loads((where / "state.json").read_text())
        self._routes: dict[str, Any] = json.loads((where / "routes.json").read_text())
        self._events: dict[str, Any] = json.loads((where / "events.json").read_text())
        self._stats: list[dict[str, Any]] = json.loads((where / "stats.json").read_text())
        self._logs: dict[str, list[str]] = json.loads((where / "logs.json").read_text())
        self._read = 0
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    @property
    def frames(self) -> int:
        return len(self._stats)

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def routes(self) -> dict[str, Any]:
        return copy.deepcopy(self._routes)

    def events(self) -> dict[str, Any]:
        return copy.deepcopy(self._events)

    def stats(self) -> dict[str, Any]:
        """The recorded reads in order, then the last one again."""
        doc = self._stats[min(self._read, len(self._stats) - 1)]
        self._read += 1
        return copy.deepcopy(doc)

    def logs(self, pod: str, tail: int = 100) -> dict[str, Any]:
        if pod not in self._logs:
            raise MeshError(f"no pod {pod!r}")
        return {"pod": pod, "lines": self._logs[pod][-tail:]}

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> dict[str, Any]:
        self.calls.append(("shift", (service, weights, route)))
        return {"ok": True, "service": service, "route": route, "weights": weights}

    def fault(
        self,
        service: str,
        route: str | None = None,
        delay: dict[str, Any] | None = None,
        abort: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("fault", (service, route, delay, abort)))
        return {"ok": True, "service": service, "route": route, "active": bool(delay or abort)}

    def restart(self, service: str | None = None, pod: str | None = None) -> dict[str, Any]:
        self.calls.append(("restart", (service, pod)))
        return {"ok": True, "restarted": [f"{pod}-app"]}
