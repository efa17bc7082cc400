"""Transport tcp, its pure parts: the choice, the tcp bootstrap, the tcp container specs (no
host path anywhere), the engine-reported health, and the pushed stats' decoding."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from devmesh.adapters.envoy_admin import STATS_FILTER
from devmesh.adapters.metrics_service import StreamMetricsMessage, add_buckets, parse_pushed
from devmesh.core.load import load as load_text
from devmesh.core.transport import (
    HOST_GATEWAY,
    EngineFacts,
    Transport,
    TransportError,
    choose,
    parse_address,
)
from devmesh.daemon.controller import _reasons_from
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.health import NOT_CHECKED, EngineHealth, HealthMonitor, Result, Target
from devmesh.envoy.bootstrap import XdsTcp, ads_bootstrap
from devmesh.plan.desired import (
    ADMIN_DIR,
    POD_MOUNT,
    PROBE_BINARY,
    ContainerSpec,
    Inputs,
    desired,
    stable_hash,
)

SHOP = """\
mesh: shop
ingress:
  port: 8080
  routes:
    - {name: site, match: {path_prefix: /}, service: frontend}
services:
  frontend:
    port: 8080
    image: web:1
    calls: [catalog]
  catalog:
    port: 8080
    image: cat:1
    health: {path: /healthz, interval: 500ms}
"""


@pytest.mark.parametrize(
    ("facts", "want"),
    [
        (EngineFacts("", ""), Transport.UNIX),
        (EngineFacts("unix:///var/run/docker.sock", "Debian GNU/Linux 12"), Transport.UNIX),
        (EngineFacts("tcp://127.0.0.1:2375", ""), Transport.TCP),
        (EngineFacts("ssh://me@box", ""), Transport.TCP),
        (EngineFacts("", "Docker Desktop"), Transport.TCP),
        (EngineFacts("unix:///Users/me/.docker/run/docker.sock", "Docker Desktop"), Transport.TCP),
        (EngineFacts("", "", context="desktop-linux"), Transport.TCP),
        (EngineFacts("tcp://127.0.0.1:2375", "", forced="unix"), Transport.UNIX),
        (EngineFacts("", "Debian", forced=" TCP "), Transport.TCP),
        (EngineFacts("npipe:////./pipe/docker_engine", ""), Transport.TCP),
    ],
    ids=[
        "default-socket",
        "unix-socket",
        "tcp-url",
        "ssh-url",
        "desktop-info",
        "desktop-on-a-unix-socket",
        "desktop-context",
        "forced-unix",
        "forced-tcp",
        "windows-pipe",
    ],
)
def test_transport_is_chosen_from_what_the_engine_is(facts: EngineFacts, want: Transport) -> None:
    got, why = choose(facts)
    assert got is want
    assert why


def test_a_transport_that_is_not_one_is_refused_naming_the_variable() -> None:
    with pytest.raises(TransportError, match="DEVMESH_TRANSPORT='udp'"):
        choose(EngineFacts("", "", forced="udp"))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("host.docker.internal:7000", ("host.docker.internal", 7000)),
        ("10.0.2.2:1", ("10.0.2.2", 1)),
    ],
)
def test_xds_address_parses(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["nohost", ":80", "h:0", "h:99999", "h:x"])
def test_a_bad_xds_address_is_refused(text: str) -> None:
    with pytest.raises(TransportError, match="DEVMESH_XDS_ADDRESS"):
        parse_address(text)


TCP = XdsTcp(HOST_GATEWAY, 40123, "t" * 43)


def _xds_cluster(bootstrap: dict) -> dict:  # type: ignore[type-arg]
    return next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "devmesh-xds")


def test_tcp_bootstrap_dials_the_host_gateway_with_the_token_on_every_request() -> None:
    config = ads_bootstrap("n", "c", "", "/devmesh-admin/admin.sock", tcp=TCP)
    cluster = _xds_cluster(config)
    assert cluster["type"] == "STRICT_DNS"  # a name the pod's /etc/hosts has
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"] == {"socket_address": {"address": HOST_GATEWAY, "port_value": 40123}}
    options = next(iter(cluster["typed_extension_protocol_options"].values()))
    header = options["http_filters"][0]["typed_config"]["mutations"]["request_mutations"][0]
    assert header["append"]["header"] == {"key": "authorization", "value": f"Bearer {TCP.token}"}
    assert options["http_filters"][-1]["name"] == "envoy.filters.http.upstream_codec"
    # the stats are pushed over the same (authenticated) cluster, once a second
    sink = config["stats_sinks"][-1]
    assert sink["name"] == "envoy.stat_sinks.metrics_service"
    assert sink["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "devmesh-xds"
    assert config["stats_flush_interval"] == "1s"


def test_tcp_bootstrap_to_an_address_is_static() -> None:
    config = ads_bootstrap("n", "c", "", "/a.sock", tcp=dataclasses.replace(TCP, host="10.0.2.2"))
    assert _xds_cluster(config)["type"] == "STATIC"


def test_unix_bootstrap_has_no_token_and_no_pushed_stats() -> None:
    config = ads_bootstrap("n", "c", "/devmesh-xds/xds.sock", "/devmesh/admin.sock")
    text = json.dumps(config)
    assert "authorization" not in text and "metrics_service" not in text
    assert "stats_flush_interval" not in config


def _inputs(transport: Transport) -> Inputs:
    return Inputs(
        project="p",
        state_dir="/state/p",
        envoy_image="envoy",
        pause_image="pause",
        app_images={("frontend", "default"): "web", ("catalog", "default"): "cat"},
        transport=transport,
        xds_tcp=TCP if transport is Transport.TCP else None,
        host="172.18.0.1",
    )


def _all(want: object) -> list[ContainerSpec]:
    specs: list[ContainerSpec] = []
    for pod in want.pods:  # type: ignore[attr-defined]
        specs += [pod.pause, pod.app, pod.sidecar, pod.guard]
    if want.gateway is not None:  # type: ignore[attr-defined]
        specs.append(want.gateway)  # type: ignore[attr-defined]
    return specs


def test_tcp_specs_mount_nothing_of_the_host() -> None:
    want = desired(load_text(SHOP), _inputs(Transport.TCP))
    for spec in _all(want):
        assert spec.binds == (), spec.name
        assert spec.files == (), spec.name  # nothing written on the host for it
        assert "/state/p" not in json.dumps(dataclasses.asdict(spec)), spec.name


def test_tcp_proxies_get_their_bootstrap_by_archive_into_a_volume_of_their_own() -> None:
    want = desired(load_text(SHOP), _inputs(Transport.TCP))
    proxies = [p.sidecar for p in want.pods] + [want.gateway]
    for spec in proxies:
        assert spec is not None
        assert spec.volumes == (POD_MOUNT,)
        assert (ADMIN_DIR, spec.tmpfs[0][1]) == spec.tmpfs[0]
        ((path, text),) = spec.archive
        assert path == f"{POD_MOUNT}/bootstrap.json"
        assert TCP.token in text
        assert spec.read_only  # the volume and tmpfs are the only writable places
    assert want.gateway is not None
    assert dict(want.gateway.extra_hosts) == {HOST_GATEWAY: "host-gateway"}


def test_tcp_pod_owner_has_the_hosts_and_the_health_check() -> None:
    want = desired(load_text(SHOP), _inputs(Transport.TCP))
    pods = {p.service: p for p in want.pods}
    frontend, catalog = pods["frontend"].pause, pods["catalog"].pause
    hosts = dict(frontend.extra_hosts)
    assert hosts[HOST_GATEWAY] == "host-gateway"
    assert "catalog" in hosts and hosts["catalog"].startswith("127.")
    assert "catalog" not in dict(catalog.extra_hosts)  # only what it calls
    assert frontend.healthcheck is not None and catalog.healthcheck is not None
    assert frontend.healthcheck.test == (PROBE_BINARY, "-t1000", "8080")
    assert catalog.healthcheck.test == (PROBE_BINARY, "-t1000", "8080", "/healthz")
    assert catalog.healthcheck.interval_ms == 500
    assert catalog.healthcheck.timeout_ms > 1000  # the app's 1 s, and the engine's exec
    guard = pods["catalog"].guard
    assert guard.archive and "-s 172.18.0.1" not in guard.archive[0][1]  # no host probes


def test_unix_specs_are_as_before_tcp_existed() -> None:
    want = desired(load_text(SHOP), _inputs(Transport.UNIX))
    for spec in _all(want):
        assert not (spec.archive or spec.volumes or spec.extra_hosts or spec.healthcheck)
        data = dataclasses.asdict(spec)
        # the hash leaves the tcp-only fields out when empty: unix pods keep their hashes
        for key in ("archive", "volumes", "extra_hosts", "healthcheck"):
            assert key in data
    sidecar = want.pods[0].sidecar
    before = {
        k: v
        for k, v in dataclasses.asdict(sidecar).items()
        if k not in ("name", "archive", "volumes", "extra_hosts", "healthcheck")
    }
    before["files"] = [(path, stable_hash(text)) for path, text in sidecar.files]
    assert sidecar.config_hash == stable_hash(before)


def test_tcp_and_unix_pods_differ_in_hash() -> None:
    mesh = load_text(SHOP)
    unix = desired(mesh, _inputs(Transport.UNIX)).pods[0]
    tcp = desired(mesh, _inputs(Transport.TCP)).pods[0]
    assert unix.sidecar.config_hash != tcp.sidecar.config_hash


# -- health reported by the engine ---------------------------------------------------------


def test_engine_health_takes_events_over_an_older_look() -> None:
    health = EngineHealth()
    health.listed({"pod-a": "healthy", "pod-b": "starting"})
    assert health.check("pod-a", 80, None) == (True, "")
    assert health.check("pod-b", 80, None) == (
        False,
        "port 80: the engine's health check has not passed yet",
    )
    assert health.check("pod-c", 80, None) == (False, NOT_CHECKED)  # nothing heard of it
    health.reported("pod-a", "unhealthy")
    health.listed({"pod-a": "healthy", "pod-b": "starting"})  # a look from before the event
    ok, why = health.check("pod-a", 80, None)
    assert not ok and "port 80" in why
    health.listed({"pod-b": ""})  # pod-a is gone
    assert health.check("pod-a", 80, None) == (False, NOT_CHECKED)


def test_one_unhealthy_report_drops_a_pod_the_engine_counted_failures_for() -> None:
    health = EngineHealth()
    health.reported("pod-a", "healthy")
    now = [0.0]
    changes: list[object] = []
    monitor = HealthMonitor(
        changes.append, EventLog(), health.check, clock=lambda: now[0], failures_to_drop=1
    )
    monitor.set_targets((Target("pod-a", "app1", "pod-a", 80, None, True, "running"),))
    assert monitor.probe_now()["pod-a"].ok
    health.reported("pod-a", "unhealthy")
    assert not monitor.probe_now()["pod-a"].ok
    monitor.stop()


# -- stats pushed by Envoy ----------------------------------------------------------------


def _message(rq_total: int, buckets: list[tuple[float, int]]) -> object:
    message = StreamMetricsMessage()
    message.identifier.node.id = "p-a-v1-0-sidecar"
    counter = message.envoy_metrics.add(name="cluster.a|v1.upstream_rq_total", type=0)
    counter.metric.add().counter.value = rq_total
    other = message.envoy_metrics.add(name="server.uptime", type=1)
    other.metric.add().gauge.value = 5
    histogram = message.envoy_metrics.add(name="cluster.a|v1.upstream_rq_time", type=4)
    h = histogram.metric.add().histogram
    for bound, count in buckets:
        h.bucket.add(upper_bound=bound, cumulative_count=count)
    return StreamMetricsMessage.FromString(message.SerializeToString())


def test_pushed_stats_read_as_the_admin_reads_them() -> None:
    wanted = re.compile(STATS_FILTER)
    got = parse_pushed(_message(7, [(0.5, 1), (1, 3)]), wanted)
    assert got == {
        "cluster.a|v1.upstream_rq_total": 7,
        "cluster.a|v1.upstream_rq_time@0.5": 1,
        "cluster.a|v1.upstream_rq_time@1": 3,
    }


def test_pushed_histograms_are_added_up_over_flushes() -> None:
    wanted = re.compile(STATS_FILTER)
    sums: dict[str, float] = {}
    add_buckets(sums, _message(1, [(0.5, 1), (1, 3)]), wanted)
    add_buckets(sums, _message(2, [(0.5, 0), (1, 2)]), wanted)
    assert sums == {"cluster.a|v1.upstream_rq_time@0.5": 1, "cluster.a|v1.upstream_rq_time@1": 5}


def test_tcp_bootstraps_pass_envoys_own_validation(tmp_path: Path) -> None:
    from devmesh.adapters.envoy_binary import validate

    want = desired(load_text(SHOP), _inputs(Transport.TCP))
    specs = [want.pods[0].sidecar, want.gateway]
    for spec in specs:
        assert spec is not None
        config = tmp_path / f"{spec.name}.json"
        config.write_text(spec.archive[0][1])
        verdict = validate(config)
        assert verdict.ok, verdict.detail


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_ps_and_the_tui_name_the_transport(transport: str) -> None:
    from devmesh.api import types as api
    from devmesh.cli import views
    from devmesh.tui.model import header_text

    state = api.MeshState("shop", "shop", api.Phase.SERVING, True, pid=7, transport=transport)
    assert views.ps_table(state).splitlines()[0] == (
        f"mesh 'shop' (serving, ready) pid 7 transport {transport}"
    )
    assert f"· via {transport}" in header_text(state, False, width=200)
    assert "via" not in header_text(api.MeshState("shop", "shop", api.Phase.SERVING, True), False)


def test_what_tcp_cannot_serve_is_said_naming_the_transport() -> None:
    from devmesh.core.transport import tcp_unsupported

    assert tcp_unsupported(load_text(SHOP)) == []
    mesh = load_text(
        SHOP.replace(
            "ingress:",
            "observability:\n  statsd: {address: 127.0.0.1:8125}\n"
            "  tracing: {provider: xray}\ningress:",
        )
    )
    problems = tcp_unsupported(mesh)
    assert len(problems) == 2
    assert all("needs transport unix" in p for p in problems)


def test_a_new_reason_for_a_failing_pod_is_noted_without_a_change() -> None:
    """ps showed "has not passed yet" for 30 s while the engine said unhealthy: only a pod
    passing or failing was announced, so the loop kept the first reason it was given."""
    health = EngineHealth()
    health.listed({"pod-a": "starting"})
    changes: list[object] = []
    noted: list[Mapping[str, Result]] = []
    monitor = HealthMonitor(
        changes.append, EventLog(), health.check, failures_to_drop=1, on_noted=noted.append
    )
    monitor.set_targets((Target("pod-a", "app1", "pod-a", 80, None, True, "running"),))
    monitor.start()
    try:

        def reason() -> str:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not noted:
                time.sleep(0.01)
            return noted[-1]["pod-a"].reason if noted else ""

        assert "has not passed yet" in reason()
        noted.clear()
        health.reported("pod-a", "unhealthy")
        monitor.poke()
        assert "the engine's health check fails" in reason()
        assert changes == []  # it failed before and fails now: nothing to push
    finally:
        monitor.stop()


def test_a_note_takes_reasons_only_where_passing_is_unchanged() -> None:
    held = {"a": Result("1", False, "old"), "b": Result("2", True, ""), "c": Result("3", False)}
    noted = {"a": Result("1", False, "new"), "b": Result("2", False, "x"), "c": Result("9")}
    out = _reasons_from(held, noted)
    assert out == {"a": Result("1", False, "new"), "b": held["b"], "c": held["c"]}
