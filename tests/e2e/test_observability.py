"""Access logs and Prometheus metrics, end to end: real Docker, real Envoy sidecars and
gateway, the real `devmesh` command, and a real Prometheus server (Debian's package, run
here as a process of its own on 127.0.0.1, killed by its pid).

One mesh for the module: the gateway -> front -> back (v1 70 %, v2 30 %), and a route of
back that always answers 503 by an injected fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from devmesh.daemon.state import StateDir
from tests.e2e.conftest import PROJECTS, ROOT, Mesh, free_port, request, sweep

pytestmark = pytest.mark.docker

TEXT = """\
mesh: observed
observability:
  tracing: false
  metrics: {port: @METRICS@}
defaults:
  health: {path: /healthz, interval: 1s}
ingress:
  port: @PORT@
  routes:
    - {name: site, service: front}
services:
  front:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    env: {UPSTREAMS: back}
    calls: [back]
  back:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    versions: {v1: {}, v2: {}}
    routes:
      - name: broken
        match: {path_prefix: /broken}
        to: v1
        fault: {abort: {status: 503, percent: 100}}
      - name: main
        to: {v1: 70, v2: 30}
"""


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[tuple[Mesh, int]]:
    metrics = free_port()
    mesh = Mesh(
        tmp_path_factory.mktemp("observed"),
        f"t{uuid.uuid4().hex[:8]}",
        free_port(),
        docker_client,
    )
    PROJECTS.append(mesh.project)
    mesh.write(TEXT.replace("@METRICS@", str(metrics)))
    try:
        mesh.up_ok()
        yield mesh, metrics
    finally:
        mesh.run("down", timeout=60)
        sweep(docker_client, mesh.project)


def _hop(mesh: Mesh, service: str) -> int:
    """The gateway's host port for `service` (its own URL from the host)."""
    url = mesh.ps()["gateway"]["services"][service]
    return int(urllib.parse.urlsplit(url).port or 0)


def _access(mesh: Mesh, *args: str) -> list[dict[str, Any]]:
    result = mesh.run("logs", "--access", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _until(what: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


# -- access logs ----------------------------------------------------------------------------


def test_every_envoy_logs_a_request_with_who_called_whom_over_which_route(
    observed: tuple[Mesh, int],
) -> None:
    mesh, _ = observed
    path = f"/hello-{uuid.uuid4().hex[:8]}"
    assert request(mesh.port, path).status == 200

    def entries() -> list[dict[str, Any]]:
        found = [e for e in _access(mesh) if e["path"] == path]
        return found if len(found) >= 5 else []

    found = _until(entries)
    by_side = Counter((e["reporter"], e["service"]) for e in found)
    # ingress listener, gateway hop -> front, front's inbound, front -> back, back's inbound
    assert by_side == Counter(
        {
            ("ingress", "front"): 1,
            ("outbound", "front"): 1,
            ("inbound", "front"): 1,
            ("outbound", "back"): 1,
            ("inbound", "back"): 1,
        }
    ), found
    call = next(e for e in found if e["reporter"] == "outbound" and e["service"] == "back")
    assert (call["source_service"], call["source_version"], call["route"]) == (
        "front",
        "default",
        "main",
    )
    assert call["version"] in ("v1", "v2")
    assert call["pod"] == f"{mesh.project}-back-{call['version']}-0"
    assert (call["method"], call["status"]) == ("GET", 200)
    assert call["duration_ms"] > 0 and call["request_id"]
    served = next(e for e in found if e["reporter"] == "inbound" and e["service"] == "back")
    assert (served["source_service"], served["version"]) == ("front", call["version"])
    assert served["request_id"] == call["request_id"]  # one request, seen on both sides
    assert len({e["request_id"] for e in found}) == 1


def test_an_injected_fault_is_logged_with_its_flag_and_filters_narrow_the_log(
    observed: tuple[Mesh, int],
) -> None:
    mesh, _ = observed
    port = _hop(mesh, "back")
    for _ in range(3):
        assert request(port, "/broken/x").status == 503

    def failures() -> list[dict[str, Any]]:
        found = _access(mesh, "back", "--status", "5xx", "--route", "broken")
        return found if len(found) >= 3 else []

    found = _until(failures)
    assert len(found) >= 3 and all(e["status"] == 503 for e in found), found
    inbound = _access(mesh, "back", "--status", "503")
    flagged = [e for e in inbound if e["reporter"] == "inbound" and "FI" in e["flags"]]
    assert len(flagged) >= 3, inbound
    text = mesh.run("logs", "--access", "back", "--status", "503", "--tail", "1")
    assert text.returncode == 0, text.stderr
    assert "503" in text.stdout and "injected fault" in text.stdout  # flags in words
    assert _access(mesh, "back", "--slower", "1h") == []


def test_ps_shows_the_metrics_url_and_the_access_logs_counters(
    observed: tuple[Mesh, int],
) -> None:
    mesh, metrics = observed
    state = mesh.ps()
    assert state["metrics"] == f"http://127.0.0.1:{metrics}/metrics"
    assert state["access"]["capacity"] == 10_000 and state["access"]["dropped"] == 0
    text = mesh.run("ps")
    assert f"metrics: http://127.0.0.1:{metrics}/metrics" in text.stdout
    assert "access log:" in text.stdout and "0 dropped" in text.stdout


def test_an_unknown_service_or_filter_is_a_located_message_not_a_traceback(
    observed: tuple[Mesh, int],
) -> None:
    mesh, _ = observed
    result = mesh.run("logs", "--access", "bak")
    assert result.returncode == 1
    assert "no service 'bak'" in result.stderr and "did you mean 'back'?" in result.stderr
    assert "Traceback" not in result.stderr
    result = mesh.run("logs", "--access", "--status", "7xx")
    assert result.returncode == 1 and "neither a class" in result.stderr


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The command's stdout lines as they come, read by a thread of their own."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_follow_streams_new_entries_as_they_come(observed: tuple[Mesh, int]) -> None:
    mesh, _ = observed
    path = f"/follow-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devmesh",
            "-f",  # before the command: after `logs`, -f is --follow (as in compose)
            str(mesh.file),
            "-p",
            mesh.project,
            "logs",
            "--access",
            "back",
            "--follow",
            "--json",
            "--tail",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DEVMESH_PULL": "never"},
        # Ctrl-C as a terminal sends it: a suite run in the background of a shell without
        # job control inherits SIGINT ignored, and so would the command (it did, twice).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = _lines_of(proc)
    try:
        # The command may take seconds to start on a busy machine: a request a second
        # until both sides of one have come through the stream (bounded).
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(seen) < 2:
            assert request(mesh.port, path).status == 200
            until = time.monotonic() + 1
            while time.monotonic() < until:
                try:
                    entry = json.loads(lines.get(timeout=0.2))
                except queue.Empty:
                    continue
                if entry["path"] == path:
                    seen[entry["reporter"]] = entry
        assert set(seen) == {"outbound", "inbound"}, seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


# -- Prometheus -----------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus server scraping one target every second, in a temp dir of its own."""

    def __init__(self, directory: Path, target: int) -> None:
        if shutil.which("prometheus") is None:
            subprocess.run([str(ROOT / "scripts" / "ensure-prometheus.sh")], check=True)
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: devmesh\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
        )
        self.log = (directory / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=5) as answer:
            data = json.loads(answer.read())
        assert data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def up(self) -> bool:
        try:
            return any(r["value"][1] == "1" for r in self.query('up{job="devmesh"}'))
        except OSError:
            return False

    def close(self) -> None:
        self.proc.kill()  # ours, by its pid
        self.proc.wait(timeout=10)
        self.log.close()


def test_prometheus_scrapes_the_split_the_test_sent(
    observed: tuple[Mesh, int], tmp_path: Path
) -> None:
    mesh, metrics = observed
    prometheus = Prometheus(tmp_path, metrics)
    try:
        assert _until(prometheus.up, timeout=30), "Prometheus never scraped devmesh"
        port = _hop(mesh, "back")
        sent = 200
        served = Counter(
            request(port, "/split").headers.get("x-devmesh-served-by", "?") for _ in range(sent)
        )
        assert sum(served.values()) == sent
        query = (
            'sum by (version) (devmesh_requests_total{service="back",'
            'source_service="ingress",response_code_class="2xx"})'
        )

        def scraped() -> dict[str, int]:
            got = {
                r["metric"]["version"]: int(float(r["value"][1])) for r in prometheus.query(query)
            }
            return got if sum(got.values()) >= sent else {}

        counted = _until(scraped, timeout=30)
        # Exactly what each version answered (the gateway's counters, scraped): the split.
        assert counted == {"v1": served["back/v1"], "v2": served["back/v2"]}, (counted, served)
        assert 0.55 <= counted["v1"] / sent <= 0.85, counted  # 70/30, 200 draws
        p99 = prometheus.query(
            "histogram_quantile(0.99, sum by (le) (devmesh_request_duration_ms_bucket"
            '{service="back",source_service="ingress"}))'
        )
        assert p99 and 0 < float(p99[0]["value"][1]) < 5000, p99
        ready = prometheus.query('sum(devmesh_pod_ready{service="back"})')
        assert float(ready[0]["value"][1]) == 2
        assert prometheus.query("devmesh_access_log_dropped_total")[0]["value"][1] == "0"
    finally:
        prometheus.close()


def test_a_metrics_port_in_use_fails_up_clearly_and_leaves_nothing_running(
    observed: tuple[Mesh, int], tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    taken, _ = observed  # its daemon holds its metrics port
    project = f"t{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    mesh = Mesh(tmp_path, project, free_port(), docker_client)
    mesh.write(TEXT.replace("@METRICS@", str(_metrics_port(taken))))
    try:
        result = mesh.up()
        assert result.returncode != 0
        assert "metrics port" in result.stderr and "in use" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert mesh.containers() == {}
        assert StateDir.for_project(project).daemon_pid() is None  # no daemon stayed
    finally:
        mesh.run("down", timeout=60)
        sweep(docker_client, project)


def test_a_new_metrics_port_in_the_file_moves_metrics_live_and_one_in_use_keeps_the_old(
    observed: tuple[Mesh, int],
) -> None:
    """It used to be read once, at start: a changed port was silently ignored."""
    import socket

    mesh, metrics = observed

    def answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    moved = free_port()
    try:
        mesh.write(TEXT.replace("@METRICS@", str(moved)))
        assert _until(lambda: answers(moved) and not answers(metrics), timeout=10)
        assert _metrics_port(mesh) == moved
        with socket.socket() as holder:  # a port someone else has: refused, the old serves on
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            mesh.write(TEXT.replace("@METRICS@", str(taken)))
            events = _until(
                lambda: "in use" in mesh.run("events").stdout and mesh.run("events").stdout,
                timeout=10,
            )
            assert f"metrics port 127.0.0.1:{taken} is in use" in events, events
            assert f"/metrics stays on http://127.0.0.1:{moved}/metrics" in events
            assert answers(moved) and _metrics_port(mesh) == moved
    finally:
        mesh.write(TEXT.replace("@METRICS@", str(metrics)))
        assert _until(lambda: answers(metrics), timeout=10)


def _metrics_port(mesh: Mesh) -> int:
    url = mesh.ps()["metrics"]
    return int(urllib.parse.urlsplit(url).port or 0)


def test_following_the_access_log_ends_cleanly_when_logs_are_turned_off_or_the_mesh_goes_down(
    make_mesh: Any,
) -> None:
    text = (
        "mesh: downed\ningress:\n  port: @PORT@\n  routes: [{name: site, service: web}]\n"
        "services:\n  web: {build: @APP@, image: devmesh-shop-app:1, port: 8000}\n"
    )
    mesh: Mesh = make_mesh(text)
    mesh.up_ok()

    def follow_until_seen() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devmesh", "-p", mesh.project, "logs", "--access", "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DEVMESH_PULL": "never"},
        )
        lines = _lines_of(proc)
        deadline = time.monotonic() + 30
        seen = ""
        while "web" not in seen and time.monotonic() < deadline:
            assert mesh.get("/").status == 200
            with contextlib.suppress(queue.Empty):
                seen += lines.get(timeout=1)
        assert "web" in seen, seen
        return proc

    def ended(proc: subprocess.Popen[str], change: Callable[[], None]) -> str:
        try:
            change()
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        return err

    # `access_log: false` saved while a follow runs: it ends, saying why
    off = text.replace("services:", "observability: {access_log: false}\nservices:")
    err = ended(follow_until_seen(), lambda: mesh.write(off))
    assert "access logs were turned off" in err and "daemon" not in err, err
    mesh.write(text)  # on again: a follow is taken once the daemon has applied it
    deadline = time.monotonic() + 20
    while "access logs are off" in mesh.run("logs", "--access", "--tail", "1").stderr:
        assert time.monotonic() < deadline, "access logs not turned on again"
        time.sleep(0.2)
    # the mesh going down: it ends, saying so
    err = ended(follow_until_seen(), lambda: _assert_ok(mesh.run("down", timeout=60).returncode))
    assert "stopped following" in err and "does not answer" not in err, err


def _assert_ok(code: int) -> None:
    assert code == 0
