"""The app logs the TUI's log pane shows, followed rather than read again.

The TUI asks for the selected pod's last lines once a second. Reading them from Docker each
time cost the daemon two Engine API calls per second (an inspect and a logs read; about 0.5 %
of a core with a 160x48 TUI, and as much again in dockerd). Instead the first ask starts one
follow stream for that container; its lines are kept here, and later asks are answered from
memory. A stream nobody asked about for `IDLE` seconds is closed; one that ended (the
container stopped or was replaced) is started again on the next ask.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

KEEP = 1000  # lines kept per followed container (the API's largest tail)
IDLE = 30.0  # seconds without an ask before a stream is closed
PRIMED = 0.5  # seconds the first ask waits for the stream's first lines


class _Follower:
    def __init__(self, name: str, stream: Any) -> None:
        self.name = name
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=KEEP)
        self.partial = ""
        self.asked = time.monotonic()
        self.ended = threading.Event()
        self.primed = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"log-{name}", daemon=True)

    def _run(self) -> None:
        try:
            for chunk in self.stream:
                text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else str(chunk)
                with self.lock:
                    *done, self.partial = (self.partial + text).split("\n")
                    self.lines.extend(line.rstrip("\r") for line in done)
                self.primed.set()
        except Exception:  # closed by close(), or the engine went away: urllib3, requests, OSError
            pass
        finally:
            self.ended.set()
            self.primed.set()

    def tail(self, n: int) -> list[str]:
        with self.lock:
            lines = list(self.lines)
            if self.partial:  # a line still being written
                lines.append(self.partial)
        return lines[-n:]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed
            self.stream.close()


class LogTails:
    """Container name -> its followed log. `open_stream(name, tail)` is Engine.follow_logs."""

    def __init__(self, open_stream: Callable[[str, int], Any]) -> None:
        self._open = open_stream
        self._followers: dict[str, _Follower] = {}
        self._lock = threading.Lock()

    def tail(self, name: str, n: int) -> list[str]:
        """The last `n` lines of the container's log (raises what open_stream raises)."""
        now = time.monotonic()
        with self._lock:
            for other in [f for f in self._followers.values() if now - f.asked > IDLE]:
                other.close()
                del self._followers[other.name]
            follower = self._followers.get(name)
            if follower is None or follower.ended.is_set():
                follower = _Follower(name, self._open(name, KEEP))
                self._followers[name] = follower
                follower.thread.start()
            follower.asked = now
        follower.primed.wait(PRIMED)
        return follower.tail(n)

    def close(self) -> None:
        with self._lock:
            for follower in self._followers.values():
                follower.close()
            self._followers.clear()
