"""Transport tcp on the local engine, for what the core suite against the simulated remote
engine (test_engines.py) does not look at: the daemon listens on the mesh network's own
gateway (DEVMESH_XDS_LISTEN=mesh: a local engine's host-gateway is docker0, which cannot
reach loopback), and the tcp machinery shows itself: no host path mounted anywhere, health
as the engine's HEALTHCHECK reports it (a failing one keeps its pod out), stats pushed by
the Envoys (counters and latency buckets), and the daemon's port refusing a caller without
the mesh's token. One mesh for the module."""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devmesh import labels
from devmesh.api import types as api
from devmesh.client import DaemonClient
from tests.e2e.conftest import ENV, PROJECTS, Mesh, free_port, sweep
from tests.e2e.test_runtime import SHOP, served_by, wait_for

pytestmark = pytest.mark.docker

TCP_ENV = {**ENV, "DEVMESH_TRANSPORT": "tcp", "DEVMESH_XDS_LISTEN": "mesh"}
# A version whose health check never passes: the engine reports it unhealthy.
SICK = """
  sick:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    health: {path: /status/503, interval: 500ms}
"""


class TcpMesh(Mesh):
    def run(self, *args: str, timeout: float = 180, env: dict[str, str] | None = None) -> Any:
        return super().run(*args, timeout=timeout, env=env or TCP_ENV)

    def daemon(self) -> DaemonClient:
        return DaemonClient(self.state_dir() / "api.sock")


@pytest.fixture(scope="module")
def mesh(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TcpMesh]:
    m = TcpMesh(
        tmp_path_factory.mktemp("tcp"), f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client
    )
    PROJECTS.append(m.project)
    m.write(SHOP.rstrip("\n").replace("  stock:", SICK.strip("\n") + "\n  stock:", 1) + "\n")
    try:
        result = m.run("up", "-d")  # no --wait: `sick` never gets ready
        assert result.returncode == 0, result.stdout + result.stderr

        def others_ready() -> bool:
            pods = m.daemon().state().pods
            return bool(pods) and all(p.ready for p in pods if p.service != "sick")

        wait_for(others_ready, timeout=90, every=0.5)
        yield m
    finally:
        m.run("down", timeout=60)
        sweep(docker_client, m.project)


def test_ps_names_the_transport_and_no_container_mounts_the_host(mesh: TcpMesh) -> None:
    assert mesh.ps()["transport"] == "tcp"
    found = mesh.client.containers.list(filters={"label": labels.selector(mesh=mesh.project)})
    assert len(found) >= 10
    for container in found:
        kinds = {m["Type"] for m in container.attrs["Mounts"]}
        assert "bind" not in kinds, (container.name, container.attrs["Mounts"])


def test_traffic_is_routed_through_sidecars_configured_over_tcp(mesh: TcpMesh) -> None:
    resp = mesh.get("/")
    assert resp.status == 200 and served_by(resp).startswith("frontend/default")
    canary = mesh.get("/catalog/x", headers={"x-canary": "1"})
    assert canary.status == 200 and "catalog/v2" in canary.body


def test_health_is_what_the_engines_healthcheck_reports(mesh: TcpMesh) -> None:
    # The engine calls `sick` unhealthy after FAILURES_TO_DROP failed checks, 0.5 s apart
    # at best: the other pods can be ready before that (they were, on a fast machine).
    def sick_pod() -> api.Pod:
        return next(p for p in mesh.daemon().state().pods if p.service == "sick")

    wait_for(lambda: "the engine's health check fails" in sick_pod().reason, timeout=30)
    pods = {p.service: p for p in mesh.daemon().state().pods}
    sick = pods["sick"]
    assert sick.state is api.PodState.UNHEALTHY
    assert "the engine's health check fails" in sick.reason
    owners = {
        c.name: c
        for c in mesh.client.containers.list(
            filters={"label": [*labels.selector(mesh=mesh.project), f"{labels.ROLE}=pod"]}
        )
    }
    assert owners[sick.pod].attrs["State"]["Health"]["Status"] == "unhealthy"
    assert owners[pods["frontend"].pod].attrs["State"]["Health"]["Status"] == "healthy"
    # and the sick version gets no traffic: the ingress has no healthy endpoint for it
    assert not any(p.ready for p in mesh.daemon().state().pods if p.service == "sick")


def test_stats_are_pushed_by_the_envoys(mesh: TcpMesh) -> None:
    for _ in range(20):
        assert mesh.get("/").status == 200

    def frontend_counted() -> Any:
        for s in mesh.daemon().stats().sidecars:
            inbound = s.inbound
            if s.service == "frontend" and inbound is not None and inbound.requests >= 20:
                return s
        return None

    stats = wait_for(frontend_counted, timeout=10)  # a push a second
    latency = [u.traffic.latency for u in stats.upstreams if u.service == "catalog"]
    assert any(b.count > 0 for buckets in latency for b in buckets), latency


def test_the_daemon_port_refuses_a_caller_without_the_token(mesh: TcpMesh) -> None:
    state = mesh.state_dir()
    token = state / "xds.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.stat().st_uid == os.getuid()
    port = int((state / "xds.port").read_text())
    network = mesh.client.networks.get(f"devmesh-{mesh.project}")
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"].split("/")[0]
    with grpc.insecure_channel(f"{gateway}:{port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = discovery_pb2.DiscoveryRequest(
            type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"
        )
        request.node.id, request.node.cluster = "intruder", "shop"
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.StreamAggregatedResources(iter([request]), timeout=5)))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    time.sleep(0.1)
    assert all(p.pod != "intruder" for p in mesh.daemon().state().pods)


def test_access_logs_and_spans_reach_the_daemon_with_the_token(mesh: TcpMesh) -> None:
    """The access-log and span streams go through the same authenticated cluster as ADS:
    refused, they would arrive nowhere."""
    for _ in range(5):
        assert mesh.get("/").status == 200
    client = mesh.daemon()
    entries = wait_for(
        lambda: client.access(api.AccessRequest(service="catalog", limit=10)).entries, timeout=10
    )
    assert entries
    traces = wait_for(lambda: client.traces(service="catalog").traces, timeout=15)  # 5 s flush
    assert traces
