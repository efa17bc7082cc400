"""The daemon's event log: what it did and saw, as typed events, the last 200 kept."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from devmesh.api.types import Event, EventKind, Severity

log = logging.getLogger("devmesh.daemon")
_LEVEL = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
}


class EventLog:
    """Appended to from any thread (the loop, the health monitor, the API's handlers)."""

    def __init__(self, keep: int = 200, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._clock = clock

    def add(
        self, kind: EventKind, detail: str, subject: str = "", severity: Severity = Severity.INFO
    ) -> Event:
        event = Event(self._clock(), kind, severity, subject, detail)
        with self._lock:
            self._events.append(event)
        log.log(_LEVEL[severity], "%s", event.text)
        return event

    def last(self, n: int | None = None) -> tuple[Event, ...]:
        with self._lock:
            events = tuple(self._events)
        return events if n is None else events[-n:]
