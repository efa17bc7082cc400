"""The devmesh TUI: a client of the daemon's API (never of Docker or the daemon's insides)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO

from devmesh.client import DaemonClient
from devmesh.core.problems import MeshError
from devmesh.tui.app import MeshApp, make_app
from devmesh.tui.source import MeshClient, connect

__all__ = [
    "MeshApp",
    "MeshClient",
    "NotATerminal",
    "check_terminal",
    "connect",
    "is_terminal",
    "make_app",
    "run",
]


class NotATerminal(MeshError):
    pass


def check_terminal(
    stdin: IO[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> None:
    """The TUI draws on a terminal: with any of the three streams redirected it would write
    escape codes into a file (Textual draws on stderr) or wait for keys that never come."""
    streams = (
        ("standard input", stdin or sys.stdin),
        ("standard output", stdout or sys.stdout),
        ("standard error", stderr or sys.stderr),
    )
    for name, stream in streams:
        try:
            tty = stream is not None and stream.isatty()
        except (ValueError, OSError):  # closed
            tty = False
        if not tty:
            raise NotATerminal(
                f"the TUI needs a terminal, and {name} is not one; for a file or a pipe use "
                "`devmesh ps`, `devmesh events --follow` or `devmesh logs -f`"
            )


def is_terminal() -> bool:
    try:
        check_terminal()
    except NotATerminal:
        return False
    return True


def run(
    client: DaemonClient, owns_mesh: bool = False, stop_when: Callable[[], bool] | None = None
) -> None:
    """Run the TUI in this terminal until the user quits (or `stop_when()` turns true);
    NotATerminal at once when there is no terminal to run in."""
    check_terminal()
    reader = connect(client.socket_path, client.timeout)  # its reads on a kept connection
    make_app(reader, owns_mesh=owns_mesh, stop_when=stop_when).run()
