"""`devmesh engine`: which container engine devmesh reaches (DOCKER_HOST, else the default
socket), what it is (Docker, Docker Desktop, Podman; rootless), and what devmesh does
differently there. No daemon needed, as `docker info` / `docker context` need none."""

from __future__ import annotations

import json

import typer

from devmesh.cli.options import JsonFlag


def engine(as_json: JsonFlag = False) -> None:
    """Show the container engine devmesh talks to, and what differs on it.

    An engine that does not answer is an error (exit 1) that says which address was tried
    and what is missing.

    Example: devmesh engine --json"""
    from devmesh.adapters.engine import Engine
    from devmesh.core.engines import differences

    found = Engine.connect(timeout=10)  # EngineUnavailable (a MeshError): exit 1, its words
    info = found.identity()
    if as_json:
        data = {
            "kind": info.kind.value,
            "name": info.name,
            "version": info.version,
            "api_version": info.api_version,
            "os": info.os,
            "address": info.address,
            "rootless": info.rootless,
            "userns": info.userns,
            "differences": list(differences(info)),
        }
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"engine   {info.name}")
    typer.echo(f"address  {info.address}")
    typer.echo(f"api      {info.api_version or '?'}   os {info.os or '?'}")
    diff = differences(info)
    if diff:
        typer.echo("differs:")
        for line in diff:
            typer.echo(f"  - {line}")
    else:
        typer.echo("differs:  nothing (devmesh's reference engine)")
