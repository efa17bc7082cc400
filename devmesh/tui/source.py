"""What the TUI needs from the daemon: the API calls, as a protocol so tests can record them.

`DaemonClient` (devmesh.client) has every call but `logs`; `TuiClient` adds it here. A fake
that replays recorded JSON satisfies `MeshClient` too (the snapshot tests use one).
"""

from __future__ import annotations

import http.client
import threading
from pathlib import Path
from typing import Any, Protocol

from devmesh.client import DaemonClient
from devmesh.unixhttp import STALE, UnixHTTPConnection

# Calls that only read: the ones asked once a second, and safe to send again.
_READS = {("GET", "/v1/state"), ("GET", "/v1/routes"), ("GET", "/v1/stats"),
          ("GET", "/v1/events"), ("POST", "/v1/logs")}  # fmt: skip


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
    """The daemon's client with the app-log call the TUI's log pane uses, and reads on a
    connection kept open per thread: the TUI asks three to four times a second, and a new
    connection each time costs the daemon a thread and an accept per call (a kept one
    halves what a /v1/state costs it: 0.25 ms of CPU against 0.49). Changes (shift, fault,
    restart) go on a connection of their own, never sent twice."""

    def __init__(self, socket_path: Path, timeout: float = 10) -> None:
        super().__init__(socket_path, timeout)
        self._kept = threading.local()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if (method, path) not in _READS:
            return super()._call(method, path, body)
        conn: UnixHTTPConnection | None = getattr(self._kept, "conn", None)
        if conn is not None:
            try:
                status, payload = self._exchange(conn, method, path, body)
            except STALE:
                conn.close()  # the daemon restarted, or closed it: once more, anew
            except (OSError, http.client.HTTPException, ValueError) as exc:
                conn.close()  # a timeout, or not an answer: asking again would not help
                self._kept.conn = None
                raise self._unavailable(exc) from None
            else:
                return self._result(status, payload)
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        self._kept.conn = conn
        try:
            status, payload = self._exchange(conn, method, path, body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            self._kept.conn = None
            raise self._unavailable(exc) from None
        return self._result(status, payload)

    def logs(self, pod: str, tail: int = 100) -> dict[str, Any]:
        """{"pod", "lines": [...]}: the last `tail` lines of the pod's app log."""
        result: dict[str, Any] = self._call("POST", "/v1/logs", {"pod": pod, "tail": tail})
        return result

    @classmethod
    def of(cls, client: DaemonClient) -> TuiClient:
        return cls(client.socket_path, client.timeout)
