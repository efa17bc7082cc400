"""Where bring-up time and sidecar memory go (the explanations under rows 1 and 5).

Bring-up: one more `devmesh up -d --wait` and one more compose bring-up of the same mesh,
untimed by the table, each with the CPU time every process on the machine spent meanwhile,
grouped (devmesh's CLI and daemon, dockerd, containerd, the shims and runc, docker-proxy,
the Envoys, compose, the rest), and one `devmesh up` under py-spy (`--subprocesses`: the CLI
and the daemon it starts) naming the Python functions that hold the CPU.

Memory: one devmesh sidecar and gateway of a running mesh, and three Envoys started here with
no network (same image and flags): the same sidecar's static config (`devmesh render`), that
config with a stats inclusion list (only the stats devmesh reads), and a bare Envoy (admin
only, no listener, no cluster): the floor of this Envoy build. For each, private memory split
by mapping (the Envoy binary's own pages, relocated at load, versus anonymous memory: the heap)
and Envoy's own account: tcmalloc's `/memory` and the number of stats.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import BENCH_LABEL, Images, machine_busy, settle
from bringup import BenchError, Case, devmesh, docker, progress, shielded, sweep, tail

from devmesh.adapters.envoy_admin import STATS_FILTER
from devmesh.core.load import load_path
from devmesh.daemon.state import StateDir
from devmesh.envoy.render import render_mesh
from devmesh.plan.desired import SIDECAR_FLAGS
from devmesh.unixhttp import UnixHTTPConnection

MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU by process group -----------------------------------------------------------------------


def _group(comm: str, argv: str) -> str:
    if comm == "envoy":
        return "Envoy"
    if comm.startswith("containerd-shim") or comm == "runc":
        return "shims + runc"
    if comm in ("dockerd", "containerd", "docker-proxy"):
        return comm
    if "devmesh.daemon" in argv:
        return "devmesh daemon"
    if "docker-compose" in argv or comm == "docker-compose":
        return "compose"
    return "other"


def cpu_table() -> dict[int, tuple[str, float]]:
    """pid -> (group, CPU seconds incl. reaped children) for every process now."""
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        kernel = entry.name == "2" or fields[1] == "2"  # kthreadd and its children
        group = "kernel threads" if kernel else _group(comm, argv)
        out[int(entry.name)] = (group, ticks / TICK)
    return out


@dataclass
class CpuAccount:
    wall: float
    groups: dict[str, float]
    machine: float  # every core, every process (other tenants included)


def accounted(action: Any) -> CpuAccount:
    """Run `action()`; CPU seconds per group spent meanwhile (processes that ran through the
    window count their delta; new ones all their time; this process's waited-for children,
    e.g. the `devmesh up` CLI, from getrusage)."""
    before, busy = cpu_table(), machine_busy()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    action()
    wall = time.perf_counter() - began
    after, busy = cpu_table(), machine_busy() - busy
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    groups: dict[str, float] = collections.defaultdict(float)
    for pid, (group, cpu) in after.items():
        if pid == os.getpid():
            continue
        if pid not in before:
            groups[group] += cpu  # started during the bring-up: this mesh's
        elif group in ("dockerd", "containerd", "kernel threads"):
            groups[group] += cpu - before[pid][1]  # shared: all of their work counts
        else:  # another mesh's Envoys, shims and daemons, other programs
            groups["other tenants"] += cpu - before[pid][1]
    cli = (kids_after.ru_utime + kids_after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    groups["CLI (this benchmark's children)"] += cli
    return CpuAccount(wall, dict(groups), busy)


# -- memory of one Envoy ------------------------------------------------------------------------


@dataclass
class EnvoyMemory:
    what: str
    private: float  # MiB, Private_Clean + Private_Dirty
    relocated: float  # of which the Envoy binary's pages written at load (Private_Dirty)
    code: float  # of which its pages no other process maps now (Private_Clean)
    anon: float  # of which anonymous: the heap, thread stacks
    allocated: float  # tcmalloc: bytes in use
    heap: float  # tcmalloc: heap size
    stats: int
    threads: int


def envoy_breakdown(what: str, pid: int, admin: Path) -> EnvoyMemory:
    by: collections.Counter[tuple[str, str]] = collections.Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
            name = parts[5] if len(parts) > 5 else "[anon]"
        elif parts and parts[0] in ("Private_Clean:", "Private_Dirty:"):
            by[(name, parts[0])] += int(parts[1])
    memory = json.loads(_admin(admin, "/memory"))
    stats = _admin(admin, "/stats").count("\n")

    def kib(binary: bool, kind: str | None = None) -> float:
        return sum(
            v
            for (n, k), v in by.items()
            if n.endswith("/envoy") == binary and (kind is None or k == kind)
        )

    return EnvoyMemory(
        what,
        sum(by.values()) / 1024,
        kib(True, "Private_Dirty:") / 1024,
        kib(True, "Private_Clean:") / 1024,
        sum(v for (n, _), v in by.items() if n.startswith("[")) / 1024,
        int(memory["allocated"]) / MIB,
        int(memory["heap_size"]) / MIB,
        stats,
        len(os.listdir(f"/proc/{pid}/task")),
    )


def _admin(socket_path: Path, path: str) -> str:
    conn = UnixHTTPConnection(socket_path, 5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"admin {path} answered {resp.status}")
    return body


def _pid(container: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", container).strip())


def envoy_variants(case: Case, service: str, images: Images, work: Path) -> list[EnvoyMemory]:
    """Envoys with no network: the sidecar's static config, + a stats inclusion list, bare."""
    file = work / "variants" / "devmesh.yaml"
    file.parent.mkdir(parents=True)
    file.write_text(case.template.replace("@PORT@", "18080"))
    mesh = load_path(str(file))
    static = next(
        r.bootstrap for r in render_mesh(mesh) if r.filename.startswith(f"sidecar-{service}-")
    )
    included = {
        **static,
        "stats_config": {
            "stats_matcher": {
                "inclusion_list": {"patterns": [{"safe_regex": {"regex": STATS_FILTER}}]}
            }
        },
    }
    bare = {"admin": static["admin"]}
    variants = {
        f"static config of {service}'s sidecar (`devmesh render`)": static,
        "the same + a stats inclusion list (the stats devmesh reads)": included,
        "bare Envoy: admin only, no listener, no cluster": bare,
    }
    out = []
    names = []
    try:
        for i, config in enumerate(variants.values()):
            where = work / "variants" / str(i)
            where.mkdir()
            (where / "bootstrap.json").write_text(json.dumps(config))
            name = f"hl{os.getpid()}-memory-{i}"
            names.append(name)
            docker(
                "run",
                "-d",
                "--name",
                name,
                "--label",
                f"{BENCH_LABEL}={os.getpid()}",
                "--network",
                "none",
                "-v",
                f"{where}:/devmesh",
                images.envoy,
                "-c",
                "/devmesh/bootstrap.json",
                *SIDECAR_FLAGS,
            )
        time.sleep(1)
        for i in range(len(variants)):
            admin = work / "variants" / str(i) / "admin.sock"
            deadline = time.monotonic() + 20
            while not admin.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        time.sleep(3)  # as long after start as the mesh's sidecars are when measured
        for i, (what, _) in enumerate(variants.items()):
            admin = work / "variants" / str(i) / "admin.sock"
            out.append(envoy_breakdown(what, _pid(names[i]), admin))
    finally:
        with shielded():
            if names:
                docker("rm", "-f", *names)
    return out


# -- the experiments ----------------------------------------------------------------------------


@dataclass
class Explained:
    devmesh_cpu: CpuAccount
    compose_cpu: CpuAccount
    memory: list[EnvoyMemory]
    profile: dict[str, list[str]]


def explain(case: Case, project: str, peer_project: str, images: Images, work: Path) -> Explained:
    from compose_peer import compose, down, wait_ready, write_compose

    file = work / "explain" / "devmesh.yaml"
    file.parent.mkdir(parents=True)
    file.write_text(case.template.replace("@PORT@", str(_free_port())))
    size = case.services
    middle = f"s{size // 2:0{max(2, len(str(size)))}d}"

    def up_devmesh() -> None:
        result = devmesh("up", "-d", "--wait", "-f", str(file), "-p", project, timeout=300)
        if result.returncode != 0:
            raise BenchError(f"`devmesh up` exited {result.returncode}:\n{tail(result)}")

    memory: list[EnvoyMemory] = []
    try:
        settle()
        progress(f"explain: devmesh up with CPU accounting ({project}) ...")
        dm_cpu = accounted(up_devmesh)
        state = StateDir.for_project(project)
        sidecar = f"{project}-{middle}-default-0"
        memory.append(
            envoy_breakdown(
                f"devmesh sidecar of {middle} (ADS)",
                _pid(f"{sidecar}-sidecar"),
                state.admin_socket(sidecar),
            )
        )
        gateway = f"{project}-gateway"
        memory.append(
            envoy_breakdown("devmesh gateway (ADS)", _pid(gateway), state.admin_socket(gateway))
        )
        # while the mesh's Envoys run: their code pages are shared, as they are in a mesh
        progress("explain: Envoy memory variants ...")
        memory += envoy_variants(case, middle, images, work)
    finally:
        _down(project)
    peer = write_compose(case, work / "explain-peer", peer_project, images)
    try:
        settle()
        progress(f"explain: compose up with CPU accounting ({peer_project}) ...")

        def up_compose() -> None:
            began = time.perf_counter()
            result = compose(peer, "up", "-d", "--no-build", "--pull", "never")
            if result.returncode != 0:
                raise BenchError(f"`compose up` exited {result.returncode}: {result.stderr[-500:]}")
            wait_ready(peer, began)

        peer_cpu = accounted(up_compose)
        peer_pod = next(p for p in peer.pods if p.service == middle)
        cid = docker(
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={peer_project}",
            "--filter",
            f"label=com.docker.compose.service={peer_pod.name}-sidecar",
        ).split()
        if cid:
            memory.insert(
                2,
                envoy_breakdown(
                    f"compose sidecar of {middle} (static)", _pid(cid[0]), peer_pod.admin
                ),
            )
    finally:
        with shielded():
            down(peer)
    settle()
    progress(f"explain: devmesh up under py-spy ({project}p) ...")
    profile = profile_up(file, f"{project}p", work)
    return Explained(dm_cpu, peer_cpu, memory, profile)


def _free_port() -> int:
    from bringup import free_port

    return free_port()


def _down(project: str) -> None:
    with shielded():
        try:
            devmesh("down", "-p", project, timeout=180)
        except BenchError as exc:
            progress(f"cleanup: {exc}")
        sweep(project, None)


def profile_up(file: Path, project: str, work: Path) -> dict[str, list[str]]:
    """`devmesh up -d --wait` under py-spy (the CLI and the daemon it starts), until the CLI
    returns; per process, the functions holding the most samples (active threads only)."""
    binary = Path(sys.executable).parent / "py-spy"
    if not binary.exists():
        return {"py-spy": ["not installed: `.venv/bin/pip install py-spy`"]}
    out = work / "up.txt"
    cli = Path(sys.executable).parent / "devmesh"
    command = [str(binary), "record", "--subprocesses", "--rate", "100", "--format", "raw"]
    command += ["--output", str(out), "--", str(cli), "up", "-d", "--wait", "-f", str(file)]
    spy = subprocess.Popen(
        [*command, "-p", project],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DEVMESH_PULL": "never"},
    )
    try:
        # py-spy follows the detached daemon for ever: stop it (SIGINT: it writes its file)
        # once the CLI it started has returned, i.e. once the mesh is ready.
        deadline = time.monotonic() + 300
        time.sleep(0.5)
        while spy.poll() is None and time.monotonic() < deadline and _cli_running(spy.pid):
            time.sleep(0.1)
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    finally:
        if spy.poll() is None:
            spy.kill()
        _down(project)
    if not out.exists():
        return {"py-spy": [f"failed: {err.strip()[-300:]}"]}
    return per_process(out)


def _cli_running(parent: int) -> bool:
    """Whether `parent` (py-spy) still has a live `devmesh up` child (not a zombie)."""
    for task in Path(f"/proc/{parent}/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b" up" in argv.replace(b"\0", b" ") and stat[stat.rindex(")") + 2] != "Z":
                return True
    return False


def per_process(collapsed: Path, top: int = 10) -> dict[str, list[str]]:
    """Collapsed stacks whose first frame names the process -> per process, the leaf
    functions and the devmesh functions with the most samples (100 per second)."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # a child's stacks start with its parent's `process PID:"argv"` frame, then its own
        owners = [f for f in frames if f.startswith("process ")]
        process = "daemon" if any("devmesh.daemon" in f for f in owners) else "CLI"
        frames = [frame_name(f) for f in frames if not f.startswith(("process ", "thread "))]
        n = int(count)
        totals[process] += n
        if frames:
            own[process][frames[-1]] += n
        for f in set(frames):
            if "devmesh/" in f or "bench/" in f:
                inclusive[process][f] += n
    out: dict[str, list[str]] = {}
    for process, total in totals.items():
        lines = [f"{total / 100:.2f} s of samples (active threads)", "leaf functions:"]
        lines += [f"  {n / 100:6.2f} s  {f}" for f, n in own[process].most_common(top)]
        lines += ["devmesh functions, inclusive:"]
        lines += [f"  {n / 100:6.2f} s  {f}" for f, n in inclusive[process].most_common(top)]
        out[process] = lines
    return out


def frame_name(frame: str) -> str:
    """`func (/path/to/file.py:12)` -> `func (package/file.py)`: by function, not line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    if "devmesh/" in path and "site-packages" not in path:
        short = "devmesh/" + path.split("devmesh/", 1)[1]
    return f"{name} ({short})"


def cpu_rows(accounts: dict[str, CpuAccount]) -> tuple[list[str], list[list[str]]]:
    groups = sorted({g for a in accounts.values() for g in a.groups}, key=lambda g: g)
    head = ["bring-up", "wall s", "machine CPU s", *groups]
    rows = [
        [
            name,
            f"{a.wall:.2f}",
            f"{a.machine:.2f}",
            *(f"{a.groups.get(g, 0.0):.2f}" for g in groups),
        ]
        for name, a in accounts.items()
    ]
    return head, rows
