"""Host relays on loopback sockets: a relay no longer wanted keeps serving for its grace."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from devmesh.adapters.relay import HostRelays


@pytest.fixture
def host_process() -> Iterator[int]:
    """A process on the host: answers each connection with b"hi" and closes it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(timeout=2)
    server.close()


def _ask(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=2) as conn:
        return conn.recv(16)


def test_a_dropped_relay_serves_through_its_grace_then_closes(host_process: int) -> None:
    relays = HostRelays(grace=0.5)
    try:
        assert relays.set({("127.0.0.1", host_process)}) == []
        address = relays.address("127.0.0.1", host_process)
        assert address is not None and _ask(address) == b"hi"
        relays.set(set())  # the config without it is being pushed
        assert relays.address("127.0.0.1", host_process) is None
        assert _ask(address) == b"hi"  # Envoys not yet switched still reach the process
        time.sleep(1.0)
        with pytest.raises(ConnectionRefusedError):
            _ask(address)
    finally:
        relays.close()


def test_close_closes_the_retiring_relays_at_once(host_process: int) -> None:
    relays = HostRelays(grace=30)
    relays.set({("127.0.0.1", host_process)})
    address = relays.address("127.0.0.1", host_process)
    assert address is not None
    relays.set(set())
    relays.close()
    with pytest.raises(ConnectionRefusedError):
        _ask(address)
