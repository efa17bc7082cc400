"""Commands about a running mesh: up, down, ps, logs, shift, tui, run. Each parses its
arguments, makes its call into the launcher (devmesh.daemon.launcher) or the daemon's API
client, and renders the typed answer."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from devmesh.api import types as api
from devmesh.cli import views
from devmesh.cli.exits import Exit
from devmesh.cli.options import (
    Format,
    FormatOpt,
    JsonFlag,
    LogsFile,
    MeshFile,
    ProjectOpt,
    check_timeout,
    complete_route,
    complete_service,
    complete_weight,
    explicit_file,
    find_file,
    given_project,
    load_mesh,
    mesh_file,
    output_format,
    parse_tail,
    parse_weights,
)
from devmesh.core.names import check_project
from devmesh.core.problems import MeshError, MeshInvalid, did_you_mean

if TYPE_CHECKING:
    from devmesh.client import DaemonClient
    from devmesh.core.model import Mesh
    from devmesh.daemon import launcher
    from devmesh.daemon.launcher import Serving

UP_LOOK_TIMEOUT = 5.0  # seconds `up` gives a running daemon to answer before saying so


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _load(file: list[Path] | None, project: str | None) -> tuple[Path, Mesh, str]:
    """The local mesh file, loaded, and the instance's name (-p, else the file's)."""
    path = mesh_file(file)
    mesh = load_mesh(path)
    return path, mesh, check_project(given_project(project) or mesh.name)


@dataclass(frozen=True, slots=True)
class Target:
    """The instance a command is aimed at (logs, shift, ps, tui, down, events)."""

    project: str
    file: Path | None  # the running daemon's own file, else the local one (None: neither)
    state: api.MeshState | None  # the daemon's, when one runs


def _target(file: list[Path] | None, project: str | None, frozen_ok: bool = False) -> Target:
    """-p or $DEVMESH_PROJECT; else the mesh file's name (-f, $DEVMESH_FILE, the nearest
    devmesh.yaml); else the one mesh that runs. With a daemon running, its own file counts,
    not a file of the same name here (the daemon knows which it serves). `frozen_ok`: a
    daemon that does not answer is no error (`down` stops it all the same)."""
    from devmesh.core.load import declared_name
    from devmesh.daemon import launcher

    name = given_project(project)
    local = explicit_file(file) or find_file()
    if local is not None and str(local) == "-":
        raise MeshError("-f - (standard input) cannot name a running instance; give a file")
    if name is None and local is None:
        running = launcher.instances()
        if len(running) == 1:
            name = running[0].project
            _err(f"mesh '{name}' (the only one running)")
        elif running:
            raise MeshError(
                f"no {local or 'devmesh.yaml'} here or in a parent directory, and "
                f"{len(running)} meshes run: {_instance_list(running)}; choose one with -p NAME"
            )
        else:
            raise MeshError(
                f"no devmesh.yaml in {Path.cwd()} or any parent directory, and no mesh runs; "
                "give one with -f FILE (or $DEVMESH_FILE), or an instance with -p NAME"
            )
    from_file = name is None
    if name is None:
        assert local is not None
        try:
            name = check_project(declared_name(str(local)))
        except MeshError as exc:
            name = _served_instance(local, exc)
    try:
        state = launcher.find(name)
    except launcher.DaemonNotAnswering:
        if not frozen_ok:
            raise
        return Target(name, local, None)
    if state is None and from_file and local is not None:
        # `up -p other` of this very file: the file's own name does not run, the other does
        here = str(local.resolve())
        same = [i for i in launcher.instances() if i.state is not None and i.state.file == here]
        if len(same) == 1:
            _err(f"mesh '{same[0].project}' serves {local} (none runs as '{name}')")
            name, state = same[0].project, same[0].state
        elif same:
            raise MeshError(
                f"{local} is served by {len(same)} instances: {_instance_list(same)}; "
                "choose one with -p NAME"
            )
    served = Path(state.file) if state is not None and state.file else local
    return Target(name, served, state)


def _served_instance(local: Path, problem: MeshError) -> str:
    """The instance that serves `local`, a file that does not load now (mid-edit, broken,
    too big): `ps`, `logs`, `down` are for exactly that moment. Else `problem`, with the
    way to name an instance."""
    from devmesh.daemon import launcher

    try:
        here = str(local.resolve())
    except OSError:
        raise problem from None
    same = [i for i in launcher.instances() if i.state is not None and i.state.file == here]
    if len(same) == 1:
        _err(f"{local} does not load now; mesh '{same[0].project}' serves it")
        return same[0].project
    _err(str(problem) if isinstance(problem, MeshInvalid) else f"devmesh: {problem}")
    if same:
        raise MeshError(
            f"{local} does not load, and {len(same)} meshes serve it: {_instance_list(same)}; "
            "choose one with -p NAME"
        ) from None
    raise MeshError(
        f"{local} does not load, and no running mesh serves it; to reach one whatever its "
        "file says, name it with -p NAME (`devmesh ls` lists them)"
    ) from None


def _instance_list(found: list[launcher.Instance]) -> str:
    return ", ".join(
        f"{i.project} ({i.state.file})" if i.state is not None and i.state.file else i.project
        for i in found
    )


def up(
    file: MeshFile = None,
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
    output: FormatOpt = None,
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
    """Bring the mesh up: pods of app + Envoy sidecar, the gateway, the xDS control plane.

    In the foreground on a terminal it opens the TUI (quitting it stops the mesh); -d runs
    the daemon in the background. A second `up` makes the running daemon re-read the file.

    Example: devmesh up -d --wait"""
    from devmesh.daemon import launcher

    timeout = check_timeout(timeout)
    path, mesh, name = _load(file, project)
    _check_ports(mesh, ingress_port, metrics_port)
    try:
        found = launcher.find(name, UP_LOOK_TIMEOUT)
    except launcher.DaemonNotAnswering as exc:
        if exc.stopped:
            raise
        found = launcher.await_serving(name).state  # another `up` is starting it
    if found is not None:
        if ingress_port or metrics_port:
            _check_running_ports(name, ingress_port, metrics_port)
        _reload(path, name, found.pid)
    elif detach:
        _joined_or_started(
            launcher.start_background(path, name, ingress_port, _show_log, metrics_port), path
        )
    else:
        _foreground(
            path, mesh, name, wait, timeout, ingress_port, tui and not as_json, metrics_port
        )
        return
    client = launcher.client(name)
    if wait:
        _wait(client, name, timeout, exit_when_not_ready=True)
    state = client.state()
    fmt = output_format(output, as_json)
    typer.echo("\n".join(views.url_lines(state)) if fmt is Format.TABLE else views.dump(state, fmt))


def _check_running_ports(name: str, ingress_port: int | None, metrics_port: int | None) -> None:
    """`--ingress-port`/`--metrics-port` are read when a daemon starts: given to an `up`
    that reloads a running one, they must say what runs, or the `up` is refused (it would
    otherwise answer 0 and serve on the old port)."""
    from urllib.parse import urlsplit

    from devmesh.daemon import launcher

    state = launcher.client(name).state()

    def port_of(url: str | None) -> int | None:
        return urlsplit(url).port if url else None

    running = {
        "--ingress-port": (ingress_port, port_of(state.gateway.url if state.gateway else None)),
        "--metrics-port": (metrics_port, port_of(state.metrics)),
    }
    for flag, (asked, now) in running.items():
        if asked and asked != now:
            where = f"on port {now}" if now else "without it"
            key = "ingress.port" if flag == "--ingress-port" else "observability.metrics.port"
            raise MeshError(
                f"mesh '{name}' runs {where}: {flag} is taken when the daemon starts "
                f"(`devmesh down` first); without a flag, {key} in the mesh file moves it live"
            )


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


def _check_ports(mesh: Mesh, ingress_port: int | None, metrics_port: int | None) -> None:
    """The ingress and /metrics on one port (the flags, or a flag and the file's): the
    daemon would bind /metrics and the gateway would never start. The file alone is the
    loader's to refuse."""
    ingress = ingress_port or (mesh.ingress.port if mesh.ingress is not None else None)
    metrics = metrics_port or mesh.observability.metrics_port
    if ingress is not None and ingress == metrics and (ingress_port or metrics_port):
        raise MeshError(
            f"port {ingress} for both the ingress and /metrics "
            f"({'--ingress-port' if ingress_port else 'ingress.port'}, "
            f"{'--metrics-port' if metrics_port else 'observability.metrics.port'}): "
            "give /metrics a port of its own"
        )


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
    from devmesh.tui import is_terminal

    if tui and is_terminal():
        _foreground_tui(file, mesh, name, ingress_port, metrics_port)
        return
    interrupted = False
    try:
        with launcher.foreground(
            file, name, ingress_port, mesh, log_file=False, metrics_port=metrics_port
        ) as fg:
            try:
                if wait:
                    _wait(fg.client, name, timeout, exit_when_not_ready=False, stop=fg.stopping)
                for line in views.url_lines(fg.client.state()):
                    typer.echo(line)
                typer.echo("serving; Ctrl-C stops the mesh and removes its containers")
                fg.daemon.wait(also=fg.stopping)
            finally:
                interrupted = fg.stopping.is_set()  # a signal (Ctrl-C, SIGTERM) set it
                typer.echo("stopping the mesh ...")
    except launcher.AnotherDaemonServes:
        _joined_or_started(launcher.await_serving(name), file)
        for line in views.url_lines(launcher.client(name).state()):
            typer.echo(line)
    if interrupted:  # as the README's exit codes say; `down` from elsewhere ends with 0
        raise typer.Exit(Exit.INTERRUPTED)


def _foreground_tui(
    file: Path, mesh: Mesh, name: str, ingress_port: int | None, metrics_port: int | None
) -> None:
    """The TUI from the first moment: it shows the bring-up (images, pods starting, ready)
    while the daemon starts on a thread; quitting it stops the mesh."""
    from devmesh.daemon import launcher
    from devmesh.tui import run as run_tui

    typer.echo(f"starting mesh '{name}' ...")
    with launcher.foreground_starting(file, name, ingress_port, mesh, metrics_port) as starting:
        try:
            run_tui(starting.client, owns_mesh=True, stop_when=starting.stopping.is_set)
        finally:
            typer.echo("stopping the mesh ...")
            starting.stop()
    for exc in starting.failed:
        if isinstance(exc, launcher.AnotherDaemonServes):
            _joined_or_started(launcher.await_serving(name), file)
            for line in views.url_lines(launcher.client(name).state()):
                typer.echo(line)
            return
        raise exc


def _wait(
    client: DaemonClient,
    name: str,
    timeout: float,
    exit_when_not_ready: bool,
    stop: threading.Event | None = None,
) -> api.MeshState:
    from devmesh.client import DaemonUnavailable
    from devmesh.daemon import launcher

    try:
        state = launcher.wait_ready(client, timeout, _err, stop)
    except DaemonUnavailable:
        if _stopping(name):  # `down` (or a signal) stopped it while this waited
            raise MeshError(
                f"mesh '{name}' was stopped while `up` waited for it to be ready"
            ) from None
        raise
    if state.ready:
        _err(f"mesh '{name}' is ready: {len(state.pods)} pods")
        return state
    _err(f"devmesh: mesh '{name}' is not ready:")
    for line in views.no_route_lines(state, timeout) or views.not_ready_lines(state):
        _err(line)
    if exit_when_not_ready:
        raise typer.Exit(Exit.NOT_READY)
    return state


def _stopping(name: str, within: float = 10.0) -> bool:
    """Whether mesh `name`'s daemon is going away: gone within `within` seconds (a stopping
    daemon first stops answering, then removes its mesh and leaves)."""
    from devmesh.daemon import launcher

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            # It may answer a moment more while it stops (the API goes last): keep looking
            if launcher.find(name) is None:
                return True
        except launcher.DaemonNotAnswering:
            pass  # still there, busy leaving (or frozen: then it never goes)
        time.sleep(0.2)
    return False


def tui(file: MeshFile = None, project: ProjectOpt = None) -> None:
    """Watch and steer a running mesh: pods, routes, live stats, weights, faults, logs, events.

    Several may attach at once; quitting leaves the mesh running.

    Example: devmesh -p shop tui"""
    from devmesh.daemon import launcher
    from devmesh.tui import check_terminal, run

    target = _target(file, project)  # bad arguments are said first
    check_terminal()  # `devmesh tui > file` must not wait or draw escape codes
    if target.state is None:
        raise MeshError(f"no daemon runs mesh '{target.project}'; start it with `devmesh up -d`")
    run(launcher.client(target.project, timeout=5))


def down(
    file: MeshFile = None,
    project: ProjectOpt = None,
    as_json: JsonFlag = False,
    output: FormatOpt = None,
) -> None:
    """Stop the daemon and remove every container and network of the mesh (also after a crash).

    Example: devmesh down    (or: devmesh -p shop-2 down)"""
    from devmesh.daemon import launcher

    fmt = output_format(output, as_json)
    as_json = fmt is not Format.TABLE
    target = _target(file, project, frozen_ok=True)
    name = target.project
    served = target.state.file if target.state is not None else None
    local = (explicit_file(file) or find_file()) if given_project(project) is None else None
    if served and local is not None and str(local) != "-" and str(local.resolve()) != served:
        # as compose's `down`: the mesh of that name, wherever its file is; said, not silent
        _err(f"mesh '{name}' is served from {served}, not from {local}: stopping it")
    result = launcher.down(name)
    stopped = result.daemon
    if stopped is not None:
        how = "" if stopped.how == "api" else f" with {stopped.how}"
        typer.echo(f"stopped the daemon (pid {stopped.pid}){how}", err=as_json)
    if as_json:
        document = {
            "project": name,
            "daemon": stopped.pid if stopped else None,
            "containers": result.containers,
            "networks": result.networks,
            "ok": result.ok,
        }
        typer.echo(views.dump_plain(document, fmt))
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
    file: MeshFile = None,
    project: ProjectOpt = None,
    as_json: JsonFlag = False,
    output: FormatOpt = None,
) -> None:
    """List the mesh's pods: state, address, version, config version, ACK/NACK.

    Example: devmesh ps    (or: devmesh -p shop ps --format yaml)"""
    from devmesh.daemon import launcher

    fmt = output_format(output, as_json)
    target = _target(file, project)
    state = target.state or launcher.status(target.project)
    if not state.pid and not state.pods and state.gateway is None:
        _not_running(target.project)  # as compose: an empty list, exit 0; and a word why
    if fmt is not Format.TABLE:
        typer.echo(views.dump(state, fmt))
        return
    stats = launcher.stats(target.project) if state.pid else None  # the callers refused
    typer.echo(views.ps_table(state, stats, time.time()))


def _not_running(name: str) -> None:
    """On stderr: mesh `name` has no daemon and no containers; the ones that run, and the
    likeliest meant (a typo in -p looks like an empty mesh otherwise)."""
    from devmesh.daemon import launcher

    running = sorted(i.project for i in launcher.instances())
    hint = did_you_mean(name, running) or ""
    others = f"; running: {', '.join(running)}" if running else "; none runs"
    _err(f"devmesh: mesh '{name}' does not run (no daemon, no containers){others}{hint}")


def ls(as_json: JsonFlag = False, output: FormatOpt = None) -> None:
    """List the running mesh instances: project, state, pods ready, ingress URL, file.

    Instances whose daemon is gone but whose containers are still there show as `no daemon`
    (`devmesh up` adopts them, `devmesh down` removes them).

    Example: devmesh ls"""
    from devmesh.daemon import launcher

    fmt = output_format(output, as_json)
    found, engine_error = launcher.all_instances()
    if engine_error:
        _err(f"devmesh: instances without a daemon not listed: {engine_error}")
    if fmt is Format.TABLE:
        typer.echo(views.ls_table(found))
    else:
        typer.echo(views.dump_plain([views.instance_json(i) for i in found], fmt))


def events(
    file: MeshFile = None,
    project: ProjectOpt = None,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing events as they come.")
    ] = False,
    as_json: JsonFlag = False,
    output: FormatOpt = None,
) -> None:
    """Show what the daemon did and saw: saves, pushes, NACKs, containers, health, faults.

    With --follow, one line (or one JSON object) per event as it comes, until the daemon stops.

    Example: devmesh events --follow --json"""
    import time

    from devmesh.client import DaemonUnavailable
    from devmesh.daemon import launcher

    fmt = output_format(output, as_json)
    target = _target(file, project)
    if target.state is None:
        raise MeshError(f"no daemon runs mesh '{target.project}'; start it with `devmesh up -d`")
    client = launcher.client(target.project, timeout=5)
    seen = client.events().events
    if not follow:
        if fmt is Format.TABLE:
            for event in seen:
                typer.echo(views.event_line(event))
        else:
            typer.echo(views.dump(api.Events(seen), fmt))
        return
    for event in seen:
        typer.echo(views.event_line(event) if fmt is Format.TABLE else views.event_json(event))
    last = seen[-1] if seen else None
    while True:
        time.sleep(0.5)
        try:
            now = client.events().events
        except DaemonUnavailable:
            _err(f"devmesh: the daemon of mesh '{target.project}' stopped; stopped following")
            return
        for event in views.events_after(now, last):
            typer.echo(views.event_line(event) if fmt is Format.TABLE else views.event_json(event))
            last = event


def logs(
    service: Annotated[
        str | None,
        typer.Argument(
            help="The service whose app logs (or with --access, requests) to show (default: all).",
            autocompletion=complete_service,
        ),
    ] = None,
    file: LogsFile = None,
    project: ProjectOpt = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep following.")] = False,
    tail: Annotated[str, typer.Option(help="Lines from the end of each log, or 'all'.")] = "all",
    proxy: Annotated[
        bool,
        typer.Option(
            "--proxy",
            help="The Envoy sidecars' own logs (with no SERVICE: and the gateway's; "
            "SERVICE gateway or ingress: the gateway's alone), not the apps'.",
        ),
    ] = False,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", "-t", help="Start each line with its time.")
    ] = False,
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
    """Show the app logs of a service's pods, or of every service interleaved; with
    --access, the mesh's access log: every request every sidecar and the gateway saw.

    Lines are prefixed by their pod when there are several (coloured on a terminal). -f
    follows, as in compose; the mesh file is --file here (or `devmesh -f FILE logs`).

    Example: devmesh logs -f catalog --tail 20"""
    from devmesh.core.load import GATEWAY_NAMES, gateway_logs_hint, names_gateway
    from devmesh.daemon import launcher

    if access:
        _access_logs(file, project, service, follow, tail, as_json, status, route, slower)
        return
    if as_json or status or route or slower:
        raise MeshError("--json, --status, --route and --slower go with --access")
    count = parse_tail(tail)
    target = _target(file, project)
    name = target.project
    # no daemon for the instance -p names: a file here is not known to be its file
    unrelated = target.state is None and given_project(project) is not None
    services = None if unrelated else _service_names(target)
    gateway = names_gateway(service, proxy)  # the gateway's Envoy (logfollow.Which)
    if service is not None and services is not None and service not in services and not gateway:
        known = [*services, *GATEWAY_NAMES] if proxy else services  # --proxy gateway too
        raise MeshError(
            f"no service '{service}' in mesh '{name}'{did_you_mean(service, known)}; "
            f"services: {', '.join(services)}{gateway_logs_hint(service)}"
        )
    colour = views.use_colour(sys.stdout)
    # a prefix on every line when they can come from several pods or several kinds of log
    always = service is None
    if not follow:
        lines = launcher.read_logs(name, service, count, proxy, timestamps)
        several = always or len({line.pod for line in lines}) > 1
        for line in lines:
            typer.echo(views.log_line(line, several, colour))
        return
    stream = launcher.follow_logs(name, service, count, proxy, timestamps)
    seen = set(stream.pods)
    try:
        for line in stream.lines:
            seen.add(line.pod)
            typer.echo(views.log_line(line, always or len(seen) > 1, colour))
    finally:
        close = getattr(stream.lines, "close", None)
        if close is not None:
            close()  # ends the daemon's stream, or the local followers' threads
    what = f"no pod of '{service}'" if service is not None else f"no pod of mesh '{name}'"
    _err(f"devmesh: {what} runs any more; stopped following")


def _service_names(target: Target) -> list[str] | None:
    """The services of the instance's own file (None: it cannot be read right now)."""
    if target.file is None:
        return None
    from devmesh.core.load import load_path

    try:
        return [s.name for s in load_path(str(target.file)).services]
    except MeshInvalid:
        if target.state is None:
            raise
        return None  # mid-edit: the daemon serves the last good file; it checks the name


def _access_logs(
    file: list[Path] | None,
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

    name = _target(file, project).project
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
        shown = () if count == 0 else result.entries  # --tail 0: none, as `logs SERVICE`
        for entry in shown:
            show(entry)
        if not result.logging:
            _err(
                "devmesh: access logs are off in this mesh (observability: {access_log: "
                "false}); what is listed came before"
            )
        if not as_json and not result.entries and count != 0:
            _err(
                f"devmesh: no request matches; {access_views.access_counters_line(result.counters)}"
            )
        return
    from devmesh.client import DaemonUnavailable

    tail_n = api.ACCESS_CAPACITY if count is None else count
    request = api.AccessFollowRequest(service, status, route, slower_ms, tail_n)
    stream = client.follow_access(request)
    try:
        for entry in stream:
            show(entry)
    except DaemonUnavailable:  # the stream broke off: `down`, or the daemon died
        pass  # as `events --follow` says it
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    try:  # a clean end while the daemon runs on: access logs were turned off
        logging = client.access(api.AccessRequest(limit=1)).logging
    except MeshError:  # DaemonUnavailable among them: it stopped
        logging = True
    if not logging:
        _err(
            "devmesh: access logs were turned off in this mesh (observability: {access_log: "
            "false}); stopped following"
        )
        return
    _err(f"devmesh: the daemon of mesh '{name}' stopped; stopped following")


def shift(
    service: Annotated[
        str,
        typer.Argument(help="The service whose traffic to shift.", autocompletion=complete_service),
    ],
    weights: Annotated[
        list[str],
        typer.Argument(
            help="VERSION=WEIGHT ..., adding up to 100.", autocompletion=complete_weight
        ),
    ],
    route: Annotated[
        str | None,
        typer.Option(
            "--route",
            help="Which route (default: the catch-all one).",
            autocompletion=complete_route,
        ),
    ] = None,
    file: MeshFile = None,
    project: ProjectOpt = None,
    as_json: JsonFlag = False,
    output: FormatOpt = None,
) -> None:
    """Set a route's weights live; they are written into the mesh file, comments kept.

    A running instance writes its own file (the line says which).

    Example: devmesh shift catalog v1=70 v2=30"""
    from devmesh.core.edit import set_weights, write_file
    from devmesh.daemon import launcher

    fmt = output_format(output, as_json)
    parsed = parse_weights(weights)
    target = _target(file, project)
    if target.state is not None:
        result = launcher.client(target.project).shift(service, parsed, route)
        applied = "applied live and written to"
    else:
        if target.file is None:
            raise MeshError(
                f"no daemon runs mesh '{target.project}' and there is no mesh file to write "
                "the weights into; give one with -f FILE"
            )
        path = target.file
        mesh = load_mesh(path)
        text, chosen = set_weights(path.read_text(), mesh, service, route, parsed)
        write_file(path, text)
        result = api.ShiftResult(service, chosen, parsed, synced=False)
        applied = "no daemon runs: `devmesh up` applies it; written to"
    if fmt is not Format.TABLE:
        typer.echo(views.dump(result, fmt))
        return
    split = ", ".join(f"{v} {w}%" for v, w in result.weights.items())
    typer.echo(f"{service} route '{result.route}': {split} ({applied} {target.file})")


def run(
    ctx: typer.Context,
    file: MeshFile = None,
    project: ProjectOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the mesh up afterwards.")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the mesh.")] = 180.0,
) -> None:
    """Up, wait, run COMMAND with the mesh's URLs in its environment, tear down.

    Exits with COMMAND's code (125 if the mesh could not come up). The mesh gets its own
    name and free ports; COMMAND sees DEVMESH_URL, DEVMESH_URL_<SERVICE>, DEVMESH_PROJECT.

    Example: devmesh run -- pytest tests/integration -x"""
    import os
    import subprocess

    from devmesh.testing import Mesh, MeshUpError

    timeout = check_timeout(timeout)
    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise MeshError("devmesh run needs a command: devmesh run [-f FILE] -- COMMAND ...")
    project = given_project(project, env=False)  # its own name, even inside another `run`
    path = mesh_file(file)
    try:
        mesh = Mesh.up(path, project, timeout=timeout)
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
