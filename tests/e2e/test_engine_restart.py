"""The Docker engine dies and comes back under a running mesh (a private engine, never the
shared one): the daemon says the engine is gone while it is, serves again soon after it
answers, and `down` works both with the engine back and with it stopped.

Run with `-s` to see the measured recovery times and the timeline of each restart.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devmesh import labels
from devmesh.client import DaemonClient
from devmesh.core.problems import MeshError

if TYPE_CHECKING:  # the fixture module is loaded as a plugin (assertion rewriting) below
    from tests.e2e.private_engine import PrivateEngine

pytest_plugins = ["tests.e2e.private_engine"]
pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop" / "devmesh.yaml"
RECOVERY_TARGET = 5.0  # seconds from the engine answering to the mesh serving and ready
DOWN_CHECKS = 3  # ps --json reads, after the first that says the engine is gone, that must agree
NOTICE_TIMEOUT = 10.0  # seconds for the daemon to report the engine gone
RECOVERY_TIMEOUT = 90.0  # seconds to keep measuring past the target (to report the miss)
REQUEST_TIMEOUT = 2.0  # seconds for one request through the ingress
REQUESTS_IN_FLIGHT = 24  # at most this many unanswered requests while measuring recovery
CYCLES = int(os.environ.get("DEVMESH_ENGINE_CYCLES", "2"))  # kill/restart rounds per test


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _docker_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds -> unix seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", text)
    if not match:
        return 0.0
    whole = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
    return whole + float(match.group(2) or 0)


@dataclass
class Shop:
    """The shop example on the private engine, under its own project name and state dir."""

    engine: PrivateEngine
    project: str
    state_base: Path
    port: int = 0
    daemon_pid: int = 0

    @property
    def env(self) -> dict[str, str]:
        return self.engine.env(DEVMESH_STATE_DIR=str(self.state_base))

    @property
    def state_dir(self) -> Path:
        return self.state_base / self.project

    def devmesh(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devmesh", *args, "-f", str(SHOP), "-p", self.project],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def ps(self) -> dict[str, Any]:
        result = self.devmesh("ps", "--json", timeout=30)
        try:
            data: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"ps --json gave no JSON (exit {result.returncode}): "
                f"{result.stdout!r} {result.stderr!r}"
            ) from None
        return data

    def client(self) -> DaemonClient:
        return DaemonClient(self.state_dir / "api.sock", timeout=2)

    def serves(self) -> bool:
        """GET / through the ingress: the frontend answers and reaches catalog and stock."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return (
            resp.status == 200
            and "frontend/" in body
            and "-> catalog: catalog/" in body
            and "-> stock: stock/" in body
        )

    def managed(self) -> tuple[list[str], list[str]]:
        """Names of the containers and networks labelled with this mesh on the engine."""
        client = self.engine.client()
        try:
            selector = {"label": labels.selector(mesh=self.project)}
            containers = [c.name for c in client.containers.list(all=True, filters=selector)]
            networks = [n.name for n in client.networks.list(filters=selector)]
        finally:
            client.close()
        return containers, networks

    def started_at(self) -> dict[str, float]:
        """Container name -> when the engine last started it (unix seconds)."""
        client = self.engine.client()
        try:
            selector = {"label": labels.selector(mesh=self.project)}
            out = {}
            for c in client.containers.list(all=True, filters=selector):
                out[c.name] = _docker_time(c.attrs["State"].get("StartedAt", ""))
        finally:
            client.close()
        return out

    def daemon_log_since(self, since: float) -> list[str]:
        """The daemon log's lines from `since` on; of a traceback only its last line."""
        try:
            lines = (self.state_dir / "daemon.log").read_text(errors="replace").splitlines()
        except OSError:
            return []
        kept = []
        keeping = False
        for line in lines:
            match = re.match(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)", line)
            if match:
                with contextlib.suppress(ValueError):
                    stamp = datetime.fromisoformat(match.group(1).replace(",", "."))
                    if stamp.tzinfo is None:
                        stamp = stamp.astimezone()
                    keeping = stamp.timestamp() >= since - 0.5
                if keeping:
                    kept.append(line)
            elif keeping and re.match(r"[\w.]+(Error|Exception)\b", line):
                kept.append(f"    (traceback) {line}")
        return kept


@pytest.fixture
def shop(private_engine: PrivateEngine) -> Iterator[Shop]:
    """The shop, up and serving on the private engine; down and swept afterwards."""
    state_base = Path(tempfile.mkdtemp(prefix="dm-st-", dir="/tmp"))  # short: sockets in it
    mesh = Shop(private_engine, f"er{uuid.uuid4().hex[:6]}", state_base)
    try:
        up = mesh.devmesh("up", "-d", "--wait", "--timeout", "120", "--ingress-port", "0")
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}"
        state = mesh.ps()
        mesh.daemon_pid = int(state["pid"])
        url = str((state.get("gateway") or {}).get("url") or "")
        match = re.search(r":(\d+)", url)
        assert match, f"no ingress URL in ps --json: {state.get('gateway')}"
        mesh.port = int(match.group(1))
        yield mesh
    finally:
        with contextlib.suppress(Exception):
            if not private_engine.answers():
                private_engine.start()
        with contextlib.suppress(Exception):
            mesh.devmesh("down", timeout=120)
        if mesh.daemon_pid and _pid_alive(mesh.daemon_pid):
            os.kill(mesh.daemon_pid, signal.SIGKILL)  # the daemon our `up` started
        with contextlib.suppress(Exception):
            client = private_engine.client()
            selector = {"label": labels.selector(mesh=mesh.project)}
            for c in client.containers.list(all=True, filters=selector):
                c.remove(force=True)
            for n in client.networks.list(filters=selector):
                n.remove()
            client.close()
        shutil.rmtree(state_base, ignore_errors=True)


def wait_engine_gone_reported(mesh: Shop) -> tuple[float, dict[str, Any]]:
    """Poll `ps --json` until the daemon says the engine is gone; (seconds, that state)."""
    start = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - start < NOTICE_TIMEOUT:
        last = mesh.ps()
        if not (last.get("engine") or {}).get("ok", True):
            return time.monotonic() - start, last
        time.sleep(0.2)
    raise AssertionError(
        f"the daemon did not report the engine gone within {NOTICE_TIMEOUT}s: "
        f"{json.dumps(last, indent=1)[:3000]}"
    )


def assert_says_engine_down(state: dict[str, Any]) -> None:
    assert (state.get("engine") or {}).get("ok") is False, state.get("engine")
    assert state["ready"] is False, state
    pods = {p["pod"]: p["state"] for p in state.get("pods", [])}
    assert pods, f"no pods in ps --json while the engine is down: {state}"
    assert set(pods.values()) == {"engine_down"}, pods
    gateway = state.get("gateway")
    assert gateway is None or gateway.get("ready") is False, gateway


@dataclass
class Recovery:
    engine_answered: float  # unix seconds
    served_after: float | None  # seconds after the engine answered
    ready_after: float | None

    @property
    def total(self) -> float | None:
        if self.served_after is None or self.ready_after is None:
            return None
        return max(self.served_after, self.ready_after)


def measure_recovery(mesh: Shop, answered: float) -> Recovery:
    """From the engine answering (monotonic `answered`): the first request served through
    the ingress, and the first state that says ready.

    A request goes out every 0.1 s on a thread of its own, so one that hangs while the
    gateway comes back does not delay the next; the time counted is when an answer came."""
    wall = time.time() - (time.monotonic() - answered)
    answers: list[float] = []  # list.append is atomic: the attempts' threads share it
    ready: float | None = None
    client = mesh.client()
    deadline = answered + RECOVERY_TIMEOUT

    def attempt() -> None:
        if mesh.serves():
            answers.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=REQUESTS_IN_FLIGHT) as pool:
        next_request = time.monotonic()
        while time.monotonic() < deadline and (not answers or ready is None):
            if not answers and time.monotonic() >= next_request:
                pool.submit(attempt)
                next_request = time.monotonic() + 0.1
            if ready is None:
                with contextlib.suppress(MeshError):
                    if client.state().ready:
                        ready = time.monotonic() - answered
            time.sleep(0.02)
    served = min(answers) - answered if answers else None
    return Recovery(wall, served, ready)


def timeline(mesh: Shop, killed: float, started: float, recovery: Recovery) -> str:
    """When the engine was killed, started and answered, each container started, and what
    the daemon logged meanwhile, relative to the engine answering."""
    t0 = recovery.engine_answered
    rows = [
        (killed, "engine killed"),
        (started, "engine started (dockerd launched)"),
        (t0, "engine answered docker info"),
    ]
    if recovery.served_after is not None:
        rows.append((t0 + recovery.served_after, "first request served through the ingress"))
    if recovery.ready_after is not None:
        rows.append((t0 + recovery.ready_after, "daemon state ready"))
    for name, started in mesh.started_at().items():
        if started >= killed - 1:
            rows.append((started, f"container started: {name}"))
    lines = [f"{when - t0:+8.3f}s  {what}" for when, what in sorted(rows)]
    log = mesh.daemon_log_since(killed)
    return "\n".join(lines) + "\n  daemon.log since the kill:\n    " + "\n    ".join(log[-150:])


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}s"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_mesh_serves_again_within_5s_of_the_engine_answering(
    shop: Shop, private_engine: PrivateEngine, sig: signal.Signals
) -> None:
    assert shop.serves(), "the shop does not serve through the ingress after up --wait"
    results: list[Recovery] = []
    reports: list[str] = []
    for cycle in range(CYCLES):
        killed = time.time()
        private_engine.stop(sig)
        # (a) while the engine is down the daemon says so, and keeps saying it; no pod
        # claims to be ready
        noticed, down_state = wait_engine_gone_reported(shop)
        for _ in range(DOWN_CHECKS):
            assert_says_engine_down(down_state)
            time.sleep(0.2)
            down_state = shop.ps()
        # (b) the mesh serves again soon after the engine answers
        launched = time.time()
        answered = private_engine.start()
        recovery = measure_recovery(shop, answered)
        results.append(recovery)
        report = timeline(shop, killed, launched, recovery)
        reports.append(report)
        print(
            f"\n[{sig.name} #{cycle + 1}] the daemon reported the engine gone {noticed:.2f}s "
            f"after the kill (ps --json polls); dockerd answered "
            f"{recovery.engine_answered - launched:.2f}s after its launch; after it answered: "
            f"served {_secs(recovery.served_after)}, ready {_secs(recovery.ready_after)}, "
            f"recovered {_secs(recovery.total)}\n{report}"
        )
        assert recovery.total is not None, (
            f"the mesh did not recover within {RECOVERY_TIMEOUT}s of the engine answering:\n"
            + report
        )
    summary = ", ".join(f"{r.total:.2f}s" for r in results if r.total is not None)
    print(f"\n[{sig.name}] recovery after the engine answered: {summary}")
    slow = [
        rep
        for r, rep in zip(results, reports, strict=True)
        if r.total is not None and r.total > RECOVERY_TARGET
    ]
    if slow:  # a measurement, not a verdict: on a loaded 2-core machine it varies
        print(f"recovery past the {RECOVERY_TARGET}s target:\n" + "\n\n".join(slow))
    # (c) down works afterwards and removes everything
    down = shop.devmesh("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert shop.managed() == ([], []), shop.managed()
    assert not _pid_alive(shop.daemon_pid), f"the daemon (pid {shop.daemon_pid}) still runs"


def test_down_with_the_engine_stopped_stops_the_daemon_and_says_why(
    shop: Shop, private_engine: PrivateEngine
) -> None:
    private_engine.stop(signal.SIGKILL)
    wait_engine_gone_reported(shop)
    down = shop.devmesh("down", timeout=120)
    said = down.stdout + down.stderr
    print(f"\n[down, engine stopped] exit {down.returncode}: {said.strip()}")
    assert down.returncode != 0, said
    assert "engine" in said.lower(), said
    assert "Traceback" not in said, said
    deadline = time.monotonic() + 5
    while _pid_alive(shop.daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(shop.daemon_pid), f"the daemon (pid {shop.daemon_pid}) still runs"
    # With the engine back, down removes what the stopped engine kept.
    private_engine.start()
    again = shop.devmesh("down", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert shop.managed() == ([], []), shop.managed()
