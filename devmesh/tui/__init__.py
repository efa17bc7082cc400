"""The devmesh TUI: a client of the daemon's API (never of Docker or the daemon's insides)."""

from __future__ import annotations

from collections.abc import Callable

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
