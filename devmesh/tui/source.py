"""What the TUI needs from the daemon: the API calls, typed, as a protocol.

`DaemonClient(path, timeout, keep=True)` (devmesh.client) satisfies it, reading on one kept
connection per thread (the TUI reads three to four times a second). So does a fake that
replays recorded documents (tests/tui/fake.py, for the snapshot tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from devmesh.api import types as api
from devmesh.client import DaemonClient


class TraceClient(Protocol):
    """What the trace screens need."""

    def traces(
        self,
        service: str | None = None,
        slower_ms: float | None = None,
        status: str | None = None,
        limit: int = 50,
    ) -> api.TracesResult: ...

    def trace(self, trace_id: str) -> api.Trace: ...


class AccessClient(TraceClient, Protocol):
    """What the access-log screen needs (Enter opens a line's trace)."""

    def access(self, req: api.AccessRequest) -> api.AccessResult: ...


class MeshClient(AccessClient, Protocol):
    """Everything the TUI asks of the daemon."""

    def state(self) -> api.MeshState: ...

    def routes(self) -> api.Routes: ...

    def stats(self) -> api.Stats: ...

    def events(self) -> api.Events: ...

    def shift(
        self, service: str, weights: dict[str, int], route: str | None
    ) -> api.ShiftResult: ...

    def fault(
        self,
        service: str,
        route: str | None = None,
        delay: api.DelaySpec | None = None,
        abort: api.AbortSpec | None = None,
    ) -> api.FaultResult: ...

    def restart(self, service: str | None = None, pod: str | None = None) -> api.RestartResult: ...

    def logs(self, pod: str, tail: int = 100) -> api.LogsResult: ...


def connect(socket_path: Path, timeout: float = 5) -> DaemonClient:
    """The TUI's client of the daemon on `socket_path`: reads on a kept connection."""
    return DaemonClient(socket_path, timeout, keep=True)
