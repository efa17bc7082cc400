"""The launcher against a real engine: a crashed daemon's gateway adopted with its port
(no request refused), racing `up`s, a frozen daemon named quickly, `down` with the engine out
of reach and after a crash."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from devmesh.daemon.state import StateDir
from tests.e2e.conftest import ENV, Mesh

pytestmark = pytest.mark.docker

WEB = """
mesh: clitest
ingress:
  port: @PORT@
  routes:
    - {name: site, service: web}
services:
  web:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    health: {path: /healthz, interval: 1s}
"""


def _pid(mesh: Mesh) -> int:
    pid = StateDir.for_project(mesh.project).daemon_pid()
    assert pid is not None
    return pid


def _gateway(mesh: Mesh) -> tuple[str, str]:
    container = mesh.client.containers.get(f"{mesh.project}-gateway")
    port = container.attrs["NetworkSettings"]["Ports"]["15080/tcp"][0]["HostPort"]
    return container.id, port


def test_up_after_a_crash_adopts_the_gateway_and_its_any_free_port(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(WEB)
    first = mesh.up("--ingress-port", "0")
    assert first.returncode == 0, first.stderr
    gateway, port = _gateway(mesh)
    refused: list[str] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
            except OSError as exc:
                refused.append(repr(exc))
            finally:
                conn.close()
            time.sleep(0.01)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        os.kill(_pid(mesh), signal.SIGKILL)  # the daemon this test started
        again = mesh.up("--ingress-port", "0")
        assert again.returncode == 0, again.stderr
        assert f"ingress: http://127.0.0.1:{port}/" in again.stdout
        time.sleep(1)
    finally:
        done.set()
        thread.join(10)
    assert _gateway(mesh) == (gateway, port)  # adopted, not recreated elsewhere
    assert refused == []
    # `up` with no port given after another crash: still the instance's kept port
    os.kill(_pid(mesh), signal.SIGKILL)
    third = mesh.up()
    assert third.returncode == 0, third.stderr
    assert _gateway(mesh) == (gateway, port)
    # down after a crash still removes everything by label, and the state with it
    os.kill(_pid(mesh), signal.SIGKILL)
    down = mesh.run("down")
    assert down.returncode == 0, down.stderr
    assert "removed 4 containers, 1 network" in down.stdout
    assert mesh.containers() == {}
    assert not mesh.state_dir().exists()


def test_racing_ups_end_with_one_daemon_and_both_say_the_mesh_is_up(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(WEB)
    command = [sys.executable, "-m", "devmesh", "up", "-d", "-f", str(mesh.file)]
    procs = [
        subprocess.Popen(
            [*command, "-p", mesh.project],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    pid = _pid(mesh)
    said = "".join(err for _, err in outputs)
    assert f"daemon running in the background (pid {pid})" in said
    assert f"is up: served by pid {pid} (another `up` started it)" in said
    assert "exited" not in said


def test_ps_of_a_frozen_daemon_names_it_quickly_and_down_still_stops_it(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(WEB)
    mesh.up_ok()
    pid = _pid(mesh)
    os.kill(pid, signal.SIGSTOP)  # the daemon this test started
    try:
        started = time.monotonic()
        ps = mesh.run("ps")
        assert time.monotonic() - started < 4
        assert ps.returncode == 1
        assert f"(pid {pid}) is stopped" in ps.stderr and "not running" not in ps.stderr
        down = mesh.run("down")
        assert down.returncode == 0, down.stderr
        assert f"stopped the daemon (pid {pid}) with SIGTERM" in down.stdout
        assert mesh.containers() == {}
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: down stopped it
            os.kill(pid, signal.SIGCONT)
