"""Rows 1 and 5: one timed `devmesh up -d --wait` of a mesh, and what the running mesh costs.

`one_run` brings a mesh up under a fresh project name and times the `devmesh up -d --wait`
command (wall time), checks that a request through the ingress answers 200 and that the
entry service reached each of its upstreams (a broken mesh must not give a fast-looking
number), optionally reads the memory of every sidecar's and the gateway's Envoy
(/proc/PID/smaps_rollup) and the daemon's RSS, then times `devmesh down`. Whatever happens,
the project is swept afterwards. bench/headline.py runs it (`headline.py bringup`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
from _common import BenchError, Memory, progress

from devmesh import labels

REQUEST_TIMEOUT = 20.0  # one request through the ingress (a 10-hop chain of busybox sh)
ROUTABLE_WITHIN = 10.0  # after `up --wait` said ready, retry this long before calling it broken


@dataclass(frozen=True)
class Case:
    name: str
    file: Path
    template: str  # the mesh file with @PORT@ for the ingress port
    services: int
    entry_upstreams: tuple[str, ...]  # what the ingress's entry service must reach

    def write(self) -> int:
        """The mesh file with a fresh free ingress port; the port.

        A new port for every run: devmesh's pre-flight check binds the ingress port without
        SO_REUSEADDR, so for about 60 s after `down` the TIME_WAIT left by the sanity
        request's connection makes `up` refuse the same port as "in use by another program".
        """
        port = c.free_port()
        self.file.write_text(self.template.replace("@PORT@", str(port)))
        return port


@dataclass
class Run:
    project: str
    up_s: float
    down_s: float = 0.0
    pods: int = 0
    containers: int = 0
    request_ms: float = 0.0
    retried_for_s: float = 0.0  # how long the ingress failed after `up --wait` returned
    first_failure: str = ""
    sidecars: list[Memory] = field(default_factory=list)
    gateway: Memory | None = None
    daemon_rss: float = 0.0
    envoys_on_machine: int = 0
    others: int = 0  # devmesh containers of other meshes running on the engine meanwhile
    phases: dict[str, float] = field(default_factory=dict)
    leftovers: str = ""  # what `devmesh down` left behind, if anything
    floor: float = float("nan")  # private MiB of a bare Envoy started meanwhile (`bare_envoy`)


LOG_LINE = re.compile(r"^\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")
PHASES = ("start", "images", "containers", "ready")


def phases(output: str, began: float, ended: float) -> dict[str, float]:
    """Split the `up` wall time using the daemon log lines that `up -d` echoes (local time):
    start   command start -> the daemon's first log line (CLI, engine check, daemon start-up)
    images  -> the first reconcile (sidecar, pause and app images found or built)
    containers -> the last container started
    ready   -> `up --wait` returned (health checks, xDS ACKs, the CLI's polling)"""
    first = reconcile = started = None
    for line in output.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        at = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        text = match.group(2)
        first = at if first is None else first
        if text.startswith(("reconcile (start)", "(start) ")):  # the older daemon's, today's
            reconcile = at
        elif text.startswith("started "):
            started = at
    if first is None or reconcile is None or started is None:
        return {}
    return {
        "start": first - began,
        "images": reconcile - first,
        "containers": started - reconcile,
        "ready": ended - started,
    }


def envoy_processes() -> int:
    """Envoy processes on the whole machine: Pss divides shared pages among all of them."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "envoy":
                    count += 1
            except OSError:
                continue
    return count


def check_reply(case: Case, body: str) -> str | None:
    """None when the entry service answered and reached every upstream; else what is wrong."""
    first_line = body.splitlines()[0] if body else ""
    if " served GET /" not in first_line:
        return f"unexpected body: {body[:200]!r}"
    for upstream in case.entry_upstreams:
        match = re.search(rf"^  -> {upstream}: (.*)$", body, re.MULTILINE)
        if match is None or not match.group(1).startswith(f"{upstream}/"):
            got = match.group(1) if match else "no line"
            return f"the entry service did not reach {upstream}: {got!r}"
    return None


def request_once(case: Case, port: int) -> str | None:
    """GET / through the ingress; None when it is 200 with a complete answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=REQUEST_TIMEOUT) as resp:
            body = resp.read().decode(errors="replace")
            if resp.status != 200:
                return f"HTTP {resp.status}: {body[:200]!r}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:200]!r}"
    except (OSError, urllib.error.URLError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return check_reply(case, body)


def sanity_request(case: Case, port: int, result: Run) -> None:
    start = time.perf_counter()
    problem = request_once(case, port)
    result.request_ms = (time.perf_counter() - start) * 1000
    if problem is None:
        return
    # `up --wait` said ready; a mesh that is not routable then is worth reporting, and a mesh
    # that never becomes routable must not produce a number.
    result.first_failure = problem
    deadline = start + ROUTABLE_WITHIN
    while problem is not None and time.perf_counter() < deadline:
        time.sleep(0.25)
        problem = request_once(case, port)
    result.retried_for_s = time.perf_counter() - start
    if problem is not None:
        raise BenchError(
            f"{case.name}: the ingress did not answer correctly within {ROUTABLE_WITHIN:.0f}s "
            f"after `up --wait`: {problem}"
        )


def measure_memory(project: str, state: dict[str, Any], result: Run) -> None:
    containers = c.mesh_containers(project)
    result.containers = len(containers)
    for cont in containers:
        role = cont["Config"]["Labels"].get(labels.ROLE)
        if role == "sidecar":
            result.sidecars.append(c.envoy_memory(cont))
        elif role == "gateway":
            result.gateway = c.envoy_memory(cont)
    result.daemon_rss = c.smaps_rollup(int(state["pid"])).rss
    result.envoys_on_machine = envoy_processes()


def one_run(case: Case, project: str, measure: bool, floor: c.Images | None = None) -> Run:
    daemon_pid: int | None = None
    downed = swept = False
    try:
        port = case.write()
        began = time.time()
        start = time.perf_counter()
        up = c.devmesh(
            *("up", "-d", "--wait", "--timeout", str(c.UP_TIMEOUT)),
            *("-f", str(case.file), "-p", project),
            timeout=c.UP_TIMEOUT + c.COMMAND_SLACK,
        )
        result = Run(project, up_s=time.perf_counter() - start)
        result.phases = phases(up.stdout + up.stderr, began, time.time())  # echoed on stderr
        if up.returncode != 0:
            raise BenchError(f"`devmesh up` for {case.name} exited {up.returncode}:\n{c.tail(up)}")
        result.others = c.other_meshes([project])
        state = c.mesh_state(project)
        daemon_pid = int(state["pid"]) if state.get("pid") else None
        if not state.get("ready"):
            raise BenchError(f"{case.name}: `up --wait` returned but the daemon says not ready")
        result.pods = len(state["pods"])
        sanity_request(case, port, result)
        if measure:
            measure_memory(project, state, result)
        if floor is not None:
            result.floor = bare_envoy(floor, case.file.parent)
        start = time.perf_counter()
        down = c.devmesh("down", "-p", project, timeout=c.DOWN_TIMEOUT)
        result.down_s = time.perf_counter() - start
        downed = True
        if down.returncode != 0:
            raise BenchError(
                f"`devmesh down -p {project}` exited {down.returncode}:\n{c.tail(down)}"
            )
        result.leftovers = c.sweep(project, daemon_pid)
        swept = True
        return result
    finally:
        with c.shielded():
            if not downed:
                try:
                    c.devmesh("down", "-p", project, timeout=c.DOWN_TIMEOUT)
                except BenchError as exc:
                    progress(f"cleanup: {exc}")
            if not swept:
                c.sweep(project, daemon_pid)


def bare_envoy(images: c.Images, work: Path) -> float:
    """Private memory (MiB) of an Envoy with admin only (no listener, no cluster; same image
    and flags, no network), started while a mesh's Envoys run (their code pages shared, as in
    a mesh), 3 s after its admin socket appears: the floor of this Envoy build."""
    from devmesh.plan.desired import SIDECAR_FLAGS

    where = work / "bare-envoy"
    where.mkdir(exist_ok=True)
    admin = {"address": {"pipe": {"path": "/devmesh/admin.sock", "mode": 0o600}}}
    (where / "bootstrap.json").write_text(json.dumps({"admin": admin}))
    name = f"hl{os.getpid()}-bare-envoy"
    label = f"{c.BENCH_LABEL}={os.getpid()}"
    try:
        c.docker(
            *("run", "-d", "--name", name, "--label", label, "--network", "none"),
            *("-v", f"{where}:/devmesh", images.envoy, "-c", "/devmesh/bootstrap.json"),
            *SIDECAR_FLAGS,
        )
        deadline = time.monotonic() + 20
        while not (where / "admin.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # as long after start as the mesh's sidecars are when measured
        return c.smaps_rollup(c.container_pid(name)).private
    finally:
        with c.shielded():
            c.run(["docker", "rm", "-f", name], c.DOCKER_TIMEOUT)
