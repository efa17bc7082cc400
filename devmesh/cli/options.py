"""What several commands take: the options they share, and turning arguments into values
(each bad one a MeshError with a message, never a traceback)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from devmesh.core.names import check_project
from devmesh.core.problems import MeshError

DEFAULT_FILE = Path("devmesh.yaml")
MeshFile = Annotated[
    Path,
    typer.Option("-f", "--file", help="The mesh file.", show_default=True),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "-p",
        "--project",
        help="Instance name (default: the file's `mesh:` name): lowercase letters, digits, "
        "'-' and '_'.",
    ),
]


def project_name(file: Path, project: str | None) -> str:
    """The instance's name: `-p`, checked, else the file's `mesh:` (read also while the file
    has problems elsewhere: `ps`, `down` and `logs` of a mesh being edited still work)."""
    if project is not None:
        return check_project(project)
    from devmesh.core.load import declared_name

    return check_project(declared_name(str(file)))


def parse_weights(items: list[str]) -> dict[str, int]:
    """`v1=70 v2=30` -> {"v1": 70, "v2": 30}; weights are ASCII digits ("²".isdigit() is
    True, int("²") is not a number)."""
    parsed: dict[str, int] = {}
    for item in items:
        version, sep, weight = item.partition("=")
        version, weight = version.strip(), weight.strip()
        if not sep or not version or not _digits(weight):
            raise MeshError(f"'{item}' is not VERSION=WEIGHT (e.g. v1=70)")
        if version in parsed:
            raise MeshError(f"version '{version}' is given twice")
        value = int(weight)
        if value > 100:
            raise MeshError(f"'{item}': a weight is 0-100")
        parsed[version] = value
    return parsed


def parse_tail(text: str) -> int | None:
    """`--tail`: a number of lines, or 'all' (None)."""
    if text.strip().lower() == "all":
        return None
    if not _digits(text.strip()) or len(text.strip()) > 9:
        raise MeshError(f"--tail takes a number of lines or 'all', not {text!r}")
    return int(text)


TIMEOUT_MAX = 7 * 24 * 3600.0  # seconds: a week is "for ever" enough


def check_timeout(seconds: float) -> float:
    """A wait's length: a finite number of seconds (typer lets 'nan' through its range)."""
    if not math.isfinite(seconds) or not 0 <= seconds <= TIMEOUT_MAX:
        raise MeshError(f"a timeout is 0 to {TIMEOUT_MAX:.0f} seconds, not {seconds}")
    return seconds


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
