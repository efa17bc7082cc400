"""`devmesh render`: one static bootstrap per sidecar and one for the gateway."""

from __future__ import annotations

from dataclasses import dataclass

from devmesh.core.model import Mesh
from devmesh.envoy.bootstrap import static_bootstrap
from devmesh.envoy.resources import (
    GATEWAY_NODE,
    Endpoints,
    Json,
    gateway_resources,
    placeholder_endpoints,
    sidecar_node,
    sidecar_resources,
)


@dataclass(frozen=True, slots=True)
class Rendered:
    filename: str  # `sidecar-catalog-v2.yaml`, `gateway.yaml`
    node: str
    bootstrap: Json


def render_mesh(mesh: Mesh, endpoints: Endpoints | None = None) -> tuple[Rendered, ...]:
    if endpoints is None:
        endpoints = placeholder_endpoints(mesh)
    out = []
    for service in mesh.services:
        for version in service.versions:
            node = sidecar_node(mesh, service.name, version.name)
            resources = sidecar_resources(mesh, service, version, endpoints)
            out.append(
                Rendered(
                    f"sidecar-{service.name}-{version.name}.yaml",
                    node,
                    static_bootstrap(node, node, resources),
                )
            )
    if mesh.has_gateway:
        node = f"{mesh.name}/{GATEWAY_NODE}"
        out.append(
            Rendered(
                "gateway.yaml",
                node,
                static_bootstrap(node, node, gateway_resources(mesh, endpoints)),
            )
        )
    return tuple(out)
