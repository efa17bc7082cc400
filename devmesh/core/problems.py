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
            out += ("." if out else "") + short(part)
    return out


def short(text: str, limit: int = 60) -> str:
    """A user's text in a message: a 100 KB key is shown by its first characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    line: int
    col: int
    path: str
    message: str
    file: str = ""

    def __post_init__(self) -> None:
        # Escaped once here, so every reader (terminal, --json, the TUI) gets safe text.
        object.__setattr__(self, "path", printable(self.path))
        object.__setattr__(self, "message", printable(self.message))
        object.__setattr__(self, "file", printable(self.file))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def clip(text: str, most: int = 64) -> str:
    """What the user sent, shown back at most `most` characters long."""
    return text if len(text) <= most else text[:most] + f"... ({len(text)} characters)"


def printable(text: str) -> str:
    """Control characters and lone surrogates a hostile file put in a key or value, escaped:
    a message must not move the cursor, recolour the terminal or fail to encode."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class MeshError(Exception):
    """Base of the errors devmesh reports to users without a traceback."""


class MeshInvalid(MeshError):
    """The mesh file has one or more located problems; all are reported at once."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(sorted(set(problems)))
        super().__init__("\n".join(str(p) for p in self.problems))


class MeshFileError(MeshError):
    """The file cannot be read as a mesh file at all (missing, binary, empty)."""


_MAX_CHOICES = 1000  # difflib per choice: a hostile list of thousands must stay cheap


# Words of App Mesh's and Istio's APIs that devmesh spells otherwise: a user moving a
# retry policy over gets the word to use, wherever that word is one of the choices.
FOREIGN: dict[str, tuple[str, str]] = {
    "server-error": ("5xx", "App Mesh"),
    "client-error": ("retriable-4xx", "App Mesh"),  # both: 409 alone
    "stream-error": ("refused-stream", "App Mesh"),
    "connection-error": ("connect-failure", "App Mesh"),
    "maxRetries": ("attempts", "App Mesh"),
    "perRetryTimeout": ("per_try_timeout", "App Mesh"),
    "httpRetryEvents": ("on", "App Mesh"),
    "tcpRetryEvents": ("on", "App Mesh"),
    "grpcRetryEvents": ("on", "App Mesh"),
    "retryOn": ("on", "Istio"),
    "perTryTimeout": ("per_try_timeout", "Istio"),
}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'path_prefix'?)` for a near miss, else an empty string; for a word
    of App Mesh or Istio (`FOREIGN`), the word devmesh uses for it."""
    pool = sorted(set(choices))
    foreign = FOREIGN.get(word)
    if foreign is not None and foreign[0] in pool:
        return f" ({foreign[1]}'s '{word}' is '{foreign[0]}' here)"
    if len(pool) > _MAX_CHOICES or len(word) > 100:
        return ""
    close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
