"""A client that replays API documents recorded from a real daemon (tests/tui/record.py):
the one place a fake stands in for the daemon, for snapshot and key tests of the screens.
The documents are decoded by the API's own codec, as the real client does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from devmesh.api import codec
from devmesh.api import types as api
from devmesh.client import DaemonRefused

RECORDED = Path(__file__).parent / "recorded"
T = TypeVar("T")


def load(name: str, document: str, cls: type[T]) -> T:
    return codec.decode(cls, json.loads((RECORDED / name / document).read_text()))


class RecordedClient:
    def __init__(self, name: str) -> None:
        where = RECORDED / name
        self._state = load(name, "state.json", api.MeshState)
        self._routes = load(name, "routes.json", api.Routes)
        self._events = load(name, "events.json", api.Events)
        self._stats = [
            codec.decode(api.Stats, doc) for doc in json.loads((where / "stats.json").read_text())
        ]
        self._logs: dict[str, list[str]] = json.loads((where / "logs.json").read_text())
        self._read = 0
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    @property
    def frames(self) -> int:
        return len(self._stats)

    def state(self) -> api.MeshState:
        return self._state  # frozen values: the same one each time is as good as a copy

    def routes(self) -> api.Routes:
        return self._routes

    def events(self) -> api.Events:
        return self._events

    def stats(self) -> api.Stats:
        """The recorded reads in order, then the last one again."""
        doc = self._stats[min(self._read, len(self._stats) - 1)]
        self._read += 1
        return doc

    def logs(self, pod: str, tail: int = 100) -> api.LogsResult:
        if pod not in self._logs:
            raise DaemonRefused(api.ApiError(api.ErrorCode.NOT_FOUND, f"no pod {pod!r}"))
        return api.LogsResult(pod, tuple(self._logs[pod][-tail:]))

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> api.ShiftResult:
        self.calls.append(("shift", (service, weights, route)))
        return api.ShiftResult(service, route or "default", weights, synced=True)

    def fault(
        self,
        service: str,
        route: str | None = None,
        delay: api.DelaySpec | None = None,
        abort: api.AbortSpec | None = None,
    ) -> api.FaultResult:
        self.calls.append(("fault", (service, route, delay, abort)))
        return api.FaultResult(service, route or "default", bool(delay or abort), synced=True)

    def restart(self, service: str | None = None, pod: str | None = None) -> api.RestartResult:
        self.calls.append(("restart", (service, pod)))
        return api.RestartResult((f"{pod}-app",))

    # Traces were recorded from a small mesh of their own (gateway -> frontend -> catalog).
    def traces(
        self,
        service: str | None = None,
        slower_ms: float | None = None,
        status: str | None = None,
        limit: int = 50,
    ) -> api.TracesResult:
        self.calls.append(("traces", (service, slower_ms, status, limit)))
        every = load("traces", "traces.json", api.TracesResult)
        kept = tuple(
            t
            for t in every.traces
            if (service is None or service in t.services)
            and (status != "5xx" or (t.status or 0) >= 500)
        )
        return api.TracesResult(kept, every.kept, every.capacity)

    def trace(self, trace_id: str) -> api.Trace:
        self.calls.append(("trace", (trace_id,)))
        for where in ("traces", "access"):  # the access log's recording has its trace too
            path = RECORDED / where / f"trace-{trace_id}.json"
            if path.exists():
                return load(where, path.name, api.Trace)
        raise DaemonRefused(api.ApiError(api.ErrorCode.NOT_FOUND, f"no trace {trace_id}"))

    def access(self, req: api.AccessRequest) -> api.AccessResult:
        """The access log recorded from a real daemon (tests/tui/recorded/access: gateway ->
        front -> back, 8 requests and 2 injected 503s), filtered by service and status."""
        self.calls.append(("access", (req.service, req.status)))
        every = load("access", "access.json", api.AccessResult)
        kept = tuple(
            e
            for e in every.entries
            if (req.service is None or req.service in (e.service, e.source_service))
            and (req.status != "5xx" or (e.status or 0) >= 500)
        )
        return api.AccessResult(kept[-req.limit :], every.counters)
