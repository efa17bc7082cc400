"""UDP relays: Envoy's StatsD datagrams and X-Ray segments, from where the pods can send to
where the user's agent listens (the host's 127.0.0.1, which a container cannot reach).

A relay listens on a UNIX datagram socket in the state directory the pods mount (StatsD)
or on the mesh network's gateway address, the host's own address on the mesh's bridge
(X-Ray: Envoy's tracer takes only an IP). Never on all interfaces. Each datagram is sent on
as it is; UDP never waits for the agent, so an address nobody listens on costs a refused
send, counted, and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from devmesh.plan.desired import PROXY_UID

log = logging.getLogger("devmesh.relay")

MAX_DATAGRAM = 65_535


@dataclass(frozen=True, slots=True)
class RelaySpec:
    name: str  # "statsd", "xray"
    listen: str | tuple[str, int]  # a UNIX datagram socket path, or a UDP (host, port)
    target: tuple[str, int]  # UDP, on the host's loopback


class UdpRelay:
    def __init__(self, spec: RelaySpec) -> None:
        self.spec = spec
        self.relayed = 0
        self.failed = 0  # datagrams the target refused (nobody listens) or could not take
        self._in: socket.socket | None = None
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{spec.name}", daemon=True)

    def start(self) -> None:
        """Bind (OSError when the address is taken or not ours) and start relaying."""
        listen = self.spec.listen
        if isinstance(listen, str):
            path = Path(listen)
            if path.is_socket():
                path.unlink()  # left by a daemon that did not stop cleanly
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(listen)
            # As the xDS socket: the daemon's user, or the proxies' under a root daemon.
            os.chmod(listen, stat.S_IRUSR | stat.S_IWUSR)
            if os.geteuid() == 0:
                os.chown(listen, PROXY_UID, PROXY_UID)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(listen)
        sock.settimeout(0.5)
        self._in = sock
        self._thread.start()
        log.info("relaying %s from %s to %s:%d", self.spec.name, listen, *self.spec.target)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        if self._in is not None:
            self._in.close()
        self._out.close()
        if isinstance(self.spec.listen, str):
            with contextlib.suppress(OSError):
                os.unlink(self.spec.listen)

    def _run(self) -> None:
        assert self._in is not None
        while not self._stop.is_set():
            try:
                data = self._in.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                self._out.sendto(data, self.spec.target)
                self.relayed += 1
            except OSError:  # refused (ICMP from an earlier send), or the buffer is full
                self.failed += 1


class Relays:
    """The relays a mesh wants, kept in step with it by `sync` (any one thread)."""

    def __init__(self) -> None:
        self._running: dict[str, UdpRelay] = {}
        self.errors: dict[str, str] = {}  # name -> why it could not bind

    def sync(self, specs: list[RelaySpec]) -> list[str]:
        """Start, replace or stop relays to match `specs`; what newly could not start."""
        new_errors: list[str] = []
        want = {s.name: s for s in specs}
        for name, relay in list(self._running.items()):
            if want.get(name) != relay.spec:
                relay.stop()
                del self._running[name]
        for name, spec in want.items():
            if name in self._running:
                continue
            relay = UdpRelay(spec)
            try:
                relay.start()
            except OSError as exc:
                relay.stop()
                error = f"cannot relay {name} from {spec.listen}: {exc}"
                if self.errors.get(name) != error:
                    log.warning("%s", error)
                    new_errors.append(error)
                self.errors[name] = error
                continue
            self.errors.pop(name, None)
            self._running[name] = relay
        for name in list(self.errors):
            if name not in want:
                del self.errors[name]
        return new_errors

    def counters(self) -> dict[str, tuple[int, int]]:
        return {n: (r.relayed, r.failed) for n, r in self._running.items()}

    def close(self) -> None:
        self.sync([])
