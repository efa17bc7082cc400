"""The devmesh TUI: a client of the daemon's API (never of Docker or the daemon's insides)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devmesh.client import DaemonClient
from devmesh.tui.app import MeshApp, make_app
from devmesh.tui.source import MeshClient, connect

__all__ = ["MeshApp", "MeshClient", "connect", "make_app", "mesh_name", "run"]


def run(
    client: DaemonClient, owns_mesh: bool = False, stop_when: Callable[[], bool] | None = None
) -> None:
    """Run the TUI in this terminal until the user quits (or `stop_when()` turns true)."""
    reader = connect(client.socket_path, client.timeout)  # its reads on a kept connection
    make_app(reader, owns_mesh=owns_mesh, stop_when=stop_when).run()


def mesh_name(file: Path) -> str:
    """The `mesh:` name in a mesh file, also while the file has problems elsewhere (someone
    attaching to a running mesh may be in the middle of an edit)."""
    from devmesh.core.load import load_path
    from devmesh.core.problems import MeshError, MeshInvalid
    from devmesh.core.source import parse, read_text

    try:
        return load_path(str(file)).name
    except MeshInvalid as exc:
        try:
            located, _ = parse(read_text(file.read_bytes(), str(file)), str(file))
            name = located.data.get("mesh") if isinstance(located.data, dict) else None
        except (MeshError, OSError):
            name = None
        if isinstance(name, str) and name:
            return name
        raise exc from None
