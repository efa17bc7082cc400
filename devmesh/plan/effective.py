"""The mesh as served: the file's, with the instance's ingress port and the faults set
through the API laid over it. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from devmesh.core.model import Fault, Mesh

# (service, route) -> the fault set through the API (None: the API cleared the file's fault)
Overrides = Mapping[tuple[str, str], Fault | None]


def effective(mesh: Mesh, overrides: Overrides, ingress_port: int | None) -> Mesh:
    if ingress_port is not None and mesh.ingress is not None:
        mesh = dataclasses.replace(
            mesh, ingress=dataclasses.replace(mesh.ingress, port=ingress_port)
        )
    if not overrides:
        return mesh
    services = []
    for service in mesh.services:
        routes = tuple(
            dataclasses.replace(r, fault=overrides[(service.name, r.name)])
            if (service.name, r.name) in overrides
            else r
            for r in service.routes
        )
        services.append(dataclasses.replace(service, routes=routes))
    return dataclasses.replace(mesh, services=tuple(services))


def kept_overrides(mesh: Mesh, overrides: Overrides) -> dict[tuple[str, str], Fault | None]:
    """The overrides whose route still exists in `mesh` (a save keeps them while it does)."""
    routes = {(s.name, r.name) for s in mesh.services for r in s.routes}
    return {key: fault for key, fault in overrides.items() if key in routes}
