"""What every bench shares: commands, a mesh's life through the `devmesh` CLI, load through
the ingress, /proc readings, images, tables and the headline table's row results.

The benches drive devmesh as a user does: the `devmesh` command (`up -d --wait`, `ps --json`,
`down`) and the daemon's documented API (`devmesh.client.DaemonClient`). Besides, they read
the state directory's documented files (daemon pid and log, each pod's Envoy admin socket)
and Docker, by devmesh's labels. Every devmesh command runs with DEVMESH_PULL=never; traffic
goes to 127.0.0.1 and to the benches' own containers only, in bounded loops.
"""

from __future__ import annotations

import datetime
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devmesh import labels
from devmesh.daemon.state import StateDir

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
EXAMPLE = ROOT / "examples" / "shop" / "devmesh.yaml"
APP_CONTEXT = EXAMPLE.parent / "app"
APP_IMAGE = "devmesh-shop-app:1"  # the example's own tag
# one JSON per row command; `headline.py table` reads them (BENCH_RESULTS: elsewhere, e.g.
# for a trial run that must not replace the committed figures)
RESULTS = Path(os.environ.get("BENCH_RESULTS") or BENCH / "results")
RESULTS_MD = RESULTS.parent / "results.md"  # bench/results.md by default
PYTHON = ".venv/bin/python"
os.environ["DEVMESH_PULL"] = "never"  # no registry here: never contact one
ENV = dict(os.environ)
UP_TIMEOUT = 120.0  # seconds `up --wait` waits for readiness
COMMAND_SLACK = 60.0  # on top, before a bench gives up on a devmesh command
DOWN_TIMEOUT = 90.0
DOCKER_TIMEOUT = 60.0
MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")
# On every container, network and image the benches make themselves (compose peer,
# hand-written Envoys, the app image); the value is the making process's PID.
BENCH_LABEL = "dev.devmesh.bench"
SERVED_BY = "x-devmesh-served-by"  # added by each pod's inbound sidecar: "catalog/v2"


class BenchError(Exception):
    """The bench could not measure (a command failed, the mesh did not answer)."""


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every `finally` cleans up."""


def raise_on_sigterm() -> None:
    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- commands -----------------------------------------------------------------------------------


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


def devmesh_command() -> list[str]:
    script = Path(sys.executable).parent / "devmesh"  # the console script users run
    return [str(script)] if script.exists() else [sys.executable, "-m", "devmesh"]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a mesh's life, through the CLI ---------------------------------------------------------------


def up(
    file: Path, project: str, timeout: float = UP_TIMEOUT, *flags: str
) -> subprocess.CompletedProcess[str]:
    """`devmesh up -d --wait`; BenchError unless it exits 0."""
    result = devmesh(
        *("up", "-d", "--wait", "--timeout", str(timeout), "-f", str(file), "-p", project),
        *flags,
        timeout=timeout + COMMAND_SLACK,
    )
    if result.returncode != 0:
        raise BenchError(f"`devmesh up` of {project} exited {result.returncode}:\n{tail(result)}")
    return result


def api(project: str, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """One call to the daemon's documented JSON API (docs/api.md) on its UNIX socket; the
    JSON as sent, whatever the Python client makes of it."""
    conn = _UnixConnection(state_dir(project).api_socket, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = json.loads(resp.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise BenchError(f"{project}: the daemon's API does not answer {path}: {exc}") from None
    finally:
        conn.close()
    if resp.status >= 400:
        raise BenchError(f"{project}: {method} {path}: {payload.get('error', resp.status)}")
    return payload


def mesh_state(project: str) -> dict[str, Any]:
    """GET /v1/state: what `devmesh ps --json` prints."""
    state: dict[str, Any] = api(project, "GET", "/v1/state")
    return state


def event_text(event: dict[str, Any]) -> str:
    """An event of GET /v1/events or /v1/state: `text` as docs/api.md has it, or the typed
    event's subject and detail (the daemon's `text` property)."""
    if "text" in event:
        return str(event["text"])
    subject, detail = event.get("subject") or "", str(event.get("detail", ""))
    return f"{subject}: {detail}" if subject else detail


def pod_ready(pod: dict[str, Any]) -> bool:
    return pod.get("ready") is True or pod.get("state") == "ready"


def state_dir(project: str) -> StateDir:
    """The project's state directory: daemon pid and log, api.sock, pods' admin sockets."""
    return StateDir.for_project(project)


def daemon_alive(pid: int, project: str) -> bool:
    """Whether `pid` is still the daemon of this bench's `project` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    mine = {project.encode(), b"--project=" + project.encode()}  # either spelling
    return b"devmesh.daemon" in cmdline and bool(mine & set(cmdline))


def sweep(project: str, daemon_pid: int | None = None) -> str:
    """Remove whatever is left of the project; say what was left (empty: nothing)."""
    left: list[str] = []
    pids = {daemon_pid or state_dir(project).daemon_pid()}  # from its lock and pid file
    pids |= {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()}
    for pid in sorted(p for p in pids if p and daemon_alive(p, project)):
        left.append(f"daemon pid {pid} still running")
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the daemon this bench's `up` started
    selector = f"label={labels.MESH}={project}"
    containers = docker("ps", "-aq", "--filter", selector).split()
    if containers:
        left.append(f"{len(containers)} containers")
        run(["docker", "rm", "-f", "-v", *containers], DOCKER_TIMEOUT)
    networks = docker("network", "ls", "-q", "--filter", selector).split()
    if networks:
        left.append(f"{len(networks)} networks")
        run(["docker", "network", "rm", *networks], DOCKER_TIMEOUT)
    where = state_dir(project).path
    if where.exists():
        left.append(f"state directory {where}")
        shutil.rmtree(where, ignore_errors=True)
    return ", ".join(left)


def down(project: str, timeout: float = DOWN_TIMEOUT) -> str:
    """`devmesh down`, then a sweep of whatever it left (said, and returned)."""
    with shielded():
        try:
            result = devmesh("down", "-p", project, timeout=timeout)
            if result.returncode != 0:
                progress(f"`devmesh down -p {project}` exited {result.returncode}:\n{tail(result)}")
        except BenchError as exc:
            progress(f"cleanup: {exc}")
        try:
            left = sweep(project)
        except BenchError as exc:
            progress(f"cleanup sweep: {exc}")
            return str(exc)
        if left:
            progress(f"{project}: `devmesh down` left {left}; removed")
        return left


@contextmanager
def running(
    file: Path, project: str, started: list[str] | None = None, timeout: float = UP_TIMEOUT
) -> Iterator[float]:
    """The mesh up (yields how long `up` took); down and swept afterwards, whatever happens."""
    if started is not None:
        started.append(project)
    try:
        began = time.perf_counter()
        up(file, project, timeout)
        yield time.perf_counter() - began
    finally:
        down(project)


def mesh_containers(project: str) -> list[dict[str, Any]]:
    """`docker inspect` of every container of the project, found by devmesh's label."""
    ids = docker("ps", "-aq", "--no-trunc", "--filter", f"label={labels.MESH}={project}").split()
    found: list[dict[str, Any]] = json.loads(docker("inspect", *ids)) if ids else []
    return found


def other_meshes(ours: Iterable[str]) -> int:
    """Running devmesh containers of meshes other than ours: they share the two cores."""
    mine = set(ours)
    mesh_of = '{{.Label "%s"}}' % labels.MESH  # noqa: UP031 - Go template braces
    listed = docker("ps", "--filter", f"label={labels.MANAGED}=1", "--format", mesh_of)
    return sum(1 for mesh in listed.split() if mesh not in mine)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(text: str) -> float:
    """A daemon log timestamp (local time, milliseconds) as a Unix time."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_offset(project: str) -> int:
    log = state_dir(project).log_file
    return log.stat().st_size if log.exists() else 0


def log_lines(project: str, offset: int) -> list[str]:
    with open(state_dir(project).log_file, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace").splitlines()


# -- requests through the ingress ---------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    served_by: str  # SERVICE/VERSION, from the inbound sidecar's header
    body: bytes


class Client:
    """One keep-alive connection to the ingress on 127.0.0.1; a new one after any error."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.used = 0  # requests answered on the current connection

    def get(self, path: str) -> Reply:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.used = 0
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        self.used += 1
        return Reply(resp.status, resp.getheader(SERVED_BY) or "", body)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


@dataclass(frozen=True)
class Outcome:
    slot: float  # seconds from the start of the load
    sent: float
    done: float
    status: int | None  # None: a connection error or timeout
    error: str  # the exception's type and text, for a None status
    served_by: str
    reused: bool  # sent on a connection that had answered before
    pod: str = ""  # the app's `POD` from the body's first line, where asked for


POD_IN_BODY = re.compile(rb"^\S+ \(([^)]+)\) served ")


def paced_threads(
    port: int,
    path: str,
    workers: int,
    total: int,
    rate: float,
    start: float,
    stop: threading.Event,
    out: list[Outcome],
    timeout: float = 5.0,
    pods: bool = False,
    max_lag: float | None = None,
) -> list[threading.Thread]:
    """`workers` threads (not started) sending GET `path` on a fixed schedule of `total`
    requests at `rate`/s from `start` (perf_counter), thread i taking slots i, i + workers,
    ..., each on one keep-alive connection: none is sent before its slot, so the rate is
    bounded, and a thread ends after its last slot or when `stop` is set. With `max_lag`, a
    slot missed by more than that many seconds is skipped rather than sent late (no burst of
    catching up: failures that come back at once are not multiplied). `pods`: read the app's
    POD from each body."""

    def worker(index: int) -> None:
        client = Client(port, timeout)
        try:
            for k in range(index, total, workers):
                slot = k / rate
                delay = start + slot - time.perf_counter()
                if max_lag is not None and delay < -max_lag:
                    continue
                if (delay > 0 and stop.wait(delay)) or stop.is_set():
                    return
                reused = client.conn is not None and client.used > 0
                sent = time.perf_counter() - start
                try:
                    reply = client.get(path)
                    m = POD_IN_BODY.match(reply.body) if pods else None
                    pod = m.group(1).decode() if m else ""
                    status, served_by = reply.status, reply.served_by
                    # what a failing reply said (Envoy's "no healthy upstream", ...)
                    error = "" if status == 200 else reply_text(reply.body)
                except (OSError, http.client.HTTPException) as exc:
                    status, error, served_by, pod = None, f"{type(exc).__name__}: {exc}", "", ""
                done = time.perf_counter() - start
                out.append(Outcome(slot, sent, done, status, error, served_by, reused, pod))
        finally:
            client.close()

    return [
        threading.Thread(target=worker, args=(i,), name=f"load-{i}", daemon=True)
        for i in range(workers)
    ]


def reply_text(body: bytes, limit: int = 60) -> str:
    text = body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:limit] if text else ""


def failure_kind(o: Outcome) -> str:
    """`HTTP 503: no healthy upstream`, or the connection error."""
    if o.status is None:
        return o.error
    return f"HTTP {o.status}: {o.error}" if o.error else f"HTTP {o.status}"


def failure_windows(failed: list[Outcome]) -> list[str]:
    """Failures grouped into windows (a gap over 1 s starts a new one)."""
    groups: list[list[Outcome]] = []
    for o in failed:
        if groups and o.sent - groups[-1][-1].sent <= 1.0:
            groups[-1].append(o)
        else:
            groups.append([o])
    out = []
    for g in groups:
        kinds = Counter(failure_kind(o) for o in g)
        what = ", ".join(f"{n} × {k}" for k, n in kinds.most_common())
        out.append(f"{g[0].sent:.2f}–{g[-1].done:.2f} s: {what}")
    return out


# -- numbers and tables -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: with 50 values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(values: Sequence[float], p: float) -> str:
    return f"{percentile(values, p):.0f}" if values else "-"


def ratio(ours: float, theirs: float, digits: int = 2) -> str:
    return f"{ours / theirs:.{digits}f}" if theirs > 0 else "—"


def mib(value: float) -> str:
    return f"{value:.1f}"


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


def source_version() -> str:
    """The commit measured (read-only git), and whether devmesh/ had uncommitted changes."""
    try:
        head = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], 10)
        dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "devmesh"], 10)
    except BenchError:
        return "devmesh source: unknown"
    if head.returncode != 0:
        return "devmesh source: not a git checkout"
    changed = " + uncommitted changes in devmesh/" if dirty.stdout.strip() else ""
    return f"devmesh source: commit {head.stdout.strip()}{changed}"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from devmesh import __version__

    return (
        f"{platform.node()}: **{os.cpu_count()} cores**, {mem:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"devmesh {__version__}, Docker engine {engine_version()}"
    )


# -- processes ----------------------------------------------------------------------------------


def stat_fields(pid: int | str) -> tuple[str, list[str]]:
    """/proc/PID/stat: the command name and the fields after it (from field 3 on)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far."""
    fields = stat_fields(pid)[1]
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_pct(pid: int, window: float, during: Callable[[], None] | None = None) -> float:
    """% of one core `pid` used over `window` s, calling `during()` once a second."""
    began, before = time.monotonic(), cpu_seconds(pid)
    while time.monotonic() - began < window:
        if during is not None:
            during()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began) % 1.0))
    return (cpu_seconds(pid) - before) / (time.monotonic() - began) * 100


def parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                out[int(entry.name)] = int(stat_fields(entry.name)[1][1])
    return out


def process_tree(root: int, ppids: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


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


def pss_mib(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += smaps_rollup(pid).pss
        except (OSError, KeyError):
            continue  # gone meanwhile (busybox nc forks per connection)
    return total


def shim_pss(pids: Iterable[int], ppids: dict[int, int]) -> float:
    """Pss of the containerd shims that parent `pids` (one per container)."""
    return pss_mib({ppids.get(pid, 0) for pid in pids} - {0, 1})


def envoy_memory(container: dict[str, Any]) -> Memory:
    """Memory of the Envoy that is the container's PID 1 (no init in between)."""
    name = str(container["Name"]).lstrip("/")
    pid = int(container["State"]["Pid"])
    if pid <= 0:
        raise BenchError(f"{name} is not running ({container['State']['Status']})")
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm != "envoy":
        raise BenchError(f"{name}: host PID {pid} is '{comm}', not envoy")
    return smaps_rollup(pid)


def memory_stats(values: Sequence[Memory]) -> dict[str, float]:
    return {
        "n": len(values),
        "rss": median([m.rss for m in values]),
        "pss": median([m.pss for m in values]),
        "private": median([m.private for m in values]),
        "private_max": max((m.private for m in values), default=float("nan")),
    }


def container_pid(container: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", container).strip())


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle so far (/proc/stat, all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICK


def settle(max_wait: float = 60.0, below: float = 0.2, window: float = 2.0) -> float:
    """Until the machine's CPUs are less than `below` busy over `window` s (the engine and
    the kernel finish tearing down what the previous row removed); the last busy share."""
    began = time.monotonic()
    cores = os.cpu_count() or 1
    while True:
        before = machine_busy()
        time.sleep(window)
        busy = (machine_busy() - before) / window / cores
        if busy < below or time.monotonic() - began > max_wait:
            return busy


def other_daemons() -> list[str]:
    """Command lines of devmesh daemons running on the machine (`pgrep -af` by hand: pgrep
    would also match this bench's own command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"devmesh.daemon" in argv:
            found.append(" ".join(a.decode(errors="replace") for a in argv if a))
    return found


def wait_quiet(max_wait: float, every: float = 30.0, max_load: float = 1.5) -> str:
    """Until no other devmesh daemon runs and the 1-minute load is below `max_load`,
    checking every `every` seconds for at most `max_wait`; says how it ended."""
    began = time.monotonic()
    while True:
        daemons, load = other_daemons(), os.getloadavg()[0]
        if not daemons and load < max_load:
            return f"quiet after {time.monotonic() - began:.0f}s (load {load:.2f})"
        waited = time.monotonic() - began
        if waited + every > max_wait:
            return (
                f"not quiet after {waited:.0f}s: load {load:.2f}, {len(daemons)} other devmesh "
                "daemon(s); measured anyway"
            )
        progress(f"waiting for a quiet machine: load {load:.2f}, {len(daemons)} other daemon(s)")
        time.sleep(every)


# -- Envoy's admin API over its UNIX socket --------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def admin_get(admin: Path, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET `path` from an Envoy's admin socket (HTTP/1.1: admin refuses 1.0)."""
    conn = _UnixConnection(admin, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def admin_stats(admin: Path, regex: str) -> dict[str, float]:
    """Numeric stats matching `regex` (Envoy's own filter: the cheapest read)."""
    status, body = admin_get(admin, f"/stats?format=json&usedonly&filter={regex}")
    if status != 200:
        raise BenchError(f"{admin}: /stats answered {status}")
    return {s["name"]: float(s["value"]) for s in json.loads(body)["stats"] if "value" in s}


# -- images and meshes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    envoy: str  # devmesh's sidecar image, by the name devmesh resolved
    pause: str
    app: str  # examples/shop/app, built by this process


def devmesh_images() -> tuple[str, str]:
    """The sidecar and pod-owner images devmesh itself would use (found, or built locally
    as devmesh does; never pulled: DEVMESH_PULL=never)."""
    import docker as docker_py  # devmesh's own dependency

    from devmesh.adapters import images

    client = docker_py.from_env(timeout=120)
    try:
        envoy = images.ensure_envoy_image(client, None, "never", progress)
        pause = images.ensure_pause_image(client, "never", progress)
    finally:
        client.close()
    return envoy.name, pause.name


def app_tag() -> str:
    return f"devmesh-bench-app:{os.getpid()}"


def build_app_image() -> Images:
    """The example's app image under a tag of this process's own, so every row's mesh names
    it with `image:` (no `build:`): devmesh and its peers start the very same image, and no
    row measures a build. Removed by `remove_app_image`."""
    envoy, pause = devmesh_images()
    # The app builds FROM busybox:1.35: the project's own setup makes it where it is missing
    # (`make engine` runs this too; it does nothing when the image is there).
    base = run([str(ROOT / "scripts" / "make-base-image.sh")], 300)
    if base.returncode != 0:
        raise BenchError(f"scripts/make-base-image.sh failed: {base.stderr.strip()[-300:]}")
    tag = app_tag()
    label = f"{BENCH_LABEL}={os.getpid()}"
    result = subprocess.run(
        ["docker", "build", "-q", "--label", label, "-t", tag, str(APP_CONTEXT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "DOCKER_BUILDKIT": "0"},  # no buildx here: the legacy builder
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"building {tag} failed: {result.stderr.strip()[-500:]}")
    return Images(envoy, pause, tag)


def remove_app_image() -> None:
    run(["docker", "image", "rm", "-f", app_tag()], DOCKER_TIMEOUT)


def image_id(name: str) -> str | None:
    result = run(["docker", "image", "inspect", "-f", "{{.Id}}", name], DOCKER_TIMEOUT)
    return result.stdout.strip() if result.returncode == 0 else None


def mesh_head(name: str, port: int | str, routes: list[tuple[str, str, str]]) -> list[str]:
    """The generated meshes' first lines: defaults (5 s timeout, a health check every 1 s)
    and an ingress with `routes` (name, path prefix, service); `services:` follows."""
    lines = [
        f"mesh: {name}",
        "defaults:",
        "  timeout: 5s",
        "  health: {path: /healthz, interval: 1s}",
    ]
    lines += ["ingress:", f"  port: {port}", "  routes:"]
    lines += [
        f"    - {{name: {r}, match: {{path_prefix: {p}}}, service: {s}}}" for r, p, s in routes
    ]
    return [*lines, "services:"]


def chain_text(name: str, n: int, image: str, port: str = "@PORT@", calls: bool = True) -> str:
    """A chain of N HTTP services (s01 -> s02 -> ...; behind an ingress that routes to s01),
    with `image:` and no `build:`. Three digits from 100 services on."""
    width = max(2, len(str(n)))
    names = [f"s{i:0{width}d}" for i in range(1, n + 1)]
    lines = mesh_head(name, port, [("site", "/", names[0])])
    for i, svc in enumerate(names):
        lines += [f"  {svc}:", f"    image: {image}", "    port: 8000"]
        if calls and i + 1 < n:
            lines += [f'    env: {{UPSTREAMS: "{names[i + 1]}"}}', f"    calls: [{names[i + 1]}]"]
    return "\n".join(lines) + "\n"


def example_text(port: int | str) -> str:
    """examples/shop as it is, for a temp dir: its build context made absolute and its
    ingress moved to `port` (8080 may be taken, e.g. by a `shop` mesh already up)."""
    text = EXAMPLE.read_text()
    text, builds = re.subn(r"(?m)^(\s+build:\s*)\./app\s*$", rf"\g<1>{APP_CONTEXT}", text)
    text, ports = re.subn(r"(?m)^(ingress:\s*\n\s+port:\s*)\d+", rf"\g<1>{port}", text)
    if builds == 0 or ports != 1:
        raise BenchError(f"{EXAMPLE}: no longer has the `build: ./app` / `ingress.port` lines")
    return text


# -- cleanup by the benches' own label -------------------------------------------------------


def sweep_label(value: str) -> str:
    """Remove containers and networks carrying BENCH_LABEL=value; say what was left."""
    left = []
    selector = f"label={BENCH_LABEL}={value}"
    ids = docker("ps", "-aq", "--filter", selector).split()
    if ids:
        left.append(f"{len(ids)} containers")
        run(["docker", "rm", "-f", "-v", *ids], DOCKER_TIMEOUT * 2)
    nets = docker("network", "ls", "-q", "--filter", selector).split()
    if nets:
        left.append(f"{len(nets)} networks")
        run(["docker", "network", "rm", *nets], DOCKER_TIMEOUT)
    return ", ".join(left)


def free_subnet() -> str:
    """A /24 in 172.16.0.0/16 that no Docker network uses: Docker's own pools start at
    172.17, so networks made meanwhile by others do not take it either."""
    used = set()
    for net in json.loads(docker("network", "inspect", *docker("network", "ls", "-q").split())):
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            used.add(str(cfg.get("Subnet", "")))
    start = os.getpid() % 200 + 20
    for k in range(200):
        subnet = f"172.16.{(start + k) % 250 + 1}.0/24"
        if subnet not in used and "172.16.0.0/16" not in used:
            return subnet
    raise BenchError("no free /24 in 172.16.0.0/16 for the peer's network")


# -- the headline table's row results -----------------------------------------------------------


@dataclass
class Line:
    """One line of the headline table."""

    key: str  # "1a": sorts the table
    measure: str
    devmesh: str
    peer: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None  # None: no target


@dataclass
class RowResult:
    row: str  # the subcommand: bringup, saves, ...
    command: str  # how to run it alone
    lines: list[Line] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # Markdown, below the table
    notes: list[str] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    conditions: dict[str, Any] = field(default_factory=dict)

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.row}.json"
        path.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> RowResult:
        data = json.loads(path.read_text())
        data["lines"] = [Line(**line) for line in data["lines"]]
        return cls(**data)


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def conditions() -> dict[str, Any]:
    """What else ran: the load average and other devmesh daemons (they share the cores)."""
    return {
        "load1": round(os.getloadavg()[0], 2),
        "other_daemons": len(other_daemons()),
        "cores": os.cpu_count(),
        "host": platform.node(),
    }
