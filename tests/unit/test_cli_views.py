"""What `ps`, `up --wait` and `logs` print, from typed values alone."""

from __future__ import annotations

import dataclasses
import json

import pytest

from devmesh.api import types as api
from devmesh.cli import views

READY = api.Pod(
    "shop-web-v1-0",
    "web",
    "v1",
    0,
    api.PodState.READY,
    address="172.18.0.3",
    app="running",
    sidecar="running",
    xds=api.XdsStatus(connected=True, synced=True, version="ab12cd34"),
)
NACKED = api.Pod(
    "shop-web-v2-0",
    "web",
    "v2",
    0,
    api.PodState.NACKED,
    reason="config NACKed: bad\n  listener",
    xds=api.XdsStatus(connected=True, nack=api.Nack("Listener", "bad listener")),
)
CRASHING = api.Pod(
    "shop-db-default-0",
    "db",
    "default",
    0,
    api.PodState.CRASHING,
    reason="app exiting (exit code 3, restarted 2 times)",
)
GATEWAY = api.Gateway("shop-gateway", "running", True, url="http://127.0.0.1:8080/")


def _state(*pods: api.Pod, **kw: object) -> api.MeshState:
    return api.MeshState("shop", "shop", api.Phase.SERVING, False, pods=pods, **kw)  # type: ignore[arg-type]


def test_ps_shows_each_pods_typed_state_and_why_not_ready() -> None:
    text = views.ps_table(_state(READY, NACKED, pid=42, gateway=GATEWAY))
    lines = text.splitlines()
    assert lines[0] == "mesh 'shop' (serving, not ready) pid 42  ingress http://127.0.0.1:8080/"
    assert lines[1].split() == [
        "POD",
        "SERVICE",
        "VERSION",
        "STATE",
        "ADDRESS",
        "CONFIG",
        "XDS",
        "TLS",
        "CERT",
    ]
    assert lines[2].split() == [
        "shop-web-v1-0",
        "web",
        "v1",
        "ready",
        "172.18.0.3",
        "ab12cd34",
        "ACK",
        "-",
        "-",
    ]
    assert lines[3].split()[:4] == ["shop-web-v2-0", "web", "v2", "nacked"]
    assert lines[3].endswith("NACK (Listener)  -    -")
    assert lines[4] == "  └ config NACKed: bad listener"  # one line, however Envoy wrapped it


def test_ps_lists_failed_versions_problems_and_a_lost_engine() -> None:
    state = _state(
        failed=(api.Failure("db", "v9", "image db:9 not found"),),
        problems=("devmesh.yaml:3:5: services.db.port: expected an integer",),
        engine=api.EngineStatus(ok=False, detail="cannot reach the Docker engine"),
    )
    text = views.ps_table(state)
    assert "db       v9       failed" in text.replace("  -", "")
    assert "  └ image db:9 not found" in text
    assert "mesh file problem (the last good config serves on): devmesh.yaml:3:5" in text
    assert "the container engine does not answer: cannot reach the Docker engine" in text


def test_ps_without_a_daemon_says_so() -> None:
    state = api.MeshState("shop", "shop", api.Phase.NO_DAEMON, False)
    assert views.ps_table(state).splitlines()[0] == "mesh 'shop' (no daemon)"


def test_not_ready_names_each_failure_once_and_each_waiting_pod_with_its_state() -> None:
    failed = api.Failure("db", "default", "app exiting (exit code 3, restarted 2 times)")
    lines = views.not_ready_lines(
        _state(
            READY, CRASHING, NACKED, failed=(failed,), gateway=api.Gateway("g", "created", False)
        )
    )
    assert lines == [
        "  db/default: app exiting (exit code 3, restarted 2 times)",
        "  web/v2 (shop-web-v2-0): nacked: config NACKed: bad\n  listener",
        "  gateway: created, xDS -",
    ]


def test_a_gateway_the_engine_would_not_start_says_why_in_up_and_ps() -> None:
    why = "cannot start: a host port is already in use (127.0.0.1:19600)"
    state = _state(READY, gateway=api.Gateway("g", "missing", False, reason=why))
    assert views.not_ready_lines(state) == [f"  gateway: missing, xDS -: {why}"]
    assert f"gateway: {why}" in views.ps_table(state).splitlines()


def test_urls_list_the_ingress_and_each_service() -> None:
    gw = api.Gateway("g", "running", True, url="http://127.0.0.1:8080/", services={"web": "u"})
    assert views.url_lines(_state(gateway=gw)) == ["ingress: http://127.0.0.1:8080/", "  web: u"]
    assert views.url_lines(_state()) == []


@pytest.mark.parametrize(
    ("several", "text"), [(False, "hello"), (True, "shop-web-v1-0 | hello")], ids=["one", "several"]
)
def test_log_lines_are_prefixed_by_pod_when_there_are_several(several: bool, text: str) -> None:
    assert views.log_line(api.LogLine("shop-web-v1-0", "hello"), several) == text


def test_json_is_the_apis_encoding() -> None:
    data = json.loads(views.as_json(_state(READY)))
    assert data["phase"] == "serving"
    assert data["pods"][0]["state"] == "ready"
    assert data["pods"][0]["xds"]["synced"] is True


def test_not_ready_names_a_build_under_way_with_its_step() -> None:
    state = api.MeshState(
        "m",
        "m",
        api.Phase.SERVING,
        False,
        builds=(
            api.BuildStatus("web", "v2", True, "step 2/3 RUN make"),
            api.BuildStatus("api", "v1", False, "", "build failed: Dockerfile:3: x"),
        ),
    )
    assert views.not_ready_lines(state) == ["  web/v2: building: step 2/3 RUN make"]


def test_ps_shows_identity_mode_time_left_and_the_callers_refused() -> None:
    tls = api.PodTls("spiffe://devmesh.local/mesh/shop/service/web", "STRICT", 1000.0 + 7260)
    pod = dataclasses.replace(READY, tls=tls)
    stats = api.Stats(
        time=1000.0,
        sidecars=(
            api.SidecarStats(
                "shop-web-v1-0",
                "web",
                "v1",
                denials=(api.Denial("other", 3), api.Denial(api.GATEWAY_CALLER, 1)),
            ),
        ),
    )
    lines = views.ps_table(_state(pod), stats, now=1000.0).splitlines()
    assert lines[2].split()[-2:] == ["STRICT", "2h01m"]
    assert lines[3].split() == [
        "·", "spiffe://devmesh.local/mesh/shop/service/web",
        "denied:", "gateway", "1,", "other", "3",
    ]  # fmt: skip
    expired = views.ps_table(_state(pod), None, now=1000.0 + 8000).splitlines()
    assert expired[2].split()[-1] == "expired"


def test_ls_table_shows_daemons_and_instances_left_without_one() -> None:
    from devmesh.daemon.launcher import Instance

    serving = api.MeshState(
        "shop",
        "shop",
        api.Phase.SERVING,
        False,
        file="/m/devmesh.yaml",
        pid=7,
        pods=(
            api.Pod("shop-a-v1-0", "a", "v1", 0, api.PodState.READY),
            api.Pod("shop-b-v1-0", "b", "v1", 0, api.PodState.STARTING),
        ),
        gateway=api.Gateway("shop-gateway", "running", True, url="http://127.0.0.1:8080/"),
    )
    table = views.ls_table([Instance("shop", 7, serving), Instance("old", 0, None, running=3)])
    head, shop, old = table.splitlines()
    assert head.split() == ["PROJECT", "STATE", "PODS", "URL", "FILE"]
    assert shop.split() == [
        "shop",
        "serving,",
        "not",
        "ready",
        "1/2",
        "http://127.0.0.1:8080/",
        "/m/devmesh.yaml",
    ]
    failed = dataclasses.replace(serving, failed=(api.Failure("c", "v1", "no image"),))
    _, with_failed, _ = views.ls_table(
        [Instance("shop", 7, failed), Instance("old", 0, None, running=3)]
    ).splitlines()
    assert "1/2 +1 version(s) failed" in with_failed  # not counted among the pods
    head_line = views.ps_table(failed).splitlines()[0]
    assert head_line.startswith("mesh 'shop' (serving, not ready: 1 version(s) cannot run) pid 7")
    assert old.split()[:3] == ["old", "no", "daemon"] and "3 containers running" in old
    assert views.instance_json(Instance("old", 0, None, running=3))["daemon"] is False


def test_a_version_with_several_failed_pods_counts_once() -> None:
    failures = tuple(api.Failure("c", "v1", f"replica {i}: no image") for i in range(3))
    state = _state(READY, pid=7, failed=(*failures, api.Failure("d", "v2", "no image")))
    assert views.readiness(state) == "not ready: 2 version(s) cannot run"
