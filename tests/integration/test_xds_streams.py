"""The ADS server with many streams at once: ADS clients built from the xds-protos stubs
(Envoy-like: subscribe to CDS, EDS, LDS, RDS, ACK every response), over the UNIX socket in
the test's tmp_path. No Envoy here: test_xds_server.py runs the real one."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devmesh.adapters.xds_cache import SnapshotCache
from devmesh.adapters.xds_server import XdsServer
from devmesh.core.load import load
from devmesh.core.problems import MeshError
from devmesh.envoy.render import render
from devmesh.envoy.resources import placeholder_endpoints
from devmesh.envoy.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot, new_snapshots
from tests.integration.conftest import server_threads
from tests.unit.test_snapshot_cache import FRONT, MESH

NAMES: dict[str, tuple[str, ...]] = {
    CLUSTER: (),
    ENDPOINT: ("back|v1", "back|v2"),
    LISTENER: (),
    ROUTE: ("out|back",),
}
STREAMS = 40


def _snapshots(weights: str = "{v1: 75, v2: 25}") -> dict[str, Snapshot]:
    mesh = load(MESH.replace("{v1: 75, v2: 25}", weights))
    return new_snapshots(render(mesh, placeholder_endpoints(mesh)))


async def _client(socket: Path, node_id: str, responses: list[int]) -> None:
    # A channel of its own (a local subchannel pool): its own connection, like an Envoy.
    async with grpc.aio.insecure_channel(
        f"unix:{socket}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()

        def request(type_url: str, answered: Any = None) -> Any:
            r = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=NAMES[type_url])
            r.node.id, r.node.cluster = node_id, FRONT
            if answered is not None:
                r.version_info, r.response_nonce = answered.version_info, answered.nonce
            return r

        for type_url in NAMES:
            await call.write(request(type_url))
        async for response in call:  # ends when the server ends the stream
            responses.append(1)
            await call.write(request(response.type_url, response))


def _run_clients(socket: Path, ids: list[str], responses: list[int]) -> threading.Thread:
    async def main() -> None:
        clients = [_client(socket, node_id, responses) for node_id in ids]
        await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), timeout=30)

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="test-clients")
    thread.start()
    return thread


def test_many_streams_on_one_loop_thread_get_each_push_and_end_on_stop(tmp_path: Path) -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    server = XdsServer(tmp_path / "xds.sock", cache=cache)
    baseline = server_threads()
    server.start()
    ids = [f"front-{i}" for i in range(STREAMS)]
    responses: list[int] = []
    clients = _run_clients(tmp_path / "xds.sock", ids, responses)
    try:
        deadline = time.monotonic() + 15
        while len(cache.statuses()) < STREAMS and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cache.wait_synced(ids, timeout=15)
        assert server.open_streams() == STREAMS
        # One loop thread serves them all (and the test's one client thread runs the clients).
        assert server_threads() == sorted([*baseline, "test-clients", "xds-loop"])
        assert len(responses) == 4 * STREAMS

        for weights in ("{v1: 50, v2: 50}", "{v1: 0, v2: 100}", "{v1: 75, v2: 25}"):
            changed = cache.set_snapshots(_snapshots(weights))
            assert FRONT in changed
            assert cache.wait_synced(ids, timeout=10)
        assert len(responses) == 7 * STREAMS  # each push: one route config per stream
        assert {s.responses[ROUTE] for s in cache.statuses()} == {4}
        assert {s.responses[CLUSTER] for s in cache.statuses()} == {1}
    finally:
        server.stop(grace=0.5)
        clients.join(timeout=35)
    assert not clients.is_alive()  # every stream ended with the server
    assert not any(s.connected for s in cache.statuses())
    assert server.open_streams() == 0
    assert server_threads() == baseline


def test_a_server_that_cannot_listen_says_so_and_leaves_no_thread(tmp_path: Path) -> None:
    baseline = server_threads()
    server = XdsServer(tmp_path / "no-such-dir" / "xds.sock")
    with pytest.raises(MeshError, match="cannot listen on unix:"):
        server.start()
    assert server_threads() == baseline
    server.stop()  # stopping a server that never started is harmless
