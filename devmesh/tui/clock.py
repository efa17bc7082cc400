"""Time for the parts of the TUI that wait: read through a `Clock`, never slept on.

The app gets one from its factory: by default time.monotonic and Textual's timers; tests pass
a `ManualClock` and move it on by hand, so what waits for quiet (quick key presses adding up
to one shift) is tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Timer(Protocol):
    def stop(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic."""
        ...

    def later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` once, `delay` seconds from now (on the UI's thread)."""
        ...


@dataclass(slots=True)
class _ManualTimer:
    due: float
    callback: Callable[[], None]
    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True


class ManualClock:
    """A clock that moves only when told: `advance(seconds)` runs the timers that fall due,
    in order, on the caller's thread."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[_ManualTimer] = []

    def now(self) -> float:
        return self._now

    def later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(self._now + max(0.0, delay), callback)
        self._timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        until = self._now + seconds
        while True:
            due = [t for t in self._timers if not t.stopped and t.due <= until]
            if not due:
                break
            timer = min(due, key=lambda t: t.due)
            self._timers.remove(timer)
            self._now = max(self._now, timer.due)
            timer.callback()  # it may set timers of its own: they run too if due by `until`
        self._timers = [t for t in self._timers if not t.stopped]
        self._now = until
