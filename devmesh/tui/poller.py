"""The poller: reads the daemon's API about once a second in a worker thread and hands the UI
one `Frame` at a time. No Textual here: the app gives it a function that posts a message.

Coalescing: a frame waits in a one-slot mailbox; while the UI has not taken it, newer reads
merge into it (the newest state and rates win, events accumulate), and only one message is
posted. A UI that falls behind therefore skips reads instead of queueing them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from devmesh.api import types as api
from devmesh.core.problems import MeshError
from devmesh.tui.model import EventFeed
from devmesh.tui.source import MeshClient
from devmesh.tui.stats import Rates, StatsTracker

ROUTES_EVERY = 5  # reads; the routes are also re-read on a reload and after every action
LOG_TAIL = 200


@dataclass(frozen=True, slots=True)
class Frame:
    state: api.MeshState | None = None  # None: the daemon did not answer
    routes: api.Routes | None = None  # None: not re-read this time (keep the last)
    rates: Rates | None = None
    events: tuple[api.Event, ...] = ()  # the daemon's, not shown yet
    log: tuple[str, tuple[str, ...]] | None = None  # (pod, its last lines)
    unavailable: str | None = None
    at: float = 0.0


class Mailbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> bool:
        """Store `frame`; True if the slot was empty (the UI must be told)."""
        with self._lock:
            waiting = self._frame
            if waiting is None:
                self._frame = frame
                return True
            self._frame = replace(
                frame,
                routes=frame.routes if frame.routes is not None else waiting.routes,
                events=waiting.events + frame.events,
                log=frame.log if frame.log is not None else waiting.log,
            )
            return False

    def take(self) -> Frame | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


@dataclass
class Poller:
    client: MeshClient
    interval: float = 1.0
    mailbox: Mailbox = field(default_factory=Mailbox)
    # Set by the UI thread, read here: plain attribute reads and writes, each atomic.
    log_pod: str | None = None
    routes_wanted: bool = True
    wake: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    wall: Callable[[], float] = time.time  # a frame's time (tests pass their own)

    def __post_init__(self) -> None:
        self._tracker = StatsTracker()
        self._feed = EventFeed()
        self._reads = 0
        self._reloads: tuple[int, int] | None = None
        self._routes: api.Routes | None = None
        self._first = True

    def poke(self, routes: bool = False) -> None:
        """Read again now (after an action, or when the log pane's pod changed)."""
        if routes:
            self.routes_wanted = True
        self.wake.set()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def run(self, notify: Callable[[], None], cancelled: Callable[[], bool]) -> None:
        """Until stopped: read, put a frame, tell the UI if it was not told yet, wait."""
        while not self.stopped.is_set() and not cancelled():
            started = time.monotonic()
            frame = self.read_once()
            if self.stopped.is_set() or cancelled():
                return
            if self.mailbox.put(frame):
                notify()
            # A steady cadence: the time a read took comes off the wait.
            self.wake.wait(max(0.05, self.interval - (time.monotonic() - started)))
            self.wake.clear()

    def read_once(self) -> Frame:
        now = self.wall()
        try:
            state = self.client.state()
            routes = None
            reloads = (state.reloads, state.reload_failures)
            if self.routes_wanted or reloads != self._reloads or self._reads % ROUTES_EVERY == 0:
                self.routes_wanted = False
                routes = self.client.routes()
                self._routes = routes
            self._reloads = reloads
            self._reads += 1
            stats = self.client.stats()
            rates = self._tracker.update(stats, self._routes)
            # The whole history once; then the state's recent events carry what is new.
            if self._first:
                history = self.client.events().events
                self._first = False
            else:
                history = state.events
            events = self._feed.new(history)
        except MeshError as exc:
            self.routes_wanted = True
            return Frame(unavailable=str(exc), at=now)
        log = None
        pod = self.log_pod
        if pod is not None:
            try:
                log = (pod, self.client.logs(pod, LOG_TAIL).lines)
            except MeshError as exc:
                log = (pod, (f"(no log: {exc})",))
        return Frame(state, routes, rates, tuple(events), log, None, now)
