"""desired() and plan(), pure: what should run for a mesh, and what to do about what runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devmesh.core.load import load_path
from devmesh.plan.desired import Desired, Inputs, desired
from devmesh.plan.plan import Observed, Plan, plan

ROOT = Path(__file__).resolve().parents[2]
SHOP = load_path(str(ROOT / "examples" / "shop" / "devmesh.yaml"))


def _inputs(mesh: object = SHOP, failed: dict[tuple[str, str], str] | None = None) -> Inputs:
    services = mesh.services  # type: ignore[attr-defined]
    images = {(s.name, v.name): f"sha256:{s.name}" for s in services for v in s.versions}
    for key in failed or {}:
        images.pop(key, None)
    return Inputs(
        project="t",
        state_dir="/state/t",
        envoy_image="sha256:envoy",
        pause_image="sha256:pause",
        app_images=images,
        failed=failed or {},
        proxy_user="1000:1000",
    )


def _running(want: Desired) -> list[Observed]:
    """What the engine would report once `want` runs."""
    out = []
    specs = [c for p in want.pods for c in p.containers]
    specs += [want.gateway] if want.gateway else []
    for i, spec in enumerate(specs):
        labels = dict(spec.labels)
        out.append(
            Observed(
                id=f"id{i}",
                name=spec.name,
                role=spec.role,
                pod=labels.get("dev.devmesh.pod", spec.name),
                service=labels.get("dev.devmesh.service", ""),
                version=labels.get("dev.devmesh.version", ""),
                config_hash=spec.config_hash,
                state="running",
            )
        )
    return out


def test_desired_has_a_pod_per_replica_and_one_gateway() -> None:
    want = desired(SHOP, _inputs())
    replicas = sum(v.replicas for s in SHOP.services for v in s.versions)
    assert len(want.pods) == replicas
    assert len({p.name for p in want.pods}) == replicas
    assert want.gateway is not None and want.gateway.name == "t-gateway"


def test_desired_is_a_value_the_same_mesh_gives_equal_specs() -> None:
    assert desired(SHOP, _inputs()) == desired(SHOP, _inputs())


def test_a_version_whose_image_failed_has_no_pods() -> None:
    want = desired(SHOP, _inputs(failed={("stock", "default"): "image missing"}))
    assert not [p for p in want.pods if p.service == "stock"]
    assert want.failed == {("stock", "default"): "image missing"}


def test_first_plan_creates_the_network_every_pod_and_the_gateway() -> None:
    want = desired(SHOP, _inputs())
    todo = plan(want, [], network_exists=False)
    assert todo.ensure_network
    assert {p.name for p in todo.create_pods} == {p.name for p in want.pods}
    assert [c.name for c in todo.create] == ["t-gateway"]


def test_a_second_pass_over_what_runs_plans_nothing() -> None:
    want = desired(SHOP, _inputs())
    assert plan(want, _running(want)).empty


def _with(observed: list[Observed], name: str, **changes: Any) -> list[Observed]:
    return [dataclasses.replace(o, **changes) if o.name == name else o for o in observed]


Case = Callable[[list[Observed]], list[Observed]]


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        pytest.param(
            lambda o: _with(o, "t-catalog-v1-0-app", config_hash="old"),
            lambda p: [c.name for c, _ in p.replace] == ["t-catalog-v1-0-app"],
            id="changed-app-replaced-alone",
        ),
        pytest.param(
            lambda o: _with(o, "t-catalog-v1-0-sidecar", state="exited"),
            lambda p: len(p.start) == 1,
            id="stopped-sidecar-started",
        ),
        pytest.param(
            lambda o: _with(o, "t-catalog-v1-0", state="exited"),
            lambda p: [s.name for s, _ in p.replace_pods] == ["t-catalog-v1-0"],
            id="stopped-owner-replaces-the-pod",
        ),
        pytest.param(
            lambda o: [x for x in o if x.name != "t-catalog-v1-0"],
            lambda p: [s.name for s, _ in p.replace_pods] == ["t-catalog-v1-0"],
            id="missing-owner-replaces-the-pod",
        ),
        pytest.param(
            lambda o: [*o, dataclasses.replace(o[0], id="dup")],
            lambda p: p.remove == ("dup",),
            id="duplicate-removed",
        ),
        pytest.param(
            lambda o: _with(o, "t-gateway", state="dead"),
            lambda p: [c.name for c, _ in p.replace] == ["t-gateway"],
            id="dead-gateway-replaced",
        ),
    ],
)
def test_plan_touches_only_what_differs(change: Case, expect: Callable[[Plan], bool]) -> None:
    want = desired(SHOP, _inputs())
    todo = plan(want, change(_running(want)))
    assert expect(todo), todo.describe()
    touched = len(todo.replace) + len(todo.start) + len(todo.remove) + len(todo.replace_pods)
    assert touched == 1 and not todo.create_pods


def test_a_removed_service_has_its_pods_removed_but_a_failed_one_keeps_them() -> None:
    want = desired(SHOP, _inputs())
    running = _running(want)
    stock_ids = {o.id for o in running if o.service == "stock"}
    without_stock = dataclasses.replace(
        want, pods=tuple(p for p in want.pods if p.service != "stock")
    )
    assert set(plan(without_stock, running).remove) == stock_ids
    failed = dataclasses.replace(without_stock, failed={("stock", "default"): "image missing"})
    assert plan(failed, running).remove == ()


def _gateway_of(services: int) -> Any:
    from devmesh.core.load import load

    text = "mesh: m\nservices:\n" + "".join(
        f"  s{i}: {{image: app:1, port: 8000}}\n" for i in range(services)
    )
    mesh = load(text)
    return desired(mesh, _inputs(mesh)).gateway


def test_a_service_added_or_taken_out_within_a_block_of_hops_keeps_the_gateway() -> None:
    """The gateway publishes its hops in blocks of four: Docker fixes a container's ports
    when it is made, and a new gateway is a second with no ingress."""
    by_count = {n: _gateway_of(n) for n in (1, 2, 3, 4, 5, 8, 9)}
    hashes = {n: g.config_hash for n, g in by_count.items()}
    assert hashes[1] == hashes[2] == hashes[3] == hashes[4]
    assert hashes[4] != hashes[5] and hashes[5] == hashes[8] != hashes[9]
    hops = [p for p, _, _ in by_count[5].ports]
    assert hops == list(range(15100, 15108))  # 5 services' own, and 3 spares
    assert all(host == "127.0.0.1" and published == 0 for _, host, published in by_count[5].ports)
    from devmesh.core.addressing import gateway_hop_ports

    assert gateway_hop_ports(0) == range(15100, 15100)
    assert gateway_hop_ports(102) == range(15100, 15204)  # every service's, past 15199 too
