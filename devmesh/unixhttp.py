"""HTTP/1.1 over a UNIX socket: the daemon's API and the sidecars' admin APIs both live on
one (Envoy's admin refuses HTTP/1.0, so this is http.client's 1.1, not a raw socket)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

# What a request on a kept connection the peer has closed fails with (RemoteDisconnected is
# a ConnectionResetError): worth one more try on a new connection. A timeout is not.
STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str | Path, timeout: float | None = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
