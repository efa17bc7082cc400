"""The daemon's loop without Docker: a fake engine that keeps containers in a dict, a fake
xDS cache, a fake probe, a clock the test moves. The loop's steps are driven directly."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest

from devmesh.adapters.engine import ContainerInfo, EngineError, EngineUnavailable
from devmesh.adapters.images import ImageChoice, ImageError
from devmesh.adapters.xds_cache import NodeStatus
from devmesh.api import types as api
from devmesh.api.types import Phase
from devmesh.core.limits import MAX_FILE_BYTES
from devmesh.core.load import load_path
from devmesh.core.model import Abort, Fault
from devmesh.daemon.controller import (
    Acked,
    ContainerDied,
    Controller,
    FileChanged,
    ImagesReady,
    Tick,
)
from devmesh.daemon.errors import Refused
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.meshsource import read_mesh
from devmesh.daemon.reconciler import RECHECK
from devmesh.daemon.state import StateDir
from devmesh.daemon.status import mesh_state
from devmesh.envoy.snapshot import LISTENER, Snapshot, SnapshotError
from devmesh.plan.plan import Observed, Plan

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop" / "devmesh.yaml"


class FakeEngine:
    """Containers as the engine would report them; `lag` more looks report a killed
    container as still running (Docker's list trails its `die` event)."""

    def __init__(self) -> None:
        self.containers_: dict[str, tuple[Observed, ContainerInfo]] = {}
        self.applied: list[Plan] = []
        self.down = False
        self.lag: dict[str, int] = {}
        self.restarted: list[str] = []
        self.looks = 0
        self.network = False
        self.removed: list[frozenset[str]] = []  # what housekeeping removed, each time
        self._ids = 0

    def _check(self) -> None:
        if self.down:
            raise EngineUnavailable("connection refused")

    def look(self, project: str) -> tuple[list[Observed], dict[str, ContainerInfo]]:
        self._check()
        self.looks += 1
        observed, infos = [], {}
        for name, (obs, info) in self.containers_.items():
            if self.lag.get(name):
                self.lag[name] -= 1
                obs = dataclasses.replace(obs, state="running")
                info = dataclasses.replace(info, state="running")
            observed.append(obs)
            infos[name] = info
        return observed, infos

    def containers(self, project: str) -> dict[str, ContainerInfo]:
        return self.look(project)[1]

    def network_exists(self, name: str) -> bool:
        self._check()
        return self.network or bool(self.applied)

    def ensure_network(self, name: str, project: str) -> None:
        self._check()
        self.network = True

    def network_gateway(self, name: str) -> str | None:
        self._check()
        return "10.9.0.254" if self.network_exists(name) else None

    def apply(self, plan: Plan, project: str, network: str, progress: Any) -> list[EngineError]:
        self._check()
        self.applied.append(plan)
        gone = set(plan.remove) | {cid for _, old in plan.replace_pods for cid in old}
        gone |= {old for _, old in plan.replace}
        self.containers_ = {n: c for n, c in self.containers_.items() if c[0].id not in gone}
        specs = [c for p in plan.create_pods for c in p.containers]
        specs += [c for p, _ in plan.replace_pods for c in p.containers]
        specs += list(plan.create) + [s for s, _ in plan.replace]
        for spec in specs:
            self._ids += 1
            labels = dict(spec.all_labels())
            obs = Observed(
                id=f"id{self._ids}",
                name=spec.name,
                role=spec.role,
                pod=labels.get("dev.devmesh.pod", spec.name),
                service=labels.get("dev.devmesh.service", ""),
                version=labels.get("dev.devmesh.version", ""),
                config_hash=spec.config_hash,
                state="running",
                replica=int(labels.get("dev.devmesh.replica", "0")),
                generation=int(labels.get("dev.devmesh.generation", "0")),
            )
            ip = f"10.9.0.{self._ids}" if spec.role == "pod" else None
            self.containers_[spec.name] = (
                obs,
                ContainerInfo(obs.id, spec.name, "running", 0, 0, ip, {}),
            )
        return []

    def remove(self, ids: Any) -> list[EngineError]:
        self.removed.append(frozenset(ids))
        self.containers_ = {n: c for n, c in self.containers_.items() if c[0].id not in ids}
        return []

    def make_spare(self, pod: Any, progress: Any) -> None:
        self.apply(Plan(create=(pod.pause, pod.sidecar)), "", "", progress)

    def kill(self, name: str, lag: int = 0) -> str:
        obs, info = self.containers_[name]
        self.containers_[name] = (
            dataclasses.replace(obs, state="exited"),
            dataclasses.replace(info, state="exited", exit_code=137),
        )
        self.lag[name] = lag
        return obs.id

    def restart(self, names: list[str]) -> None:
        self.restarted += names

    def joined_before_owner(self, project: str) -> list[str]:
        return []


class FakeImages:
    envoy = ImageChoice("devmesh/envoy:1", "sha256:envoy", "present")
    pause = ImageChoice("devmesh/pause:1", "sha256:pause", "present")
    guard = ImageChoice("devmesh/netguard:1", "sha256:guard", "present")

    def __init__(self) -> None:
        self.missing: set[str] = set()

    def ensure_base(self) -> None:
        pass

    def forget(self) -> None:
        pass

    def build_now(self, mesh: Any, again: bool = False) -> None:
        pass  # builds: tests/e2e/test_develop.py, with a real engine

    def states(self) -> tuple[Any, ...]:
        return ()

    def stop(self) -> None:
        pass

    def app(self, base_dir: str, service: str, version: Any) -> str:
        if service in self.missing:
            raise ImageError(f"image {service}:1 not found (pulling is off: DEVMESH_PULL=never)")
        return f"sha256:{service}"


class FakeXds:
    def __init__(self) -> None:
        self.published: list[Mapping[str, Snapshot]] = []
        self.refuse = False
        self.unconfigured: set[str] = set()  # node ids that have not ACKed a config yet

    def status(self, node_id: str) -> NodeStatus:
        acked = {} if node_id in self.unconfigured else {LISTENER: "1"}
        return NodeStatus(node_id, "group", True, acked, {}, None)

    def set_snapshots(self, snapshots: Mapping[str, Snapshot]) -> frozenset[str]:
        if self.refuse:
            raise SnapshotError(["catalog: a resource Envoy would not take"])
        self.published.append(snapshots)
        return frozenset(snapshots)


class Inline(Executor):
    """Housekeeping carried out at once, on the loop's thread: a test sees its outcome."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        job: Future[Any] = Future()
        try:
            job.set_result(fn(*args, **kwargs))
        except Exception as exc:
            job.set_exception(exc)
        return job


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop(tmp_path: Path) -> tuple[Controller, FakeEngine, FakeXds, FakeImages, Clock]:
    engine, xds, images, clock = FakeEngine(), FakeXds(), FakeImages(), Clock()
    controller = Controller(
        SHOP,
        load_path(str(SHOP)),
        "t",
        engine,  # type: ignore[arg-type]
        images,  # type: ignore[arg-type]
        xds,  # type: ignore[arg-type]
        StateDir(tmp_path / "t"),
        EventLog(),
        ingress_port=18080,
        clock=clock,
        check=lambda ip, port, health: (True, ""),
        housekeeping=Inline(),
    )
    controller._reconcile("start")
    return controller, engine, xds, images, clock


def _healthy(controller: Controller) -> None:
    controller._set_targets()
    controller._health = controller.health.probe_now()
    controller._publish()


def test_second_pass_over_an_unchanged_world_plans_nothing(loop: Any) -> None:
    controller, engine, xds, _, _ = loop
    assert len(engine.applied) == 1 and not engine.applied[0].empty
    published = len(xds.published)
    controller._step([Tick()])
    controller._step([Tick()])
    assert len(engine.applied) == 1  # nothing to do: apply is not even called
    assert len(xds.published) == published  # and nothing new is pushed


def test_healthy_pods_get_traffic(loop: Any) -> None:
    controller, _, xds, _, _ = loop
    _healthy(controller)
    last = xds.published[-1]
    catalog = next(g for g in last if g.endswith("/frontend/default"))
    assert catalog
    controller._set_view()
    state = mesh_state(controller.view, lambda node: (None, False), "t", "f", None, ())
    assert {p.state for p in state.pods} == {api.PodState.SYNCING}  # no Envoy ACKed: fake xDS


def test_a_dead_container_is_acted_on_at_once_and_looked_at_until_the_engine_agrees(
    loop: Any,
) -> None:
    controller, engine, _, _, clock = loop
    gateway = "t-gateway"
    cid = engine.kill(gateway, lag=2)  # the engine's list says "running" twice more
    controller._step([ContainerDied(gateway, cid)])
    assert engine.applied[-1].start == (cid,)  # Docker's event is believed, not its list
    assert controller.reconciler.next_wake() == pytest.approx(clock.now + RECHECK)
    controller._step([Tick()])
    controller._step([Tick()])  # the list agrees now: the gateway is started (again)
    assert engine.applied[-1].start == (cid,)
    clock.now += 2  # past RECHECK_FOR: back to the safety-net timer
    controller._step([Tick()])
    assert controller.reconciler.next_wake() > clock.now + RECHECK


def test_a_fault_that_cannot_be_served_is_refused_and_not_kept(loop: Any) -> None:
    controller, _, xds, _, _ = loop
    xds.refuse = True
    with pytest.raises(Refused, match="cannot be served"):
        controller.set_fault("catalog", None, Fault(abort=Abort(percent=50, http_status=503)))
    assert controller.overrides() == {}
    xds.refuse = False
    assert controller.set_fault("catalog", None, Fault(abort=Abort(100, 503))) == "main"
    assert set(controller.overrides()) == {("catalog", "main")}


@pytest.mark.parametrize(
    ("service", "route", "code"),
    [
        pytest.param("nope", None, "not_found", id="unknown-service"),
        pytest.param("catalog", "nope", "not_found", id="unknown-route"),
    ],
)
def test_fault_on_what_does_not_exist_is_refused(
    loop: Any, service: str, route: str | None, code: str
) -> None:
    controller = loop[0]
    with pytest.raises(Refused) as caught:
        controller.set_fault(service, route, Fault(abort=Abort(100, 503)))
    assert caught.value.code == code


def test_engine_loss_shows_and_its_return_reconciles(loop: Any) -> None:
    controller, engine, _, _, clock = loop
    engine.down = True
    controller._step([Tick()])
    controller._set_view()
    state = mesh_state(controller.view, lambda node: (None, False), "t", "f", None, ())
    assert not state.ready and not state.engine.ok
    assert {p.state for p in state.pods} == {api.PodState.ENGINE_DOWN}
    assert controller.reconciler.next_wake() <= clock.now + 1.0  # looks again soon
    engine.down = False
    cid = engine.kill("t-gateway")  # it went down with the engine
    controller._step([Tick()])
    controller._set_view()
    assert controller.view.engine_ok
    assert engine.applied[-1].start == (cid,)


def test_a_missing_image_fails_its_version_and_says_why(loop: Any) -> None:
    controller, _, _, images, _ = loop
    images.missing.add("stock")
    controller._step([Tick()])
    controller._set_view()
    state = mesh_state(controller.view, lambda node: (None, False), "t", "f", None, ())
    assert [(f.service, f.version) for f in state.failed] == [("stock", "default")]
    assert "not found" in state.failed[0].reason
    assert not state.ready
    assert not state.only_permanent_failures_left  # the others are not ready either (no ACK)


def test_an_invalid_save_keeps_the_last_good_mesh(loop: Any, tmp_path: Path) -> None:
    controller = loop[0]
    bad = tmp_path / "devmesh.yaml"
    bad.write_text("mesh: shop\nservices: {catalog: {port: eighty}}\n")
    read = read_mesh(bad, str(tmp_path))
    assert read.mesh is None and read.problems
    before = controller.view.mesh
    controller._step([FileChanged(read)])
    controller._set_view()
    assert controller.view.mesh == before
    assert controller.view.problems == read.problems


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: __import__("os").mkfifo(p), id="fifo"),
        pytest.param(lambda p: p.write_bytes(b"#" * (MAX_FILE_BYTES + 1)), id="too-large"),
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: None, id="missing"),
    ],
)
def test_the_mesh_source_refuses_at_once_what_is_not_a_mesh_file(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "devmesh.yaml"
    make(path)
    read = read_mesh(path, str(tmp_path))  # a FIFO would block a plain open: this must not
    assert read.mesh is None and len(read.problems) == 1


def test_a_new_daemon_adopts_running_pods_without_an_empty_first_push(loop: Any) -> None:
    first, engine, _, images, clock = loop
    xds = FakeXds()
    second = Controller(
        SHOP,
        load_path(str(SHOP)),
        "t",
        engine,
        images,
        xds,  # type: ignore[arg-type]
        first.state,
        EventLog(),
        ingress_port=18080,
        clock=clock,
        check=lambda ip, port, health: (True, ""),
    )
    second.start()
    try:
        assert len(engine.applied) == 1  # nothing recreated: the pods are adopted as they run
        assert len(xds.published) == 1
        served = second.publisher._published[1] if second.publisher._published else {}
        assert sorted(served) == sorted(
            (s.name, v.name) for s in second.view.mesh.services for v in s.versions
        )
    finally:
        second.stop()


def test_the_gateways_hops_are_locked_to_the_host_once_the_network_exists(loop: Any) -> None:
    _, _, xds, _, _ = loop
    gateway = next(s for g, s in xds.published[-1].items() if g.endswith("/gateway"))
    hops = [item for item in gateway.listeners.items if "15100" in json.dumps(item)]
    assert hops and "10.9.0.254" in json.dumps(hops[0])


def test_health_drops_a_pod_only_after_failures_in_a_row() -> None:
    from devmesh.daemon.health import FAILURES_TO_DROP, HealthMonitor, Target

    answers: list[bool] = []
    clock = Clock()
    monitor = HealthMonitor(
        lambda r: None, EventLog(), lambda ip, port, h: (answers.pop(0), "x"), clock
    )
    monitor.set_targets((Target("p", "app1", "10.0.0.1", 80, None, True, "running"),))
    answers.append(True)
    monitor.probe_now()
    assert monitor.results()["p"].ok
    for _ in range(FAILURES_TO_DROP - 1):
        answers.append(False)
        monitor.probe_now()
        assert monitor.results()["p"].ok  # one slow probe under load is not a dead app
    answers.append(False)
    monitor.probe_now()
    assert not monitor.results()["p"].ok
    monitor.stop()


def _synced(node_id: str) -> tuple[NodeStatus, bool]:
    return NodeStatus(node_id, "group", True, {}, {}, None), True


def test_a_hosts_file_that_cannot_be_written_is_an_error_not_ready(loop: Any) -> None:
    """As on a full disk: the write fails, the pass says so, and nothing claims ready."""
    controller = loop[0]
    _healthy(controller)
    controller._phase = Phase.SERVING
    controller._set_view()
    assert mesh_state(controller.view, _synced, "t", "f", None, ()).ready
    pods = controller.state.path / "pods"
    victim = next(p for p in pods.iterdir())
    (victim / "hosts").unlink()
    (victim / "hosts").mkdir()  # opening it to write now fails (IsADirectoryError)
    controller._step([Tick()])
    controller._set_view()
    assert any("cannot write" in e for e in controller.view.errors)
    assert not mesh_state(controller.view, _synced, "t", "f", None, ()).ready


def test_routes_are_served_as_typed_values_with_the_api_fault_marked(loop: Any) -> None:
    from devmesh.daemon.status import routes

    controller = loop[0]
    controller.set_fault("catalog", None, Fault(abort=Abort(50, 503)))
    controller._set_view()
    served = routes(controller.view.served, controller.view.overrides)
    catalog = served.service("catalog")
    assert catalog is not None
    main = next(r for r in catalog.routes if r.name == "main")
    assert main.fault_override and main.fault is not None and main.fault.abort is not None
    assert main.fault.abort.status == 503 and main.fault.abort.percent == 50
    assert sum(main.to.values()) == 100
    assert served.ingress is not None and served.ingress.address.endswith(":18080")


def _env_changed(controller: Controller, tmp_path: Path, value: str) -> None:
    """Save the shop with catalog/v1 given one more env variable, as the watcher would."""
    text = SHOP.read_text().replace("v1: {}", f'v1: {{env: {{ROLL: "{value}"}}}}')
    changed = tmp_path / "devmesh.yaml"
    changed.write_text(text)
    controller.apply_mesh(value, load_path(str(changed)), "save", rebuild=False)


def _catalog_v1(controller: Controller) -> list[str]:
    served = controller.publisher._published
    assert served is not None
    return sorted(served[1].get(("catalog", "v1"), []))


def test_an_env_change_rolls_the_pod_new_beside_old_then_the_old_drains(
    loop: Any, tmp_path: Path
) -> None:
    controller, engine, xds, _, clock = loop
    _healthy(controller)
    old_ip = _catalog_v1(controller)
    assert len(old_ip) == 1 and "t-catalog-v1-0" in engine.containers_
    new = "t-catalog-v1-0-g1"
    xds.unconfigured.add(f"{new}-sidecar")  # its Envoy has not ACKed yet
    _env_changed(controller, tmp_path, "1")
    # The new pod runs beside the old, which alone serves; ps shows both.
    assert {"t-catalog-v1-0", new} <= set(engine.containers_)
    assert not engine.applied[-1].replace and not engine.applied[-1].remove
    _healthy(controller)  # the new app passes its check, but its sidecar has no config
    controller._step([Tick()])
    assert _catalog_v1(controller) == old_ip
    controller._set_view()
    state = mesh_state(controller.view, _synced, "t", "f", None, ())
    pods = {p.pod: p for p in state.pods if p.service == "catalog" and p.version == "v1"}
    assert set(pods) == {"t-catalog-v1-0", new}
    assert pods["t-catalog-v1-0"].retiring and pods["t-catalog-v1-0"].ready
    assert controller.reconciler.next_wake() <= clock() + 0.1  # the loop looks again soon
    # Its sidecar ACKs: it joins the endpoints and the old one leaves them, draining.
    xds.unconfigured.clear()
    controller._step([Tick()])
    new_ip = _catalog_v1(controller)
    assert len(new_ip) == 1 and new_ip != old_ip
    assert "t-catalog-v1-0" in engine.containers_  # not stopped yet
    controller._set_view()
    # Until every connected Envoy has ACKed that config, the old pod may still get requests:
    # not draining yet (a test saw one answer from it after `ps` said draining).
    gateway = "t-gateway"

    def gateway_behind(node_id: str) -> tuple[NodeStatus, bool]:
        return NodeStatus(node_id, "group", True, {}, {}, None), node_id != gateway

    state = mesh_state(controller.view, gateway_behind, "t", "f", None, ())
    old = next(p for p in state.pods if p.pod == "t-catalog-v1-0")
    assert old.state is api.PodState.READY and "leaving" in old.reason
    state = mesh_state(controller.view, _synced, "t", "f", None, ())
    old = next(p for p in state.pods if p.pod == "t-catalog-v1-0")
    assert old.state is api.PodState.DRAINING
    # The drain ends: the old pod's containers are removed, nothing else is.
    clock.now += 1.0
    controller._step([Tick()])
    assert "t-catalog-v1-0" in engine.containers_
    clock.now += 2.0
    controller._step([Tick()])
    assert {n for n in engine.containers_ if n.startswith("t-catalog-v1")} == {
        new,
        f"{new}-app",
        f"{new}-sidecar",
    }
    assert controller.reconciler.retiring == ()
    applied = len(engine.applied)
    controller._step([Tick()])
    assert len(engine.applied) == applied  # the roll is over: a pass plans nothing


def test_restart_rolls_the_pods_it_names(loop: Any) -> None:
    controller, engine, _, _, _ = loop
    _healthy(controller)
    assert controller.restart("stock", None) == ("t-stock-default-0",)
    controller._step([Tick()])
    assert "t-stock-default-0-g1" in engine.containers_
    assert "t-stock-default-0" in engine.containers_  # serves until the new one does
    assert engine.restarted == []  # nothing restarted in place


def test_a_healthy_pod_joins_its_endpoints_once_its_sidecar_took_a_config(loop: Any) -> None:
    controller, engine, xds, _, _ = loop
    xds.unconfigured.add("t-stock-default-0-sidecar")
    _healthy(controller)
    served = controller.publisher._published
    assert served is not None and ("stock", "default") not in served[1]
    assert controller._unconfigured  # the loop looks again soon ...
    looks = engine.looks
    controller._step([Tick()])
    assert engine.looks == looks  # ... by publishing again, not with a pass
    xds.unconfigured.clear()
    controller._step([Tick()])
    served = controller.publisher._published
    assert served is not None and ("stock", "default") in served[1]
    assert not controller._unconfigured


def test_a_pod_is_not_ready_until_the_config_that_holds_its_endpoint_is_published(
    loop: Any,
) -> None:
    """Its sidecar's ACK is read live, the endpoints only at the next publish: between the
    two the gateway still has no endpoint for it, so `up --wait` must not return yet."""
    controller, _, xds, _, _ = loop
    xds.unconfigured.add("t-stock-default-0-sidecar")
    _healthy(controller)
    controller._phase = Phase.SERVING
    controller._set_view()
    xds.unconfigured.clear()  # the ACK came; no publish has run since
    state = mesh_state(controller.view, _synced, "t", "f", None, ())
    pod = next(p for p in state.pods if p.service == "stock")
    assert pod.state is api.PodState.SYNCING and "endpoints" in pod.reason
    assert not state.ready
    controller._step([Tick()])
    controller._set_view()
    assert mesh_state(controller.view, _synced, "t", "f", None, ()).ready


def test_a_tcp_route_is_described_with_no_path_match() -> None:
    from devmesh.core.load import load
    from devmesh.daemon.status import routes

    mesh = load(
        "mesh: m\nservices:\n"
        "  web: {image: a:1, port: 80}\n"
        "  db: {image: d:1, port: 5432, protocol: tcp, versions: {v1: {}, v2: {}},"
        " routes: [{to: {v1: 90, v2: 10}}]}\n"
    )
    served = routes(mesh, frozenset())
    web, db = served.service("web"), served.service("db")
    assert web is not None and db is not None
    assert [r.match for r in web.routes] == ["path_prefix /"]
    assert [(r.match, r.to) for r in db.routes] == [("", {"v1": 90, "v2": 10})]


def test_the_first_pass_makes_the_network_first_and_guards_pods_with_its_gateway(
    loop: Any,
) -> None:
    """The guard's rules admit the host by the network's gateway address: it is learnt (the
    network made if missing) before the first plan, so no pod is made twice."""
    controller, engine, _, _, _ = loop
    assert engine.network and controller.reconciler.host == "10.9.0.254"
    (first,) = engine.applied
    for pod in first.create_pods:
        (_, rules), *_ = pod.guard.files
        assert "-A INPUT -s 10.9.0.254/32 -j ACCEPT" in rules
    controller._reconcile("again")
    assert len(engine.applied) == 1  # nothing to replace: the rules were right the first time


# -- spares: a version rebuilt on a save keeps a pod made ahead, without its app ------------

WATCHED = SHOP.read_text().replace(
    "    protocol: tcp\n",
    "    protocol: tcp\n    develop: {watch: [{path: app, action: rebuild}]}\n",
)
STOCK = "t-stock-default-0"


@pytest.fixture
def watched(tmp_path: Path) -> tuple[Controller, FakeEngine, FakeImages, Clock]:
    file = tmp_path / "devmesh.yaml"
    file.write_text(WATCHED)
    engine, images, clock = FakeEngine(), FakeImages(), Clock()
    controller = Controller(
        file,
        load_path(str(file)),
        "t",
        engine,  # type: ignore[arg-type]
        images,  # type: ignore[arg-type]
        FakeXds(),  # type: ignore[arg-type]
        StateDir(tmp_path / "t"),
        EventLog(),
        ingress_port=18080,
        clock=clock,
        check=lambda ip, port, health: (True, ""),
        housekeeping=Inline(),
    )
    controller._reconcile("start")
    return controller, engine, images, clock


def test_a_rebuilt_version_gets_a_spare_once_its_pod_serves_and_a_roll_only_adds_its_app(
    watched: Any,
) -> None:
    controller, engine, images, clock = watched
    assert not any(n.startswith(f"{STOCK}-g1") for n in engine.containers_)  # not ready yet
    _healthy(controller)  # stock serves: a pass is due at once, to make its spare
    assert controller.reconciler.next_wake() <= clock()
    controller._step([Tick()])
    assert {n for n in engine.containers_ if n.startswith(f"{STOCK}-g1")} == {
        f"{STOCK}-g1",
        f"{STOCK}-g1-sidecar",
    }
    assert not any(n.startswith("t-catalog-v1-0-g1") for n in engine.containers_)  # not watched
    applied = len(engine.applied)
    controller._step([Tick()])
    assert len(engine.applied) == applied  # the spare is kept as it is
    # A build ends with a new image: the roll takes the spare, and only its app is made.
    images.app = lambda base, service, version: (
        f"sha256:{service}" + ("-new" if service == "stock" else "")
    )
    controller._step([ImagesReady()])
    todo = engine.applied[-1]
    assert [c.name for c in todo.create] == [f"{STOCK}-g1-app"]
    assert not todo.create_pods and not todo.replace_pods
    # The new pod serves: the old one drains, then housekeeping removes it.
    _healthy(controller)
    controller._step([Tick()])
    assert [r.name for r in controller.reconciler.retiring] == [STOCK]
    clock.now += 3.0
    controller._step([Tick()])
    removed = engine.removed[-1]
    assert STOCK not in engine.containers_ and len(removed) == 3
    # Docker's events of what housekeeping removed ask for no pass.
    looks = engine.looks
    controller._step([ContainerDied(STOCK, next(iter(removed)))])
    assert engine.looks == looks


def test_an_envoys_first_ack_publishes_at_once_without_a_pass(loop: Any) -> None:
    controller, engine, xds, _, _ = loop
    xds.unconfigured.add("t-stock-default-0-sidecar")
    _healthy(controller)
    assert controller._unconfigured
    xds.unconfigured.clear()
    looks, published = engine.looks, len(xds.published)
    controller._step([Acked()])
    assert engine.looks == looks and len(xds.published) == published + 1
    assert not controller._unconfigured


def test_a_spare_that_cannot_be_made_is_not_tried_again_in_a_tight_loop(watched: Any) -> None:
    controller, engine, _, clock = watched
    tried: list[str] = []

    def refuse(pod: Any, progress: Any) -> None:
        tried.append(pod.name)
        raise EngineError("cannot close the pod's app port to other pods", pod.name)

    engine.make_spare = refuse
    _healthy(controller)
    controller._step([Tick()])
    controller._step([Tick()])  # it failed: said so, and not made again yet
    assert tried == [f"{STOCK}-g1"]
    assert any("cannot close" in e.detail for e in controller.events.last())
    clock.now += 31.0
    controller._step([Tick()])
    assert tried == [f"{STOCK}-g1"] * 2
