"""The ADS server against the real Envoy binary, run as a host process (no Docker).

Every address is loopback or a UNIX socket in the test's tmp_path (fixtures: conftest.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devmesh.adapters.xds_server import NodeStatus, XdsServer
from devmesh.adapters.xds_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME
from devmesh.envoy.resources import SAMPLING_KEY, runtime_layer
from devmesh.unixhttp import UnixHTTPConnection
from tests.integration.conftest import GROUP, Mesh, StartEnvoy, get, server_threads, wait_for

pytestmark = pytest.mark.envoy


def _disconnected(xds: XdsServer, node_id: str) -> Callable[[], bool]:
    return lambda: not xds.status(node_id).connected


def _assert_acked(status: NodeStatus) -> None:
    assert status.connected
    assert status.nack is None
    # RTDS too: every ADS bootstrap waits for the daemon's runtime layer, served empty
    assert set(status.sent) == {LISTENER, ROUTE, CLUSTER, ENDPOINT, RUNTIME}
    assert status.acked == status.sent


# -- tests ----------------------------------------------------------------------------------


def test_envoy_connects_receives_everything_and_acks(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    resources = mesh.resources()
    xds.set_snapshot(GROUP, resources)
    envoy("api-v1-a")
    envoy("api-v1-b")  # a second replica of the same group shares the snapshot

    assert xds.wait_synced(["api-v1-a", "api-v1-b"], timeout=10)

    a, b = xds.status("api-v1-a"), xds.status("api-v1-b")
    _assert_acked(a)
    _assert_acked(b)
    assert a.cluster == b.cluster == GROUP
    assert a.sent == b.sent
    assert [s.node_id for s in xds.statuses()] == ["api-v1-a", "api-v1-b"]


def _runtime_value(admin: Path, key: str) -> str | None:
    conn = UnixHTTPConnection(str(admin), timeout=5)
    try:
        conn.request("GET", "/runtime")
        entries = json.loads(conn.getresponse().read())["entries"]
    finally:
        conn.close()
    entry = entries.get(key)
    return None if entry is None else str(entry["final_value"])


def test_a_runtime_layer_reaches_envoy_alone_with_no_listener_change(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh, tmp_path: Path
) -> None:
    """Adaptive tracing's share (daemon/sampling.py) goes to the Envoys as RTDS: their
    connection managers' `random_sampling` is overridden with no listener replaced."""
    xds.set_snapshot(GROUP, mesh.resources())
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    admin = tmp_path / "api-v1-a-admin.sock"
    assert _runtime_value(admin, SAMPLING_KEY) is None  # the empty layer: nothing overridden
    before = xds.status("api-v1-a").acked

    xds.set_snapshot(GROUP, dataclasses.replace(mesh.resources(), runtimes=(runtime_layer(2.5),)))
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    after = xds.status("api-v1-a").acked
    assert after[RUNTIME] != before[RUNTIME]
    assert {t: v for t, v in after.items() if t != RUNTIME} == {
        t: v for t, v in before.items() if t != RUNTIME
    }
    value = _runtime_value(admin, SAMPLING_KEY)
    assert value is not None and "250" in value and "TEN_THOUSAND" in value, value
    assert [get(mesh.listener_port) for _ in range(2)] == ["v1"] * 2


def test_stream_waits_for_a_snapshot_then_serves_traffic(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    envoy("api-v1-a")
    assert wait_for(lambda: any(s.node_id == "api-v1-a" for s in xds.statuses()), timeout=10)
    assert not xds.wait_synced(["api-v1-a"], timeout=0.3)  # connected, nothing to serve yet
    assert xds.status("api-v1-a").connected
    assert xds.status("api-v1-a").sent == {}

    xds.set_snapshot(GROUP, mesh.resources("v1"))
    assert xds.wait_synced(["api-v1-a"], timeout=10)

    # Listener (LDS) → route config (RDS) → cluster (CDS) → endpoint (EDS) → backend.
    assert [get(mesh.listener_port) for _ in range(3)] == ["v1"] * 3


def test_route_change_reaches_the_next_request(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    assert get(mesh.listener_port) == "v1"

    timings = []
    for to in ("v2", "v1", "v2", "v1", "v2"):
        before = xds.status("api-v1-a")
        started = time.perf_counter()
        xds.set_snapshot(GROUP, mesh.resources(to))
        assert xds.wait_synced(["api-v1-a"], timeout=5)
        timings.append((time.perf_counter() - started) * 1000)
        assert get(mesh.listener_port) == to  # the very next request, no retry
        after = xds.status("api-v1-a")
        # Only the route configuration changed, so only RDS was pushed.
        assert after.sent[ROUTE] != before.sent[ROUTE]
        assert {t: after.nonces[t] for t in (LISTENER, CLUSTER, ENDPOINT)} == {
            t: before.nonces[t] for t in (LISTENER, CLUSTER, ENDPOINT)
        }
    print(
        "\nset_snapshot → ACK (ms): "
        + ", ".join(f"{t:.1f}" for t in timings)
        + f"; median {sorted(timings)[len(timings) // 2]:.1f}"
    )


def test_new_version_is_synced_only_once_its_endpoints_arrive(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1", versions=("v1",)))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    assert get(mesh.listener_port) == "v1"

    # A new cluster (CDS) whose endpoints Envoy must then ask for by name (EDS), and a route
    # to it (RDS). Synced means all three are in, so the next request already reaches v2.
    xds.set_snapshot(GROUP, mesh.resources("v2", versions=("v1", "v2")))
    assert xds.wait_synced(["api-v1-a"], timeout=5)
    assert get(mesh.listener_port) == "v2"


def test_identical_snapshot_pushes_nothing(xds: XdsServer, envoy: StartEnvoy, mesh: Mesh) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    before = xds.status("api-v1-a")

    xds.set_snapshot(GROUP, mesh.resources("v1"))  # rebuilt from scratch, same content
    time.sleep(0.3)

    after = xds.status("api-v1-a")
    assert after.sent == before.sent
    assert after.nonces == before.nonces
    assert after.responses == before.responses
    assert xds.is_synced("api-v1-a")


def test_rejected_config_is_recorded_not_resent_and_a_fix_clears_it(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    good = mesh.resources("v1")
    xds.set_snapshot(GROUP, good)
    envoy("api-v1-a")
    assert xds.wait_synced(["api-v1-a"], timeout=10)
    kept = xds.status("api-v1-a").acked[CLUSTER]
    pushes = xds.status("api-v1-a").responses[CLUSTER]

    xds.set_snapshot(GROUP, mesh.resources("v1", bad_cluster=True))
    assert wait_for(lambda: xds.status("api-v1-a").nack is not None, timeout=5)
    status = xds.status("api-v1-a")
    nack = status.nack
    assert nack is not None
    print(f"\nEnvoy's NACK: {nack.message!r}")
    assert nack.type_url == CLUSTER
    assert nack.version_rejected == status.sent[CLUSTER] != kept
    assert nack.version_kept == kept
    assert "api|v2" in nack.message and "cluster provided LB" in nack.message
    assert not xds.is_synced("api-v1-a")

    time.sleep(1.0)  # a server that resends on NACK would loop many times in a second
    assert xds.status("api-v1-a").responses[CLUSTER] == pushes + 1
    assert get(mesh.listener_port) == "v1"  # Envoy keeps running the last good config

    xds.set_snapshot(GROUP, good)
    assert xds.wait_synced(["api-v1-a"], timeout=5)
    fixed = xds.status("api-v1-a")
    assert fixed.nack is None
    assert fixed.acked[CLUSTER] == kept


def test_envoy_going_away_ends_its_stream_and_costs_no_thread(
    xds: XdsServer, envoy: StartEnvoy, mesh: Mesh
) -> None:
    xds.set_snapshot(GROUP, mesh.resources("v1"))
    baseline = server_threads()
    for round_ in range(3):  # churn: each stream is a coroutine on the server's one loop
        proc = envoy(f"api-v1-{round_}")
        assert xds.wait_synced([f"api-v1-{round_}"], timeout=10)
        assert xds.open_streams() == 1
        assert server_threads() == baseline
        proc.terminate()
        proc.wait(timeout=5)
        assert wait_for(_disconnected(xds, f"api-v1-{round_}"), timeout=5)
        assert wait_for(lambda: xds.open_streams() == 0, timeout=5)
    assert server_threads() == baseline


def test_server_stop_leaks_no_thread_and_envoy_reconnects(
    tmp_path: Path, envoy: StartEnvoy, mesh: Mesh
) -> None:
    baseline = server_threads()
    resources = mesh.resources("v1")
    first = XdsServer(tmp_path / "xds.sock")
    second = XdsServer(tmp_path / "xds.sock")
    try:
        first.start()
        assert os.stat(tmp_path / "xds.sock").st_mode & 0o777 == 0o600
        first.set_snapshot(GROUP, resources)
        envoy("api-v1-a")
        assert first.wait_synced(["api-v1-a"], timeout=10)
        assert server_threads() == sorted([*baseline, "xds-loop"])  # one, however many streams

        first.stop(grace=0.5)
        assert server_threads() == baseline
        assert not first.status("api-v1-a").connected  # the last status is kept
        stopped = time.perf_counter()
        while time.perf_counter() - stopped < 1.0:  # Envoy serves on without its control plane
            assert get(mesh.listener_port) == "v1"
            time.sleep(0.1)

        second.start()
        second.set_snapshot(GROUP, resources)
        started = time.perf_counter()
        assert second.wait_synced(["api-v1-a"], timeout=15)
        synced = time.perf_counter()
        print(
            f"\nEnvoy re-synced {synced - started:.2f} s after the restart"
            f" ({synced - stopped:.2f} s after the stop)"
        )
        assert get(mesh.listener_port) == "v1"
        _assert_acked(second.status("api-v1-a"))
    finally:
        first.stop(grace=0.5)
        second.stop(grace=0.5)
    assert server_threads() == baseline
