"""What observability costs: access logs and tracing on against both off, through two
Envoys; the daemon's CPU with 20 services, access logs and metrics on; one /metrics scrape.

    .venv/bin/python bench/observability.py [--seconds 20] [--cpu-window 60]
        [--rounds N] [--on-only access_log|tracing] [--sampling PERCENT]
        [--live also|only] [--warm-up SECONDS] [--no-daemon-rows]

Prints one markdown table. The paths measured (wrk on the host, paced by bench/
sidecar_latency.py's Lua script):

  wrk -> the gateway's hop for `server` (Envoy 1) -> server's inbound sidecar (Envoy 2)
      -> the app: an Envoy answering every request itself (sidecar_latency.app_config)

in meshes that differ only in their `observability:` block (`access_log: false,
tracing: false` for "off"; the defaults, both on with `sampling: auto`, for "on"), and a
second "off" mesh, the control: what the method reads when there is no difference at all.
`--live`: the same rows from one mesh whose `observability:` block is rewritten between
measurements (the daemon applies it live), so "off" and "on" share containers and ports.
Each round measures the three seconds apart, in an order that turns round by round, and a
ratio is the median of the rounds' ratios to their own round's "off" (drift on a shared
machine falls on all three). Latency at ~1,000 req/s
(10 connections, each paced at one request per 10 ms); throughput at saturation (32
connections, no pacing). Then a mesh of 20 such services at 1 request/s each (20 req/s,
each through the gateway and the service's sidecar, both logging) with access logs and
metrics on and tracing off, as the issue's row words it ("with access logs and metrics
on"): the daemon's CPU over the window; and 10 scrapes of its /metrics, timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import _common as c
import yaml
from _common import BenchError, cpu_seconds, progress
from sidecar_latency import FLAGS, PACED, RESULT, app_config

APP_PORT = 8000
ON: dict[str, Any] = {}  # "on": the defaults (access logs and tracing); --on-only narrows it


def mesh_text(
    name: str, services: int, on: bool, metrics_port: int | None, tracing: bool = True
) -> str:
    def service() -> dict[str, Any]:
        return {
            "image": c.devmesh_images()[0],  # the sidecar image runs the fast app (Envoy)
            "port": APP_PORT,
            "command": ["--config-yaml", app_config(APP_PORT), *FLAGS],
            "health": {"path": "/healthz", "interval": "1s"},
        }

    doc: dict[str, Any] = {"mesh": name}
    observability: dict[str, Any] = dict(ON) if on else {"access_log": False, "tracing": False}
    if not tracing:
        observability["tracing"] = False
    if metrics_port is not None:
        observability["metrics"] = {"port": metrics_port}
    if observability:
        doc["observability"] = observability
    width = max(2, len(str(services)))
    doc["services"] = {
        ("server" if services == 1 else f"s{i:0{width}d}"): service()
        for i in range(1, services + 1)
    }
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


def hop_urls(project: str) -> dict[str, str]:
    gateway = c.mesh_state(project).get("gateway") or {}
    urls: dict[str, str] = gateway.get("services", {})
    if not urls:
        raise BenchError(f"{project}: the gateway publishes no service")
    return urls


def wrk(url: str, connections: int, seconds: float, pause_ms: int | None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        script = PACED.format(pause_ms=pause_ms or 0)
        if pause_ms is None:
            script = script.replace("function delay() return pause_ms end\n", "")
        f.write(script)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s", "-s", f.name]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    Path(f.name).unlink(missing_ok=True)
    match = RESULT.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise BenchError(f"wrk failed: {out.stdout[-300:]} {out.stderr[-300:]}")
    n, dur, conn, read, write, status, timeout, p50, _p90, p99, _top = map(int, match[1].split())
    return {
        "rate": n / (dur / 1e6),
        "errors": conn + read + write + status + timeout,
        "p50": p50 / 1000,
        "p99": p99 / 1000,
    }


KINDS = ("off", "on", "control")  # control: a second "off" mesh, the method's own noise


def round_order(r: int) -> tuple[str, ...]:
    """Round r's order of KINDS: each kind first, second and last in turn."""
    order = KINDS[r % 3 :] + KINDS[: r % 3]
    return order if r % 2 == 0 else order[::-1]


def _spread(values: list[float]) -> str:
    """The median of per-round ratios, with their range."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def latency_rows(seconds: float, rounds: int, warm_up: float = 0.0) -> list[list[str]]:
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    sat: dict[str, list[float]] = {k: [] for k in KINDS}
    projects: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for kind in KINDS:
                project = f"obsbench-{kind}-{uuid.uuid4().hex[:6]}"
                projects[kind] = project
                file = Path(tmp) / f"{kind}.yaml"
                file.write_text(mesh_text("obsbench", 1, kind == "on", None))
                progress(f"up {project}")
                c.up(file, project)
            urls = {k: hop_urls(p)["server"] for k, p in projects.items()}
            for url in urls.values():
                wrk(url, 10, 2, 10)  # warm-up
            for r in range(rounds):
                for kind in round_order(r):
                    if warm_up:  # the same for every mesh: `sampling: auto` settles first
                        wrk(urls[kind], 10, warm_up, 10)
                    progress(f"round {r + 1}: {kind} paced")
                    runs[kind].append(wrk(urls[kind], 10, seconds, 10))
                    progress(f"round {r + 1}: {kind} saturated")
                    sat[kind].append(wrk(urls[kind], 32, seconds / 2, None)["rate"])
        finally:
            for project in projects.values():
                c.down(project)
    return _latency_table(runs, sat, "")


def _latency_table(
    runs: dict[str, list[dict[str, float]]], sat: dict[str, list[float]], how: str
) -> list[list[str]]:
    metrics = ("p50", "p99", "rate")
    med = {k: {m: statistics.median(x[m] for x in v) for m in metrics} for k, v in runs.items()}
    errors = {k: sum(x["errors"] for x in v) for k, v in runs.items()}
    thr = {k: statistics.median(v) for k, v in sat.items()}

    def ratios(kind: str, metric: str) -> list[float]:
        """Round by round: `kind` against "off", measured seconds apart."""
        if metric == "sat":
            return [a / b for a, b in zip(sat[kind], sat["off"], strict=True)]
        return [a[metric] / b[metric] for a, b in zip(runs[kind], runs["off"], strict=True)]

    return [
        [
            f"p50 at ~1,000 req/s, 2 Envoys{how}",
            f"{med['off']['p50']:.2f} ms",
            f"{med['on']['p50']:.2f} ms",
            _spread(ratios("on", "p50")),
            _spread(ratios("control", "p50")),
            "≤ 1.10",
        ],
        [
            f"p99 at ~1,000 req/s, 2 Envoys{how}",
            f"{med['off']['p99']:.2f} ms",
            f"{med['on']['p99']:.2f} ms",
            _spread(ratios("on", "p99")),
            _spread(ratios("control", "p99")),
            "≤ 1.10",
        ],
        [
            f"rate reached (paced), errors{how}",
            f"{med['off']['rate']:.0f}/s, {errors['off']}",
            f"{med['on']['rate']:.0f}/s, {errors['on']}",
            "",
            f"{med['control']['rate']:.0f}/s, {errors['control']}",
            "",
        ],
        [
            f"throughput at saturation (32 conns){how}",
            f"{thr['off']:.0f}/s",
            f"{thr['on']:.0f}/s",
            _spread(ratios("on", "sat")),
            _spread(ratios("control", "sat")),
            "≥ 0.90",
        ],
    ]


def live_rows(seconds: float, rounds: int) -> list[list[str]]:
    """One mesh, its `observability:` block rewritten between measurements: the same
    containers, ports and docker-proxy for "off" and "on"; control: "off" measured again."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    sat: dict[str, list[float]] = {k: [] for k in KINDS}
    project = f"obsbench-live-{uuid.uuid4().hex[:6]}"
    texts = {k: mesh_text("obsbench", 1, k == "on", None) for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "m.yaml"
        file.write_text(texts["off"])
        current = "off"
        try:
            progress(f"up {project}")
            c.up(file, project)
            url = hop_urls(project)["server"]
            for r in range(rounds):
                for kind in round_order(r):
                    if texts[kind] != texts[current]:
                        offset = c.log_offset(project)
                        file.write_text(texts[kind])
                        _wait_applied(project, offset)
                        current = kind
                    wrk(url, 10, 3, 10)  # warm-up: new listeners, sampling: auto settles
                    progress(f"round {r + 1}: {kind} paced (live)")
                    runs[kind].append(wrk(url, 10, seconds, 10))
                    progress(f"round {r + 1}: {kind} saturated (live)")
                    sat[kind].append(wrk(url, 32, seconds / 2, None)["rate"])
        finally:
            c.down(project)
    return _latency_table(runs, sat, " (one mesh, live)")


def _wait_applied(project: str, offset: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("save: applied" in line for line in c.log_lines(project, offset)):
            time.sleep(1.0)  # the Envoys ACK, the old listeners drain
            return
        time.sleep(0.1)
    raise BenchError(f"{project}: the rewritten mesh file was not applied in {timeout:g} s")


def daemon_rows(window: float) -> list[list[str]]:
    project = f"obsbench-20-{uuid.uuid4().hex[:6]}"
    port = c.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "m.yaml"
        file.write_text(mesh_text("obsbench20", 20, True, port, tracing=False))
        try:
            progress(f"up {project} (20 services)")
            c.up(file, project, 240.0)
            pid = int(c.mesh_state(project)["pid"])
            urls = list(hop_urls(project).values())
            stop = threading.Event()
            sent = [0]

            def load() -> None:  # 20 req/s: each service once a second
                while not stop.is_set():
                    start = time.monotonic()
                    for url in urls:
                        try:
                            with urllib.request.urlopen(url, timeout=2) as r:
                                r.read()
                            sent[0] += 1
                        except OSError:
                            pass
                    stop.wait(max(0.0, 1.0 - (time.monotonic() - start)))

            worker = threading.Thread(target=load, daemon=True)
            worker.start()
            time.sleep(5)  # the first flushes and scrapes settle
            before, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(window)
            used, took = cpu_seconds(pid) - before, time.monotonic() - t0
            rate = sent[0] / (time.monotonic() - t0 + 5)
            scrape_ms, size = [], 0
            metrics = f"http://127.0.0.1:{port}/metrics"
            for _ in range(10):
                t = time.perf_counter()
                with urllib.request.urlopen(metrics, timeout=10) as r:
                    size = len(r.read())
                scrape_ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.5)
            stop.set()
            worker.join(timeout=5)
            access = c.api(project, "POST", "/v1/access", {"limit": 1})["counters"]
        finally:
            c.down(project)
    return [
        [
            f"daemon CPU, 20 services, ~{rate:.0f} req/s, logs+metrics on (tracing off), "
            f"{window:.0f} s",
            "",
            f"{100 * used / took:.2f} % of a core",
            "",
            "≤ 3 %",
        ],
        [
            "  access-log entries received / dropped in that run",
            "",
            f"{access['received']} / {access['dropped']}",
            "",
            "",
        ],
        [
            "/metrics scrape, 20 services (median of 10)",
            "",
            f"{statistics.median(scrape_ms):.1f} ms, {size / 1024:.0f} KiB",
            "",
            "≤ 50 ms, ≤ 1 MB",
        ],
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu-window", type=float, default=60.0)
    parser.add_argument(
        "--on-only",
        choices=("access_log", "tracing"),
        help="'on' turns on only this one (to tell their costs apart)",
    )
    parser.add_argument(
        "--sampling",
        type=float,
        help="'on' traces this percent of requests (default: the mesh file's default)",
    )
    parser.add_argument("--no-daemon-rows", action="store_true")
    parser.add_argument(
        "--warm-up",
        type=float,
        default=0.0,
        help="seconds of paced load on each mesh right before its measurement (default 0: "
        "'on' starts each round from a quiet mesh, where auto traces every request)",
    )
    parser.add_argument(
        "--live",
        choices=("also", "only"),
        help="also (or only) measure in one mesh whose observability: block is rewritten live",
    )
    args = parser.parse_args()
    if args.sampling is not None:
        ON.update(tracing={"sampling": args.sampling})
    if args.on_only == "access_log":
        ON.update(tracing=False)
    elif args.on_only == "tracing":
        ON.update(access_log=False)
    c.raise_on_sigterm()
    try:
        rows = [] if args.live == "only" else latency_rows(args.seconds, args.rounds, args.warm_up)
        if args.live:
            rows += live_rows(args.seconds, args.rounds)
        if not args.no_daemon_rows:
            rows += [[*row[:4], "", *row[4:]] for row in daemon_rows(args.cpu_window)]
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (a shared 2-core machine)")
    defaults = "the defaults (access logs, tracing with sampling: auto)"
    print(f"'on' in the latency rows: {ON or defaults}\n")
    print(
        f"ratios: the median of {args.rounds} rounds' ratios to the same round's 'off' "
        "(their range in brackets); control: a second 'off' mesh measured the same way, "
        "the method's own noise\n"
    )
    print(c.table(["row", "off", "on", "on/off", "control/off", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
