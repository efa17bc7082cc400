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


class FileWatcher(FileSystemEventHandler):
    def __init__(self, path: Path, on_save: Callable[[], None], quiet: float = 0.02) -> None:
        self.path = os.path.realpath(path)
        self.on_save = on_save
        self.quiet = quiet
        self._cond = threading.Condition()
        self._due: float | None = None
        self._stopped = False
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def start(self) -> None:
        self._observer.schedule(self, os.path.dirname(self.path), recursive=False)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if not self._thread.is_alive():  # never started (the daemon failed to start)
            return
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

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
        names = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if self.path in {os.path.realpath(n) for n in names if n}:
            self.poke()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._due is None or time.monotonic() < self._due):
                    timeout = None if self._due is None else self._due - time.monotonic()
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                self._due = None
            try:
                self.on_save()
            except Exception:
                log.exception("handling a save of %s failed", self.path)


class TreeWatcher(FileSystemEventHandler):
    """Watch files and directory trees; call back with the paths changed in a burst, once
    it has been quiet for `quiet` seconds (a `git checkout` is one call, not hundreds)."""

    def __init__(
        self,
        paths: tuple[str, ...],
        on_change: Callable[[frozenset[str]], None],
        quiet: float = 0.05,
    ) -> None:
        self.paths = paths
        self.on_change = on_change
        self.quiet = quiet
        self._cond = threading.Condition()
        self._changed: set[str] = set()
        self._due: float | None = None
        self._stopped = False
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name="develop-watch", daemon=True)

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

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if not self._thread.is_alive():
            return
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a file in it changed: that file's own event says which
        names = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        with self._cond:
            self._changed |= {n for n in names if n}
            self._due = time.monotonic() + self.quiet
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._due is None or time.monotonic() < self._due):
                    timeout = None if self._due is None else self._due - time.monotonic()
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                changed, self._changed, self._due = frozenset(self._changed), set(), None
            try:
                self.on_change(changed)
            except Exception:
                log.exception("handling changes of %s failed", ", ".join(sorted(changed)[:3]))
