"""Rows 6 and 7: the daemon as a control plane. How fast one change (`POST /v1/shift`)
reaches 50 sidecars, and the daemon's CPU while idle and while `GET /v1/stats` is polled.
The method is written out once, in the rows' details (bench/headline.py, bench/results.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
from _common import BenchError, progress

UPDATE_TIME = r"\.rds\.out\|hub\.update_time$"  # http.out|hub.rds.out|hub.update_time
POLL = 0.01  # seconds between GET /v1/state while waiting for the ACKs
ACK_TIMEOUT = 30.0


def up(file: Path, project: str, timeout: float) -> None:
    progress(f"devmesh up ({project}) ...")
    began = time.perf_counter()
    c.up(file, project, timeout)
    progress(f"{project} up in {time.perf_counter() - began:.1f}s")


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


def one_push(project: str, to_v2: bool) -> Push:
    before = fleet_versions(c.mesh_state(project))
    weights = {"v1": 0, "v2": 100} if to_v2 else {"v1": 100, "v2": 0}
    t0 = time.time()
    c.api(project, "POST", "/v1/shift", {"service": "hub", "weights": weights, "route": "main"})
    polls = 0
    while True:
        polls += 1
        now = fleet_versions(c.mesh_state(project))
        t_acked = time.time()
        if all(synced and version != before[pod][1] for pod, (synced, version) in now.items()):
            break
        if t_acked - t0 > ACK_TIMEOUT:
            raise BenchError(f"the fleet did not ACK the shift within {ACK_TIMEOUT:.0f}s")
        time.sleep(POLL)
    applied = [
        (float(e["time"]), c.event_text(e))
        for e in c.api(project, "GET", "/v1/events")["events"]
        if c.event_text(e).startswith("shift: applied in ")
    ]
    if not applied or applied[-1][0] < t0:
        raise BenchError("no `shift: applied` event for the push")
    t_applied = applied[-1][0]
    apply_ms = float(applied[-1][1].split()[3])
    times = []
    for pod in now:
        found = c.admin_stats(c.state_dir(project).admin_socket(pod), UPDATE_TIME)
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
        state = c.mesh_state(project)
        result = PushResult(sum(1 for p in state["pods"] if p["service"] == "fleet"))
        for _ in range(5):
            began = time.perf_counter()
            c.mesh_state(project)
            result.state_ms.append((time.perf_counter() - began) * 1000)
        first = c.state_dir(project).admin_socket(f"{project}-fleet-v1-0")
        if not c.admin_stats(first, UPDATE_TIME):
            names = c.admin_stats(first, r"rds\.")
            raise BenchError(f"no RDS update_time stat in a fleet sidecar; rds stats: {names}")
        for i in range(pushes):
            time.sleep(0.5)
            push = one_push(project, to_v2=i % 2 == 0)
            result.pushes.append(push)
            progress(
                f"push {i + 1}/{pushes}: end to end {push.end_to_end_ms:.0f} ms (apply "
                f"{push.apply_ms:.0f}, push {push.push_ms:.0f}, Envoy last "
                f"{push.envoy_last_ms:.0f}, spread {push.envoy_spread_ms:.0f})"
            )
        return result
    finally:
        c.down(project, 180)


# -- row 7: CPU ---------------------------------------------------------------------------------


@dataclass
class CpuResult:
    sidecars: int
    window: float
    idle_pct: float
    polling_pct: float
    stats_ms: list[float]  # each GET /v1/stats


def measure_cpu(file: Path, project: str, window: float) -> CpuResult:
    try:
        up(file, project, timeout=240)
        state = c.mesh_state(project)
        pid = int(state["pid"])
        stats_ms: list[float] = []

        def poll_stats() -> None:
            began = time.perf_counter()
            found = c.api(project, "GET", "/v1/stats")["sidecars"]
            stats_ms.append((time.perf_counter() - began) * 1000)
            if isinstance(found, dict):  # docs/api.md: name -> counters, or why unreadable
                bad = [k for k, v in found.items() if isinstance(v, str)]
            else:  # the typed document: a list of sidecars, each with `error` when unreadable
                bad = [str(s.get("source")) for s in found if s.get("error")]
            if bad:
                raise BenchError(f"GET /v1/stats: unreadable sidecars {bad[:3]}")

        time.sleep(5)  # let the first health rounds and the start-up settle
        progress(f"cpu: idle window {window:g}s ...")
        idle = c.cpu_pct(pid, window)
        progress(f"cpu: idle {idle:.2f} %; polling window {window:g}s ...")
        polling = c.cpu_pct(pid, window, poll_stats)
        progress(f"cpu: polling {polling:.2f} %")
        return CpuResult(len(state["pods"]), window, idle, polling, stats_ms)
    finally:
        c.down(project, 180)
