"""The daemon's client against the daemon's real API server (in process, on a UNIX socket in
tmp_path): reads share a kept connection, changes do not, a restarted daemon is found again,
refusals arrive as typed errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from devmesh.api import types as api
from devmesh.client import DaemonClient, DaemonRefused, DaemonUnavailable
from devmesh.daemon.api import ApiServer, Endpoint, Refusal


def _thread() -> str:
    """The API server runs one thread per connection: the same name, the same connection."""
    return threading.current_thread().name


def _state(_: None) -> api.MeshState:
    return api.MeshState(_thread(), "toy", api.Phase.SERVING, ready=True)


def _events(_: None) -> api.Events:
    event = api.Event(0.0, api.EventKind.DAEMON, api.Severity.INFO, _thread(), "asked")
    return api.Events((event,))


def _shift(request: api.ShiftRequest) -> api.ShiftResult:
    if request.service != "api":
        raise Refusal(api.ErrorCode.NOT_FOUND, f"no service '{request.service}'")
    return api.ShiftResult(_thread(), request.route or "default", request.weights, True)


def _server(path: Path) -> ApiServer:
    server = ApiServer(
        path,
        [
            Endpoint("GET", "/v1/state", _state),
            Endpoint("GET", "/v1/events", _events),
            Endpoint("POST", "/v1/shift", _shift, api.ShiftRequest),
        ],
    )
    server.start()
    return server


def test_reads_keep_one_connection_changes_do_not_and_a_new_daemon_is_found(
    tmp_path: Path,
) -> None:
    path = tmp_path / "api.sock"
    server = _server(path)
    client = DaemonClient(path, timeout=5, keep=True)
    try:
        reads = {client.state().mesh for _ in range(3)} | {client.events().events[0].subject}
        assert len(reads) == 1
        shifts = {client.shift("api", {"v1": 100}, None).service for _ in range(2)}
        assert len(shifts) == 2 and not shifts & reads
        server.stop()
        with pytest.raises(DaemonUnavailable):
            client.state()
        server = _server(path)  # the daemon came back on the same socket
        again = client.state().mesh
        assert client.state().mesh == again and again not in reads
    finally:
        server.stop()


def test_a_refusal_reaches_the_client_as_its_code_and_message(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    server = _server(path)
    try:
        with pytest.raises(DaemonRefused) as refused:
            DaemonClient(path, timeout=5).shift("web", {"v1": 100}, None)
        assert refused.value.error == api.ApiError(api.ErrorCode.NOT_FOUND, "no service 'web'")
        with pytest.raises(DaemonRefused) as unknown:
            DaemonClient(path, timeout=5).routes()
        assert unknown.value.error.code is api.ErrorCode.NOT_FOUND
    finally:
        server.stop()
