"""HTTP/1.1 over a UNIX socket: the daemon's API and the sidecars' admin APIs both live on
one (Envoy's admin refuses HTTP/1.0, so this is http.client's 1.1, not a raw socket)."""

from __future__ import annotations

import errno
import http.client
import socket
import time
from pathlib import Path

# What a request on a kept connection the peer has closed fails with (RemoteDisconnected is
# a ConnectionResetError): worth one more try on a new connection. A timeout is not.
STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)

# How long connect() waits for room in a full listen queue. A UNIX socket's connect() does not
# wait for it (as TCP's does) but fails at once with EAGAIN: many clients connecting at the
# same moment is not a server that does not answer.
CONNECT_PATIENCE = 1.0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str | Path, timeout: float | None = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        patience = CONNECT_PATIENCE
        if isinstance(self.timeout, int | float):
            patience = min(patience, self.timeout)
        deadline = time.monotonic() + patience
        pause = 0.001
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause > deadline:
                    raise BlockingIOError(
                        errno.EAGAIN, f"the listen queue stayed full for {patience:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            except OSError:
                sock.close()
                raise
            self.sock = sock
            return
