"""Rendering: golden files for the examples, strict proto parsing, and the real Envoy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from devmesh.adapters.xds_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, bootstrap_proto, to_proto
from devmesh.core.addressing import service_addresses
from devmesh.core.load import load, load_path
from devmesh.envoy.render import render_mesh
from devmesh.envoy.resources import (
    SERVED_BY_HEADER,
    gateway_resources,
    placeholder_endpoints,
    sidecar_resources,
)
from tests.envoy_check import envoy_rejections

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
MESH_FILES = [*sorted(ROOT.glob("examples/*/devmesh.yaml")), ROOT / "tests/data/everything.yaml"]
UPDATE = os.environ.get("DEVMESH_UPDATE_GOLDEN") == "1"


def _id(path: Path) -> str:
    return path.parent.name if path.name == "devmesh.yaml" else path.stem


@pytest.mark.parametrize("mesh_file", MESH_FILES, ids=_id)
def test_rendered_config_matches_golden_files(mesh_file: Path) -> None:
    rendered = render_mesh(load_path(str(mesh_file)))
    folder = GOLDEN / _id(mesh_file)
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
    for item in rendered:
        text = yaml.safe_dump(item.bootstrap, sort_keys=False)
        golden = folder / item.filename
        if UPDATE:
            golden.write_text(text)
        assert golden.exists(), f"no golden file {golden}; run with DEVMESH_UPDATE_GOLDEN=1"
        assert text == golden.read_text(), f"{golden} differs (DEVMESH_UPDATE_GOLDEN=1 to accept)"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(i.filename for i in rendered)


@pytest.mark.envoy
@pytest.mark.parametrize("mesh_file", MESH_FILES, ids=_id)
def test_real_envoy_accepts_every_rendered_config(mesh_file: Path, tmp_path: Path) -> None:
    rendered = render_mesh(load_path(str(mesh_file)))
    assert rendered
    assert envoy_rejections(rendered, tmp_path) == []


@pytest.mark.parametrize("mesh_file", MESH_FILES, ids=_id)
def test_every_resource_parses_strictly_as_its_envoy_type(mesh_file: Path) -> None:
    mesh = load_path(str(mesh_file))
    endpoints = placeholder_endpoints(mesh)
    nodes = [sidecar_resources(mesh, s, v, endpoints) for s in mesh.services for v in s.versions]
    if mesh.ingress:
        nodes.append(gateway_resources(mesh, endpoints))
    for res in nodes:
        for url, items in (
            (LISTENER, res.listeners),
            (ROUTE, res.routes),
            (CLUSTER, res.clusters),
            (ENDPOINT, res.endpoints),
        ):
            for item in items:
                to_proto(url, item)
    for rendered in render_mesh(mesh):
        bootstrap_proto(rendered.bootstrap)


SHOP = """
mesh: t
tls: {mode: DISABLED}  # plain routing here; mTLS: test_mtls_render.py
services:
  front: {image: f, port: 8000, calls: [back, db]}
  back:
    image: b
    port: 8000
    versions: {v1: {}, v2: {replicas: 2}}
    routes:
      - to: {v1: 75, v2: 25}
  db: {image: d, port: 5432, protocol: tcp}
"""


def test_sidecar_reaches_each_called_service_on_its_own_loopback_address() -> None:
    mesh = load(SHOP)
    front = mesh.service("front")
    res = sidecar_resources(mesh, front, front.versions[0], placeholder_endpoints(mesh))
    listeners = {item["name"]: item for item in res.listeners}
    addresses = service_addresses(s.name for s in mesh.services)
    back = listeners["out|back"]
    # front itself listens on 8000, so back is reachable on port 80 only.
    assert back["address"]["socket_address"] == {"address": addresses["back"], "port_value": 80}
    assert "additional_addresses" not in back
    db = listeners["out|db"]
    assert db["address"]["socket_address"] == {"address": addresses["db"], "port_value": 5432}
    assert set(listeners) == {"in", "out|back", "out|db"}


def test_weights_become_weighted_clusters_with_one_endpoint_per_replica() -> None:
    mesh = load(SHOP)
    front = mesh.service("front")
    endpoints = placeholder_endpoints(mesh)
    res = sidecar_resources(mesh, front, front.versions[0], endpoints)
    (route,) = res.routes[0]["virtual_hosts"][0]["routes"]
    assert route["route"]["weighted_clusters"]["clusters"] == [
        {"name": "back|v1", "weight": 75},
        {"name": "back|v2", "weight": 25},
    ]
    assignments = {a["cluster_name"]: a for a in res.endpoints}
    v2 = assignments["back|v2"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in v2] == list(
        endpoints[("back", "v2")]
    )
    assert all(e["endpoint"]["address"]["socket_address"]["port_value"] == 15006 for e in v2)


def test_only_called_services_get_clusters() -> None:
    mesh = load(SHOP)
    back = mesh.service("back")
    res = sidecar_resources(mesh, back, back.versions[0], placeholder_endpoints(mesh))
    assert [c["name"] for c in res.clusters] == ["_app"]
    assert [item["name"] for item in res.listeners] == ["in"]


def test_inbound_listener_tags_responses_with_service_and_version() -> None:
    mesh = load(SHOP)
    back = mesh.service("back")
    res = sidecar_resources(mesh, back, back.version("v2"), placeholder_endpoints(mesh))
    hcm = res.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    added = hcm["route_config"]["response_headers_to_add"][0]["header"]
    assert added == {"key": SERVED_BY_HEADER, "value": "back/v2"}


def test_rendered_endpoints_are_loopback_placeholders() -> None:
    for ips in placeholder_endpoints(load_path(str(MESH_FILES[0]))).values():
        assert all(ip.startswith("127.255.") for ip in ips)
