"""A client of the daemon's local API (the CLI's and the TUI's only way to the daemon)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from devmesh.core.problems import MeshError
from devmesh.unixhttp import UnixHTTPConnection


class DaemonUnavailable(MeshError):
    pass


class DaemonClient:
    def __init__(self, socket_path: Path, timeout: float = 10) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            status, payload = self._exchange(conn, method, path, body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()
        return self._result(status, payload)

    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(f"the daemon does not answer on {self.socket_path}: {exc}")

    @staticmethod
    def _exchange(
        conn: UnixHTTPConnection, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")

    @staticmethod
    def _result(status: int, payload: Any) -> Any:
        if status >= 400:
            raise MeshError(str(payload.get("error", f"daemon answered {status}")))
        return payload

    def alive(self) -> bool:
        try:
            self._call("GET", "/v1/state")
            return True
        except MeshError:
            return False

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/state")
        return result

    def reload(self, file: str | None = None) -> dict[str, Any]:
        # A reload rebuilds images and reconciles before it answers: allow it the time.
        slow = DaemonClient(self.socket_path, timeout=max(self.timeout, 600))
        result: dict[str, Any] = slow._call("POST", "/v1/reload", {"file": file})
        return result

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> dict[str, Any]:
        body = {"service": service, "weights": weights, "route": route}
        result: dict[str, Any] = self._call("POST", "/v1/shift", body)
        return result

    def routes(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/routes")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/stats")
        return result

    def events(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/events")
        return result

    def fault(
        self,
        service: str,
        route: str | None = None,
        delay: dict[str, Any] | None = None,
        abort: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """delay={"fixed_ms": 200, "percent": 50}, abort={"status": 503, "percent": 10};
        neither clears the route's fault override."""
        body = {"service": service, "route": route, "delay": delay, "abort": abort}
        result: dict[str, Any] = self._call("POST", "/v1/fault", body)
        return result

    def restart(self, service: str | None = None, pod: str | None = None) -> dict[str, Any]:
        body = {"pod": pod} if pod else {"service": service}
        result: dict[str, Any] = self._call("POST", "/v1/restart", body)
        return result

    def shutdown(self) -> None:
        self._call("POST", "/v1/shutdown", {})
