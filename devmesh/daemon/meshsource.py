"""The mesh source: watches the mesh file, reads and validates each save once, and hands
the loop what it found. Valid text goes at once; invalid text only if it is still there a
moment later (an editor may be halfway through a save)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devmesh.adapters.watch import FileWatcher
from devmesh.core.load import load
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError, MeshInvalid
from devmesh.core.source import read_mesh_bytes, read_text

SETTLE = 0.3  # seconds invalid text is given to become valid before it is reported


@dataclass(frozen=True, slots=True)
class FileRead:
    """One look at the file: its digest, and the mesh or its problems."""

    digest: str
    mesh: Mesh | None
    problems: tuple[str, ...] = ()
    unreadable: bool = False  # not read at all (missing, not a file, too large)


def read_mesh(path: Path, base_dir: str) -> FileRead:
    """Read and validate the file once. Never blocks on a FIFO, never reads a device."""
    name = str(path)
    try:
        raw = read_mesh_bytes(name)
    except MeshError as exc:
        why = str(exc)
        return FileRead(hashlib.sha256(why.encode()).hexdigest(), None, (why,), unreadable=True)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return FileRead(digest, load(read_text(raw, name), name, base_dir))
    except MeshInvalid as exc:
        return FileRead(digest, None, tuple(str(p) for p in exc.problems))
    except MeshError as exc:
        return FileRead(digest, None, (str(exc),))


class MeshSource:
    def __init__(self, path: Path, on_read: Callable[[FileRead], None]) -> None:
        self.path = path
        self.base_dir = str(path.resolve().parent)
        self._on_read = on_read
        self._pending = ""  # digest of invalid text seen once, given a moment to settle
        self._watcher = FileWatcher(path, self._on_save)

    def read(self) -> FileRead:
        return read_mesh(self.path, self.base_dir)

    def start(self) -> None:
        self._watcher.start()
        self._watcher.poke()  # a save made while the daemon started is not lost

    def stop(self) -> None:
        self._watcher.stop()

    def _on_save(self) -> None:
        found = self.read()
        if found.unreadable:
            # Renamed away mid-save (editors do): look once more before reporting it.
            if self._pending != found.digest:
                self._pending = found.digest
                self._watcher.poke(SETTLE)
                return
        elif found.mesh is None and found.digest != self._pending:
            self._pending = found.digest
            self._watcher.poke(SETTLE)
            return
        self._pending = ""
        self._on_read(found)
