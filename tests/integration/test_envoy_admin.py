"""Reading stats from the real Envoy's admin socket: kept connections, a restarted sidecar,
a missing one (fixtures: conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.adapters.envoy_admin import StatsReader
from devmesh.adapters.xds_server import XdsServer
from tests.integration.conftest import GROUP, Mesh, StartEnvoy, get, wait_for

pytestmark = pytest.mark.envoy

REQUESTS = "cluster.api|v1.upstream_rq_total"
ADMIN_CONNECTIONS = r"^http\.admin\.downstream_cx_total$"


def admin_connections(admin: Path) -> float:
    """The admin connections Envoy has accepted, this one included: read on a connection of
    its own (a reader used once)."""
    reader = StatsReader(ADMIN_CONNECTIONS)
    try:
        read = reader.read_many({"a": admin})["a"]
    finally:
        reader.close()
    assert isinstance(read, dict), read
    return read["http.admin.downstream_cx_total"]


def test_reader_keeps_its_connections_and_counts_what_envoy_counts(
    tmp_path: Path, xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    admin = tmp_path / "api-v1-a-admin.sock"
    reader = StatsReader()
    try:
        for _ in range(3):
            get(mesh.listener_port)
        first = reader.read_many({"a": admin})["a"]
        assert isinstance(first, dict) and first[REQUESTS] == 3
        opened = admin_connections(admin)
        for _ in range(5):
            reader.read_many({"a": admin})
        get(mesh.listener_port)
        again = reader.read_many({"a": admin})["a"]
        assert isinstance(again, dict) and again[REQUESTS] == 4
        # Six reads later Envoy has accepted one admin connection more: admin_connections'.
        after = admin_connections(admin)
        assert after == opened + 1
    finally:
        reader.close()


def test_reader_reconnects_to_a_restarted_sidecar_and_names_a_missing_one(
    tmp_path: Path, xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    proc = envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    admin = tmp_path / "api-v1-a-admin.sock"
    reader = StatsReader()
    try:
        get(mesh.listener_port)
        before = reader.read_many({"a": admin})["a"]
        assert isinstance(before, dict) and before[REQUESTS] == 1
        proc.terminate()  # by PID: the process this test started
        proc.wait(timeout=10)
        assert wait_for(lambda: not xds.status("api-v1-a").connected, timeout=5)
        envoy("api-v1-a")  # the same admin socket path, a new Envoy behind it
        assert xds.wait_synced(["api-v1-a"], timeout=10)
        for _ in range(2):
            get(mesh.listener_port)
        read = reader.read_many({"a": admin, "gone": tmp_path / "nobody-admin.sock"})
        fresh = read["a"]
        assert isinstance(fresh, dict) and fresh[REQUESTS] == 2  # the new Envoy's count
        assert isinstance(read["gone"], str) and read["gone"].startswith("unreadable: ")
    finally:
        reader.close()
