"""What the TUI needs from the daemon: the API calls, as a protocol so tests can record them.

`DaemonClient` (devmesh.client) has every call but `logs`; `TuiClient` adds it here. A fake
that replays recorded JSON satisfies `MeshClient` too (the snapshot tests use one).
"""

from __future__ import annotations

from typing import Any, Protocol

from devmesh.client import DaemonClient


class MeshClient(Protocol):
    def state(self) -> dict[str, Any]: ...

    def routes(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def events(self) -> dict[str, Any]: ...

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> dict[str, Any]: ...

    def fault(
        self,
        service: str,
        route: str | None = None,
        delay: dict[str, Any] | None = None,
        abort: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def restart(self, service: str | None = None, pod: str | None = None) -> dict[str, Any]: ...

    def logs(self, pod: str, tail: int = 100) -> dict[str, Any]: ...


class TuiClient(DaemonClient):
    """The daemon's client with the app-log call the TUI's log pane uses."""

    def logs(self, pod: str, tail: int = 100) -> dict[str, Any]:
        """{"pod", "lines": [...]}: the last `tail` lines of the pod's app log."""
        result: dict[str, Any] = self._call("POST", "/v1/logs", {"pod": pod, "tail": tail})
        return result

    @classmethod
    def of(cls, client: DaemonClient) -> TuiClient:
        return cls(client.socket_path, client.timeout)
