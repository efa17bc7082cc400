"""Rows 6 and 7: the daemon as a control plane. How fast one change reaches 50 sidecars,
and what the daemon costs in CPU when nothing changes and while its stats are polled.

Push (row 6): a mesh of `hub` (v1, v2, one weighted route) and `fleet`, one version with 50
replicas that `calls: [hub]`, so every fleet sidecar (and the gateway) carries hub's route.
Each push is `POST /v1/shift` flipping hub's weights (what `devmesh shift` sends: the file is
rewritten and applied at once). Timed, per push:

- end to end: from just before the POST to the first `GET /v1/state` (polled every 10 ms)
  showing all 50 fleet pods synced (ACKed their group's current snapshot) at a new version;
- apply: the daemon's own `shift: applied in N ms` (reconcile: load, Docker look-up, plan,
  the xDS snapshots) and its event time, when the snapshots have been handed to the streams;
- push: from that event to all ACKed, as polled;
- Envoy's side: each sidecar's RDS `update_time` (ms since the epoch; when Envoy applied the
  new route table), read over its admin socket after the push: the last one, and the spread.

CPU (row 7): a 20-service chain; the daemon's utime + stime (/proc/PID/stat, all threads) over
a window with nothing happening, then over a window in which `GET /v1/stats` (each sidecar's
counters, read over its admin socket) is called once a second. `--profile` then samples the
daemon with py-spy (non-blocking) in each state and names the functions that take the time.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import admin_stats, cpu_seconds
from bringup import BenchError, devmesh, progress, ps_json, shielded, sweep, tail

from devmesh.client import DaemonClient
from devmesh.daemon.state import StateDir

TICK = os.sysconf("SC_CLK_TCK")
UPDATE_TIME = r"\.rds\.out\|hub\.update_time$"  # http.out|hub.rds.out|hub.update_time
POLL = 0.01  # seconds between GET /v1/state while waiting for the ACKs
ACK_TIMEOUT = 30.0


def up(file: Path, project: str, timeout: float) -> None:
    progress(f"devmesh up ({project}) ...")
    began = time.perf_counter()
    result = devmesh(
        "up",
        "-d",
        "--wait",
        "--timeout",
        str(timeout),
        "-f",
        str(file),
        "-p",
        project,
        timeout=timeout + 60,
    )
    if result.returncode != 0:
        raise BenchError(f"`devmesh up` of {project} exited {result.returncode}:\n{tail(result)}")
    progress(f"{project} up in {time.perf_counter() - began:.1f}s")


def down(project: str) -> None:
    with shielded():
        try:
            devmesh("down", "-p", project, timeout=180)
        except BenchError as exc:
            progress(f"cleanup: {exc}")
        left = sweep(project, None)
        if left:
            progress(f"{project}: `devmesh down` left {left}; removed")


# -- row 6: push --------------------------------------------------------------------------------


def push_mesh(image: str, replicas: int) -> str:
    return f"""mesh: push
services:
  hub:
    image: {image}
    port: 8000
    versions: {{v1: {{}}, v2: {{}}}}
    routes:
      - name: main
        to: {{v1: 100, v2: 0}}
  fleet:
    image: {image}
    port: 8000
    calls: [hub]
    versions:
      v1: {{replicas: {replicas}}}
"""


@dataclass
class Push:
    end_to_end_ms: float  # POST -> all fleet pods ACKed (polled)
    apply_ms: float  # the daemon's `shift: applied in N ms`
    push_ms: float  # that event -> all ACKed (polled)
    envoy_last_ms: float  # that event -> the last sidecar's RDS update_time
    envoy_spread_ms: float  # first to last sidecar's update_time
    polls: int


@dataclass
class PushResult:
    sidecars: int
    pushes: list[Push] = field(default_factory=list)
    state_ms: list[float] = field(default_factory=list)  # one GET /v1/state, while idle


def fleet_versions(state: dict[str, Any]) -> dict[str, tuple[bool, str | None]]:
    return {
        p["pod"]: (bool(p["xds"]["synced"]), p["xds"]["version"])
        for p in state["pods"]
        if p["service"] == "fleet"
    }


def one_push(client: DaemonClient, state_dir: StateDir, to_v2: bool) -> Push:
    before = fleet_versions(client.state())
    weights = {"v1": 0, "v2": 100} if to_v2 else {"v1": 100, "v2": 0}
    t0 = time.time()
    client.shift("hub", weights, "main")
    polls = 0
    while True:
        polls += 1
        now = fleet_versions(client.state())
        t_acked = time.time()
        if all(synced and version != before[pod][1] for pod, (synced, version) in now.items()):
            break
        if t_acked - t0 > ACK_TIMEOUT:
            raise BenchError(f"the fleet did not ACK the shift within {ACK_TIMEOUT:.0f}s")
        time.sleep(POLL)
    applied = [
        e for e in client.events()["events"] if str(e["text"]).startswith("shift: applied in ")
    ]
    if not applied or applied[-1]["time"] < t0:
        raise BenchError("no `shift: applied` event for the push")
    t_applied = float(applied[-1]["time"])
    apply_ms = float(str(applied[-1]["text"]).split()[3])
    stats = admin_stats({pod: state_dir.admin_socket(pod) for pod in now}, UPDATE_TIME)
    times = []
    for pod, found in stats.items():
        if isinstance(found, str):
            raise BenchError(f"{pod}: {found}")
        values = [v for k, v in found.items() if k.endswith(".update_time")]
        if not values:
            raise BenchError(f"{pod}: no RDS update_time for out|hub")
        times.append(values[0] / 1000)
    return Push(
        end_to_end_ms=(t_acked - t0) * 1000,
        apply_ms=apply_ms,
        push_ms=(t_acked - t_applied) * 1000,
        envoy_last_ms=(max(times) - t_applied) * 1000,
        envoy_spread_ms=(max(times) - min(times)) * 1000,
        polls=polls,
    )


def measure_push(image: str, project: str, work: Path, replicas: int, pushes: int) -> PushResult:
    file = work / "push" / "devmesh.yaml"
    file.parent.mkdir()
    file.write_text(push_mesh(image, replicas))
    try:
        up(file, project, timeout=300)
        state_dir = StateDir.for_project(project)
        client = DaemonClient(state_dir.api_socket, timeout=30)
        state = client.state()
        result = PushResult(sum(1 for p in state["pods"] if p["service"] == "fleet"))
        for _ in range(5):
            began = time.perf_counter()
            client.state()
            result.state_ms.append((time.perf_counter() - began) * 1000)
        first = state_dir.admin_socket(f"{project}-fleet-v1-0")
        if not admin_stats({"x": first}, UPDATE_TIME)["x"]:
            names = admin_stats({"x": first}, r"rds\.")["x"]
            raise BenchError(f"no RDS update_time stat in a fleet sidecar; rds stats: {names}")
        for i in range(pushes):
            time.sleep(0.5)
            push = one_push(client, state_dir, to_v2=i % 2 == 0)
            result.pushes.append(push)
            progress(
                f"push {i + 1}/{pushes}: end to end {push.end_to_end_ms:.0f} ms (apply "
                f"{push.apply_ms:.0f}, push {push.push_ms:.0f}, Envoy last "
                f"{push.envoy_last_ms:.0f}, spread {push.envoy_spread_ms:.0f})"
            )
        return result
    finally:
        down(project)


# -- row 7: CPU ---------------------------------------------------------------------------------


@dataclass
class CpuResult:
    sidecars: int
    window: float
    idle_pct: float
    polling_pct: float
    stats_ms: list[float]  # each GET /v1/stats
    profiles: dict[str, list[str]] = field(default_factory=dict)  # state -> summary lines
    threads: dict[str, dict[str, float]] = field(default_factory=dict)  # state -> name -> %


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (its name, CPU seconds so far). Python's threads keep the process's name
    (`python3`); gRPC's C core names its own (`grpc_global_tim`, `default-executo`, ...)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def user_system(pid: int) -> tuple[float, float]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_pct(pid: int, window: float, during: Any = None) -> tuple[float, dict[str, float]]:
    """% of one core over `window` s, and the same by thread name (threads that ended
    meanwhile count in the total only) and as user / system time."""
    began, c0, t0 = time.monotonic(), cpu_seconds(pid), thread_cpu(pid)
    u0, s0 = user_system(pid)
    while time.monotonic() - began < window:
        if during is not None:
            during()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began) % 1.0))
    elapsed = time.monotonic() - began
    total = (cpu_seconds(pid) - c0) / elapsed * 100
    u1, s1 = user_system(pid)
    by_name: dict[str, float] = {
        "(user)": (u1 - u0) / elapsed * 100,
        "(system)": (s1 - s0) / elapsed * 100,
    }
    for tid, (name, cpu) in thread_cpu(pid).items():
        by_name[name] = by_name.get(name, 0.0) + (cpu - t0.get(tid, (name, 0.0))[1]) / elapsed * 100
    return total, by_name


def py_spy(
    pid: int,
    seconds: float,
    out: Path,
    during: Any = None,
    every: float = 1.0,
    unit: tuple[float, str] | None = None,
) -> list[str]:
    """Sample the daemon (py-spy, non-blocking, while holding the GIL) for `seconds`, calling
    `during()` every `every` s meanwhile, and summarise: in % of one core, or per `unit`
    (a count and its name: (50, "ms per save") gives milliseconds per save of 50)."""
    binary = Path(sys.executable).parent / "py-spy"
    if not binary.exists():
        return ["py-spy is not installed: `.venv/bin/pip install py-spy`"]
    proc = subprocess.Popen(
        [
            str(binary),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),  # whole seconds only
            "--rate",
            "200",
            "--nonblocking",
            "--gil",  # only what runs Python: threads waiting in a lock or a socket do not
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        began = time.monotonic()
        while proc.poll() is None and time.monotonic() - began < seconds + 30:
            if during is not None:
                during()
            time.sleep(every)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    if not out.exists():
        return [f"py-spy failed: {err.strip()[-300:]}"]
    if unit is None:
        return summarise(out, 100 / (200 * seconds), "% of one core")
    return summarise(out, 1000 / (200 * unit[0]), unit[1])


def summarise(collapsed: Path, scale: float, unit: str, top: int = 10) -> list[str]:
    """py-spy's raw (collapsed) stacks -> the functions holding most samples, as leaves and
    inclusive (devmesh's own functions); a sample is worth `scale` `unit`."""
    from breakdown import frame_name

    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            frame_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            if f.split(" (", 1)[1].startswith("devmesh/"):
                inclusive[f] += n
    lines = [f"{total} samples holding the GIL: {total * scale:.1f} {unit} in Python; in {unit}:"]
    lines += ["leaf functions:"]
    lines += [f"  {n * scale:6.2f}  {f}" for f, n in own.most_common(top)]
    lines += ["devmesh functions, inclusive:"]
    lines += [f"  {n * scale:6.2f}  {f}" for f, n in inclusive.most_common(top)]
    return lines


def measure_cpu(file: Path, project: str, work: Path, window: float, profile: bool) -> CpuResult:
    try:
        up(file, project, timeout=240)
        state = ps_json(project)
        pid = int(state["pid"])
        client = DaemonClient(StateDir.for_project(project).api_socket, timeout=30)
        stats_ms: list[float] = []

        def poll_stats() -> None:
            began = time.perf_counter()
            found = client.stats()["sidecars"]
            stats_ms.append((time.perf_counter() - began) * 1000)
            bad = [k for k, v in found.items() if isinstance(v, str)]
            if bad:
                raise BenchError(f"GET /v1/stats: unreadable sidecars {bad[:3]}")

        time.sleep(5)  # let the first health rounds and the start-up settle
        progress(f"cpu: idle window {window:g}s ...")
        idle, idle_threads = cpu_pct(pid, window)
        progress(f"cpu: idle {idle:.2f} %; polling window {window:g}s ...")
        polling, polling_threads = cpu_pct(pid, window, poll_stats)
        progress(f"cpu: polling {polling:.2f} %")
        result = CpuResult(len(state["pods"]), window, idle, polling, stats_ms)
        result.threads = {"idle": idle_threads, "polling": polling_threads}
        if profile:
            progress("cpu: py-spy, idle and polling ...")
            result.profiles["idle"] = py_spy(pid, window, work / "idle.txt")
            result.profiles["polling /v1/stats at 1 Hz"] = py_spy(
                pid, window, work / "polling.txt", poll_stats
            )
        return result
    finally:
        down(project)
