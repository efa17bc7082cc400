"""A client of the daemon's local API (the CLI's, the TUI's and the pytest plugin's only way to
the daemon). Every call answers a typed value of `devmesh.api.types`, or raises:

- `DaemonUnavailable`: nothing answers on the socket (no daemon, or it is frozen or gone);
- `DaemonRefused`: the daemon answered with an error; `.error` says its code and message.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from devmesh.api import codec
from devmesh.api import types as api
from devmesh.core.problems import MeshError
from devmesh.unixhttp import STALE, UnixHTTPConnection

T = TypeVar("T")


class DaemonUnavailable(MeshError):
    pass


class DaemonRefused(MeshError):
    def __init__(self, error: api.ApiError) -> None:
        super().__init__(error.message)
        self.error = error


FOLLOW_SILENCE = 10.0  # seconds of nothing on a followed log stream: the daemon is gone

# Calls that only read: safe to send again on a new connection when a kept one went stale.
_READS = frozenset({"/v1/state", "/v1/routes", "/v1/stats", "/v1/events", "/v1/logs"})


class DaemonClient:
    """`keep=True` keeps one connection per thread for reads (the TUI asks several times a
    second: a kept connection halves what a /v1/state costs the daemon). Changes always go
    on a connection of their own and are never sent twice."""

    def __init__(self, socket_path: Path, timeout: float = 10, keep: bool = False) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.keep = keep
        self._kept = threading.local()

    # -- transport ----------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any, answer: type[T], wait: float = 0.0) -> T:
        """`wait`: what the daemon may take for this call, beyond the client's timeout."""
        data = None if body is None else codec.dumps(body)
        if self.keep and path in _READS:
            status, payload = self._kept_exchange(method, path, data)
        else:
            conn = UnixHTTPConnection(self.socket_path, max(self.timeout, wait))
            try:
                status, payload = self._exchange(conn, method, path, data)
            except (OSError, http.client.HTTPException) as exc:
                raise self._unavailable(exc) from None
            finally:
                conn.close()
        return self._result(status, payload, answer)

    def _kept_exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        conn: UnixHTTPConnection | None = getattr(self._kept, "conn", None)
        if conn is not None:
            try:
                return self._exchange(conn, method, path, data)
            except STALE:
                conn.close()  # the daemon restarted, or closed it: once more, anew
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # a timeout, or not an answer: asking again would not help
                self._kept.conn = None
                raise self._unavailable(exc) from None
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        self._kept.conn = conn
        try:
            return self._exchange(conn, method, path, data)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._kept.conn = None
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self.timeout:g} s (the daemon may be frozen)"
        else:
            why = str(exc) or type(exc).__name__
        return DaemonUnavailable(f"the daemon does not answer on {self.socket_path}: {why}")

    @staticmethod
    def _exchange(
        conn: UnixHTTPConnection, method: str, path: str, data: bytes | None
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def _result(self, status: int, raw: bytes, answer: type[T]) -> T:
        try:
            payload = codec.loads(raw or b"{}")
            if status >= 400:
                error = payload.get("error") if isinstance(payload, dict) else None
                if isinstance(error, dict):
                    raise DaemonRefused(codec.decode(api.ApiError, error))
                raise DaemonRefused(api.ApiError(api.ErrorCode.INTERNAL, f"answered {status}"))
            return codec.decode(answer, payload)
        except codec.DecodeError as exc:
            raise DaemonUnavailable(
                f"the daemon on {self.socket_path} answered something else than its API: {exc}"
            ) from None

    # -- calls --------------------------------------------------------------------------------

    def alive(self) -> bool:
        try:
            self.state()
            return True
        except MeshError:
            return False

    def state(self) -> api.MeshState:
        return self._call("GET", "/v1/state", None, api.MeshState)

    def routes(self) -> api.Routes:
        return self._call("GET", "/v1/routes", None, api.Routes)

    def stats(self) -> api.Stats:
        return self._call("GET", "/v1/stats", None, api.Stats)

    def events(self) -> api.Events:
        return self._call("GET", "/v1/events", None, api.Events)

    def reload(self, file: str | None = None) -> api.ReloadResult:
        # A reload rebuilds images and reconciles before it answers: allow it the time.
        body = api.ReloadRequest(file)
        return self._call("POST", "/v1/reload", body, api.ReloadResult, api.RELOAD_WAIT + 10)

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> api.ShiftResult:
        body = api.ShiftRequest(service, dict(weights), route)
        return self._call("POST", "/v1/shift", body, api.ShiftResult, api.CHANGE_TIMEOUT)

    def fault(
        self,
        service: str,
        route: str | None = None,
        delay: api.DelaySpec | None = None,
        abort: api.AbortSpec | None = None,
    ) -> api.FaultResult:
        """Neither delay nor abort: clear the route's fault override."""
        body = api.FaultRequest(service, route, delay, abort)
        return self._call("POST", "/v1/fault", body, api.FaultResult, api.CHANGE_TIMEOUT)

    def restart(self, service: str | None = None, pod: str | None = None) -> api.RestartResult:
        body = api.RestartRequest(pod=pod) if pod else api.RestartRequest(service=service)
        return self._call("POST", "/v1/restart", body, api.RestartResult, api.CHANGE_TIMEOUT)

    def logs(self, pod: str, tail: int = 100) -> api.LogsResult:
        """The last `tail` lines of the pod's app log."""
        return self._call("POST", "/v1/logs", api.LogsRequest(pod, tail), api.LogsResult)

    def traces(
        self,
        service: str | None = None,
        slower_ms: float | None = None,
        status: str | None = None,
        limit: int = 50,
    ) -> api.TracesResult:
        """The newest traces first, filtered: a service's, slower than, with a status."""
        body = api.TracesRequest(service, slower_ms, status, limit)
        return self._call("POST", "/v1/traces", body, api.TracesResult)

    def trace(self, trace_id: str) -> api.Trace:
        """One trace, every span (its id, or a unique start of at least 6 hex digits)."""
        return self._call("POST", "/v1/trace", api.TraceRequest(trace_id), api.Trace)

    def follow_logs(
        self,
        service: str | None,
        tail: int | None = None,
        proxy: bool = False,
        timestamps: bool = False,
    ) -> Iterator[api.LogLine]:
        """A service's (None: every service's) app log lines as they come, until no pod of it
        runs any more; `proxy`: the sidecars' (and the gateway's) own logs instead. The
        daemon sends a bare newline at least every second on a quiet log: `FOLLOW_SILENCE`
        seconds without anything means it is frozen or gone (DaemonUnavailable)."""
        request = api.FollowRequest(service, tail, proxy, timestamps)
        return self._follow("/v1/logs/follow", request, api.LogLine)

    def access(self, req: api.AccessRequest) -> api.AccessResult:
        """The newest access-log entries the daemon keeps that match `req`'s filters."""
        return self._call("POST", "/v1/access", req, api.AccessResult)

    def follow_access(self, req: api.AccessFollowRequest) -> Iterator[api.AccessEntry]:
        """Access-log entries as they come (after the last `req.tail` kept), until closed."""
        return self._follow("/v1/access/follow", req, api.AccessEntry)

    def _follow(self, path: str, request: Any, answer: type[T]) -> Iterator[T]:
        """A streamed answer, one value a line (see follow_logs)."""
        conn = UnixHTTPConnection(self.socket_path, timeout=FOLLOW_SILENCE)
        try:
            try:
                body = codec.dumps(request)
                conn.request("POST", path, body=body, headers={})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise self._unavailable(exc) from None
            if resp.status >= 400:
                self._result(resp.status, resp.read(), api.Ok)
            buffer = b""
            while True:
                try:
                    # read1, not readline: on a chunked answer readline takes a connection
                    # the daemon cut (it stopped, or died) for a clean end; read1 raises.
                    chunk = resp.read1(65536)
                except (OSError, http.client.HTTPException) as exc:
                    raise self._unavailable(exc) from None
                if not chunk:
                    return
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue  # the daemon's keepalive
                    try:
                        yield codec.decode(answer, codec.loads(line))
                    except codec.DecodeError as exc:
                        raise DaemonUnavailable(
                            f"the daemon on {self.socket_path} sent a line that is not "
                            f"{answer.__name__}: {exc}"
                        ) from None
        finally:
            conn.close()

    def shutdown(self) -> None:
        self._call("POST", "/v1/shutdown", api.Ok(), api.Ok)
