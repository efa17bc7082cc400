"""Bring-up benchmark: how long `devmesh up -d --wait` takes, and what the running mesh costs.

    .venv/bin/python bench/bringup.py [--sizes example,10] [--runs 3] [--out FILE]

Per case ("example" = examples/shop/devmesh.yaml; a number N = a generated chain of N HTTP
services built from the example app, each calling the next, one version each, behind an
ingress):

- bring-up: wall time of the `devmesh up -d --wait` command, a fresh project name per run and
  `devmesh down` between runs. The first run of each case is a warm-up (it may build images)
  and is reported on its own; the median and min/max are over the `--runs` runs after it.
- a request through the ingress after every bring-up must answer 200 and show that the entry
  service reached each of its upstreams, so a broken mesh cannot give a fast-looking number.
- memory once the last run is up: Rss, Pss and private (Private_Clean + Private_Dirty) of every
  sidecar's Envoy from /proc/PID/smaps_rollup, the gateway's, and the daemon's RSS.

Every devmesh command runs with DEVMESH_PULL=never. Everything the benchmark starts is removed
at the end, on failure and on Ctrl-C: `devmesh down`, then a sweep by the mesh label. This is a
benchmark, not a test: it prints a table and exits non-zero only when it could not measure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from devmesh import __version__ as devmesh_version
from devmesh import labels
from devmesh.daemon.state import StateDir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shop" / "devmesh.yaml"
APP_CONTEXT = ROOT / "examples" / "shop" / "app"
APP_IMAGE = "devmesh-shop-app:1"
ENV = {**os.environ, "DEVMESH_PULL": "never"}  # no registry here: never contact one
UP_TIMEOUT = 120.0  # seconds `up --wait` waits for readiness
COMMAND_SLACK = 60.0  # on top, before the benchmark gives up on a devmesh command
DOWN_TIMEOUT = 90.0
DOCKER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 20.0  # one request through the ingress (a 10-hop chain of busybox sh)
ROUTABLE_WITHIN = 10.0  # after `up --wait` said ready, retry this long before calling it broken
MIB = 1024 * 1024


class BenchError(Exception):
    """The benchmark could not measure (a command failed, the mesh did not answer)."""


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every `finally` cleans up."""


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- running commands ---------------------------------------------------------------------------


def devmesh_command() -> list[str]:
    script = Path(sys.executable).parent / "devmesh"  # the console script users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "devmesh"]


def run(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ENV,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(args)}` did not finish within {timeout:.0f}s") from None


def devmesh(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return run([*devmesh_command(), *args], timeout)


def docker(*args: str) -> str:
    result = run(["docker", *args], DOCKER_TIMEOUT)
    if result.returncode != 0:
        raise BenchError(f"`docker {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def tail(result: subprocess.CompletedProcess[str], lines: int = 25) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()
    return "\n".join("    " + line for line in text[-lines:])


@contextmanager
def shielded() -> Iterator[None]:
    """Cleanup runs to its end (each step has a timeout); a second Ctrl-C waits for it."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def project_name(n: int) -> str:
    """`bench-PID-N`, or `bPID-N` when that is too long: with the default state directory
    (/tmp/devmesh-0/PROJECT) devmesh refuses project names longer than 15 characters."""
    name = f"bench-{os.getpid()}-{n}"
    return name if len(name) <= 15 else f"b{os.getpid()}-{n}"


# -- the cases ----------------------------------------------------------------------------------


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
        port = free_port()
        self.file.write_text(self.template.replace("@PORT@", str(port)))
        return port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example_case(workdir: Path) -> Case:
    """The shop example as it is, in a temp dir: its build context made absolute and its
    ingress moved to a free port (8080 may be taken, e.g. by a `shop` mesh already up)."""
    text = EXAMPLE.read_text()
    text, builds = re.subn(r"(?m)^(\s+build:\s*)\./app\s*$", rf"\g<1>{APP_CONTEXT}", text)
    text, ports = re.subn(r"(?m)^(ingress:\s*\n\s+port:\s*)\d+", r"\g<1>@PORT@", text)
    if builds == 0 or ports != 1:
        raise BenchError(f"{EXAMPLE}: no longer has the `build: ./app` / `ingress.port` lines")
    path = workdir / "example" / "devmesh.yaml"
    path.parent.mkdir()
    return Case("example", path, text, services=3, entry_upstreams=("catalog", "stock"))


def chain_case(workdir: Path, n: int) -> Case:
    """N HTTP services s01 -> s02 -> ... -> sNN behind an ingress that routes to s01."""
    names = [f"s{i:02d}" for i in range(1, n + 1)]
    lines = [
        f"mesh: chain{n}",
        "defaults:",
        "  timeout: 5s",
        "  health: {path: /healthz, interval: 1s}",
        "ingress:",
        "  port: @PORT@",
        "  routes:",
        f"    - {{name: site, match: {{path_prefix: /}}, service: {names[0]}}}",
        "services:",
    ]
    for i, name in enumerate(names):
        lines += [
            f"  {name}:",
            f"    build: {APP_CONTEXT}",
            f"    image: {APP_IMAGE}",
            "    port: 8000",
        ]
        if i + 1 < n:
            lines += [f'    env: {{UPSTREAMS: "{names[i + 1]}"}}', f"    calls: [{names[i + 1]}]"]
    path = workdir / f"chain{n}" / "devmesh.yaml"
    path.parent.mkdir()
    upstreams = (names[1],) if n > 1 else ()
    text = "\n".join(lines) + "\n"
    return Case(f"{n} services", path, text, services=n, entry_upstreams=upstreams)


# -- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    rss: float  # MiB
    pss: float
    private: float


def smaps_rollup(pid: int) -> Memory:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return Memory(fields["Rss"] / MIB, fields["Pss"] / MIB, private / MIB)


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


def mesh_containers(project: str) -> list[dict[str, Any]]:
    ids = docker("ps", "-aq", "--no-trunc", "--filter", f"label={labels.MESH}={project}").split()
    if not ids:
        return []
    found: list[dict[str, Any]] = json.loads(docker("inspect", *ids))
    return found


def envoy_memory(container: dict[str, Any]) -> Memory:
    name = str(container["Name"]).lstrip("/")
    pid = int(container["State"]["Pid"])
    if pid <= 0:
        raise BenchError(f"{name} is not running ({container['State']['Status']})")
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm != "envoy":  # the container's PID 1 must be Envoy itself (no init in between)
        raise BenchError(f"{name}: host PID {pid} is '{comm}', not envoy")
    return smaps_rollup(pid)


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
        if text.startswith("reconcile (start)"):
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


def other_meshes(project: str) -> int:
    mesh_of = '{{.Label "%s"}}' % labels.MESH  # noqa: UP031 - Go template braces
    listed = docker("ps", "--filter", f"label={labels.MANAGED}=1", "--format", mesh_of)
    return sum(1 for mesh in listed.split() if mesh != project)


def ps_json(project: str) -> dict[str, Any]:
    result = devmesh("ps", "--json", "-p", project, timeout=30)
    if result.returncode != 0:
        raise BenchError(f"`devmesh ps --json -p {project}` failed:\n{tail(result)}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


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
    containers = mesh_containers(project)
    result.containers = len(containers)
    for c in containers:
        role = c["Config"]["Labels"].get(labels.ROLE)
        if role == "sidecar":
            result.sidecars.append(envoy_memory(c))
        elif role == "gateway":
            result.gateway = envoy_memory(c)
    result.daemon_rss = smaps_rollup(int(state["pid"])).rss
    result.envoys_on_machine = envoy_processes()


def daemon_alive(pid: int, project: str) -> bool:
    """Whether `pid` is still the daemon of this benchmark's `project` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"devmesh.daemon" in cmdline and project.encode() in cmdline


def sweep(project: str, daemon_pid: int | None) -> str:
    """Remove whatever is left of the project; say what was left (empty: nothing)."""
    left: list[str] = []
    if daemon_pid is None:
        daemon_pid = StateDir.for_project(project).daemon_pid()  # from its lock and pid file
    if daemon_pid is not None and daemon_alive(daemon_pid, project):
        left.append(f"daemon pid {daemon_pid} still running")
        os.kill(daemon_pid, signal.SIGKILL)  # the daemon this benchmark's `up` started
    containers = docker("ps", "-aq", "--filter", f"label={labels.MESH}={project}").split()
    if containers:
        left.append(f"{len(containers)} containers")
        run(["docker", "rm", "-f", "-v", *containers], DOCKER_TIMEOUT)
    networks = docker("network", "ls", "-q", "--filter", f"label={labels.MESH}={project}").split()
    if networks:
        left.append(f"{len(networks)} networks")
        run(["docker", "network", "rm", *networks], DOCKER_TIMEOUT)
    state_dir = StateDir.for_project(project).path
    if state_dir.exists():
        left.append(f"state directory {state_dir}")
        shutil.rmtree(state_dir, ignore_errors=True)
    return ", ".join(left)


def one_run(case: Case, project: str, measure: bool) -> Run:
    daemon_pid: int | None = None
    downed = swept = False
    try:
        port = case.write()
        began = time.time()
        start = time.perf_counter()
        up = devmesh(
            *("up", "-d", "--wait", "--timeout", str(UP_TIMEOUT)),
            *("-f", str(case.file), "-p", project),
            timeout=UP_TIMEOUT + COMMAND_SLACK,
        )
        result = Run(project, up_s=time.perf_counter() - start)
        result.phases = phases(
            up.stdout + up.stderr, began, time.time()
        )  # `up -d` echoes on stderr
        if up.returncode != 0:
            raise BenchError(f"`devmesh up` for {case.name} exited {up.returncode}:\n{tail(up)}")
        result.others = other_meshes(project)
        state = ps_json(project)
        daemon_pid = int(state["pid"]) if state.get("pid") else None
        if not state.get("ready"):
            raise BenchError(f"{case.name}: `up --wait` returned but ps says not ready")
        result.pods = len(state["pods"])
        sanity_request(case, port, result)
        if measure:
            measure_memory(project, state, result)
        start = time.perf_counter()
        down = devmesh("down", "-p", project, timeout=DOWN_TIMEOUT)
        result.down_s = time.perf_counter() - start
        downed = True
        if down.returncode != 0:
            raise BenchError(f"`devmesh down -p {project}` exited {down.returncode}:\n{tail(down)}")
        result.leftovers = sweep(project, daemon_pid)
        swept = True
        return result
    finally:
        with shielded():
            if not downed:
                try:
                    devmesh("down", "-p", project, timeout=DOWN_TIMEOUT)
                except BenchError as exc:
                    progress(f"cleanup: {exc}")
            if not swept:
                sweep(project, daemon_pid)


# -- images this benchmark made -----------------------------------------------------------------


def image_id(name: str) -> str | None:
    result = run(["docker", "image", "inspect", "-f", "{{.Id}}", name], DOCKER_TIMEOUT)
    return result.stdout.strip() if result.returncode == 0 else None


def restore_images(projects: set[str], tag_before: str | None) -> list[str]:
    """Images built for this benchmark's projects carry their mesh label; remove them, and
    point the shared app tag back where it was (another mesh may have built it)."""
    notes: list[str] = []
    ours: list[str] = []
    listed = docker("image", "ls", "-aq", "--no-trunc", "--filter", f"label={labels.MESH}")
    ids = sorted(set(listed.split()))
    if ids:
        for image in json.loads(docker("image", "inspect", *ids)):
            mesh = (image.get("Config", {}).get("Labels") or {}).get(labels.MESH, "")
            if mesh in projects:
                ours.append(str(image["Id"]))
    now = image_id(APP_IMAGE)
    if tag_before and now != tag_before and now in ours:
        if image_id(tag_before):
            docker("tag", tag_before, APP_IMAGE)
        else:  # what it pointed to is gone: keep ours rather than leave no tag at all
            ours.remove(now)
            notes.append(f"kept {APP_IMAGE} ({now[7:19]}, built by a run): its old image is gone")
    for image in ours:
        gone = run(["docker", "image", "rm", image], DOCKER_TIMEOUT)
        if gone.returncode != 0:
            notes.append(f"could not remove image {image[7:19]}: {gone.stderr.strip()}")
    if ours:
        notes.append(
            f"removed {len(ours)} app image(s) that the runs built (each labelled with its "
            f"run's project, so each is a distinct image)"
        )
    return notes


# -- the report ---------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: Case
    first: Run
    runs: list[Run]


def fmt_range(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return "/".join(
        f"{v:.{digits}f}" for v in (ordered[0], statistics.median(ordered), ordered[-1])
    )


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def engine_version() -> str:
    try:
        return docker("version", "-f", "{{.Server.Version}}").strip()
    except BenchError:
        return "?"


def report(results: list[CaseResult], args: argparse.Namespace, notes: list[str]) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    out = [
        "# devmesh bring-up benchmark",
        "",
        f"{now} on {platform.node()}: {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"devmesh {devmesh_version}, Docker engine {engine_version()}, "
        f"load average at the end {os.getloadavg()[0]:.2f}",
        "",
        f"Each case: one warm-up `up`/`down` first (reported as *first up*: a fresh daemon, "
        f"building or reusing images), then {args.runs} timed runs of "
        "`devmesh up -d --wait` (wall time of the command, fresh project name each run, "
        "`devmesh down` between runs). DEVMESH_PULL=never. After every `up`, GET / through the "
        "ingress must answer 200 with the entry service reaching its upstreams.",
        "",
        "## Bring-up (seconds)",
        "",
    ]
    rows = []
    for r in results:
        ups = [x.up_s for x in r.runs]
        rows.append(
            [
                r.case.name,
                str(r.case.services),
                str(r.first.pods),
                str(r.runs[-1].containers if r.runs else r.first.containers),
                f"{r.first.up_s:.2f}",
                f"{statistics.median(ups):.2f}" if ups else "-",
                f"{min(ups):.2f}–{max(ups):.2f}" if ups else "-",
                str(len(ups)),
                f"{statistics.median([x.down_s for x in r.runs]):.2f}" if r.runs else "-",
                f"{statistics.median([x.request_ms for x in [r.first, *r.runs]]):.0f}",
            ]
        )
    out.append(
        table(
            [
                "case",
                "services",
                "pods",
                "containers",
                "first up",
                "up median",
                "up min–max",
                "runs",
                "down median",
                "GET / ms (median)",
            ],
            rows,
        )
    )
    out += [
        "",
        "## Where the `up` time goes (seconds, median of the timed runs)",
        "",
        "start: command start to the daemon's first log line; images: to its first reconcile "
        "(sidecar, pause and app images found or built); containers: to the last container "
        "started; ready: to `up --wait` returning (health checks, xDS ACKs, polling). From the "
        "daemon log lines `up -d` echoes.",
        "",
    ]
    rows = []
    for r in results:
        timed = [x.phases for x in r.runs if x.phases]
        cells = [
            f"{statistics.median([p[k] for p in timed]):.2f}" if timed else "-" for k in PHASES
        ]
        first = [f"{r.first.phases[k]:.2f}" for k in PHASES] if r.first.phases else ["-"] * 4
        rows.append([r.case.name, *cells, " / ".join(first)])
    out.append(table(["case", *PHASES, "first up: " + " / ".join(PHASES)], rows))
    out += ["", "## Memory once up (MiB, last run; min/median/max over sidecars)", ""]
    rows = []
    for r in results:
        last = r.runs[-1] if r.runs else r.first
        gw = last.gateway
        rows.append(
            [
                r.case.name,
                str(len(last.sidecars)),
                fmt_range([m.rss for m in last.sidecars]),
                fmt_range([m.pss for m in last.sidecars]),
                fmt_range([m.private for m in last.sidecars]),
                f"{gw.rss:.1f} / {gw.pss:.1f} / {gw.private:.1f}" if gw else "-",
                f"{last.daemon_rss:.1f}",
                str(last.envoys_on_machine),
            ]
        )
    out.append(
        table(
            [
                "case",
                "sidecars",
                "sidecar Rss",
                "sidecar Pss",
                "sidecar private",
                "gateway Rss / Pss / private",
                "daemon RSS",
                "Envoys on machine",
            ],
            rows,
        )
    )
    out += [
        "",
        "Pss shares each page among every process mapping it, so it depends on how many Envoys "
        "run on the machine (last column, other meshes included); private is what one more "
        "sidecar costs.",
    ]
    for r in results:
        others = [x.others for x in [r.first, *r.runs]]
        if any(others):
            notes.append(
                f"{r.case.name}: {min(others)}–{max(others)} containers of other devmesh meshes "
                "were running on the engine during the runs (they share the cores and the disk)"
            )
        for x in [r.first, *r.runs]:
            if x.first_failure:
                notes.append(
                    f"{r.case.name} ({x.project}): GET / failed right after `up --wait` "
                    f"returned ({x.first_failure}); it answered after {x.retried_for_s:.1f}s"
                )
            if x.leftovers:
                notes.append(f"{r.case.name} ({x.project}): `devmesh down` left {x.leftovers}")
    if notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"


# -- main ---------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[str]:
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    for s in sizes:
        if s != "example" and not (s.isdigit() and 1 <= int(s) <= 99):
            raise argparse.ArgumentTypeError(f"'{s}': expected 'example' or a number 1-99")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=["example", "10"],
        help="comma-separated cases: 'example' and/or numbers of services (default example,10)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--out", type=Path, help="also write the table as Markdown to FILE")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600,
        help="start no new run after this long (default 600); the report says so",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    began = time.monotonic()
    counter = 0
    tag_before = image_id(APP_IMAGE)
    results: list[CaseResult] = []
    notes: list[str] = []
    if tag_before:
        notes.append(
            f"{APP_IMAGE} was already on the engine, so the warm-up run built from Docker's cache"
        )
    try:
        with tempfile.TemporaryDirectory(prefix="devmesh-bench-") as tmp:
            for size in args.sizes:
                case = (
                    example_case(Path(tmp))
                    if size == "example"
                    else chain_case(Path(tmp), int(size))
                )
                counter += 1
                progress(f"{case.name}: warm-up run ({project_name(counter)}) ...")
                first = one_run(case, project_name(counter), measure=True)
                progress(f"{case.name}: first up {first.up_s:.2f}s")
                runs: list[Run] = []
                for i in range(args.runs):
                    if time.monotonic() - began > args.max_seconds:
                        notes.append(
                            f"{case.name}: stopped after {i} timed runs (--max-seconds "
                            f"{args.max_seconds:.0f})"
                        )
                        break
                    counter += 1
                    runs.append(one_run(case, project_name(counter), measure=True))
                    progress(f"{case.name}: run {i + 1}/{args.runs} up {runs[-1].up_s:.2f}s")
                results.append(CaseResult(case, first, runs))
    except BenchError as exc:
        progress(f"benchmark failed: {exc}")
        return 1
    except (KeyboardInterrupt, Terminated):
        progress("interrupted; everything started was removed")
        return 130
    finally:
        with shielded():
            for n in range(1, counter + 1):  # each run cleaned up; this catches the unexpected
                try:
                    left = sweep(project_name(n), None)
                    if left:
                        progress(f"final sweep of {project_name(n)} removed {left}")
                except BenchError as exc:
                    progress(f"final sweep: {exc}")
            try:
                projects = {project_name(n) for n in range(1, counter + 1)}
                notes += restore_images(projects, tag_before)
            except BenchError as exc:
                progress(f"image cleanup: {exc}")
    text = report(results, args, notes)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
        progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
