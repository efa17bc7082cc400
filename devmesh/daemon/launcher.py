"""Starting, finding and stopping a mesh instance's daemon: the one place that supervises
daemon processes, for the foreground (`up` in a terminal) and the background (`up -d`,
`down`, and `python -m devmesh.daemon`, whose composition root is `devmesh.daemon.__main__`).

    find(project)              -> the daemon's MeshState, None when none runs
    status(project)            -> the daemon's MeshState, else what Docker alone can tell
    start_background(...)      -> Serving: the detached daemon serves (or another one won)
    await_serving(project)     -> Serving: another daemon, once it serves
    foreground(...)            -> a context: this process is the daemon until it ends
    running(daemon, teardown)  -> a context: signals, start, stop (both modes' daemons)
    wait_ready(client, ...)    -> the MeshState once ready, hopeless, or out of time
    stop_daemon(state)         -> Stopped: API shutdown, then SIGTERM, then SIGKILL by PID
    down(project)              -> Down: the daemon stopped, containers removed by label
    read_logs / follow_logs    -> a service's app log lines (followed by the daemon if one
                                  runs, else here)
    instance_ingress_port(...) -> the port a new daemon gets: a running gateway's is kept

Nothing here parses the daemon's English: states are `devmesh.api.types` values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from devmesh.adapters.engine import ContainerInfo, Engine
from devmesh.adapters.images import prune_built
from devmesh.api import types as api
from devmesh.client import DaemonClient, DaemonUnavailable
from devmesh.core.addressing import GATEWAY_PORT
from devmesh.core.names import check_project, is_project
from devmesh.core.problems import MeshError
from devmesh.daemon.podstate import container_state
from devmesh.daemon.state import StateDir, base_dir
from devmesh.plan.desired import gateway_name
from devmesh.plan.plan import Observed

if TYPE_CHECKING:
    from devmesh.core.model import Mesh
    from devmesh.daemon.runtime import Daemon

ANSWER_TIMEOUT = 2.0  # seconds a daemon gets to answer a look (a frozen one must not hang us)
STOP_GRACE = 10.0  # seconds a daemon gets to stop after the API's shutdown, then SIGTERM's
KILL_WAIT = 5.0
SILENCE_LIMIT = 30.0  # seconds a daemon holding the lock may go without answering a look
EXIT_ANOTHER_DAEMON = 75  # `python -m devmesh.daemon`: another daemon holds the lock


class DaemonNotAnswering(MeshError):
    def __init__(self, project: str, pid: int, stopped: bool, timeout: float) -> None:
        if stopped:
            why = f"is stopped (SIGSTOP?); `kill -CONT {pid}` resumes it"
        else:
            why = f"does not answer within {timeout:g} s (starting, busy or hung)"
        super().__init__(
            f"the daemon of mesh '{project}' (pid {pid}) {why}; "
            f"`devmesh down -p {project}` stops it and removes the mesh"
        )
        self.pid = pid
        self.stopped = stopped


class DaemonExited(MeshError):
    def __init__(self, code: int, log_file: Path) -> None:
        super().__init__(f"the daemon exited ({code}); log: {log_file}")
        self.code = code


class AnotherDaemonServes(MeshError):
    """A concurrent `up` won the daemon lock: the mesh is up, served by that daemon."""

    def __init__(self, project: str, pid: int | None) -> None:
        super().__init__(f"another daemon (pid {pid}) runs mesh '{project}'")
        self.pid = pid


@dataclass(frozen=True, slots=True)
class Serving:
    pid: int
    ours: bool  # False: another `up` started it first; this one started nothing
    state: api.MeshState


@dataclass(frozen=True, slots=True)
class Stopped:
    pid: int
    how: str  # "api", "SIGTERM" or "SIGKILL": the rung of the ladder that ended it
    gone: bool  # False: it still holds the lock after SIGKILL (uninterruptible?)


@dataclass(frozen=True, slots=True)
class Down:
    project: str
    daemon: Stopped | None
    containers: int = 0
    networks: int = 0
    state_removed: bool = False
    engine_error: str | None = None  # the containers could not be removed: why
    state_error: str | None = None  # the state directory was not removed: why

    @property
    def ok(self) -> bool:
        stopped = self.daemon is None or self.daemon.gone
        return stopped and self.engine_error is None and self.state_error is None


# -- finding ----------------------------------------------------------------------------------


def client(project: str, timeout: float = 10) -> DaemonClient:
    return DaemonClient(StateDir.for_project(project).api_socket, timeout=timeout)


def find(project: str, timeout: float = ANSWER_TIMEOUT) -> api.MeshState | None:
    """The running daemon's state; None when no daemon holds the instance's lock;
    DaemonNotAnswering when one does but does not answer within `timeout`."""
    state = StateDir.for_project(project)
    pid = state.daemon_pid()
    if pid is None:
        return None
    if _is_stopped(pid):  # it cannot answer: say so now, not after the timeout
        raise DaemonNotAnswering(project, pid, True, timeout)
    try:
        return DaemonClient(state.api_socket, timeout=timeout).state()
    except DaemonUnavailable:
        raise DaemonNotAnswering(project, pid, _is_stopped(pid), timeout) from None


def stats(project: str, timeout: float = ANSWER_TIMEOUT) -> api.Stats | None:
    """The running daemon's traffic counters (`ps` shows the denials); None without one."""
    state = StateDir.for_project(project)
    if state.daemon_pid() is None:
        return None
    try:
        return DaemonClient(state.api_socket, timeout=timeout).stats()
    except DaemonUnavailable:
        return None


@dataclass(frozen=True, slots=True)
class Instance:
    """A mesh instance whose daemon holds its lock: its state, or why it gave none."""

    project: str
    pid: int  # 0: no daemon runs it (containers only: a crashed or stopped daemon)
    state: api.MeshState | None
    error: str = ""
    running: int = 0  # with no daemon: how many of its containers run


def instances(timeout: float = ANSWER_TIMEOUT) -> list[Instance]:
    """Every instance with a running daemon under the state base, by name. Only
    directories named as projects are looked at; nothing is created or changed."""
    try:
        entries = sorted(p for p in base_dir().iterdir() if is_project(p.name) and p.is_dir())
    except OSError:  # no base yet: nothing ever ran
        return []
    found = []
    for path in entries:
        try:
            pid = StateDir(path).daemon_pid()
        except OSError:
            continue
        if pid is None:
            continue
        try:
            state = find(path.name, timeout)
        except MeshError as exc:
            found.append(Instance(path.name, pid, None, str(exc)))
            continue
        if state is not None:
            found.append(Instance(path.name, pid, state))
    return found


def all_instances() -> tuple[list[Instance], str]:
    """`devmesh ls`: the instances with a daemon, then those the engine has containers of
    with no daemon; and why the engine could not be asked ("" when it answered)."""
    found = instances()
    try:
        counts = Engine.connect(timeout=5).projects()
    except MeshError as exc:
        return found, str(exc)
    daemons = {i.project for i in found}
    extra = [Instance(p, 0, None, running=n) for p, n in sorted(counts.items()) if p not in daemons]
    return found + extra, ""


def status(project: str, timeout: float = ANSWER_TIMEOUT) -> api.MeshState:
    """What the daemon says, or with none running what Docker alone can tell."""
    found = find(project, timeout)
    if found is not None:
        return found
    return observe(Engine.connect(), project)


def observe(engine: Engine, project: str) -> api.MeshState:
    observed, infos = engine.look(project)
    return state_from_engine(project, observed, infos)


def state_from_engine(
    project: str, observed: list[Observed], infos: dict[str, ContainerInfo]
) -> api.MeshState:
    """The pods and gateway the engine has for the instance; readiness is the daemon's to
    know (health, xDS), so no pod is ready here."""
    by_pod: dict[tuple[str, str], Observed] = {(o.pod, o.role): o for o in observed}

    def info(pod: str, role: str) -> ContainerInfo | None:
        o = by_pod.get((pod, role))
        return infos.get(o.name) if o is not None else None

    pods = []
    for o in sorted((o for o in observed if o.role == "pod"), key=lambda o: o.name):
        owner, app, sidecar = info(o.pod, "pod"), info(o.pod, "app"), info(o.pod, "sidecar")
        state, reason = container_state(owner, app, sidecar) or (
            api.PodState.UNHEALTHY,
            "not checked: no daemon runs",
        )
        pods.append(
            api.Pod(
                pod=o.pod,
                service=o.service,
                version=o.version,
                replica=o.replica,
                state=state,
                reason=reason,
                address=owner.ip if owner else None,
                app=app.state if app else "missing",
                restarts=app.restarts if app else 0,
                sidecar=sidecar.state if sidecar else "missing",
            )
        )
    gateway = None
    gw = infos.get(gateway_name(project))
    if gw is not None:
        port = gw.ports.get(GATEWAY_PORT)
        url = f"http://127.0.0.1:{port}/" if port else None
        gateway = api.Gateway(name=gw.name, state=gw.state, ready=False, url=url)
    return api.MeshState(
        mesh=project,
        project=project,
        phase=api.Phase.NO_DAEMON,
        ready=False,
        pods=tuple(pods),
        gateway=gateway,
    )


def _is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, a debugger): Linux's /proc, else False."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    return bool(fields) and fields[0] in ("T", "t")


# -- app logs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogStream:
    pods: tuple[str, ...]  # the service's pods when following began
    lines: Iterator[api.LogLine]


def read_logs(
    project: str,
    service: str | None,
    tail: int | None,
    proxy: bool = False,
    timestamps: bool = False,
) -> list[api.LogLine]:
    """A service's (None: every service's) app logs as the engine has them now, or with
    `proxy` its sidecars' (and for the whole mesh the gateway's); no daemon needed."""
    from devmesh.daemon import logfollow

    which = logfollow.Which(service, proxy, timestamps)
    engine = Engine.connect()
    if not logfollow.pods_of(engine, project, which):
        raise MeshError(_no_pods(project, service, proxy))
    return logfollow.read(engine, project, which, tail)


def follow_logs(
    project: str,
    service: str | None,
    tail: int | None,
    proxy: bool = False,
    timestamps: bool = False,
) -> LogStream:
    """The chosen log lines as they come, until no pod of them runs: served by the daemon
    when one runs, else followed here."""
    from devmesh.daemon import logfollow

    which = logfollow.Which(service, proxy, timestamps)
    found = find(project)
    if found is not None:
        pods = tuple(p.pod for p in found.pods if service is None or p.service == service)
        return LogStream(pods, _from_daemon(project, which, tail))
    engine = Engine.connect()
    pods = tuple(logfollow.pods_of(engine, project, which))
    if not pods:
        raise MeshError(_no_pods(project, service, proxy))
    return LogStream(pods, logfollow.follow(engine, project, which, tail, threading.Event()))


def _no_pods(project: str, service: str | None, proxy: bool) -> str:
    from devmesh.core.load import names_gateway

    if names_gateway(service, proxy):
        return f"mesh '{project}' runs no gateway; is the mesh up?"
    return f"{_whose(project, service)} has no pods; is the mesh up?"


def _whose(project: str, service: str | None) -> str:
    return f"service '{service}'" if service is not None else f"mesh '{project}'"


def _from_daemon(project: str, which: Any, tail: int | None) -> Iterator[api.LogLine]:
    """The daemon's stream; if the daemon goes away meanwhile (`down` stops it before it
    removes the pods, or it crashed), the pods may run on: follow them here from now on."""
    from devmesh.daemon import logfollow

    try:
        yield from client(project).follow_logs(which.service, tail, which.proxy, which.timestamps)
        return
    except DaemonUnavailable:
        pass
    engine = Engine.connect()
    yield from logfollow.follow(engine, project, which, 0, threading.Event())


# -- the ingress port ---------------------------------------------------------------------------


def choose_ingress_port(
    requested: int | None, stored: int | None, running: int | None
) -> int | None:
    """The instance's ingress port: `requested` is `--ingress-port` (None: the file's; 0: any
    free one), `stored` the port the instance's last daemon was given, `running` the host port
    its gateway still publishes. A daemon that crashed left the gateway serving: the next one
    adopts it with its port rather than recreating it elsewhere. Returns 0 for "pick a free
    port now", None for the file's own port."""
    if requested:
        return requested
    if requested == 0:
        return running if running is not None else 0
    return running if stored is not None and running is not None else None


def running_gateway_port(engine: Engine, project: str) -> int | None:
    gw = engine.containers(project).get(gateway_name(project))
    if gw is None or gw.state != "running":
        return None
    return gw.ports.get(GATEWAY_PORT)


def instance_ingress_port(
    engine: Engine, state: StateDir, project: str, requested: int | None
) -> int | None:
    stored = state.stored_ingress_port()
    running = running_gateway_port(engine, project) if requested is None or requested == 0 else None
    port = choose_ingress_port(requested, stored, running)
    return free_port() if port == 0 else port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- starting -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(
    daemon: Daemon, teardown: bool, stopping: threading.Event | None = None
) -> Iterator[threading.Event]:
    """Run `daemon` in this process: SIGINT/SIGTERM stop it, it starts (AnotherDaemonServes
    when a concurrent one holds the lock), the context's body serves, and it stops at the end
    (with `teardown`, removing the mesh it brought up). Yields the event the signals set.
    Given `stopping`, the caller handles the signals (this runs on another thread then)."""
    from devmesh.daemon.runtime import DaemonRunning

    signals = stopping is None
    stopping = stopping or threading.Event()

    def on_signal(*_: Any) -> None:
        stopping.set()
        daemon.request_stop()

    before = (
        {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if signals
        else {}
    )
    try:
        try:
            daemon.start()
        except DaemonRunning:
            raise AnotherDaemonServes(daemon.project, daemon.state.daemon_pid()) from None
        daemon.state.store_ingress_port(daemon.ingress_port)  # for the next one to adopt
        yield stopping
    finally:
        try:
            daemon.stop(teardown=teardown)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


@dataclass
class Foreground:
    daemon: Daemon
    stopping: threading.Event
    client: DaemonClient


@contextlib.contextmanager
def foreground(
    file: Path,
    project: str,
    ingress_port: int | None,
    mesh: Mesh | None,
    log_file: bool,
    metrics_port: int | None = None,
) -> Iterator[Foreground]:
    """This process is the daemon while the context lasts; it removes the mesh at the end.
    `log_file`: log into the state directory's daemon.log (a TUI owns the terminal)."""
    from devmesh.daemon.__main__ import compose

    state = StateDir.for_project(project)
    if log_file:
        state.create()
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", filename=str(state.log_file)
        )
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
    daemon = compose(file, project, ingress_port, mesh)
    daemon.metrics_port = metrics_port
    with running(daemon, teardown=True) as stopping:
        yield Foreground(daemon, stopping, DaemonClient(state.api_socket))


@dataclass
class Starting:
    """A mesh coming up on a thread of its own while the caller's thread runs a TUI that shows
    it come up (images built, pods starting, ready): the TUI reads the API, which serves from
    before the first pass. `stop()` stops and removes the mesh, also halfway through."""

    daemon: Daemon
    stopping: threading.Event
    client: DaemonClient
    thread: threading.Thread
    failed: list[BaseException]

    def stop(self) -> None:
        self.stopping.set()
        self.daemon.request_stop()
        self.thread.join()


@contextlib.contextmanager
def foreground_starting(
    file: Path,
    project: str,
    ingress_port: int | None,
    mesh: Mesh | None,
    metrics_port: int | None = None,
) -> Iterator[Starting]:
    """As `foreground` with a TUI, but the daemon starts on a thread: the first pass (a 13 s
    image build) is shown inside the TUI, not before it. Signals stay on this (the main)
    thread. Errors before the start (engine, port, lock) are raised here, before any TUI."""
    from devmesh.daemon.__main__ import compose

    state = StateDir.for_project(project)
    state.create()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", filename=str(state.log_file)
    )
    daemon = compose(file, project, ingress_port, mesh)
    daemon.metrics_port = metrics_port
    stopping = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            with running(daemon, teardown=True, stopping=stopping):
                daemon.wait(also=stopping)
        except BaseException as exc:  # shown by the caller once the TUI is gone
            failed.append(exc)
        finally:
            stopping.set()  # the TUI closes

    def on_signal(*_: Any) -> None:
        stopping.set()
        daemon.request_stop()

    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=serve, name="daemon", daemon=True)
    starting = Starting(daemon, stopping, DaemonClient(state.api_socket), thread, failed)
    try:
        thread.start()
        yield starting
    finally:
        try:
            starting.stop()
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def start_background(
    file: Path,
    project: str,
    ingress_port: int | None,
    show: Callable[[str], None],
    metrics_port: int | None = None,
) -> Serving:
    """Start a detached daemon and return once it serves; its log lines of this start go to
    `show` meanwhile. DaemonExited if it gives up (the log says why)."""
    check_project(project)
    Engine.connect()  # a clear message now rather than in the daemon's log
    state = StateDir.for_project(project)
    state.create()
    start = state.log_file.stat().st_size if state.log_file.exists() else 0
    port = [] if ingress_port is None else [f"--ingress-port={ingress_port}"]
    if metrics_port is not None:
        port.append(f"--metrics-port={metrics_port}")
    # `--opt=VALUE`: a value starting with '-' is not taken for an option of its own
    command = [sys.executable, "-m", "devmesh.daemon", f"--file={file.resolve()}"]
    with open(state.log_file, "ab") as log:
        proc = subprocess.Popen(
            [*command, f"--project={project}", *port],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command and its terminal
        )
    answers = DaemonClient(state.api_socket, timeout=ANSWER_TIMEOUT)
    heard = time.monotonic()  # the last sign of life: a log line, or an answer
    with open(state.log_file, "rb") as reader:
        reader.seek(start)  # show this start's lines only
        while True:
            for line in reader.readlines():
                heard = time.monotonic()
                show(line.decode(errors="replace").rstrip())
            code = proc.poll()
            if code is not None:
                other = state.daemon_pid()
                if other is not None and other != proc.pid:  # a concurrent `up` won
                    return await_serving(project)
                raise DaemonExited(code, state.log_file)
            with contextlib.suppress(MeshError):
                found = answers.state()
                heard = time.monotonic()
                if found.phase is api.Phase.SERVING and found.pid == proc.pid:
                    return Serving(proc.pid, True, found)
            if time.monotonic() - heard > SILENCE_LIMIT:  # neither writes nor answers: stuck
                raise DaemonNotAnswering(project, proc.pid, _is_stopped(proc.pid), SILENCE_LIMIT)
            time.sleep(0.1)


def await_serving(project: str, poll: float = 0.2, silence: float = SILENCE_LIMIT) -> Serving:
    """Another daemon holds the instance: its state once it serves (it may be starting,
    building images: as long as it answers, it is waited for). MeshError if it lets go of
    the lock before it serves, DaemonNotAnswering if it is stopped or silent for `silence`."""
    state = StateDir.for_project(project)
    answers = DaemonClient(state.api_socket, timeout=ANSWER_TIMEOUT)
    answered = time.monotonic()
    while True:
        pid = state.daemon_pid()
        if pid is None:
            raise MeshError(f"the daemon that held mesh '{project}' exited before it served")
        if _is_stopped(pid):
            raise DaemonNotAnswering(project, pid, True, ANSWER_TIMEOUT)
        try:
            found = answers.state()
        except MeshError:
            if time.monotonic() - answered > silence:
                raise DaemonNotAnswering(project, pid, False, silence) from None
        else:
            answered = time.monotonic()
            if found.phase is api.Phase.SERVING:
                return Serving(pid, False, found)
        time.sleep(poll)


class StateSource(Protocol):
    def state(self) -> api.MeshState: ...


def wait_ready(
    client: StateSource,
    timeout: float,
    progress: Callable[[str], None],
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> api.MeshState:
    """Ask until the mesh is ready, only permanent failures are left, `timeout` passes or
    `stop` is set; the last state (the caller says what is not ready from it)."""
    deadline = clock() + timeout
    last = ""
    while True:
        state = client.state()
        if state.ready or state.only_permanent_failures_left:
            return state
        if clock() >= deadline or (stop is not None and stop.is_set()):
            return state
        waiting = sum(1 for p in state.pods if not p.ready)
        line = f"waiting for {waiting} of {len(state.pods)} pods ..."
        if line != last:
            progress(line)
            last = line
        sleep(0.25)


# -- stopping -----------------------------------------------------------------------------------


def stop_daemon(state: StateDir) -> Stopped | None:
    """Stop the instance's daemon, if one runs: its API's shutdown; if it does not answer,
    SIGTERM (with SIGCONT, for a stopped one); if it still holds the lock, SIGKILL."""
    pid = state.daemon_pid()
    if pid is None:
        return None
    how = "api"
    try:
        DaemonClient(state.api_socket, timeout=ANSWER_TIMEOUT).shutdown()
        gone = _released(state, STOP_GRACE)
    except MeshError:
        gone = False
    if not gone:
        how = "SIGTERM"
        _signal(state, pid, signal.SIGTERM)
        _signal(state, pid, signal.SIGCONT)  # a stopped process takes SIGTERM once resumed
        gone = _released(state, STOP_GRACE)
    if not gone:
        how = "SIGKILL"
        _signal(state, pid, signal.SIGKILL)
        gone = _released(state, KILL_WAIT)
    return Stopped(pid, how, gone)


class OtherEngine(MeshError):
    """`down` here cannot reach the engine, while the instance's daemon reaches its own:
    this command's DOCKER_HOST is not the daemon's. Nothing was stopped."""


def down(project: str) -> Down:
    """Stop the daemon, then remove every container and network labelled with the instance
    (also after a daemon crash), then its state directory. With the engine out of reach the
    daemon is still stopped and the state kept (the containers bind-mount it) — unless the
    daemon still reaches its engine: then this command was pointed at another engine (a
    wrong DOCKER_HOST), and OtherEngine is raised with nothing stopped."""
    state = StateDir.for_project(project)
    try:
        engine: Engine | None = Engine.connect()
        unreachable = ""
    except MeshError as exc:
        engine, unreachable = None, str(exc)
        _refuse_if_daemon_reaches_its_engine(project, unreachable)
    stopped = stop_daemon(state)
    try:
        if engine is None:
            raise MeshError(unreachable)
        containers, networks = engine.remove_all(project)
        prune_built(engine.client, project, frozenset())  # the images built for it
    except MeshError as exc:
        return Down(project, stopped, engine_error=str(exc))
    try:
        removed = state.remove()
    except MeshError as exc:
        return Down(project, stopped, containers, networks, state_error=str(exc))
    return Down(project, stopped, containers, networks, removed)


def _refuse_if_daemon_reaches_its_engine(project: str, unreachable: str) -> None:
    try:
        found = find(project)
    except MeshError:  # a daemon that does not answer: stopping it is what `down` is for
        return
    if found is None or not found.pods:
        return
    if all(p.state is api.PodState.ENGINE_DOWN for p in found.pods):
        return  # the daemon lost the engine too: it is down, not elsewhere
    raise OtherEngine(
        f"{unreachable}\nThe daemon of mesh '{project}' (pid {found.pid}) reaches its engine "
        "and serves: this command's DOCKER_HOST is not the one it was started with. Nothing "
        "was stopped; run `devmesh down` with the daemon's DOCKER_HOST."
    )


def _released(state: StateDir, within: float) -> bool:
    deadline = time.monotonic() + within
    while state.daemon_pid() is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(state: StateDir, pid: int, sig: signal.Signals) -> None:
    if state.daemon_pid() != pid:  # it let go meanwhile: the PID may be someone else's now
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
