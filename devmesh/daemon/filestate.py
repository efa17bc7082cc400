"""What the loop knows of the mesh file: the mesh that serves, the text it came from, the
problems of text that did not validate; and the one write to it, `shift`. Owned by the loop."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devmesh.api.types import ErrorCode, EventKind, Severity
from devmesh.core.edit import set_weights, write_file
from devmesh.core.load import load
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError, MeshInvalid
from devmesh.core.source import read_mesh_bytes, read_text
from devmesh.daemon.errors import Refused
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.meshsource import FileRead

log = logging.getLogger("devmesh.daemon")


@dataclass
class FileState:
    mesh: Mesh  # as last validated and accepted: the source of truth
    file: str
    events: EventLog
    applied: str = ""  # digest of the text that serves ("": not known yet, at start)
    reported: str = ""  # digest of the invalid text last reported
    problems: tuple[str, ...] = ()
    reloads: int = 0
    reload_failures: int = 0

    def take(self, read: FileRead, refusals: Callable[[Mesh], tuple[str, ...]]) -> Mesh | None:
        """A new mesh to apply, or None (no change, or reported as a problem)."""
        if read.digest == self.applied and self.problems:
            # An invalid edit undone: the file is again what serves, and has no problems.
            self.problems, self.reported = (), ""
            self.events.add(
                EventKind.SAVE, "back to the config that serves; no problems", self.file
            )
            return None
        if read.digest in (self.applied, self.reported):
            return None  # no change (an editor touched it, or `shift` wrote what it applied)
        problems = read.problems if read.mesh is None else refusals(read.mesh)
        if read.mesh is None or problems:
            self.report(read.digest, problems)
            return None
        if _same_mesh(read.mesh, self.mesh):
            self.applied = read.digest  # what already runs (the first look after start)
            return None
        return read.mesh

    def report(self, digest: str, problems: tuple[str, ...]) -> None:
        """Invalid text: the last good mesh keeps serving; the problems are shown everywhere."""
        self.reported = digest
        self.problems = problems
        self.reload_failures += 1
        self.events.add(
            EventKind.PROBLEM,
            f"{len(problems)} problem(s); the last good config serves on",
            self.file,
            Severity.WARNING,
        )
        for problem in problems:
            log.info("  %s", problem)

    def accept(self, digest: str, mesh: Mesh) -> None:
        self.applied = digest
        self.problems = ()
        self.mesh = mesh
        self.reloads += 1

    def shift(
        self, service: str, weights: dict[str, int], route: str | None, base_dir: str
    ) -> tuple[str, Mesh, str]:
        """The file with new weights, written (only those characters change) once it
        validates: (digest, mesh, route name). Refused, writing nothing, otherwise."""
        if self.problems:
            raise Refused(
                ErrorCode.CONFLICT,
                "the mesh file has problems; fix them first: " + self.problems[0],
            )
        try:
            text = read_text(read_mesh_bytes(self.file), self.file)
        except MeshError as exc:
            raise Refused(ErrorCode.UNAVAILABLE, str(exc)) from None
        try:
            new_text, chosen = set_weights(text, self.mesh, service, route, weights)
            mesh = load(read_text(new_text.encode(), self.file), self.file, base_dir)
        except MeshInvalid as exc:
            problem = exc.problems[0]
            raise Refused(
                ErrorCode.BAD_REQUEST, f"the edited file would not validate: {problem}"
            ) from None
        except MeshError as exc:
            raise Refused(ErrorCode.BAD_REQUEST, str(exc)) from None
        try:
            write_file(Path(self.file), new_text)
        except (OSError, MeshError) as exc:
            raise Refused(ErrorCode.UNAVAILABLE, f"{self.file}: cannot write: {exc}") from None
        return hashlib.sha256(new_text.encode()).hexdigest(), mesh, chosen


def _same_mesh(a: Mesh, b: Mesh) -> bool:
    """The same mesh, however its file was named: the daemon's first mesh comes from the
    path as given (`-f devmesh.yaml`, a symlink), the watcher's reads from the resolved one,
    and comparing those names made every start log a phantom "save: applied"."""
    return dataclasses.replace(a, source=b.source, base_dir=b.base_dir) == b
