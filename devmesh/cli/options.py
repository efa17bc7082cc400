"""What several commands take: the options they share, and turning arguments into values
(each bad one a MeshError with a message, never a traceback)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from devmesh.core.names import check_project
from devmesh.core.problems import MeshError

if TYPE_CHECKING:
    from devmesh.core.model import Mesh

FILE_NAMES = ("devmesh.yaml", "devmesh.yml")  # looked for in the directory and its parents
DEFAULT_FILE = Path(FILE_NAMES[0])
FILE_ENV = "DEVMESH_FILE"
PROJECT_ENV = "DEVMESH_PROJECT"

MeshFile = Annotated[
    list[Path] | None,
    typer.Option(
        "-f",
        "--file",
        metavar="FILE",
        help="The mesh file ('-': standard input, for validate, render, explain, config). "
        f"Default: ${FILE_ENV}, else ./devmesh.yaml or the nearest one in a parent directory.",
        show_default=False,
    ),
]
# `logs` keeps -f for --follow (as compose and kubectl): its file is --file only.
LogsFile = Annotated[
    list[Path] | None,
    typer.Option(
        "--file", help="The mesh file (default: as for every command).", show_default=False
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (as --format json).")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "-p",
        "--project-name",
        "--project",
        metavar="NAME",
        help=f"Instance name (default: ${PROJECT_ENV}, else the file's `mesh:` name): "
        "lowercase letters, digits, '-' and '_'.",
        show_default=False,
    ),
]


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format", help="Output: table (for people), json or yaml.", case_sensitive=False
    ),
]


def output_format(fmt: Format | None, as_json: bool) -> Format:
    """`--format`, with `--json` kept as its short form (both given: they must agree)."""
    if as_json and fmt not in (None, Format.JSON):
        raise MeshError(f"--json and --format {fmt.value} contradict each other; give one")
    return Format.JSON if as_json else (fmt or Format.TABLE)


@dataclass(frozen=True, slots=True)
class Globals:
    """What `devmesh -f FILE -p NAME COMMAND` gives before the command (compose's habit)."""

    files: tuple[Path, ...] = ()
    project: str | None = None


_given: list[Globals] = [
    Globals()
]  # set by the root callback once per command line (`set_globals`)


def set_globals(value: Globals) -> None:
    _given[0] = value


def _globals() -> Globals:
    return _given[0]


def explicit_file(local: list[Path] | Path | None) -> Path | None:
    """The file named by -f (before or after the command) or $DEVMESH_FILE; None when none
    is. `-f a -f b` is refused: compose merges files, devmesh has one file per mesh. (A
    single Path is taken too, for callers that name a file themselves.)"""
    if isinstance(local, Path):
        local = [local]
    given: list[Path] = [*_globals().files, *(local or ())]
    distinct = list(dict.fromkeys(given))
    if len(distinct) > 1:
        raise MeshError(
            f"-f is given {len(given)} times ({', '.join(map(str, distinct))}); devmesh reads "
            "one mesh file (it does not merge files as compose does): give one -f"
        )
    if distinct:
        return distinct[0]
    env = os.environ.get(FILE_ENV)
    return Path(env) if env else None


def find_file(start: Path | None = None) -> Path | None:
    """devmesh.yaml (or .yml) in `start` (the current directory) or its nearest parent."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        for name in FILE_NAMES:
            candidate = directory / name
            if candidate.is_file():  # shown as the user would write it: ../devmesh.yaml
                return Path(os.path.relpath(candidate))
    return None


def mesh_file(local: list[Path] | Path | None, stdin: bool = False) -> Path:
    """The mesh file a command reads: -f, $DEVMESH_FILE, else the nearest devmesh.yaml."""
    file = explicit_file(local) or find_file()
    if file is None:
        raise MeshError(
            f"no {DEFAULT_FILE} in {Path.cwd()} or any parent directory; "
            f"give one with -f FILE (or ${FILE_ENV})"
        )
    if str(file) == "-" and not stdin:
        raise MeshError(
            "-f - (standard input) works for validate, render, explain and config; "
            "this command needs a file"
        )
    return file


def load_mesh(file: Path) -> Mesh:
    from devmesh.core.load import load_path

    return load_path(str(file), allow_stdin=True)


def given_project(local: str | None, env: bool = True) -> str | None:
    """-p (after or before the command), else $DEVMESH_PROJECT (with `env`); checked
    (`-p ../x` is refused before anything is started, read or removed)."""
    globals_ = _globals()
    if local is not None and globals_.project is not None and local != globals_.project:
        raise MeshError(f"-p is given twice ({globals_.project}, {local}): give one")
    name = local if local is not None else globals_.project
    if name is None and env:
        name = os.environ.get(PROJECT_ENV) or None
    return check_project(name) if name is not None else None


def project_name(file: list[Path] | Path | None, project: str | None) -> str:
    """The instance's name from -p or the mesh file alone (no look at running instances)."""
    name = given_project(project)
    if name is not None:
        return name
    from devmesh.core.load import declared_name

    return check_project(declared_name(str(mesh_file(file))))


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


# -- shell completion (`devmesh --install-completion`): names from the mesh file ---------------


def _completion_mesh(ctx: typer.Context) -> Mesh | None:
    """The mesh the command line names (-f after or before the command, $DEVMESH_FILE, the
    nearest devmesh.yaml); None when it cannot be read: completion never fails loudly."""
    files: list[Path] = []
    node: typer.Context | None = ctx
    while node is not None:
        given: object = node.params.get("file")
        if isinstance(given, list | tuple):
            files += [Path(str(f)) for f in given]
        node = node.parent  # type: ignore[assignment]
    env = os.environ.get(FILE_ENV)
    file = files[0] if files else Path(env) if env else find_file()
    if file is None or str(file) == "-":
        return None
    try:
        from devmesh.core.load import load_path

        return load_path(str(file))
    except (MeshError, OSError):
        return None


def complete_service(ctx: typer.Context, incomplete: str) -> list[str]:
    mesh = _completion_mesh(ctx)
    names = [s.name for s in mesh.services] if mesh else []
    return [n for n in names if n.startswith(incomplete)]


def complete_weight(ctx: typer.Context, incomplete: str) -> list[str]:
    """`shift SERVICE v1=` : the service's versions, as VERSION=."""
    mesh = _completion_mesh(ctx)
    service = ctx.params.get("service")
    if mesh is None or not isinstance(service, str) or not mesh.has_service(service):
        return []
    done = {w.partition("=")[0] for w in ctx.params.get("weights") or ()}
    return [
        f"{v.name}="
        for v in mesh.service(service).versions
        if v.name not in done and f"{v.name}=".startswith(incomplete)
    ]


def complete_route(ctx: typer.Context, incomplete: str) -> list[str]:
    mesh = _completion_mesh(ctx)
    service = ctx.params.get("service")
    if mesh is None:
        return []
    services = (
        [mesh.service(service)]
        if isinstance(service, str) and mesh.has_service(service)
        else list(mesh.services)
    )
    names = dict.fromkeys(r.name for s in services for r in s.routes)
    return [n for n in names if n.startswith(incomplete)]
