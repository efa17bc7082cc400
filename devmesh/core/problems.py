"""Located problems in a mesh file, reported like a compiler's diagnostics."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

# A path into the mesh document: ("services", "catalog", "routes", 0, "to").
Path = tuple[str | int, ...]


def dotted(path: Path) -> str:
    """`services.catalog.routes[0].to` — how a path reads in a message."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    line: int
    col: int
    path: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class MeshError(Exception):
    """Base of the errors devmesh reports to users without a traceback."""


class MeshInvalid(MeshError):
    """The mesh file has one or more located problems; all are reported at once."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(sorted(set(problems)))
        super().__init__("\n".join(str(p) for p in self.problems))


class MeshFileError(MeshError):
    """The file cannot be read as a mesh file at all (missing, binary, empty)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'path_prefix'?)` for a near miss, else an empty string."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
