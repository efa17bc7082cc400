"""The TUI's client against the daemon's real API server (in process, on a UNIX socket in
tmp_path): reads share a kept connection, changes do not, a restarted daemon is found again."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from devmesh.client import DaemonUnavailable
from devmesh.daemon.api import ApiServer
from devmesh.tui.source import TuiClient


def _server(path: Path, calls: list[tuple[str, str]]) -> ApiServer:
    """Each route answers with the name of the thread that ran it: the API server runs one
    thread per connection, so the same name means the same connection."""

    def answer(route: str) -> Any:
        def handle(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            calls.append((route, threading.current_thread().name))
            return 200, {"thread": threading.current_thread().name}

        return handle

    server = ApiServer(
        path,
        {
            ("GET", "/v1/state"): answer("state"),
            ("GET", "/v1/stats"): answer("stats"),
            ("POST", "/v1/shift"): answer("shift"),
        },
    )
    server.start()
    return server


def test_reads_keep_one_connection_changes_do_not_and_a_new_daemon_is_found(
    tmp_path: Path,
) -> None:
    path = tmp_path / "api.sock"
    calls: list[tuple[str, str]] = []
    server = _server(path, calls)
    client = TuiClient(path, timeout=5)
    try:
        reads = {client.state()["thread"] for _ in range(3)} | {client.stats()["thread"]}
        assert len(reads) == 1
        shifts = {client.shift("api", {"v1": 100}, None)["thread"] for _ in range(2)}
        assert len(shifts) == 2 and not shifts & reads
        server.stop()
        with pytest.raises(DaemonUnavailable):
            client.state()
        server = _server(path, calls)  # the daemon came back on the same socket
        again = client.state()["thread"]
        assert client.state()["thread"] == again and again not in reads
    finally:
        server.stop()
