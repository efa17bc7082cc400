"""Watch one file however editors save it, and call back once per save.

Editors save in different ways: in place (one or several writes, maybe after a truncate),
write-then-rename (vim, VS Code, JetBrains), or the file is replaced (`git checkout`). So the
directory is watched, every event naming the file counts, and a burst of events is one
save once it has been quiet for `quiet` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("devmesh.watch")


def _event_paths(event: FileSystemEvent) -> set[str]:
    """The paths an event names: its source and, for a move, its destination."""
    names = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
    return {n for n in names if n}


class _QuietWatcher(FileSystemEventHandler):
    """What both watchers share: a watchdog observer, and a thread that calls back once events
    have been quiet until `_due` (each event moves `_due` on), until stopped."""

    def __init__(self, quiet: float, thread_name: str) -> None:
        self.quiet = quiet
        self._cond = threading.Condition()
        self._due: float | None = None
        self._stopped = False
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if not self._thread.is_alive():  # never started (the daemon failed to start)
            return
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def _wait_quiet(self) -> bool:
        """With `_cond` held: wait until `_due` has passed (and clear it); False once stopped."""
        while not self._stopped and (self._due is None or time.monotonic() < self._due):
            timeout = None if self._due is None else self._due - time.monotonic()
            self._cond.wait(timeout)
        if self._stopped:
            return False
        self._due = None
        return True

    def _run(self) -> None:
        raise NotImplementedError


class FileWatcher(_QuietWatcher):
    def __init__(self, path: Path, on_save: Callable[[], None], quiet: float = 0.02) -> None:
        super().__init__(quiet, "watch")
        self.path = os.path.realpath(path)
        self.on_save = on_save

    def start(self) -> None:
        self._observer.schedule(self, os.path.dirname(self.path), recursive=False)
        self._observer.start()
        self._thread.start()

    def poke(self, delay: float | None = None) -> None:
        """Treat the file as saved (again) after `delay` seconds of quiet."""
        with self._cond:
            self._due = time.monotonic() + (self.quiet if delay is None else delay)
            self._cond.notify_all()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Only writes and renames count: watchdog also reports opens and closes without a
        # write, and the daemon's own read of the file would otherwise wake it again, forever.
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        if self.path in {os.path.realpath(n) for n in _event_paths(event)}:
            self.poke()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wait_quiet():
                    return
            try:
                self.on_save()
            except Exception:
                log.exception("handling a save of %s failed", self.path)


class TreeWatcher(_QuietWatcher):
    """Watch files and directory trees; call back with the paths changed in a burst, once
    it has been quiet for `quiet` seconds (a `git checkout` is one call, not hundreds)."""

    def __init__(
        self,
        paths: tuple[str, ...],
        on_change: Callable[[frozenset[str]], None],
        quiet: float = 0.05,
    ) -> None:
        super().__init__(quiet, "develop-watch")
        self.paths = paths
        self.on_change = on_change
        self._changed: set[str] = set()

    def start(self) -> None:
        scheduled: set[tuple[str, bool]] = set()
        for path in self.paths:
            real = os.path.realpath(path)
            # A file (or one not made yet): its directory, not recursively.
            where = (real, True) if os.path.isdir(real) else (os.path.dirname(real), False)
            if where in scheduled or not os.path.isdir(where[0]):
                continue
            scheduled.add(where)
            self._observer.schedule(self, where[0], recursive=where[1])
        self._observer.start()
        self._thread.start()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a file in it changed: that file's own event says which
        with self._cond:
            self._changed |= _event_paths(event)
            self._due = time.monotonic() + self.quiet
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wait_quiet():
                    return
                changed, self._changed = frozenset(self._changed), set()
            try:
                self.on_change(changed)
            except Exception:
                log.exception("handling changes of %s failed", ", ".join(sorted(changed)[:3]))
