"""Rolling replace under load, with real Docker and real Envoy: an env change and a restart
each give every pod of the service a new pod beside the old one; the old one leaves the
endpoints only once the new one serves, drains, and goes. Under ~200 requests/s through
the ingress, at replicas 1 and 2 at once: no request fails, and every response after the
roll comes from a new pod.

One mesh serves the module (`one`: 1 replica, `two`: 2 replicas). The shop's app answers
"one/default (POD) served GET /...": the body names the pod that served it.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from devmesh.client import DaemonClient
from devmesh.daemon.state import StateDir
from tests.e2e.conftest import APP, PROJECTS, Mesh, free_port, sweep

pytestmark = pytest.mark.docker

MESH = """
mesh: roll
defaults:
  health: {{path: /healthz, interval: 1s, timeout: 5s}}
ingress:
  port: {port}
  routes:
    - {{name: one, match: {{path_prefix: /one}}, service: one}}
    - {{name: two, match: {{path_prefix: /two}}, service: two}}
services:
  one:
    build: {app}
    image: devmesh-shop-app:1
    port: 8000
    env: {{ROLL: "{value}"}}
  two:
    build: {app}
    image: devmesh-shop-app:1
    port: 8000
    replicas: 2
    env: {{ROLL: "{value}"}}
"""
RATE = 200  # requests per second, over all clients
CLIENTS = 4
ROLL_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("roll")
    made = Mesh(directory, f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client)
    PROJECTS.append(made.project)
    _write(made, "a")
    try:
        made.up_ok()
        yield made
    finally:
        made.run("down", timeout=60)
        sweep(docker_client, made.project)


def _write(mesh: Mesh, value: str) -> None:
    mesh.file.write_text(MESH.format(port=mesh.port, app=APP, value=value))


@dataclass
class Load:
    """CLIENTS threads at RATE/CLIENTS requests/s each, alternating /one and /two, each on a
    kept connection (reopened after an error, which counts as a failure). Bounded in time."""

    port: int
    limit_s: float = 120.0
    answers: list[tuple[float, str, int, str]] = field(default_factory=list)  # t, path, status, pod
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(CLIENTS):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _client(self, index: int) -> None:
        period = CLIENTS / RATE
        end = time.monotonic() + self.limit_s
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            path = f"/{'one' if (n + index) % 2 == 0 else 'two'}/{index}-{n}"
            n += 1
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                pod = body.split("(", 1)[1].split(")", 1)[0] if "(" in body else ""
                with self._lock:
                    self.answers.append((time.monotonic(), path, response.status, pod))
                    if response.status != 200:
                        self.failures.append(f"{path}: {response.status} {body[:120]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, period - (time.monotonic() - started)))
        if conn is not None:
            conn.close()


def _pods(mesh: Mesh) -> list[dict[str, object]]:
    """The pods as `ps --json` lists them, read from the daemon's API directly: a `ps`
    process takes longer to start than a roll may take here."""
    client = DaemonClient(StateDir.for_project(mesh.project).api_socket)
    return [
        {"pod": p.pod, "retiring": p.retiring, "state": p.state.value} for p in client.state().pods
    ]


def _roll(mesh: Mesh, change: object, suffix: str) -> tuple[Load, float, set[tuple[str, ...]]]:
    """Run `change()` under load; wait until every pod of one and two is a new one (`suffix`),
    ready, with no old pod left. Returns the load, when the roll was seen over, and each
    distinct (pod, retiring, state) set ps showed meanwhile."""
    load = Load(mesh.port)
    seen: set[tuple[str, ...]] = set()
    load.start()
    try:
        time.sleep(1.0)
        change()  # type: ignore[operator]
        deadline = time.monotonic() + ROLL_TIMEOUT
        done = 0.0
        while time.monotonic() < deadline:
            pods = _pods(mesh)
            seen.add(tuple(sorted(f"{p['pod']}:{p['retiring']}:{p['state']}" for p in pods)))
            if (
                len(pods) == 3
                and all(str(p["pod"]).endswith(suffix) and p["state"] == "ready" for p in pods)
                and len(mesh.containers()) == 10  # 3 pods of 3 containers, and the gateway
            ):
                done = time.monotonic()
                break
            time.sleep(0.05)
        assert done, f"the roll did not end in {ROLL_TIMEOUT} s: {_pods(mesh)}"
        time.sleep(1.5)  # traffic after the roll
    finally:
        load.stop()
    return load, done, seen


def _check(load: Load, done: float, seen: set[tuple[str, ...]], suffix: str) -> None:
    total = len(load.answers) + len(load.failures)
    print(f"roll to {suffix}: {total} requests, {len(load.failures)} failed")
    assert total > 400  # the load ran (about 200/s for several seconds)
    assert load.failures == [], load.failures[:10]
    after = [a for a in load.answers if a[0] > done]
    assert after, "no request after the roll"
    stale = [a for a in after if not a[3].endswith(suffix)]
    assert stale == [], stale[:5]
    # Old and new side by side in ps while it ran: an old pod marked retiring.
    assert any(":True:" in entry for state in seen for entry in state), seen


def test_an_env_change_rolls_every_pod_with_no_failed_request(mesh: Mesh) -> None:
    before = {str(p["pod"]) for p in _pods(mesh)}
    assert before == {f"{mesh.project}-one-default-0"} | {
        f"{mesh.project}-two-default-{i}" for i in (0, 1)
    }
    load, done, seen = _roll(mesh, lambda: _write(mesh, "b"), "-g1")
    _check(load, done, seen, "-g1")


def test_a_restart_rolls_too_with_no_failed_request(mesh: Mesh) -> None:
    client = DaemonClient(StateDir.for_project(mesh.project).api_socket)

    def restart() -> None:
        for service in ("one", "two"):
            assert client.restart(service=service).restarted

    load, done, seen = _roll(mesh, restart, "-g2")
    _check(load, done, seen, "-g2")


def test_the_state_directory_keeps_no_pod_directory_of_a_removed_pod(mesh: Mesh) -> None:
    pods = Path(StateDir.for_project(mesh.project).path) / "pods"
    assert len(list(pods.iterdir())) == 4  # three pods and the gateway
