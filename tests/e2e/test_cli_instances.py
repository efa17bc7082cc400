"""Commands aimed at a running instance, as a compose or kubectl user types them, against one
real mesh shared by the module: the instance runs under another name than its file's
`mesh:` (`up -p NAME`), from a directory elsewhere, with a state base of its own so that only
this mesh is "running" for `ls` and for the commands given no file.

- `ls` lists it with its file, state and URL;
- `ps`, `events`, `logs` from a directory with no mesh file find the one running instance;
- `ps` in the file's own directory, without -p, finds the instance that serves that file
  (the file's own name does not run);
- `logs -p NAME SERVICE` checks SERVICE against the instance's own file, not the
  devmesh.yaml of the directory it is run from; `logs` with no SERVICE interleaves every
  service, each line prefixed by its pod;
- `shift -p NAME` from a directory holding another mesh file writes the instance's file and
  says so, leaving the local file alone;
- `config -p NAME` prints the file the daemon serves.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml

from tests.e2e.conftest import APP, ENV, PROJECTS, devmesh, free_port, sweep

MESH = """
mesh: filemesh
ingress:
  port: @PORT@
  routes:
    - {name: site, service: web}
services:
  web:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    calls: [api]
    health: {path: /healthz, interval: 1s}
  api:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    health: {path: /healthz, interval: 1s}
    versions: {v1: {}, v2: {}}
    routes:
      - {name: main, to: {v1: 100, v2: 0}}
"""

OTHER = """
mesh: other
services:
  lonely:
    image: devmesh-shop-app:1
    port: 8000
"""


@dataclass
class Running:
    project: str
    file: Path  # the instance's own file
    port: int
    env: dict[str, str]  # DEVMESH_STATE_DIR: this module's own state base
    elsewhere: Path  # a directory with no mesh file in it or its parents
    other: Path  # a directory holding another mesh's devmesh.yaml

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        result = devmesh(*args, env=self.env, cwd=cwd, timeout=120)
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture(scope="module")
def running(docker_client: docker.DockerClient) -> Iterator[Running]:
    top = Path(tempfile.mkdtemp(prefix="dmi"))  # short: UNIX socket paths live under it
    (top / "meshdir").mkdir()
    (top / "elsewhere").mkdir()
    (top / "other").mkdir()
    port = free_port()
    file = top / "meshdir" / "devmesh.yaml"
    file.write_text(MESH.replace("@PORT@", str(port)).replace("@APP@", str(APP)))
    (top / "other" / "devmesh.yaml").write_text(OTHER)
    project = f"t{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    env = {**ENV, "DEVMESH_STATE_DIR": str(top / "s")}
    env.pop("DEVMESH_FILE", None)
    env.pop("DEVMESH_PROJECT", None)
    r = Running(project, file, port, env, top / "elsewhere", top / "other")
    try:
        up = r.run("-p", project, "up", "-d", "--wait", "--timeout", "90", cwd=file.parent)
        assert up.returncode == 0, up.stdout + up.stderr
        yield r
    finally:
        devmesh("-p", project, "down", env=env, cwd=top, timeout=60)
        sweep(docker_client, project)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def following(running: Running, *args: str) -> Iterator[list[str]]:
    """`devmesh ARGS` (a command that follows) run from elsewhere: the lines it printed so
    far, a list that grows; the command is ended afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmesh", *args],
        env=running.env,
        cwd=running.elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
    try:
        yield lines
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for(ready: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    return ready()


@pytest.mark.docker
def test_ls_lists_the_instance_with_its_file_state_and_url(running: Running) -> None:
    table = running.run("ls", cwd=running.elsewhere)
    assert table.returncode == 0, table.stderr
    assert running.project in table.stdout and str(running.file) in table.stdout
    assert f"http://127.0.0.1:{running.port}/" in table.stdout
    listed = json.loads(running.run("ls", "--json", cwd=running.elsewhere).stdout)
    with_daemon = [(i["project"], i["file"], i["ready"]) for i in listed if i["daemon"]]
    assert with_daemon == [(running.project, str(running.file), True)]
    # the shared engine may hold other meshes' containers: listed as `no daemon`, not ours
    assert all(i["project"] != running.project for i in listed if not i["daemon"])


@pytest.mark.docker
def test_ps_with_no_file_shows_the_one_running_instance(running: Running) -> None:
    result = running.run("ps", "--json", cwd=running.elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["project"] == running.project
    assert "the only one running" in result.stderr
    as_yaml = running.run("ps", "--format", "yaml", cwd=running.elsewhere)
    assert yaml.safe_load(as_yaml.stdout)["project"] == running.project


@pytest.mark.docker
def test_ps_beside_the_file_finds_the_instance_serving_it(running: Running) -> None:
    """The file says `mesh: filemesh`; the instance runs as -p NAME: ps finds it anyway."""
    result = running.run("ps", "--json", cwd=running.file.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["project"] == running.project
    assert f"mesh '{running.project}' serves" in result.stderr


@pytest.mark.docker
def test_logs_checks_the_service_against_the_instance_file(running: Running) -> None:
    # run from a directory whose devmesh.yaml has only `lonely`
    result = running.run("-p", running.project, "logs", "api", cwd=running.other)
    assert result.returncode == 0, result.stderr
    assert "http on :8000" in result.stdout
    wrong = running.run("-p", running.project, "logs", "lonely", cwd=running.other)
    assert wrong.returncode == 1 and "no service 'lonely'" in wrong.stderr


@pytest.mark.docker
def test_logs_with_no_service_interleaves_every_pod_with_a_prefix(running: Running) -> None:
    result = running.run("logs", "--tail", "5", cwd=running.elsewhere)
    assert result.returncode == 0, result.stderr
    prefixes = {line.split(" | ", 1)[0] for line in result.stdout.splitlines() if " | " in line}
    assert prefixes == {
        f"{running.project}-web-default-0",
        f"{running.project}-api-v1-0",
        f"{running.project}-api-v2-0",
    }
    assert "\x1b[" not in result.stdout  # not a terminal: no colour


@pytest.mark.docker
def test_logs_follow_with_no_service_follows_every_pod_through_the_daemon(
    running: Running,
) -> None:
    want = {f"{running.project}-{pod}" for pod in ("web-default-0", "api-v1-0", "api-v2-0")}
    with following(running, "logs", "-f", "--tail", "2") as lines:

        def seen() -> set[str]:
            return {line.split(" | ", 1)[0] for line in list(lines) if " | " in line}

        assert wait_for(lambda: seen() == want, 20), lines


@pytest.mark.docker
def test_logs_proxy_shows_the_sidecars_and_the_gateway(running: Running) -> None:
    result = running.run("logs", "--proxy", "--tail", "3", cwd=running.elsewhere)
    assert result.returncode == 0, result.stderr
    prefixes = {line.split(" | ", 1)[0] for line in result.stdout.splitlines() if " | " in line}
    assert f"{running.project}-api-v1-0 sidecar" in prefixes
    assert f"{running.project}-gateway" in prefixes
    assert not any(p.endswith("-0") for p in prefixes)  # no app lines
    # the gateway's Envoy alone, by either of its names, read here or followed by the daemon
    gateway = [
        line.split(" | ", 1)[1]
        for line in result.stdout.splitlines()
        if line.startswith(f"{running.project}-gateway | ")
    ]
    assert gateway
    for name in ("gateway", "ingress"):
        alone = running.run("logs", "--proxy", name, "--tail", "3", cwd=running.elsewhere)
        assert alone.returncode == 0, alone.stderr
        assert alone.stdout.splitlines() == gateway
    refused = running.run("logs", "gateway", cwd=running.elsewhere)
    assert refused.returncode != 0
    assert "`devmesh logs --proxy gateway` shows its Envoy's log" in refused.stderr
    typo = running.run("logs", "--proxy", "gatewy", cwd=running.elsewhere)
    assert typo.returncode != 0 and "did you mean 'gateway'" in typo.stderr, typo.stderr
    with following(running, "logs", "--proxy", "ingress", "-f", "--tail", "1") as got:
        assert wait_for(lambda: bool(got), 20) and got[0].rstrip("\n") == gateway[-1], got


@pytest.mark.docker
def test_logs_timestamps_start_each_line_also_when_following(running: Running) -> None:
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
    result = running.run("logs", "api", "--timestamps", "--tail", "2", cwd=running.elsewhere)
    assert result.returncode == 0, result.stderr
    texts = [line.split(" | ", 1)[-1] for line in result.stdout.splitlines()]
    assert texts and all(stamp.match(t) for t in texts), texts
    # following goes through the daemon's stream
    with following(running, "logs", "api", "-f", "-t", "--tail", "1") as got:
        assert wait_for(lambda: bool(got), 20), "no line followed"
        assert stamp.match(got[0].split(" | ", 1)[-1]), got


@pytest.mark.docker
def test_events_show_what_the_daemon_did(running: Running) -> None:
    result = running.run("events", "--json", cwd=running.elsewhere)
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)["events"]
    assert events and {"time", "kind", "severity", "subject", "detail"} <= set(events[0])
    text = running.run("events", cwd=running.elsewhere)
    assert len(text.stdout.splitlines()) == len(events)


@pytest.mark.docker
def test_events_follow_prints_a_new_event_as_it_comes(running: Running) -> None:
    with following(running, "-p", running.project, "events", "-f", "--json") as lines:
        assert wait_for(lambda: bool(lines), 30), "no event printed"
        before = len(lines)
        since = time.time()
        shift = running.run(
            "-p", running.project, "shift", "api", "v1=90", "v2=10", cwd=running.other
        )
        assert shift.returncode == 0, shift.stderr
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            new = [json.loads(line) for line in lines[before:]]  # one JSON object a line
            if any(e["kind"] == "save" and e["time"] >= since - 1 for e in new):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the shift's save event was not followed: {lines[before:]}")


@pytest.mark.docker
def test_shift_from_another_mesh_directory_writes_the_instance_file(running: Running) -> None:
    local = (running.other / "devmesh.yaml").read_text()
    result = running.run("-p", running.project, "shift", "api", "v1=50", "v2=50", cwd=running.other)
    assert result.returncode == 0, result.stderr
    assert f"written to {running.file}" in result.stdout
    assert (running.other / "devmesh.yaml").read_text() == local  # untouched
    assert "{v1: 50, v2: 50}" in running.file.read_text()
    served = running.run("-p", running.project, "config", "--json", cwd=running.other)
    api = next(s for s in json.loads(served.stdout)["services"] if s["name"] == "api")
    assert [t["weight"] for t in api["routes"][0]["to"]] == [50, 50]


@pytest.mark.docker
def test_config_of_an_instance_shows_its_port_and_live_faults(running: Running) -> None:
    from devmesh.api import types as api
    from devmesh.client import DaemonClient

    sock = Path(running.env["DEVMESH_STATE_DIR"]) / running.project / "api.sock"
    daemon = DaemonClient(sock)
    daemon.fault("api", "main", delay=api.DelaySpec(fixed_ms=250, percent=40))
    try:
        result = running.run("-p", running.project, "config", "--json", cwd=running.other)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["ingress"]["port"] == running.port
        api_service = next(s for s in doc["services"] if s["name"] == "api")
        main = next(r for r in api_service["routes"] if r["name"] == "main")
        assert main["fault"]["delay"] == {"fixed_ms": 250, "percent": 40.0}
    finally:
        daemon.fault("api", "main")  # cleared
    from_file = running.run("-f", str(running.file), "config", "--json", cwd=running.other)
    api_service = next(s for s in json.loads(from_file.stdout)["services"] if s["name"] == "api")
    assert api_service["routes"][0]["fault"] is None  # the file alone has no fault
