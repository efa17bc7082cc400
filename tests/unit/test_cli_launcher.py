"""The launcher's decisions without Docker: which ingress port an instance gets, what Docker
alone says about pods, waiting on typed state, and the stop ladder against real processes
that hold a daemon's lock (one that ignores the API, one frozen with SIGSTOP)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devmesh.adapters.engine import ContainerInfo
from devmesh.api import types as api
from devmesh.daemon import launcher
from devmesh.daemon.state import StateDir
from devmesh.plan.plan import Observed


@pytest.mark.parametrize(
    ("requested", "stored", "running", "port"),
    [
        (8080, None, None, 8080),
        (8080, 41234, 41234, 8080),  # an explicit port wins (the gateway is recreated)
        (0, None, None, 0),  # any free one: picked now
        (0, 41234, 41234, 41234),  # the daemon crashed: adopt the gateway with its port
        (0, None, 41234, 41234),  # its port was not kept yet: Docker's word is enough
        (0, 41234, None, 0),  # the gateway is gone: a fresh port
        (None, None, None, None),  # the file's port
        (None, None, 8080, None),  # the gateway runs on the file's port: still the file's
        (None, 41234, 41234, 41234),  # `up` after a crash of a `--ingress-port 0` instance
        (None, 41234, None, None),  # nothing runs any more: the file's port again
    ],
    ids=[
        "explicit", "explicit-over-running", "any", "any-adopts", "any-adopts-unkept",
        "any-gone", "file", "file-running", "crash-adopts-kept", "kept-but-gone",
    ],
)  # fmt: skip
def test_the_ingress_port_adopts_a_running_gateway(
    requested: int | None, stored: int | None, running: int | None, port: int | None
) -> None:
    assert launcher.choose_ingress_port(requested, stored, running) == port


def _obs(name: str, role: str, pod: str, state: str = "running") -> Observed:
    service, version = ("web", "v1") if role != "gateway" else ("", "")
    replica = int(pod.rsplit("-", 1)[1]) if role != "gateway" else 0  # as its label says
    return Observed(name, name, role, pod, service, version, "h", state, replica)


def _info(name: str, state: str = "running", **kw: object) -> ContainerInfo:
    base: dict[str, object] = {"exit_code": 0, "restarts": 0, "ip": None, "ports": {}}
    base.update(kw)
    return ContainerInfo(id=name, name=name, state=state, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("owner", "app", "sidecar", "state", "says"),
    [
        ("exited", "running", "running", api.PodState.STARTING, "namespace owner exited"),
        ("running", None, "running", api.PodState.STARTING, "app container missing"),
        ("running", "exited", "running", api.PodState.CRASHING, "exit code 3, restarted 4"),
        ("running", "running", "exited", api.PodState.SIDECAR_DOWN, "sidecar exited"),
        ("running", "running", None, api.PodState.SIDECAR_DOWN, "sidecar missing"),
        ("running", "running", "running", api.PodState.UNHEALTHY, "no daemon runs"),
    ],
    ids=["owner-down", "no-app", "app-crashing", "sidecar-down", "no-sidecar", "all-running"],
)
def test_without_a_daemon_pods_are_told_from_their_containers(
    owner: str, app: str | None, sidecar: str | None, state: api.PodState, says: str
) -> None:
    pod = "shop-web-v1-2"
    observed = [_obs(pod, "pod", pod, owner)]
    infos = {pod: _info(pod, owner, ip="172.18.0.9")}
    if app:
        observed.append(_obs(f"{pod}-app", "app", pod, app))
        infos[f"{pod}-app"] = _info(f"{pod}-app", app, exit_code=3, restarts=4)
    if sidecar:
        observed.append(_obs(f"{pod}-sidecar", "sidecar", pod, sidecar))
        infos[f"{pod}-sidecar"] = _info(f"{pod}-sidecar", sidecar)
    observed.append(_obs("shop-gateway", "gateway", "shop-gateway"))
    infos["shop-gateway"] = _info("shop-gateway", ports={15080: 41234})
    mesh = launcher.state_from_engine("shop", observed, infos)
    assert mesh.phase is api.Phase.NO_DAEMON and not mesh.ready
    (only,) = mesh.pods
    assert (only.pod, only.replica, only.state, only.address) == (pod, 2, state, "172.18.0.9")
    assert says in only.reason
    assert mesh.gateway == api.Gateway(
        "shop-gateway", "running", False, url="http://127.0.0.1:41234/"
    )


class FakeClient:
    def __init__(self, states: list[api.MeshState]) -> None:
        self.states = states

    def state(self) -> api.MeshState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def _mesh(
    *pods: api.Pod, ready: bool = False, failed: tuple[api.Failure, ...] = ()
) -> api.MeshState:
    return api.MeshState("m", "m", api.Phase.SERVING, ready, pods=pods, failed=failed)


def _pod(version: str, state: api.PodState) -> api.Pod:
    return api.Pod(f"m-web-{version}-0", "web", version, 0, state)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_returns_once_ready_and_reports_progress_once_per_change() -> None:
    starting = _mesh(_pod("v1", api.PodState.STARTING), _pod("v2", api.PodState.SYNCING))
    half = _mesh(_pod("v1", api.PodState.READY), _pod("v2", api.PodState.SYNCING))
    ready = _mesh(_pod("v1", api.PodState.READY), _pod("v2", api.PodState.READY), ready=True)
    client = FakeClient([starting, starting, half, ready])
    clock, said = Clock(), list[str]()
    state = launcher.wait_ready(client, 60, said.append, clock=clock, sleep=clock.sleep)
    assert state.ready
    assert said == ["waiting for 2 of 2 pods ...", "waiting for 1 of 2 pods ..."]


def test_wait_stops_early_when_only_permanent_failures_are_left() -> None:
    failed = (api.Failure("web", "v2", "image web:2 not found"),)
    state = _mesh(_pod("v1", api.PodState.READY), _pod("v2", api.PodState.FAILED), failed=failed)
    clock = Clock()
    got = launcher.wait_ready(
        FakeClient([state]), 60, lambda _: None, clock=clock, sleep=clock.sleep
    )
    assert got is state and clock.now == 0.0  # no use waiting


def test_wait_gives_up_at_its_timeout() -> None:
    state = _mesh(_pod("v1", api.PodState.UNHEALTHY))
    clock = Clock()
    got = launcher.wait_ready(
        FakeClient([state]), 5, lambda _: None, clock=clock, sleep=clock.sleep
    )
    assert not got.ready and 5.0 <= clock.now < 5.5


# -- real processes holding a daemon's lock ------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import signal, socket, sys, time
    from devmesh.daemon.state import StateDir
    state = StateDir.for_project(sys.argv[1])
    lock = state.acquire()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(state.api_socket))
    server.listen()  # accepts connections, never answers: a hung daemon
    if sys.argv[2] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("holding", flush=True)
    time.sleep(600)
    """
)


Holder = Callable[[str, str], "subprocess.Popen[str]"]


@pytest.fixture
def holder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Holder]:
    top = Path(tempfile.mkdtemp(prefix="dm-"))
    monkeypatch.setenv("DEVMESH_STATE_DIR", str(top / "state"))
    monkeypatch.setattr(launcher, "STOP_GRACE", 1.0)
    procs: list[subprocess.Popen[str]] = []

    def start(project: str, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, project, mode],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "DEVMESH_STATE_DIR": str(top / "state")},
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
        return proc

    yield start
    for proc in procs:  # only the processes this test started
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    shutil.rmtree(top, ignore_errors=True)


def test_a_hung_daemon_is_named_quickly_not_taken_for_none(holder: Holder) -> None:
    proc = holder("hung", "answer-never")
    started = time.monotonic()
    with pytest.raises(launcher.DaemonNotAnswering, match=f"pid {proc.pid}.* does not answer"):
        launcher.find("hung", timeout=0.5)
    assert time.monotonic() - started < 2


def test_a_frozen_daemon_is_said_to_be_stopped(holder: Holder) -> None:
    proc = holder("frozen", "answer-never")
    os.kill(proc.pid, signal.SIGSTOP)
    with pytest.raises(launcher.DaemonNotAnswering, match="is stopped") as caught:
        launcher.find("frozen", timeout=0.5)
    assert caught.value.stopped


def test_stop_ladder_ends_a_frozen_daemon_with_sigterm(holder: Holder) -> None:
    proc = holder("frozen", "answer-never")
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = launcher.stop_daemon(StateDir.for_project("frozen"))
    assert stopped == launcher.Stopped(proc.pid, "SIGTERM", True)  # SIGCONT let it take it
    assert proc.wait(5) == -signal.SIGTERM


def test_stop_ladder_kills_a_daemon_that_ignores_sigterm(holder: Holder) -> None:
    proc = holder("stubborn", "ignore-term")
    stopped = launcher.stop_daemon(StateDir.for_project("stubborn"))
    assert stopped == launcher.Stopped(proc.pid, "SIGKILL", True)
    assert proc.wait(5) == -signal.SIGKILL


def test_down_with_the_engine_unreachable_stops_the_daemon_and_keeps_the_state(
    holder: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    proc = holder("noengine", "answer-never")
    result = launcher.down("noengine")
    assert result.daemon is not None and result.daemon.pid == proc.pid and result.daemon.gone
    assert (
        result.engine_error is not None and "cannot reach the Docker engine" in result.engine_error
    )
    assert not result.ok
    assert StateDir.for_project("noengine").owned()  # the containers still bind-mount it


def test_waiting_for_another_daemon_gives_up_when_it_never_answers(holder: Holder) -> None:
    proc = holder("silent", "answer-never")
    started = time.monotonic()
    with pytest.raises(launcher.DaemonNotAnswering, match=f"pid {proc.pid}"):
        launcher.await_serving("silent", poll=0.05, silence=0.5)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--file=f.yaml", "--project=-dash"], "not a project name"),
        (["--file=f.yaml", "--project=../victim"], "not a project name"),
        (["--file=f.yaml", "--project=ok", "--ingress-port=70000"], "not a port"),
        (["--file=f.yaml", "--project=ok", "--ingress-port=-1"], "not a port"),
        (["--file=f.yaml", "--project=ok", "--ingress-port=²"], "not a port"),
    ],
    ids=["dash", "path", "port-big", "port-negative", "port-superscript"],
)
def test_the_daemons_arguments_are_checked_before_anything_starts(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from devmesh.daemon.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
