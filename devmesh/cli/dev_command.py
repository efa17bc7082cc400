"""`devmesh dev SERVICE -- CMD...`: run one version of a service from your shell, IDE or
debugger while the rest of the mesh runs.

It adds a version of SERVICE served by CMD on 127.0.0.1:PORT (live, not written to the
file), routed the requests with the dev header (`x-dev: me` by default) to it; runs CMD
with PORT, DEVMESH_* , DEVMESH_URL_<SERVICE> and HTTP_PROXY (a proxy on 127.0.0.1 that
sends `http://catalog/...` to the mesh) set; and takes the version out when CMD exits.
Stopped with SIGTERM (or SIGINT sent to it alone), it takes the version out first, then
passes the signal to CMD, so no request is sent to a process that is going away. Exit
code: CMD's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from devmesh.cli.exits import Exit
from devmesh.cli.options import MeshFile, ProjectOpt, given_project, mesh_file
from devmesh.core.names import check_project
from devmesh.core.problems import MeshError


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev(
    service: Annotated[str, typer.Argument(help="The service to serve from the host.")],
    command: Annotated[list[str], typer.Argument(help="The command to run, after --.")],
    version: Annotated[
        str, typer.Option("--version", help="The host version's name (not one in the file).")
    ] = "local",
    port: Annotated[
        int | None,
        typer.Option(help="Where CMD listens on 127.0.0.1; default: a free port, as $PORT."),
    ] = None,
    header: Annotated[
        str, typer.Option(help="NAME=VALUE: the requests that go to CMD.")
    ] = "x-dev=me",
    file: MeshFile = None,
    project: ProjectOpt = None,
) -> None:
    """Serve SERVICE from CMD on the host, for the requests with the dev header.

    Example: devmesh dev catalog -- python -m catalog    (curl -H 'x-dev: me' ...)"""
    from devmesh.api import types as api
    from devmesh.core.load import load_path
    from devmesh.daemon import launcher
    from devmesh.devproxy import DevProxy

    name, _, value = header.partition("=")
    if not name or not value:
        raise MeshError(f"--header {header!r}: expected NAME=VALUE, e.g. x-dev=me")
    mesh = load_path(str(mesh_file(file)))
    given = given_project(project)  # -p before or after the command, or $DEVMESH_PROJECT
    instance = given if given is not None else check_project(mesh.name)
    state = launcher.find(instance)
    if state is None:
        raise MeshError(f"no daemon runs for '{instance}': run `devmesh up -d` first")
    port = port or _free_port()
    client = launcher.client(instance)
    hops = state.gateway.services if state.gateway else {}
    routes = {}
    for svc, url in hops.items():
        parts = urlsplit(url)
        routes[svc] = (parts.hostname or "127.0.0.1", int(parts.port or 80))
    proxy = DevProxy(routes, state.mesh)
    proxy.start()
    request = api.DevRequest(service, version, port, name, value)
    result = client.dev(request)
    typer.echo(
        f"devmesh: {service}/{version} is served by this command on 127.0.0.1:{port} "
        f"for requests with {name}: {value}" + ("" if result.synced else " (not ACKed yet)"),
        err=True,
    )
    env = {
        **os.environ,
        "PORT": str(port),
        "DEVMESH_MESH": state.mesh,
        "DEVMESH_SERVICE": service,
        "DEVMESH_VERSION": version,
        "DEVMESH_PORT": str(port),
        "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
        "http_proxy": f"http://127.0.0.1:{proxy.port}",
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        **{f"DEVMESH_URL_{svc.upper().replace('-', '_')}": url for svc, url in hops.items()},
    }
    taken_out = threading.Event()
    lock = threading.Lock()

    def take_out() -> None:
        with lock:
            if taken_out.is_set():
                return
            try:
                client.dev(api.DevRequest(service, version, remove=True))
            except MeshError as exc:  # the daemon went away: nothing to take out of
                typer.echo(f"devmesh: could not take {service}/{version} out: {exc}", err=True)
            taken_out.set()

    try:
        child = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        take_out()
        proxy.close()
        typer.echo(f"devmesh: {command[0]}: command not found", err=True)
        raise typer.Exit(Exit.NOT_FOUND) from None
    except PermissionError:
        take_out()
        proxy.close()
        typer.echo(f"devmesh: {command[0]}: permission denied", err=True)
        raise typer.Exit(Exit.CANNOT_EXECUTE) from None

    def stop(signum: int, _frame: Any) -> None:
        def run() -> None:
            take_out()  # first: no request goes to a process that is going away
            if child.poll() is None:
                child.send_signal(signum)

        threading.Thread(target=run, daemon=True).start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    take_out()
    proxy.close()
    sys.stdout.flush()
    raise typer.Exit(code if code >= 0 else 128 - code)
