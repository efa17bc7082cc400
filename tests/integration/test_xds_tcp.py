"""Transport tcp's control plane, for real: the daemon's xDS server on TCP 127.0.0.1 with the
mesh's token, asked by a real gRPC client (no token, a wrong one, the right one) and by a
real Envoy with the tcp bootstrap (its cluster's filter adds the token; it gets its config
and pushes its stats, which read as the admin reads them)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devmesh.adapters.envoy_admin import StatsTarget
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.adapters.metrics_service import METHOD, PushedStats
from devmesh.adapters.xds_server import TcpListen, XdsServer
from devmesh.adapters.xds_types import CLUSTER
from devmesh.core.problems import MeshError
from devmesh.envoy.bootstrap import XdsTcp, ads_bootstrap
from devmesh.envoy.resources import Resources
from tests.integration.conftest import GROUP, wait_for

TOKEN = "k" * 43


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[XdsServer, PushedStats]]:
    pushed = PushedStats(regex=r"^cluster\.devmesh-xds\.upstream_cx_total$")
    xds = XdsServer(
        tmp_path / "xds.sock", services=[pushed.register], tcp=TcpListen("127.0.0.1", 0, TOKEN)
    )
    xds.start()
    xds.set_snapshot(GROUP, Resources((), (), (), ()))
    try:
        yield xds, pushed
    finally:
        xds.stop(grace=0.2)


def _ask(port: int, metadata: tuple[tuple[str, str], ...]) -> discovery_pb2.DiscoveryResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        request.node.id, request.node.cluster = "client", GROUP
        stream = stub.StreamAggregatedResources(iter([request]), metadata=metadata, timeout=5)
        return next(iter(stream))


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)],
    ids=["no-token", "wrong-token", "token-without-bearer"],
)
def test_a_stream_without_the_token_is_unauthenticated(
    server: tuple[XdsServer, PushedStats], metadata: tuple[tuple[str, str], ...]
) -> None:
    xds, _ = server
    assert xds.tcp_port
    with pytest.raises(grpc.RpcError) as refused:
        _ask(xds.tcp_port, metadata)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert not xds.statuses()  # the stream never reached the cache


def test_the_stats_service_refuses_a_stream_without_the_token_too(
    server: tuple[XdsServer, PushedStats],
) -> None:
    xds, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{xds.tcp_port}") as channel:
        call = channel.stream_unary(METHOD)
        with pytest.raises(grpc.RpcError) as refused:
            call(iter([b""]), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_stream_with_the_token_gets_its_config(server: tuple[XdsServer, PushedStats]) -> None:
    xds, _ = server
    assert xds.tcp_port
    response = _ask(xds.tcp_port, (("authorization", f"Bearer {TOKEN}"),))
    assert response.type_url == CLUSTER and response.version_info


def test_the_tcp_listener_is_on_loopback_only(server: tuple[XdsServer, PushedStats]) -> None:
    xds, _ = server
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    ours = [
        line.split()[3].rpartition(":")[0].strip("[]")
        for line in out.splitlines()
        if line.split()[3].endswith(f":{xds.tcp_port}")
    ]
    assert len(ours) == 1
    bound = ipaddress.ip_address(ours[0])
    # grpc binds 127.0.0.1 on a dual-stack socket: [::ffff:127.0.0.1], loopback all the same
    v4 = bound.ipv4_mapped if isinstance(bound, ipaddress.IPv6Address) else bound
    assert v4 == ipaddress.ip_address("127.0.0.1")


def test_an_envoy_with_the_tcp_bootstrap_connects_and_pushes_its_stats(
    server: tuple[XdsServer, PushedStats], tmp_path: Path
) -> None:
    xds, pushed = server
    assert xds.tcp_port
    bootstrap = ads_bootstrap(
        "tcp-envoy",
        GROUP,
        "",
        str(tmp_path / "admin.sock"),
        tcp=XdsTcp("127.0.0.1", xds.tcp_port, TOKEN),
    )
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    with open(tmp_path / "envoy.log", "wb") as log:
        proc = subprocess.Popen(
            [str(envoy_path()), "-c", str(config), "--concurrency", "1", "--base-id", "7316"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: xds.is_synced("tcp-envoy"), 15), (
            tmp_path / "envoy.log"
        ).read_text()
        target = {"e": StatsTarget(tmp_path / "admin.sock", "tcp-envoy")}
        assert wait_for(lambda: isinstance(pushed.read_targets(target)["e"], dict), 10)
        stats = pushed.read_targets(target)["e"]
        assert isinstance(stats, dict)
        # the xDS cluster's own connection, counted by Envoy and pushed (filtered by name)
        assert stats == {"cluster.devmesh-xds.upstream_cx_total": 1}
    finally:
        proc.terminate()  # by PID
        proc.wait(timeout=10)
    # once the Envoy is gone, so are its stats
    assert wait_for(
        lambda: pushed.read_targets(target)["e"] == "unreadable: no stats pushed yet", 10
    )


def test_a_second_server_cannot_take_a_port_one_holds(
    server: tuple[XdsServer, PushedStats], tmp_path: Path
) -> None:
    """grpc shares ports (SO_REUSEPORT) unless told not to: two meshes' daemons on one port
    would each get some of the other's sidecars."""
    xds, _ = server
    assert xds.tcp_port
    other = XdsServer(tmp_path / "other.sock", tcp=TcpListen("127.0.0.1", xds.tcp_port, "o" * 43))
    with pytest.raises(MeshError, match="cannot listen"):
        other.start()
    other.stop()
