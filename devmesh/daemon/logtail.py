"""The app logs the TUI's log pane shows, followed rather than read again.

The TUI asks for the selected pod's last lines once a second. Reading them from Docker each
time cost the daemon two Engine API calls per second (an inspect and a logs read; about 0.5 %
of a core with a 160x48 TUI, and as much again in dockerd). Instead the first ask of a
running container is answered by one plain read and starts a follow stream; its lines are
kept here and later asks are answered from memory. A container that is not running (a
crash, a stop) is read plainly on each ask: its stream would end at once, and the end of
its log is what matters. Streams nobody asked about for `IDLE` seconds are closed by
`sweep()`, which the daemon calls from a loop of its own.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

KEEP = 1000  # lines kept per followed container (the API's largest tail)
IDLE = 30.0  # seconds without an ask before a stream is closed

OpenStream = Callable[[str, int], Any]  # (container, tail) -> closable iterable of bytes
ReadTail = Callable[[str, int], Iterable[bytes]]  # (container, tail) -> the log's last lines


class _Follower:
    def __init__(self, name: str, stream: Any) -> None:
        self.name = name
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=KEEP)
        self.partial = ""
        self.asked = time.monotonic()
        self.ended = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"log-{name}", daemon=True)

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # split characters
        try:
            for chunk in self.stream:
                text = decoder.decode(chunk) if isinstance(chunk, bytes) else str(chunk)
                with self.lock:
                    *done, self.partial = (self.partial + text).split("\n")
                    self.lines.extend(line.rstrip("\r") for line in done)
        except Exception:  # closed by close(), or the engine went away: urllib3, requests, OSError
            pass
        finally:
            self.ended.set()

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
    """Container name -> its followed log."""

    def __init__(self, open_stream: OpenStream, read_tail: ReadTail) -> None:
        self._open = open_stream
        self._read = read_tail
        self._followers: dict[str, _Follower] = {}
        self._lock = threading.Lock()

    def tail(self, name: str, n: int, running: bool) -> list[str]:
        """The last `n` lines of the container's log (raises what the engine calls raise)."""
        with self._lock:
            follower = self._followers.get(name)
            if follower is not None and (follower.ended.is_set() or not running):
                follower.close()
                del self._followers[name]
                follower = None
            if follower is not None:
                follower.asked = time.monotonic()
                return follower.tail(n)
        text = b"".join(self._read(name, n)).decode(errors="replace")
        lines = [line.rstrip("\r") for line in text.split("\n")]  # as the stream splits
        if lines and not lines[-1]:
            lines.pop()
        if running:
            self._start(name)
        return lines

    def _start(self, name: str) -> None:
        """Follow from now on (the Engine call made outside the lock: a slow engine must not
        hold every other ask)."""
        try:
            stream = self._open(name, KEEP)
        except Exception:  # the plain read answered; following waits for the next ask
            return
        follower = _Follower(name, stream)
        with self._lock:
            if name in self._followers:  # another ask started one meanwhile
                follower.close()
                return
            self._followers[name] = follower
        follower.thread.start()

    def followed(self) -> list[str]:
        """The containers whose streams are open."""
        with self._lock:
            return sorted(n for n, f in self._followers.items() if not f.ended.is_set())

    def sweep(self) -> None:
        """Close the streams nobody asked about lately."""
        now = time.monotonic()
        with self._lock:
            idle = [f for f in self._followers.values() if now - f.asked > IDLE or f.ended.is_set()]
            for follower in idle:
                follower.close()
                del self._followers[follower.name]

    def close(self) -> None:
        with self._lock:
            for follower in self._followers.values():
                follower.close()
            self._followers.clear()
