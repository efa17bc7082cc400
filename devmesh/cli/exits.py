"""The `devmesh` command's exit codes, in one place (the README's table lists them)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # bad input, a problem in the mesh file, an engine or daemon that cannot help
    USAGE = 2  # a bad option or argument (typer's own)
    NOT_READY = 3  # `up --wait`: the mesh did not become ready in time, or cannot
    MESH_FAILED = 125  # `run`: the mesh could not come up (the command did not run)
    CANNOT_EXECUTE = 126  # `run`: the command was found but could not be executed
    NOT_FOUND = 127  # `run`: the command was not found
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
