"""The whole mesh's Envoy configuration in one pure call, and the static export built on it.

`render(mesh, endpoints)` gives every node group (Envoy's node *cluster*: all replicas of
one version share a configuration, and so does the gateway) its `Resources`. The daemon
turns that into xDS snapshots (`devmesh.envoy.snapshot.new_snapshots`) and publishes them
all at once; `devmesh render` (`render_mesh`) packs the very same resources into one static
bootstrap per group, so what `envoy --mode validate` accepted is what the daemon serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from devmesh.core.model import Mesh
from devmesh.envoy.bootstrap import static_bootstrap
from devmesh.envoy.resources import (
    GATEWAY_NODE,
    Endpoints,
    Json,
    Resources,
    Shared,
    gateway_resources,
    placeholder_endpoints,
    sidecar_node,
    sidecar_resources,
)


def gateway_group(mesh: Mesh) -> str:
    """The gateway's node group (its Envoy's node cluster)."""
    return f"{mesh.name}/{GATEWAY_NODE}"


@dataclass(frozen=True, slots=True)
class NodeGroup:
    name: str  # Envoy's node cluster: `shop/catalog/v2`, `shop/gateway`
    filename: str  # its static export: `sidecar-catalog-v2.yaml`, `gateway.yaml`


def node_groups(mesh: Mesh) -> tuple[NodeGroup, ...]:
    """Every node group of the mesh, in file order, the gateway (if any) last."""
    out = [
        NodeGroup(
            sidecar_node(mesh, service.name, version.name),
            f"sidecar-{service.name}-{version.name}.yaml",
        )
        for service in mesh.services
        for version in service.versions
    ]
    if mesh.has_gateway:
        out.append(NodeGroup(gateway_group(mesh), "gateway.yaml"))
    return tuple(out)


def render(
    mesh: Mesh, endpoints: Endpoints, host_address: str | None = None
) -> dict[str, Resources]:
    """Node group -> its complete configuration, for every group of the mesh (node_groups'
    order). Pure: the same mesh and endpoints give equal resources."""
    out: dict[str, Resources] = {}
    shared: Shared = {}  # what every caller gets alike, made once (see resources._shared)
    for service in mesh.services:
        for version in service.versions:
            group = sidecar_node(mesh, service.name, version.name)
            out[group] = sidecar_resources(mesh, service, version, endpoints, shared, host_address)
    if mesh.has_gateway:
        out[gateway_group(mesh)] = gateway_resources(mesh, endpoints, host_address)
    return out


# -- the static export (`devmesh render`) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    filename: str  # `sidecar-catalog-v2.yaml`, `gateway.yaml`
    node: str
    bootstrap: Json


def render_mesh(mesh: Mesh, endpoints: Endpoints | None = None) -> tuple[Rendered, ...]:
    """One static bootstrap per node group (`devmesh render`), from `render`'s resources.
    Without endpoints, each pod gets a placeholder loopback address."""
    if endpoints is None:
        endpoints = placeholder_endpoints(mesh)
    resources = render(mesh, endpoints)
    return tuple(
        Rendered(g.filename, g.name, static_bootstrap(g.name, g.name, resources[g.name]))
        for g in node_groups(mesh)
    )
