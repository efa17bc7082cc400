"""Rows 2 and 3: how soon a saved mesh file moves traffic (`measure_saves`), and whether any
request fails while the file is edited and the daemon is killed and restarted under load
(`measure_load`). The method is written out once, in the rows' details (bench/headline.py
`row_saves`, `row_edits`, and `load_section` here; bench/results.md).
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import re
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
from _common import LOG_TIME, BenchError, Client, Outcome, log_time, ms, percentile, progress, table

SAVE_TARGET_P50_MS = 75.0
SAVE_TARGET_P99_MS = 250.0
SAVE_GIVE_UP = 10.0  # seconds: a save whose new route is not seen by then counts as missed
SAVE_PAUSE = 0.3  # seconds between saves
SLOW_REQUEST_MS = 150.0  # a request this slow in a save's loop: the example's fault delay
SETTLE_TIMEOUT = 20.0
REQUEST_TIMEOUT = 5.0  # per request through the ingress (the load test's is from the brief)
EDITS = 20
RESTART_AFTER = 1.0  # seconds between the SIGKILL and `devmesh up -d --wait`
WEIGHTS = re.compile(r"(?m)^(\s+to: )\{v1: \d+, v2: \d+\}[ \t]*$")
FAULT = re.compile(r"(?m)^\s+fault: \{delay: .*\}\n")
APPLIED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO save: applied in (\d+) ms$")


# -- the meshes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveMesh:
    name: str
    file: Path
    text: str  # with its ingress port; the flipped route as `to: {v1: N, v2: M}`
    port: int
    service: str  # whose route flips
    path: str  # requested through the ingress
    pods: int

    def with_weights(self, v1: int, v2: int) -> str:
        text, n = WEIGHTS.subn(rf"\g<1>{{v1: {v1}, v2: {v2}}}", self.text)
        if n != 1:
            raise BenchError(f"{self.name}: expected one `to: {{v1: N, v2: M}}` line, found {n}")
        return text

    def write(self, v1: int, v2: int) -> None:
        self.file.write_text(self.with_weights(v1, v2))  # in place: one plain write


def example_mesh(workdir: Path, name: str, fault: bool) -> LiveMesh:
    """A copy of the example (absolute build path), with a free ingress port."""
    file = workdir / re.sub(r"\W+", "-", name) / "example" / "devmesh.yaml"
    file.parent.mkdir(parents=True)
    port = c.free_port()
    text = c.example_text(port)
    if not fault:
        text, n = FAULT.subn("", text)
        if n != 1:
            raise BenchError(f"{file}: expected one `fault: {{delay: ...}}` line, found {n}")
    mesh = LiveMesh(name, file, text, port, "catalog", "/catalog/x", pods=5)
    mesh.with_weights(100, 0)  # the line to flip is there
    mesh.file.write_text(text)
    return mesh


def services_mesh(workdir: Path, n: int) -> LiveMesh:
    """`target` (v1, v2, a weighted route) and n - 1 others, every one with `egress: all`."""
    port = c.free_port()
    lines = c.mesh_head(f"live{n}", port, [("target", "/target/", "target")])
    lines += [
        "  target:",
        f"    build: {c.APP_CONTEXT}",
        f"    image: {c.APP_IMAGE}",
        "    port: 8000",
        "    egress: all",
        "    versions: {v1: {}, v2: {}}",
        "    routes:",
        "      - name: main",
        "        to: {v1: 100, v2: 0}",
    ]
    for i in range(2, n + 1):
        lines += [
            f"  s{i:02d}:",
            f"    build: {c.APP_CONTEXT}",
            f"    image: {c.APP_IMAGE}",
            "    port: 8000",
            "    egress: all",
        ]
    path = workdir / f"services{n}" / "devmesh.yaml"
    path.parent.mkdir(parents=True)
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return LiveMesh(f"{n} services", path, text, port, "target", "/target/x", pods=n + 1)


# -- requests -----------------------------------------------------------------------------------


def settle(mesh: LiveMesh, client: Client, version: str, in_a_row: int = 10) -> None:
    """Wait until `in_a_row` responses in a row are 200 from SERVICE/version."""
    want = f"{mesh.service}/{version}"
    deadline = time.monotonic() + SETTLE_TIMEOUT
    streak = 0
    last = ""
    while streak < in_a_row:
        if time.monotonic() > deadline:
            raise BenchError(
                f"{mesh.name}: traffic not all on {want} within {SETTLE_TIMEOUT:.0f}s "
                f"(last: {last})"
            )
        try:
            reply = client.get(mesh.path)
            ok = reply.status == 200 and reply.served_by == want
            last = f"HTTP {reply.status} from {reply.served_by or '?'}"
        except (OSError, http.client.HTTPException) as exc:
            ok, last = False, f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
        streak = streak + 1 if ok else 0


# -- 1. save -> traffic on the new route ---------------------------------------------------------


@dataclass
class Save:
    to: str  # the version the save routes to
    wrote_at: float  # Unix time just before the write
    latency_ms: float | None  # None: the new route was not seen within SAVE_GIVE_UP
    requests: int
    errors: int
    slowest_ms: float  # the slowest request of this save's loop
    applied_ms: float | None = None  # write -> the daemon's `save: applied` line
    apply_ms: float | None = None  # the N of that line (the reconcile)


@dataclass
class SaveResult:
    mesh: LiveMesh
    up_s: float
    saves: list[Save]
    unmatched_log_lines: int = 0

    def latencies(self) -> list[float]:
        return [s.latency_ms for s in self.saves if s.latency_ms is not None]

    def met(self) -> bool:
        lat = self.latencies()
        return (
            len(lat) == len(self.saves)
            and percentile(lat, 50) <= SAVE_TARGET_P50_MS
            and percentile(lat, 99) <= SAVE_TARGET_P99_MS
        )


def one_save(mesh: LiveMesh, client: Client, to: str) -> Save:
    v1, v2 = (100, 0) if to == "v1" else (0, 100)
    want = f"{mesh.service}/{to}"
    text = mesh.with_weights(v1, v2)
    requests = errors = 0
    slowest = 0.0
    wrote_at = time.time()
    t0 = time.perf_counter()
    mesh.file.write_text(text)
    while True:
        sent = time.perf_counter()
        if sent - t0 > SAVE_GIVE_UP:
            return Save(to, wrote_at, None, requests, errors, slowest)
        requests += 1
        try:
            reply = client.get(mesh.path)
        except (OSError, http.client.HTTPException):
            errors += 1
            time.sleep(0.005)
            continue
        arrived = time.perf_counter()
        slowest = max(slowest, (arrived - sent) * 1000)
        if reply.status == 200 and reply.served_by == want:
            return Save(to, wrote_at, (arrived - t0) * 1000, requests, errors, slowest)
        if reply.status != 200:
            errors += 1


def match_log(saves: list[Save], lines: list[str]) -> int:
    """Give each save the first `save: applied` line after its write; the unmatched count."""
    applied = []
    for line in lines:
        m = APPLIED.match(line)
        if m:
            applied.append((log_time(m.group(1)), float(m.group(2))))
    used = 0
    for i, save in enumerate(saves):
        end = saves[i + 1].wrote_at if i + 1 < len(saves) else math.inf
        # asctime truncates to the millisecond: a line may look up to 1 ms early
        found = [a for a in applied if save.wrote_at - 0.001 <= a[0] < end]
        if found:
            at, took = found[0]
            save.applied_ms = max(0.0, (at - save.wrote_at) * 1000)
            save.apply_ms = took
            used += len(found)
    return len(applied) - used


def measure_saves(mesh: LiveMesh, project: str, n: int, started: list[str]) -> SaveResult:
    progress(f"{mesh.name}: up ({project}) ...")
    with c.running(mesh.file, project, started) as up_s:
        progress(f"{mesh.name}: up in {up_s:.1f}s; {n} saves ...")
        client = Client(mesh.port)
        try:
            mesh.write(100, 0)  # start from all on v1 (the example has 80/20)
            settle(mesh, client, "v1")
            time.sleep(SAVE_PAUSE)
            offset = c.log_offset(project)
            saves: list[Save] = []
            for i in range(n):
                saves.append(one_save(mesh, client, "v2" if i % 2 == 0 else "v1"))
                time.sleep(SAVE_PAUSE)
            time.sleep(0.2)
            result = SaveResult(mesh, up_s, saves)
            result.unmatched_log_lines = match_log(saves, c.log_lines(project, offset))
        finally:
            client.close()
    lat = result.latencies()
    if lat:
        progress(
            f"{mesh.name}: p50 {percentile(lat, 50):.0f} ms, p99 {percentile(lat, 99):.0f} ms, "
            f"max {max(lat):.0f} ms"
        )
    return result


# -- 2. failed requests under load --------------------------------------------------------------


@dataclass
class Event:
    at: float  # seconds from the start of the load
    text: str


@dataclass
class LoadResult:
    mesh: LiveMesh
    up_s: float
    rate: float
    duration: float
    workers: int
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    final_check: str = ""
    control_errors: list[str] = field(default_factory=list)
    start_wall: float = 0.0  # Unix time of the start of the load
    valid_edits: int = 0
    invalid_edits: int = 0


# From all on v1; with 20 edits no two in a row are the same and the last is all on v2.
CYCLE = [(50, 50), (0, 100), (20, 80), (80, 20), (10, 90), (90, 10), (30, 70), (70, 30), (100, 0)]
INVALID = {  # edit index -> how it is broken (each is followed by a valid edit)
    3: "port: seven",
    13: "YAML syntax error",
    16: "unknown version v3",
}


def edit_plan(mesh: LiveMesh) -> list[tuple[str, str]]:
    """EDITS texts with what each is; weights change every time; the last is all on v2."""
    plan: list[tuple[str, str]] = []
    for j in range(EDITS):
        v1, v2 = (0, 100) if j == EDITS - 1 else CYCLE[j % len(CYCLE)]
        if plan and f"{{v1: {v1}, v2: {v2}}}" in plan[-1][0]:
            raise BenchError(f"edit {j + 1} would not change the weights")
        text = mesh.with_weights(v1, v2)
        kind = INVALID.get(j)
        if kind == "port: seven":
            text, n = re.subn(r"(?m)^    port: 7000$", "    port: seven", text)
        elif kind == "YAML syntax error":
            text, n = re.subn(
                rf"(?m)to: \{{v1: {v1}, v2: {v2}\}}$", f"to: {{v1: {v1}, v2: {v2}", text
            )
        elif kind == "unknown version v3":
            text, n = re.subn(
                rf"(?m)to: \{{v1: {v1}, v2: {v2}\}}$", f"to: {{v1: {v1}, v3: {v2}}}", text
            )
        else:
            n = 1
        if n != 1:
            raise BenchError(f"{mesh.name}: could not make the '{kind}' edit")
        plan.append((text, f"invalid edit ({kind})" if kind else f"edit v1 {v1} / v2 {v2}"))
    return plan


def at(start: float, when: float, stop: threading.Event) -> bool:
    """Sleep until `when` seconds after `start`; False when stopped meanwhile."""
    delay = start + when - time.perf_counter()
    return not (stop.wait(delay) if delay > 0 else stop.is_set())


def editor(
    mesh: LiveMesh,
    plan: list[tuple[str, str]],
    duration: float,
    start: float,
    stop: threading.Event,
    result: LoadResult,
) -> None:
    for j, (text, what) in enumerate(plan):
        if not at(start, (j + 0.5) * duration / len(plan), stop):
            return
        mesh.file.write_text(text)
        result.events.append(Event(time.perf_counter() - start, f"{j + 1}: {what}"))


def killer(
    project: str,
    mesh: LiveMesh,
    duration: float,
    start: float,
    stop: threading.Event,
    result: LoadResult,
) -> None:
    """In the middle of the load: SIGKILL of the daemon, and `up -d --wait` 1 s later."""
    try:
        if not at(start, duration / 2, stop):
            return
        state = c.mesh_state(project)
        pid = int(state["pid"])
        if not c.daemon_alive(pid, project):
            raise BenchError(f"pid {pid} from GET /v1/state is not {project}'s daemon")
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter() - start
        result.events.append(Event(killed, f"SIGKILL daemon pid {pid}"))
        if not at(start, killed + RESTART_AFTER, stop):
            return
        result.events.append(Event(time.perf_counter() - start, "`devmesh up -d --wait` ..."))
        c.up(mesh.file, project)
        took = time.perf_counter() - start
        result.events.append(Event(took, "... `up -d --wait` returned 0 (mesh ready)"))
    except (BenchError, KeyError, ValueError, OSError) as exc:
        result.control_errors.append(f"daemon kill/restart: {exc}")


def final_check(mesh: LiveMesh, version: str) -> str:
    """After the last edit (all on v2): 20 responses in a row from it, within 10 s."""
    client = Client(mesh.port)
    try:
        began = time.monotonic()
        settle(mesh, client, version, in_a_row=20)
        return f"all on {mesh.service}/{version} after {time.monotonic() - began:.1f}s"
    except BenchError as exc:
        return f"FAILED: {exc}"
    finally:
        client.close()


def measure_load(
    mesh: LiveMesh, project: str, args: argparse.Namespace, started: list[str]
) -> LoadResult:
    progress(f"load: up ({project}) ...")
    with c.running(mesh.file, project, started) as up_s:
        result = LoadResult(mesh, up_s, args.rate, args.duration, args.workers)
        client = Client(mesh.port)
        try:
            mesh.write(100, 0)
            settle(mesh, client, "v1")
        finally:
            client.close()
        time.sleep(SAVE_PAUSE)
        plan = edit_plan(mesh)
        result.invalid_edits = sum(1 for _, what in plan if what.startswith("invalid"))
        result.valid_edits = len(plan) - result.invalid_edits
        offset = c.log_offset(project)
        total = int(args.rate * args.duration)
        progress(
            f"load: {total} requests at {args.rate:g}/s for {args.duration:g}s, "
            f"{len(plan)} edits, daemon SIGKILL + restart in the middle ..."
        )
        stop = threading.Event()
        start = time.perf_counter() + 0.2
        result.start_wall = time.time() + 0.2
        threads = c.paced_threads(
            mesh.port, mesh.path, args.workers, total, args.rate, start, stop, result.outcomes,
            timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
        threads.append(
            threading.Thread(
                target=editor,
                args=(mesh, plan, args.duration, start, stop, result),
                name="editor",
                daemon=True,
            )
        )
        control = threading.Thread(
            target=killer,
            args=(project, mesh, args.duration, start, stop, result),
            name="killer",
            daemon=True,
        )
        threads.append(control)
        try:
            for t in threads:
                t.start()
            limit = start + args.duration + REQUEST_TIMEOUT + c.UP_TIMEOUT + c.COMMAND_SLACK
            for t in threads:
                while t.is_alive() and time.perf_counter() < limit:
                    t.join(0.2)  # short joins: Ctrl-C reaches the main thread
            if any(t.is_alive() for t in threads):
                raise BenchError("the load threads did not finish in time")
        finally:
            stop.set()
            with c.shielded():
                # `down` must not race a restart: wait for the thread that runs `up`.
                control.join(c.UP_TIMEOUT + c.COMMAND_SLACK)
        result.outcomes.sort(key=lambda o: o.slot)
        time.sleep(1.0)  # past the watcher's grace for the last edit
        result.final_check = final_check(mesh, "v2")
        result.log = c.log_lines(project, offset)
    return result


# -- the report ---------------------------------------------------------------------------------


SAVE_COLUMNS = [
    "mesh",
    "pods",
    "saves",
    "p50",
    "p99",
    "max",
    "target met",
    "write → applied p50 / p99",
    "apply p50 / p99",
    "rest p50 / p99",
    "requests per save",
]  # the columns of save_rows' rows


def save_rows(results: list[SaveResult]) -> list[list[str]]:
    rows = []
    for r in results:
        lat = r.latencies()
        applied = [s.applied_ms for s in r.saves if s.applied_ms is not None]
        apply = [s.apply_ms for s in r.saves if s.apply_ms is not None]
        rest = [
            s.latency_ms - s.applied_ms
            for s in r.saves
            if s.latency_ms is not None and s.applied_ms is not None
        ]
        missed = len(r.saves) - len(lat)
        rows.append(
            [
                r.mesh.name,
                str(r.mesh.pods),
                str(len(lat)) + (f" (+{missed} missed)" if missed else ""),
                ms(lat, 50),
                ms(lat, 99),
                f"{max(lat):.0f}" if lat else "-",
                "yes" if r.met() else "**no**",
                f"{ms(applied, 50)} / {ms(applied, 99)}",
                f"{ms(apply, 50)} / {ms(apply, 99)}",
                f"{ms(rest, 50)} / {ms(rest, 99)}",
                f"{statistics.median([s.requests for s in r.saves]):.0f}",
            ]
        )
    return rows


DAEMON_NEWS = re.compile(
    r"save: applied|problem\(s\)|daemon \d+ for mesh|reconcile \(|(?<!save): applied in|"
    r"error|rejected|gateway.*connected|healthy|: die|: oom"  # health: endpoints change
)


def timeline(r: LoadResult) -> list[Event]:
    """The benchmark's events and the daemon log's lines about saves, problems and starts."""
    events = list(r.events)
    for line in r.log:
        m = LOG_TIME.match(line)
        if m and DAEMON_NEWS.search(line):
            text = line[m.end() :].removeprefix("INFO ").removeprefix("WARNING ")
            events.append(Event(log_time(m.group(1)) - r.start_wall, f"daemon: {text}"))
    return events


def load_section(r: LoadResult) -> list[str]:
    outs = r.outcomes
    ok = [o for o in outs if o.status == 200]
    non200 = [o for o in outs if o.status is not None and o.status != 200]
    errors = [o for o in outs if o.status is None]
    failed = len(non200) + len(errors)
    elapsed = max((o.done for o in outs), default=0.0)
    lat = [(o.done - o.sent) * 1000 for o in outs if o.status is not None]
    lag = max((o.sent - o.slot for o in outs), default=0.0)
    out = [
        "## 2. Failed requests under load (example mesh)",
        "",
        f"GET {r.mesh.path} through the ingress: {r.rate:g} requests/s planned for "
        f"{r.duration:g} s over {r.workers} threads (one keep-alive connection each, "
        f"{REQUEST_TIMEOUT:g} s timeout), while {r.valid_edits + r.invalid_edits} edits of the "
        f"file ({r.invalid_edits} invalid, each followed by a valid one) are made at even "
        f"intervals and the daemon is SIGKILLed in the middle and restarted "
        f"{RESTART_AFTER:g} s later with `devmesh up -d --wait`. Target: 0 failed.",
        "",
        table(
            [
                "sent",
                "200",
                "non-200",
                "conn errors / timeouts",
                "failed",
                "achieved rate",
                "latency p50 / p99 / max (ms)",
                "max send lag",
                "target",
                "met",
            ],
            [
                [
                    str(len(outs)),
                    str(len(ok)),
                    str(len(non200)),
                    str(len(errors)),
                    str(failed),
                    f"{len(outs) / elapsed:.1f}/s" if elapsed else "-",
                    f"{ms(lat, 50)} / {ms(lat, 99)} / {max(lat):.0f}" if lat else "-",
                    f"{lag * 1000:.0f} ms",
                    "0 failed",
                    "yes" if failed == 0 and outs else "**no**",
                ]
            ],
        ),
        "",
    ]
    if non200 or errors:
        kinds = Counter(c.failure_kind(o) for o in [*non200, *errors])
        out += ["Failures by kind: " + "; ".join(f"{n} × {k}" for k, n in kinds.most_common()), ""]
        out += ["Failures over time (seconds from the start of the load):", ""]
        out += [
            f"- {w}" for w in c.failure_windows(sorted([*non200, *errors], key=lambda o: o.sent))
        ]
        reused = sum(1 for o in errors if o.reused)
        if errors:
            out += [
                "",
                f"{reused} of {len(errors)} connection errors were on a reused keep-alive "
                "connection.",
            ]
        out.append("")
    served = Counter(o.served_by or "?" for o in ok)
    out += ["Served by: " + ", ".join(f"{k} {n}" for k, n in sorted(served.items())), ""]
    starts = sum(1 for line in r.log if re.search(r"INFO daemon \d+ for mesh", line))
    out += [
        f"Daemon starts in the log during the load: {starts}. After the load: {r.final_check}.",
        "",
        "Events (seconds from the start of the load):",
        "",
        *(f"- {e.at:6.2f} {e.text}" for e in sorted(timeline(r), key=lambda e: e.at)),
        "",
    ]
    for e in r.control_errors:
        out += [f"**{e}**", ""]
    return out


def save_notes(r: SaveResult) -> list[str]:
    notes = []
    slow = sum(1 for s in r.saves if s.slowest_ms >= SLOW_REQUEST_MS)
    if slow:
        longest = max(s.slowest_ms for s in r.saves)
        notes.append(
            f"{r.mesh.name}: in {slow} of {len(r.saves)} saves a request of the loop took "
            f"≥ {SLOW_REQUEST_MS:.0f} ms (the longest {longest:.0f} ms)"
            + (
                ": the route's `fault: {delay: {fixed: 200ms, percent: 5}}`. One client "
                "sending requests back to back spends most of its time inside the delayed "
                "ones (5 % × 200 ms against 95 % × a few ms), so the first response on the "
                "new route usually waits for one; *example, no fault* is the same mesh "
                "without that line"
                if FAULT.search(r.mesh.text)
                else ""
            )
        )
    if r.unmatched_log_lines:
        notes.append(
            f"{r.mesh.name}: {r.unmatched_log_lines} `save: applied` lines matched no save "
            "(a save applied twice?)"
        )
    errs = sum(s.errors for s in r.saves)
    if errs:
        notes.append(f"{r.mesh.name}: {errs} failed requests during the saves")
    return notes
