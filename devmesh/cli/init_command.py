"""`devmesh init [DIR] --template NAME`: a starter mesh and its app, copied from the
package's starter templates (the repository's top-level `templates/`, shipped in the wheel
as `devmesh/starters`)."""

from __future__ import annotations

import re
from enum import StrEnum
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Annotated

import typer

from devmesh.core.problems import MeshError

MESH_MARK = "@MESH@"  # in a template's files: the new mesh's name
MESH_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")  # the schema's rule for `mesh:`


class Template(StrEnum):
    PYTHON_HTTP = "python-http"
    GRPC = "grpc"
    TCP = "tcp"


def starters() -> Traversable:
    return resources.files("devmesh") / "starters"


def init(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the mesh file and the app (made if missing).")
    ] = Path("."),
    template: Annotated[
        Template, typer.Option("--template", "-t", help="Which starter.", case_sensitive=False)
    ] = Template.PYTHON_HTTP,
    name: Annotated[
        str | None,
        typer.Option("--name", help="The mesh's name (default: the directory's, made valid)."),
    ] = None,
    from_compose: Annotated[
        Path | None,
        typer.Option("--from", help="A compose file to convert (not yet: comes later)."),
    ] = None,
) -> None:
    """Write a starter mesh (devmesh.yaml) and its app into DIR from a template.

    Templates: an HTTP service, a gRPC service or a TCP service, each in two versions with
    a weighted split. Nothing is overwritten.

    Example: devmesh init shop --template python-http && cd shop && devmesh up -d --wait"""
    if from_compose is not None:
        raise MeshError(
            f"init --from {from_compose}: converting a compose file is not built yet; "
            "start from a template (--template python-http, grpc or tcp) and copy your "
            "services' images and ports into devmesh.yaml"
        )
    mesh = name if name is not None else mesh_name(directory)
    if MESH_NAME.fullmatch(mesh) is None:
        raise MeshError(
            f"--name {mesh!r} is not a mesh name: lowercase letters, digits and '-', "
            "starting with a letter, 30 at most"
        )
    source = starters() / template.value
    files = dict(_walk(source, Path()))
    taken = sorted(str(directory / rel) for rel in files if (directory / rel).exists())
    if taken:
        raise MeshError(f"not overwriting {', '.join(taken)}; choose another directory")
    for rel, item in files.items():
        target = directory / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item.read_text(encoding="utf-8").replace(MESH_MARK, mesh))
        except OSError as exc:
            raise MeshError(f"{target}: cannot write: {exc.strerror or exc}") from None
    where = "" if directory == Path(".") else f"cd {directory} && "
    typer.echo(
        f"wrote mesh '{mesh}' ({template.value}) into {directory}: {', '.join(map(str, files))}"
    )
    typer.echo(f"next: {where}devmesh validate && devmesh up -d --wait")


def _walk(node: Traversable, rel: Path) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            found += _walk(child, rel / child.name)
        else:
            found.append((rel / child.name, child))
    return found


def mesh_name(directory: Path) -> str:
    """A valid mesh name from a directory's name: 'My Shop_2' -> 'my-shop-2'."""
    word = re.sub(r"[^a-z0-9]+", "-", directory.resolve().name.lower())
    word = re.sub(r"^[^a-z]+", "", word)[:30].rstrip("-")
    return word or "mesh"
