"""Commands about a running mesh: up, down, ps, logs, shift, tui, run. Each parses its
arguments, makes its call into the launcher (devmesh.daemon.launcher) or the daemon's API
client, and renders the typed answer."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from devmesh.cli import views
from devmesh.cli.exits import Exit
from devmesh.cli.options import (
    DEFAULT_FILE,
    JsonFlag,
    MeshFile,
    ProjectOpt,
    check_timeout,
    parse_tail,
    parse_weights,
    project_name,
)
from devmesh.core.names import check_project
from devmesh.core.problems import MeshError, MeshInvalid, did_you_mean

if TYPE_CHECKING:
    from devmesh.api import types as api
    from devmesh.client import DaemonClient
    from devmesh.core.model import Mesh
    from devmesh.daemon.launcher import Serving

UP_LOOK_TIMEOUT = 5.0  # seconds `up` gives a running daemon to answer before saying so


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _load(file: Path, project: str | None) -> tuple[Mesh, str]:
    from devmesh.core.load import load_path

    mesh = load_path(str(file))
    return mesh, check_project(project if project is not None else mesh.name)


def up(
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    detach: Annotated[
        bool, typer.Option("-d", "--detach", help="Run the daemon in the background.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Return only when every pod is ready (exit 3 if not).")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds --wait waits.")] = 120.0,
    ingress_port: Annotated[
        int | None,
        typer.Option(
            "--ingress-port",
            min=0,
            max=65535,
            help="This instance's ingress port on 127.0.0.1 instead of the file's; 0: any free "
            "(kept while the instance's gateway runs).",
        ),
    ] = None,
    as_json: JsonFlag = False,
    tui: Annotated[
        bool, typer.Option("--tui/--no-tui", help="In the foreground on a terminal: open the TUI.")
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus /metrics on 127.0.0.1:PORT (instead of the file's "
            "observability.metrics.port).",
        ),
    ] = None,
) -> None:
    """Bring the mesh up: pods of app + Envoy sidecar, the gateway, the xDS control plane."""
    from devmesh.daemon import launcher

    timeout = check_timeout(timeout)
    mesh, name = _load(file, project)
    try:
        found = launcher.find(name, UP_LOOK_TIMEOUT)
    except launcher.DaemonNotAnswering as exc:
        if exc.stopped:
            raise
        found = launcher.await_serving(name).state  # another `up` is starting it
    if found is not None:
        _reload(file, name, found.pid)
    elif detach:
        _joined_or_started(
            launcher.start_background(file, name, ingress_port, _show_log, metrics_port), file
        )
    else:
        _foreground(
            file, mesh, name, wait, timeout, ingress_port, tui and not as_json, metrics_port
        )
        return
    client = launcher.client(name)
    if wait:
        _wait(client, name, timeout, exit_when_not_ready=True)
    state = client.state()
    typer.echo(views.as_json(state) if as_json else "\n".join(views.url_lines(state)))


def _show_log(line: str) -> None:
    _err("  " + line)


def _reload(file: Path, name: str, pid: int) -> None:
    from devmesh.daemon import launcher

    result = launcher.client(name).reload(str(file.resolve()))
    if not result.ok:
        for problem in result.problems:
            _err(problem)
        _err(f"devmesh: the running mesh '{name}' keeps serving what it could keep")
        raise typer.Exit(Exit.ERROR)
    _err(f"mesh '{name}': the running daemon (pid {pid}) reloaded {file}")


def _joined_or_started(serving: Serving, file: Path) -> None:
    state = serving.state
    if serving.ours:
        _err(f"mesh '{state.project}': daemon running in the background (pid {serving.pid})")
        return
    if state.file and Path(state.file) != file.resolve():
        raise MeshError(
            f"mesh '{state.project}' is up, served by pid {serving.pid} from {state.file}, "
            f"not from {file}"
        )
    _err(f"mesh '{state.project}' is up: served by pid {serving.pid} (another `up` started it)")


def _foreground(
    file: Path,
    mesh: Mesh,
    name: str,
    wait: bool,
    timeout: float,
    ingress_port: int | None,
    tui: bool,
    metrics_port: int | None = None,
) -> None:
    from devmesh.daemon import launcher

    tui = tui and sys.stdin.isatty() and sys.stdout.isatty()
    if tui:  # the TUI owns the terminal: the daemon logs into its file
        typer.echo(f"starting mesh '{name}' ...")
    try:
        with launcher.foreground(
            file, name, ingress_port, mesh, log_file=tui, metrics_port=metrics_port
        ) as fg:
            try:
                if wait:
                    _wait(fg.client, name, timeout, exit_when_not_ready=False, stop=fg.stopping)
                if tui:
                    from devmesh.tui import run as run_tui

                    def serve() -> None:
                        fg.daemon.wait(also=fg.stopping)  # `down` or a signal: the TUI closes
                        fg.stopping.set()

                    threading.Thread(target=serve, name="serve", daemon=True).start()
                    run_tui(fg.client, owns_mesh=True, stop_when=fg.stopping.is_set)
                    return
                for line in views.url_lines(fg.client.state()):
                    typer.echo(line)
                typer.echo("serving; Ctrl-C stops the mesh and removes its containers")
                fg.daemon.wait(also=fg.stopping)
            finally:
                typer.echo("stopping the mesh ...")
    except launcher.AnotherDaemonServes:
        _joined_or_started(launcher.await_serving(name), file)
        for line in views.url_lines(launcher.client(name).state()):
            typer.echo(line)


def _wait(
    client: DaemonClient,
    name: str,
    timeout: float,
    exit_when_not_ready: bool,
    stop: threading.Event | None = None,
) -> api.MeshState:
    from devmesh.daemon import launcher

    state = launcher.wait_ready(client, timeout, _err, stop)
    if state.ready:
        _err(f"mesh '{name}' is ready: {len(state.pods)} pods")
        return state
    _err(f"devmesh: mesh '{name}' is not ready:")
    for line in views.not_ready_lines(state):
        _err(line)
    if exit_when_not_ready:
        raise typer.Exit(Exit.NOT_READY)
    return state


def tui(file: MeshFile = DEFAULT_FILE, project: ProjectOpt = None) -> None:
    """Watch and steer a running mesh: pods, routes, live stats, weights, faults, logs, events.
    Several may attach at once; quitting leaves the mesh running."""
    from devmesh.daemon import launcher
    from devmesh.tui import run

    name = project_name(file, project)
    if launcher.find(name, UP_LOOK_TIMEOUT) is None:
        raise MeshError(f"no daemon runs mesh '{name}'; start it with `devmesh up -d`")
    run(launcher.client(name, timeout=5))


def down(
    file: MeshFile = DEFAULT_FILE, project: ProjectOpt = None, as_json: JsonFlag = False
) -> None:
    """Stop the daemon and remove every container and network of the mesh (also after a crash)."""
    import json

    from devmesh.daemon import launcher

    name = project_name(file, project)
    result = launcher.down(name)
    stopped = result.daemon
    if stopped is not None:
        how = "" if stopped.how == "api" else f" with {stopped.how}"
        typer.echo(f"stopped the daemon (pid {stopped.pid}){how}", err=as_json)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "project": name,
                    "daemon": stopped.pid if stopped else None,
                    "containers": result.containers,
                    "networks": result.networks,
                    "ok": result.ok,
                },
                indent=2,
            )
        )
    elif result.engine_error is None:
        if result.containers or result.networks:
            typer.echo(
                f"mesh '{name}': removed {result.containers} containers, "
                f"{result.networks} network(s)"
            )
        else:
            typer.echo(f"mesh '{name}': nothing to remove")
    if stopped is not None and not stopped.gone:
        _err(f"devmesh: the daemon (pid {stopped.pid}) did not stop, even on SIGKILL")
    if result.engine_error is not None:
        _err(f"devmesh: cannot remove the containers of mesh '{name}': {result.engine_error}")
    if result.state_error is not None:
        _err(f"devmesh: {result.state_error}")
    if not result.ok:
        raise typer.Exit(Exit.ERROR)


def ps(
    file: MeshFile = DEFAULT_FILE, project: ProjectOpt = None, as_json: JsonFlag = False
) -> None:
    """List the mesh's pods: state, address, version, config version, ACK/NACK."""
    from devmesh.daemon import launcher

    state = launcher.status(project_name(file, project))
    typer.echo(views.as_json(state) if as_json else views.ps_table(state))


def logs(
    service: Annotated[
        str | None,
        typer.Argument(help="The service whose app logs to show (with --access: optional)."),
    ] = None,
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep following.")] = False,
    tail: Annotated[str, typer.Option(help="Lines from the end of each log, or 'all'.")] = "all",
    access: Annotated[
        bool, typer.Option("--access", help="Every request the Envoys saw, not the app's log.")
    ] = False,
    as_json: JsonFlag = False,
    status: Annotated[
        str | None, typer.Option("--status", help="--access: a status class (5xx) or code.")
    ] = None,
    route: Annotated[str | None, typer.Option("--route", help="--access: this route only.")] = None,
    slower: Annotated[
        str | None, typer.Option("--slower", help="--access: slower than this (100ms, 2s).")
    ] = None,
) -> None:
    """Show the app logs of a service's pods (prefixed by pod when there are several), or
    with --access the mesh's access log: every request every sidecar and the gateway saw."""
    from devmesh.daemon import launcher

    if access:
        _access_logs(file, project, service, follow, tail, as_json, status, route, slower)
        return
    if service is None:
        raise MeshError("logs needs a SERVICE (or --access, for every service's requests)")
    if as_json or status or route or slower:
        raise MeshError("--json, --status, --route and --slower go with --access")
    count = parse_tail(tail)
    mesh, name = _load(file, project)
    if not mesh.has_service(service):
        names = [s.name for s in mesh.services]
        raise MeshError(
            f"no service '{service}' in mesh '{name}'{did_you_mean(service, names)}; "
            f"services: {', '.join(names)}"
        )
    if not follow:
        lines = launcher.read_logs(name, service, count)
        several = len({line.pod for line in lines}) > 1
        for line in lines:
            typer.echo(views.log_line(line, several))
        return
    stream = launcher.follow_logs(name, service, count)
    seen = set(stream.pods)
    try:
        for line in stream.lines:
            seen.add(line.pod)
            typer.echo(views.log_line(line, len(seen) > 1))
    finally:
        close = getattr(stream.lines, "close", None)
        if close is not None:
            close()  # ends the daemon's stream, or the local followers' threads
    _err(f"devmesh: no pod of '{service}' runs any more; stopped following")


def _access_logs(
    file: Path,
    project: str | None,
    service: str | None,
    follow: bool,
    tail: str,
    as_json: bool,
    status: str | None,
    route: str | None,
    slower: str | None,
) -> None:
    from devmesh.api import types as api
    from devmesh.cli import access_views
    from devmesh.core.durations import DurationError, parse_duration
    from devmesh.daemon import launcher

    name = project_name(file, project)
    count = parse_tail(tail)
    slower_ms: float | None = None
    if slower is not None:
        try:
            slower_ms = float(parse_duration(slower))
        except DurationError as exc:
            raise MeshError(f"--slower: {exc}") from None
    if launcher.find(name) is None:
        raise MeshError(
            f"no daemon runs mesh '{name}': the access log lives in the daemon "
            "(start it with `devmesh up`)"
        )
    client = launcher.client(name)

    def show(entry: api.AccessEntry) -> None:
        typer.echo(access_views.as_json_line(entry) if as_json else access_views.access_line(entry))

    if not follow:
        limit = api.ACCESS_CAPACITY if count is None else max(1, count)
        result = client.access(api.AccessRequest(service, status, route, slower_ms, limit))
        for entry in result.entries:
            show(entry)
        if not as_json and not result.entries:
            _err(
                f"devmesh: no request matches; {access_views.access_counters_line(result.counters)}"
            )
        return
    tail_n = api.ACCESS_CAPACITY if count is None else count
    request = api.AccessFollowRequest(service, status, route, slower_ms, tail_n)
    stream = client.follow_access(request)
    try:
        for entry in stream:
            show(entry)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def shift(
    service: Annotated[str, typer.Argument(help="The service whose traffic to shift.")],
    weights: Annotated[list[str], typer.Argument(help="VERSION=WEIGHT ..., adding up to 100.")],
    route: Annotated[
        str | None, typer.Option("--route", help="Which route (default: the catch-all one).")
    ] = None,
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a route's weights live; they are written into the mesh file, comments kept."""
    from devmesh.api import types as api
    from devmesh.core.edit import set_weights, write_file
    from devmesh.daemon import launcher

    parsed = parse_weights(weights)
    mesh, name = _load(file, project)
    if launcher.find(name) is not None:
        result = launcher.client(name).shift(service, parsed, route)
        applied = "applied live and written to"
    else:
        text, chosen = set_weights(file.read_text(), mesh, service, route, parsed)
        write_file(file, text)
        result = api.ShiftResult(service, chosen, parsed, synced=False)
        applied = "no daemon runs: `devmesh up` applies it; written to"
    if as_json:
        typer.echo(views.as_json(result))
        return
    split = ", ".join(f"{v} {w}%" for v, w in result.weights.items())
    typer.echo(f"{service} route '{result.route}': {split} ({applied} {file})")


def run(
    ctx: typer.Context,
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the mesh up afterwards.")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the mesh.")] = 180.0,
) -> None:
    """Up, wait, run COMMAND with the mesh's URLs in its environment, tear down; exit with
    the command's code (125 if the mesh could not come up). Usage: devmesh run -- pytest -x"""
    import os
    import subprocess

    from devmesh.testing import Mesh, MeshUpError

    timeout = check_timeout(timeout)
    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise MeshError("devmesh run needs a command: devmesh run [-f FILE] -- COMMAND ...")
    if project is not None:
        check_project(project)
    try:
        mesh = Mesh.up(file, project, timeout=timeout)
    except MeshInvalid as exc:  # the command's own exit codes stay unambiguous: 125
        _err(str(exc))
        raise typer.Exit(Exit.MESH_FAILED) from None
    except (MeshUpError, MeshError) as exc:
        _err(f"devmesh: {exc}")
        raise typer.Exit(Exit.MESH_FAILED) from None
    code = int(Exit.MESH_FAILED)
    try:
        env = {**os.environ, **mesh.urls, "DEVMESH_PROJECT": mesh.project}
        for key, value in mesh.urls.items():
            _err(f"{key}={value}")
        try:
            code = subprocess.run(command, env=env, check=False).returncode
        except FileNotFoundError:
            _err(f"devmesh: {command[0]}: command not found")
            code = Exit.NOT_FOUND
        except OSError as exc:  # a directory, no permission, not an executable format
            _err(f"devmesh: {command[0]}: cannot execute: {exc.strerror}")
            code = Exit.CANNOT_EXECUTE
        except KeyboardInterrupt:
            code = Exit.INTERRUPTED
    finally:
        if keep:
            _err(f"devmesh: mesh '{mesh.project}' left up; `devmesh down -p {mesh.project}`")
        else:
            mesh.down()
    raise typer.Exit(code)
