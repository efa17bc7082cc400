"""The `devmesh` entry point (pyproject's `devmesh.cli.main:main`); the command line itself is
`devmesh.cli.app`, its commands in `file_commands` and `run_commands`."""

from __future__ import annotations

from devmesh.cli.app import app, main

__all__ = ["app", "main"]
