"""The whole-mesh render and xDS snapshots: pure values, checked before they are served."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from devmesh.core.load import load, load_path
from devmesh.envoy.bootstrap import static_bootstrap
from devmesh.envoy.render import gateway_group, node_groups, render, render_mesh
from devmesh.envoy.resources import (
    Json,
    Resources,
    placeholder_endpoints,
    runtime_layer,
    tls_secrets,
)
from devmesh.envoy.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    RUNTIME,
    SECRET,
    Snapshot,
    SnapshotError,
    bridging,
    new_snapshot,
    new_snapshots,
    with_runtime,
)
from tests.unit.test_render import SHOP

ROOT = Path(__file__).resolve().parents[2]
MESH_FILES = [*sorted(ROOT.glob("examples/*/devmesh.yaml")), ROOT / "tests/data/everything.yaml"]

MESH = SHOP  # front calls back (two versions) and db (tcp)


def _front() -> Resources:
    mesh = load(MESH)
    return render(mesh, placeholder_endpoints(mesh))["t/front/default"]


# -- the whole-mesh render ------------------------------------------------------------------


def test_render_gives_every_node_group_its_resources_gateway_last() -> None:
    mesh = load(MESH)
    rendered = render(mesh, placeholder_endpoints(mesh))
    assert list(rendered) == [g.name for g in node_groups(mesh)]
    assert list(rendered) == [
        "t/front/default",
        "t/back/v1",
        "t/back/v2",
        "t/db/default",
        "t/gateway",
    ]
    assert gateway_group(mesh) == "t/gateway"


def test_render_is_pure_equal_inputs_give_equal_resources() -> None:
    mesh = load(MESH)
    assert render(mesh, placeholder_endpoints(mesh)) == render(mesh, placeholder_endpoints(mesh))


@pytest.mark.parametrize("mesh_file", MESH_FILES, ids=lambda p: p.parent.name or p.stem)
def test_static_export_packs_the_same_resources_the_daemon_serves(mesh_file: Path) -> None:
    mesh = load_path(str(mesh_file))
    endpoints = placeholder_endpoints(mesh)
    served = render(mesh, endpoints)
    exported = render_mesh(mesh, endpoints)
    assert [r.node for r in exported] == list(served)
    for item in exported:
        assert item.bootstrap == static_bootstrap(item.node, item.node, served[item.node])


@pytest.mark.parametrize("mesh_file", MESH_FILES, ids=lambda p: p.parent.name or p.stem)
@pytest.mark.parametrize("endpoints", ["placeholder", "none yet"])
def test_every_rendered_mesh_makes_consistent_snapshots(mesh_file: Path, endpoints: str) -> None:
    mesh = load_path(str(mesh_file))
    eps = placeholder_endpoints(mesh) if endpoints == "placeholder" else {}
    snapshots = new_snapshots(with_secrets(render(mesh, eps)))
    assert list(snapshots) == [g.name for g in node_groups(mesh)]


def with_secrets(groups: dict[str, Resources]) -> dict[str, Resources]:
    """What the daemon adds before it publishes: every group's certificate and the CA."""
    own = tls_secrets("CERT", "KEY", "CA")  # parsed as strings only; Envoy never sees these
    return {g: dataclasses.replace(r, secrets=own) for g, r in groups.items()}


@pytest.mark.parametrize("mesh_file", MESH_FILES, ids=lambda p: p.parent.name or p.stem)
def test_a_tls_mesh_without_its_certificates_is_not_served(mesh_file: Path) -> None:
    mesh = load_path(str(mesh_file))
    with pytest.raises(SnapshotError, match="SDS 'identity' is referred to but has no secret"):
        new_snapshots(render(mesh, placeholder_endpoints(mesh)))


# -- the consistency check ------------------------------------------------------------------


def _drop_routes(r: Resources) -> Resources:
    return dataclasses.replace(r, routes=())


def _drop_endpoints(r: Resources) -> Resources:
    return dataclasses.replace(r, endpoints=r.endpoints[1:])


def _duplicate_listener(r: Resources) -> Resources:
    return dataclasses.replace(r, listeners=(*r.listeners, r.listeners[-1]))


def _duplicate_assignment(r: Resources) -> Resources:
    return dataclasses.replace(r, endpoints=(*r.endpoints, r.endpoints[0]))


def _drop_cluster(name: str) -> Callable[[Resources], Resources]:
    def edit(r: Resources) -> Resources:
        return dataclasses.replace(r, clusters=tuple(c for c in r.clusters if c["name"] != name))

    return edit


def _eds_service_name(r: Resources) -> Resources:
    clusters = [copy.deepcopy(c) for c in r.clusters]
    eds = next(c for c in clusters if c.get("type") == "EDS")
    eds["eds_cluster_config"]["service_name"] = "elsewhere"
    return dataclasses.replace(r, clusters=tuple(clusters))


def _mirror_to(cluster: str) -> Callable[[Resources], Resources]:
    def edit(r: Resources) -> Resources:
        routes: list[Json] = [copy.deepcopy(x) for x in r.routes]
        action = routes[0]["virtual_hosts"][0]["routes"][0]["route"]
        action["request_mirror_policies"] = [{"cluster": cluster}]
        return dataclasses.replace(r, routes=tuple(routes))

    return edit


@pytest.mark.parametrize(
    ("edit", "problems"),
    [
        pytest.param(lambda r: r, [], id="as-rendered"),
        pytest.param(
            _drop_routes,
            ["g: RDS 'out|back' is referred to but has no route config"],
            id="rds-name-without-route",
        ),
        pytest.param(
            _drop_endpoints,
            ["g: EDS 'back|v1' is referred to but has no endpoints (ClusterLoadAssignment)"],
            id="eds-cluster-without-assignment",
        ),
        pytest.param(
            _eds_service_name,
            ["g: EDS 'elsewhere' is referred to but has no endpoints (ClusterLoadAssignment)"],
            id="eds-service-name-without-assignment",
        ),
        pytest.param(
            _duplicate_listener, ["g: two LDS resources named 'out|db'"], id="duplicate-listener"
        ),
        pytest.param(
            _duplicate_assignment,
            ["g: two EDS resources named 'back|v1'"],
            id="duplicate-assignment",
        ),
        pytest.param(
            _drop_cluster("db|default"),
            ["g: LDS 'out|db' routes to cluster 'db|default', which the snapshot lacks"],
            id="tcp-proxy-to-missing-cluster",
        ),
        pytest.param(
            _drop_cluster("back|v2"),
            ["g: RDS 'out|back' routes to cluster 'back|v2', which the snapshot lacks"],
            id="weighted-route-to-missing-cluster",
        ),
        pytest.param(
            _drop_cluster("_app"),
            ["g: LDS 'in' routes to cluster '_app', which the snapshot lacks"],
            id="inbound-to-missing-app-cluster",
        ),
        pytest.param(
            _mirror_to("nowhere|v9"),
            ["g: RDS 'out|back' routes to cluster 'nowhere|v9', which the snapshot lacks"],
            id="mirror-to-missing-cluster",
        ),
        pytest.param(
            lambda r: _drop_endpoints(_drop_routes(r)),
            [
                "g: RDS 'out|back' is referred to but has no route config",
                "g: EDS 'back|v1' is referred to but has no endpoints (ClusterLoadAssignment)",
            ],
            id="every-problem-at-once",
        ),
    ],
)
def test_snapshot_refuses_dangling_references_and_duplicates(
    edit: Callable[[Resources], Resources], problems: list[str]
) -> None:
    resources = edit(_front())
    if not problems:
        assert new_snapshot(resources, "g").problems() == []
        return
    with pytest.raises(SnapshotError) as caught:
        new_snapshot(resources, "g")
    assert list(caught.value.problems) == problems
    assert str(caught.value) == "\n".join(problems)


def test_snapshot_error_is_a_mesh_error() -> None:
    from devmesh.core.problems import MeshError

    assert issubclass(SnapshotError, MeshError)


def test_new_snapshots_reports_every_group_at_once() -> None:
    front = _front()
    with pytest.raises(SnapshotError) as caught:
        new_snapshots({"a": _drop_routes(front), "ok": front, "b": _drop_routes(front)})
    assert [p.split(":")[0] for p in caught.value.problems] == ["a", "b"]


# -- versions -------------------------------------------------------------------------------


def test_versions_are_stable_hashes_of_content() -> None:
    first, again = Snapshot.of(_front()), Snapshot.of(_front())  # rebuilt from scratch
    assert first.versions == again.versions
    assert set(first.versions) == {LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET, RUNTIME}
    assert all(len(v) == 16 for v in first.versions.values())


def test_every_snapshot_serves_the_runtime_layer_and_a_new_share_changes_it_alone() -> None:
    """Every ADS bootstrap waits for the RTDS layer at start: a snapshot always has it."""
    first = new_snapshot(_front())
    assert first.runtimes.items == (runtime_layer(None),)
    (after,) = with_runtime({"g": first}, runtime_layer(10.0)).values()
    changed = {t for t in first.versions if first.versions[t] != after.versions[t]}
    assert changed == {RUNTIME}
    assert after.runtimes.items[0]["layer"] == {
        "tracing.random_sampling": {"numerator": 1000, "denominator": "TEN_THOUSAND"}
    }
    (same,) = with_runtime({"g": after}, runtime_layer(10.0)).values()
    assert same is after


def test_a_weight_change_changes_only_the_route_version() -> None:
    mesh = load(MESH)
    shifted = load(MESH.replace("{v1: 75, v2: 25}", "{v1: 50, v2: 50}"))
    before = new_snapshot(render(mesh, placeholder_endpoints(mesh))["t/front/default"])
    after = new_snapshot(render(shifted, placeholder_endpoints(shifted))["t/front/default"])
    changed = {t for t in before.versions if before.versions[t] != after.versions[t]}
    assert changed == {ROUTE}


def test_new_endpoints_change_only_the_endpoint_version() -> None:
    mesh = load(MESH)
    eps = placeholder_endpoints(mesh)
    moved = {**eps, ("back", "v2"): ("10.0.0.9",)}
    before = new_snapshot(render(mesh, eps)["t/front/default"])
    after = new_snapshot(render(mesh, moved)["t/front/default"])
    changed = {t for t in before.versions if before.versions[t] != after.versions[t]}
    assert changed == {ENDPOINT}


def test_references_name_what_listeners_and_clusters_wait_for() -> None:
    refs = new_snapshot(_front()).references()
    assert refs == {
        ROUTE: {"out|back"},
        ENDPOINT: {"back|v1", "back|v2", "db|default"},
        SECRET: set(),  # the mesh is DISABLED; a TLS one: test_mtls_render.py
    }


# -- bridging: a dropped cluster stays until the routes that used it are gone ----------------


def _cluster(name: str, secret: str | None = None) -> Json:
    cluster: Json = {"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}
    if secret is not None:
        sds = {"name": secret, "sds_config": {"ads": {}}}
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"common_tls_context": {"tls_certificate_sds_secret_configs": [sds]}},
        }
    return cluster


def _assignment(name: str) -> Json:
    return {"cluster_name": name, "endpoints": []}


def _route_to(*clusters: str) -> Json:
    weighted = [{"name": c, "weight": 1} for c in clusters]
    action = {"weighted_clusters": {"clusters": weighted}}
    return {
        "name": "r",
        "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"route": action}]}],
    }


def test_bridging_keeps_the_dropped_clusters_with_their_endpoints_and_secrets() -> None:
    old = new_snapshot(
        Resources(
            listeners=(),
            routes=(_route_to("a", "b"),),
            clusters=(_cluster("a"), _cluster("b", secret="b-cert")),
            endpoints=(_assignment("a"), _assignment("b")),
            secrets=({"name": "b-cert"}, {"name": "other"}),
        )
    )
    new = new_snapshot(
        Resources(
            listeners=(),
            routes=(_route_to("a"),),
            clusters=(_cluster("a"),),
            endpoints=(_assignment("a"),),
            secrets=({"name": "other"},),
        )
    )
    bridge = bridging(old, new)
    assert bridge is not None
    assert bridge.routes == new.routes and bridge.listeners == new.listeners
    assert bridge.clusters.names == ("a", "b")
    assert bridge.endpoints.names == ("a", "b")
    assert bridge.secrets.names == ("other", "b-cert")
    assert bridge.problems() == []
    # Versions are what the same resources would get from scratch: nothing digested twice.
    assert (
        bridge.clusters.version
        == Snapshot.of(
            Resources((), (), (_cluster("a"), _cluster("b", secret="b-cert")), ())
        ).clusters.version
    )
    assert bridging(new, old) is None  # adding clusters needs no bridge
    assert bridging(new, new) is None
    again = bridging(bridge, new)  # bridging from a bridge keeps what it kept
    assert again is not None and again.clusters.names == ("a", "b")
