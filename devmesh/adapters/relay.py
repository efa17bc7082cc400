"""TCP relays from the mesh network to processes on the host (versions with `host:`).

A process started from a shell or an IDE usually listens on 127.0.0.1, which no container
can reach. The daemon binds a relay on the mesh network's gateway address (the host's
address on the mesh's own bridge, reachable from its pods and nowhere else), on a port
the kernel picks, and forwards each connection to 127.0.0.1:port. Never on all
interfaces. Not on the process's own port: a process that binds 0.0.0.0 later (Python's
http.server does) would then find its port taken.

The loop sets which relays should run (`HostRelays.set`); each relay's accept loop and
each connection's two copy loops are threads of their own that own only their sockets.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

log = logging.getLogger("devmesh.relay")
CONNECT_TIMEOUT = 2.0  # seconds to reach the host process; a debugger-paused one accepts
CHUNK = 65536


class Relay:
    def __init__(self, listen_ip: str, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.bind((listen_ip, 0))
        except OSError:
            self._sock.close()
            raise
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._accept, name=f"relay-{target_port}", daemon=True
        )
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError:
            client.close()  # the process is not listening: the sidecar sees a reset
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            src.shutdown(socket.SHUT_RD)
        # Each direction closes only what it owns once both are done: the socket objects are
        # closed when their last reference (this pump or its twin) goes.


class HostRelays:
    """The relays that should run: (listen ip, host port) -> Relay. The loop's alone.

    A relay no longer wanted keeps accepting for `grace` seconds before it closes: the loop
    drops it as it renders the config without it, and until every Envoy has taken that
    config, a request can still be sent to it (a relay closed at once made those fail with
    "remote connection failure")."""

    def __init__(self, grace: float = 10.0) -> None:
        self._relays: dict[tuple[str, int], Relay] = {}
        self._grace = grace
        # (listen ip, host port, relay port) -> the relay and the timer that closes it
        self._retiring: dict[tuple[str, int, int], tuple[Relay, threading.Timer]] = {}

    def set(self, wanted: set[tuple[str, int]]) -> list[str]:
        """Start what is missing, retire what is no longer wanted; what could not start.
        A relay that runs keeps its port (the sidecars' config names it)."""
        problems = []
        for gone in [k for k, (relay, _) in self._retiring.items() if relay.closed]:
            del self._retiring[gone]
        for key in set(self._relays) - wanted:
            relay = self._relays.pop(key)
            timer = threading.Timer(self._grace, relay.close)
            timer.daemon = True
            timer.start()
            self._retiring[(*key, relay.port)] = (relay, timer)
        for ip, port in sorted(wanted - set(self._relays)):
            try:
                self._relays[(ip, port)] = Relay(ip, port)
            except OSError as exc:
                problems.append(f"cannot relay from {ip} to the host's port {port}: {exc}")
        return problems

    def address(self, ip: str, port: int) -> tuple[str, int] | None:
        """Where pods reach the host's `port`: the relay's address, if it runs."""
        relay = self._relays.get((ip, port))
        return None if relay is None else (ip, relay.port)

    def close(self) -> None:
        """Close every relay now, the retiring ones too (the daemon stops)."""
        for relay, timer in self._retiring.values():
            timer.cancel()
            relay.close()
        self._retiring.clear()
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()
