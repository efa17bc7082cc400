"""The `devmesh` command. Each command parses arguments, makes one call, renders the result;
project errors become a message and exit code 1, never a traceback."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from devmesh import __version__
from devmesh.core.problems import MeshError, MeshInvalid

app = typer.Typer(
    name="devmesh",
    help="A local service mesh on plain Docker: Envoy sidecars, live routing, no cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MeshFile = Annotated[
    Path,
    typer.Option("-f", "--file", help="The mesh file.", show_default=True),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
DEFAULT_FILE = Path("devmesh.yaml")


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"devmesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """devmesh: validate, render and explain a mesh file; run it on Docker."""


@app.command()
def validate(file: MeshFile = DEFAULT_FILE, as_json: JsonFlag = False) -> None:
    """Check the mesh file; print every problem at once as FILE:LINE:COL: key: message."""
    from devmesh.core.load import load_path
    from devmesh.core.summary import summarize

    try:
        mesh = load_path(str(file))
    except MeshInvalid as exc:
        if as_json:
            _print_json({"valid": False, "problems": [_problem_json(p) for p in exc.problems]})
        else:
            for problem in exc.problems:
                _err(str(problem))
            n = len(exc.problems)
            _err(f"{file}: {n} problem{'s' if n != 1 else ''}")
        raise typer.Exit(1) from None
    summary = summarize(mesh)
    if as_json:
        _print_json({"valid": True, **summary.as_json()})
    else:
        typer.echo(f"{file}: {summary}")


def _problem_json(p: Any) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "col": p.col, "path": p.path, "message": p.message}


@app.command()
def render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the config files.")],
    file: MeshFile = DEFAULT_FILE,
    check: Annotated[
        bool, typer.Option("--check", help="Also run `envoy --mode validate` on each file.")
    ] = False,
) -> None:
    """Write one complete static Envoy config per sidecar and for the ingress gateway."""
    from devmesh.core.load import load_path
    from devmesh.envoy.render import render_mesh

    mesh = load_path(str(file))
    rendered = render_mesh(mesh)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshError(f"{out}: cannot create the directory: {exc.strerror}") from None
    failed = 0
    for item in rendered:
        path = out / item.filename
        text = yaml.safe_dump(item.bootstrap, sort_keys=False, default_flow_style=False)
        _write_atomic(path, text)
        line = f"wrote {path}"
        if check:
            from devmesh.adapters.envoy_binary import validate as envoy_validate

            verdict = envoy_validate(path)
            if verdict.ok:
                line += "  (envoy: OK)"
            else:
                failed += 1
                line += f"  (envoy REJECTED)\n{verdict.detail}"
        typer.echo(line, err=bool(check and "REJECTED" in line))
    if failed:
        _err(f"{failed} of {len(rendered)} configs rejected by Envoy")
        raise typer.Exit(1)


def _write_atomic(path: Path, text: str) -> None:
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
            fh.write(text)
        Path(fh.name).replace(path)
    except OSError as exc:
        raise MeshError(f"{path}: cannot write: {exc.strerror}") from None


@app.command()
def explain(
    method: Annotated[str, typer.Argument(help="HTTP method, e.g. GET.")],
    url: Annotated[
        str,
        typer.Argument(
            help="http://SERVICE/path for a call between services, or "
            "http://127.0.0.1:PORT/path (or /path) for a request through the ingress."
        ),
    ],
    header: Annotated[
        list[str] | None,
        typer.Option("-H", "--header", help="A request header, 'name: value'. Repeatable."),
    ] = None,
    file: MeshFile = DEFAULT_FILE,
    as_json: JsonFlag = False,
) -> None:
    """Show which route matches a request, where it goes and what applies (and why not others)."""
    from devmesh.core.explain import explain as run_explain
    from devmesh.core.explain import explanation_json, format_explanation, parse_header
    from devmesh.core.load import load_path

    mesh = load_path(str(file))
    headers = [parse_header(h) for h in header or ()]
    result = run_explain(mesh, method, url, headers)
    if as_json:
        _print_json(explanation_json(result))
    else:
        typer.echo(format_explanation(result))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the mesh file (for yaml-language-server and editors)."""
    from devmesh.core.schema import json_schema

    _print_json(json_schema())


def main() -> None:
    try:
        app()
    except MeshError as exc:
        _err(f"devmesh: {exc}" if not isinstance(exc, MeshInvalid) else str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        _err("devmesh: interrupted")
        sys.exit(130)


# -- running the mesh ---------------------------------------------------------------------

ProjectOpt = Annotated[
    str | None,
    typer.Option("-p", "--project", help="Instance name (default: the file's `mesh:` name)."),
]
EXIT_NOT_READY = 3  # `up --wait`: the mesh did not become ready in time (or cannot)


def _project(file: Path, project: str | None) -> tuple[Any, str]:
    from devmesh.core.load import load_path

    mesh = load_path(str(file))
    return mesh, project or mesh.name


@app.command()
def up(
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    detach: Annotated[
        bool, typer.Option("-d", "--detach", help="Run the daemon in the background.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Return only when every pod is ready (exit 3 if not).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 120.0,
    ingress_port: Annotated[
        int | None,
        typer.Option(
            "--ingress-port",
            help="This instance's ingress port on 127.0.0.1 instead of the file's; 0: any free.",
        ),
    ] = None,
    as_json: JsonFlag = False,
    tui: Annotated[
        bool, typer.Option("--tui/--no-tui", help="In the foreground on a terminal: open the TUI.")
    ] = True,
) -> None:
    """Bring the mesh up: pods of app + Envoy sidecar, the gateway, the xDS control plane."""
    from devmesh.client import DaemonClient
    from devmesh.daemon.state import StateDir

    mesh, name = _project(file, project)
    if ingress_port == 0:
        ingress_port = _free_port()
    state = StateDir.for_project(name)
    client = DaemonClient(state.api_socket)
    if state.daemon_pid() is not None and client.alive():
        result = client.reload(str(file.resolve()))
        if not result.get("ok"):
            for problem in result.get("problems", []):
                _err(problem)
            _err(f"devmesh: the running mesh '{name}' keeps serving what it could keep")
            raise typer.Exit(1)
        typer.echo(
            f"mesh '{name}': the running daemon (pid {state.daemon_pid()}) reloaded {file}",
            err=True,
        )
    elif detach:
        _start_detached(file, name, state, ingress_port)
    else:
        _run_foreground(file, mesh, name, state, wait, timeout, ingress_port, tui and not as_json)
        return
    if wait:
        _wait_ready(client, name, timeout)
    if as_json:
        _print_json(client.state())
    else:
        _print_urls(client)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_detached(file: Path, project: str, state: Any, ingress_port: int | None) -> None:
    import subprocess
    import time

    from devmesh.adapters.engine import Engine
    from devmesh.client import DaemonClient

    Engine.connect()  # a clear message now rather than in the daemon's log
    state.create()
    start = state.log_file.stat().st_size if state.log_file.exists() else 0
    with open(state.log_file, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devmesh.daemon",
                "--file",
                str(file.resolve()),
                "--project",
                project,
                *(["--ingress-port", str(ingress_port)] if ingress_port else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command and its terminal
        )
    client = DaemonClient(state.api_socket, timeout=2)
    with open(state.log_file, "rb") as reader:
        reader.seek(start)  # show this start's lines only
        while True:
            for line in reader.readlines():
                typer.echo("  " + line.decode(errors="replace").rstrip(), err=True)
            if proc.poll() is not None:
                _err(f"devmesh: the daemon exited ({proc.returncode}); log: {state.log_file}")
                raise typer.Exit(1)
            if client.alive() and client.state().get("phase") == "serving":
                break
            time.sleep(0.1)
    typer.echo(f"mesh '{project}': daemon running in the background (pid {proc.pid})", err=True)


def _run_foreground(
    file: Path,
    mesh: Any,
    project: str,
    state: Any,
    wait: bool,
    timeout: float,
    ingress_port: int | None,
    tui: bool = False,
) -> None:
    import logging
    import signal
    import threading

    from devmesh.adapters.engine import Engine
    from devmesh.client import DaemonClient
    from devmesh.daemon.runtime import Daemon

    tui = tui and sys.stdin.isatty() and sys.stdout.isatty()
    if tui:  # the TUI owns the terminal: the daemon logs into its file
        state.create()
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", filename=str(state.log_file)
        )
        typer.echo(f"starting mesh '{project}' (log: {state.log_file}) ...")
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
    daemon = Daemon(file.resolve(), mesh, project, Engine.connect(), state, ingress_port)
    stopping = threading.Event()

    def on_signal(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        daemon.start()
        client = DaemonClient(state.api_socket)
        if wait:
            _wait_ready(client, project, timeout, exit_when_not_ready=False, stop=stopping)
        if tui:
            from devmesh.tui import run as run_tui

            def serve() -> None:
                daemon.wait(also=stopping)  # `devmesh down` or a signal: the TUI closes too
                stopping.set()

            threading.Thread(target=serve, name="serve", daemon=True).start()
            run_tui(client, owns_mesh=True, stop_when=stopping.is_set)
            return
        _print_urls(client)
        typer.echo("serving; Ctrl-C stops the mesh and removes its containers")
        daemon.wait(also=stopping)
    finally:
        if daemon.started:
            typer.echo("stopping the mesh ...")
        daemon.stop(teardown=True)  # removes the mesh only if this daemon brought it up


def _wait_ready(
    client: Any,
    project: str,
    timeout: float,
    exit_when_not_ready: bool = True,
    stop: Any = None,
) -> None:
    import time

    deadline = time.monotonic() + timeout
    last = ""
    state: dict[str, Any] = {}
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        state = client.state()
        if state.get("ready"):
            typer.echo(f"mesh '{project}' is ready: {len(state['pods'])} pods", err=True)
            return
        failed = {(f["service"], f["version"]) for f in state.get("failed", [])}
        if failed and all(
            p["ready"] or (p["service"], p["version"]) in failed for p in state["pods"]
        ):
            break  # only permanent failures are left: no use waiting
        waiting = sum(1 for p in state["pods"] if not p["ready"])
        line = f"waiting for {waiting} of {len(state['pods'])} pods ..."
        if line != last:
            typer.echo(line, err=True)
            last = line
        time.sleep(0.25)
    _err(f"devmesh: mesh '{project}' is not ready:")
    reported = set()
    for f in state.get("failed", []):
        if (f["service"], f["version"], f["reason"]) not in reported:
            reported.add((f["service"], f["version"], f["reason"]))
            _err(f"  {f['service']}/{f['version']}: {f['reason']}")
    for p in state.get("pods", []):
        if not p["ready"] and (p["service"], p["version"], p["reason"]) not in reported:
            _err(f"  {p['service']}/{p['version']} ({p['pod']}): {p['reason']}")
    gw = state.get("gateway")
    if gw and not gw["ready"]:
        _err(f"  gateway: {gw['state']}, xDS synced: {gw['xds']['synced']}")
    if exit_when_not_ready:
        raise typer.Exit(EXIT_NOT_READY)


def _print_urls(client: Any) -> None:
    gw = client.state().get("gateway")
    if gw and gw.get("url"):
        typer.echo(f"ingress: {gw['url']}")
    for name, url in (gw or {}).get("services", {}).items():
        typer.echo(f"  {name}: {url}")


@app.command()
def tui(file: MeshFile = DEFAULT_FILE, project: ProjectOpt = None) -> None:
    """Watch and steer a running mesh: pods, routes, live stats, weights, faults, logs, events.
    Several may attach at once; quitting leaves the mesh running."""
    from devmesh.client import DaemonClient
    from devmesh.daemon.state import StateDir
    from devmesh.tui import mesh_name, run

    name = project or mesh_name(file)
    state = StateDir.for_project(name)
    client = DaemonClient(state.api_socket, timeout=5)
    if state.daemon_pid() is None or not client.alive():
        raise MeshError(f"no daemon runs mesh '{name}'; start it with `devmesh up -d`")
    run(client)


@app.command()
def down(
    file: MeshFile = DEFAULT_FILE, project: ProjectOpt = None, as_json: JsonFlag = False
) -> None:
    """Stop the daemon and remove every container and network of the mesh (also after a crash)."""
    import contextlib
    import os
    import signal
    import time

    from devmesh.adapters.engine import Engine
    from devmesh.client import DaemonClient
    from devmesh.core.problems import MeshError as _MeshError
    from devmesh.daemon.state import StateDir

    name = project or _project(file, None)[1]
    engine = Engine.connect()
    state = StateDir.for_project(name)
    pid = state.daemon_pid()
    if pid is not None:
        try:
            DaemonClient(state.api_socket, timeout=5).shutdown()
        except _MeshError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while state.daemon_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if state.daemon_pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        typer.echo(f"stopped the daemon (pid {pid})", err=as_json)
    containers, networks = engine.remove_all(name)
    state.remove()
    if as_json:
        _print_json(
            {"project": name, "daemon": pid, "containers": containers, "networks": networks}
        )
    elif containers or networks:
        typer.echo(f"mesh '{name}': removed {containers} containers, {networks} network(s)")
    else:
        typer.echo(f"mesh '{name}': nothing to remove")


@app.command()
def ps(
    file: MeshFile = DEFAULT_FILE, project: ProjectOpt = None, as_json: JsonFlag = False
) -> None:
    """List the mesh's pods: state, address, version, config version, ACK/NACK."""
    from devmesh.client import DaemonClient
    from devmesh.daemon.state import StateDir

    name = project or _project(file, None)[1]
    state = StateDir.for_project(name)
    client = DaemonClient(state.api_socket, timeout=5)
    if state.daemon_pid() is not None and client.alive():
        data = client.state()
    else:
        data = _ps_from_engine(name)
    if as_json:
        _print_json(data)
        return
    typer.echo(_ps_table(data))


def _ps_from_engine(project: str) -> dict[str, Any]:
    """Without a daemon, what Docker alone can tell."""
    from devmesh.adapters.engine import Engine

    engine = Engine.connect()
    infos = engine.containers(project)
    pods = []
    for obs in engine.observe(project):
        if obs.role != "pod":
            continue
        app = infos.get(f"{obs.name}-app")
        sidecar = infos.get(f"{obs.name}-sidecar")
        pods.append(
            {
                "pod": obs.name,
                "service": obs.service,
                "version": obs.version,
                "ready": False,
                "reason": "daemon not running",
                "address": infos[obs.name].ip if obs.name in infos else None,
                "app": app.state if app else "missing",
                "restarts": app.restarts if app else 0,
                "sidecar": sidecar.state if sidecar else "missing",
                "xds": {"connected": False, "synced": False, "version": None, "nack": None},
            }
        )
    return {
        "mesh": project,
        "project": project,
        "phase": "no daemon",
        "ready": False,
        "pods": pods,
        "gateway": None,
        "failed": [],
        "problems": [],
        "errors": [],
    }


def _ps_table(data: dict[str, Any]) -> str:
    rows = [("POD", "SERVICE", "VERSION", "STATE", "ADDRESS", "CONFIG", "XDS")]
    reasons: dict[int, str] = {}
    for p in data["pods"]:
        xds = p["xds"]
        if xds["nack"]:
            ack = f"NACK ({xds['nack']['type']})"
        elif xds["synced"]:
            ack = "ACK"
        else:
            ack = "connected" if xds["connected"] else "-"
        if not p["ready"]:
            reasons[len(rows)] = " ".join(str(p["reason"]).split())
        rows.append(
            (
                p["pod"],
                p["service"],
                p["version"],
                "ready" if p["ready"] else "not ready",
                p["address"] or "-",
                xds["version"] or "-",
                ack,
            )
        )
    for f in data.get("failed", []):
        reasons[len(rows)] = f["reason"]
        rows.append(("-", f["service"], f["version"], "failed", "-", "-", "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i in reasons:
            lines.append(f"  └ {reasons[i]}")
    head = f"mesh '{data['project']}' ({data['phase']})"
    gw = data.get("gateway")
    if gw:
        where = f"ingress {gw['url']}" if gw.get("url") else "gateway"
        head += f"  {where} {'ready' if gw['ready'] else gw['state']}"
    for problem in data.get("problems", []):
        lines.append(f"mesh file problem (the last good config serves on): {problem}")
    return "\n".join([head, *lines])


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="The service whose app logs to show.")],
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep following.")] = False,
    tail: Annotated[str, typer.Option(help="Lines from the end of each log, or 'all'.")] = "all",
) -> None:
    """Show the app logs of a service's pods (prefixed by pod when there are several)."""
    from devmesh.adapters.engine import Engine
    from devmesh.core.problems import did_you_mean

    mesh, name = _project(file, project)
    if not mesh.has_service(service):
        names = [s.name for s in mesh.services]
        raise MeshError(
            f"no service '{service}' in mesh '{name}'{did_you_mean(service, names)}; "
            f"services: {', '.join(names)}"
        )
    engine = Engine.connect()
    apps = sorted(o.name for o in engine.observe(name) if o.role == "app" and o.service == service)
    if not apps:
        raise MeshError(f"service '{service}' has no running pods; is the mesh up?")
    count: int | str = int(tail) if tail.isdigit() else "all"
    if not follow:
        for container in apps:
            for chunk in engine.logs(container, follow=False, tail=count):
                for line in chunk.decode(errors="replace").splitlines():
                    typer.echo(
                        f"{container.removesuffix('-app')} | {line}" if len(apps) > 1 else line
                    )
        return
    _follow(engine, name, service, count)


def _follow(engine: Any, project: str, service: str, tail: int | str) -> None:
    """Follow the service's app containers until none runs (`down`, or the service left the
    mesh). What stopped before the first look is shown as it ended; a container found later
    (a replacement, a scale-up) is followed from its first line, one restarted in place from
    where its stream ended."""
    import queue
    import threading
    import time

    events: queue.Queue[tuple[str, str]] = queue.Queue()  # ("line", text) | ("end", id)
    following: dict[str, str] = {}  # container id -> name, while its stream is open
    ended: dict[str, float] = {}  # container id -> when its stream ended (epoch seconds)
    several = False

    def label(name: str, text: str) -> str:
        return f"{name.removesuffix('-app')} | {text}" if several else text

    def pump(cid: str, name: str, since: float | None, lines: int | str) -> None:
        buffer = b""
        try:
            for chunk in engine.logs(cid, follow=True, tail=lines, since=since):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    events.put(("line", label(name, raw.decode(errors="replace"))))
        except Exception:  # removed meanwhile, or the engine went away: the loop looks again
            pass
        finally:
            ended[cid] = time.time()
            events.put(("end", cid))

    first = True
    idle_since: float | None = None
    next_look = 0.0
    while True:
        now = time.monotonic()
        if now >= next_look:
            next_look = now + 1.0
            apps = [o for o in engine.observe(project) if o.role == "app" and o.service == service]
            running = [o for o in apps if o.state == "running"]
            several = several or len({o.id for o in apps} | set(following)) > 1
            if first:
                for o in sorted(apps, key=lambda o: o.name):
                    if o.state != "running":  # a crash loop's last words
                        for chunk in engine.logs(o.id, follow=False, tail=tail):
                            for text in chunk.decode(errors="replace").splitlines():
                                typer.echo(label(o.name, text))
                        ended[o.id] = time.time()  # restarted in place: from here on
            for o in running:
                if o.id in following or time.time() - ended.get(o.id, 0.0) < 1.0:
                    continue  # followed, or its stream just ended: not in a tight loop
                following[o.id] = o.name
                since = ended.get(o.id)
                lines = tail if first else "all"
                threading.Thread(
                    target=pump, args=(o.id, o.name, since, lines), daemon=True
                ).start()
            first = False
            if running or following:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= 3.0:  # a replacement gets this long to appear
                gone = f"devmesh: no pod of '{service}' runs any more; stopped following"
                typer.echo(gone, err=True)
                return
        try:
            kind, value = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if kind == "line":
            typer.echo(value)
        else:
            following.pop(value, None)
            next_look = min(next_look, time.monotonic() + 0.2)  # look for what replaces it


@app.command()
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
    from devmesh.client import DaemonClient
    from devmesh.core.edit import set_weights, write_file
    from devmesh.daemon.state import StateDir

    parsed: dict[str, int] = {}
    for item in weights:
        version, sep, weight = item.partition("=")
        if not sep or not weight.strip().isdigit() or not version:
            raise MeshError(f"'{item}' is not VERSION=WEIGHT (e.g. v1=70)")
        parsed[version.strip()] = int(weight)
    mesh, name = _project(file, project)
    state = StateDir.for_project(name)
    client = DaemonClient(state.api_socket)
    if state.daemon_pid() is not None and client.alive():
        result = client.shift(service, parsed, route)
        applied = "applied live and written to"
    else:
        text, chosen = set_weights(file.read_text(), mesh, service, route, parsed)
        write_file(file, text)
        result = {"ok": True, "service": service, "route": chosen, "weights": parsed}
        applied = "no daemon runs: `devmesh up` applies it; written to"
    if as_json:
        _print_json(result)
        return
    split = ", ".join(f"{v} {w}%" for v, w in parsed.items())
    typer.echo(f"{service} route '{result['route']}': {split} ({applied} {file})")


EXIT_MESH_FAILED = 125  # `run`: the mesh could not come up (like docker run's own failures)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def run(
    ctx: typer.Context,
    file: MeshFile = DEFAULT_FILE,
    project: ProjectOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the mesh up afterwards.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the mesh.")] = 180.0,
) -> None:
    """Up, wait, run COMMAND with the mesh's URLs in its environment, tear down; exit with
    the command's code (125 if the mesh could not come up). Usage: devmesh run -- pytest -x"""
    import os
    import subprocess

    from devmesh.testing import Mesh, MeshUpError

    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise MeshError("devmesh run needs a command: devmesh run [-f FILE] -- COMMAND ...")
    try:
        mesh = Mesh.up(file, project, timeout=timeout)
    except MeshInvalid as exc:  # the command's own exit codes stay unambiguous: 125
        _err(str(exc))
        raise typer.Exit(EXIT_MESH_FAILED) from None
    except (MeshUpError, MeshError) as exc:
        _err(f"devmesh: {exc}")
        raise typer.Exit(EXIT_MESH_FAILED) from None
    code = EXIT_MESH_FAILED
    try:
        env = {**os.environ, **mesh.urls, "DEVMESH_PROJECT": mesh.project}
        for key, value in mesh.urls.items():
            _err(f"{key}={value}")
        try:
            code = subprocess.run(command, env=env, check=False).returncode
        except FileNotFoundError:
            _err(f"devmesh: {command[0]}: command not found")
            code = 127
        except KeyboardInterrupt:
            code = 130
    finally:
        if keep:
            _err(f"devmesh: mesh '{mesh.project}' left up; `devmesh down -p {mesh.project}`")
        else:
            mesh.down()
    raise typer.Exit(code)
