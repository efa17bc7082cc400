"""The mesh as served: the file's, with the instance's ingress port, the versions added on
the host by `devmesh dev`, and the faults set through the API laid over it. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from devmesh.core.model import (
    Fault,
    HostApp,
    Match,
    Mesh,
    Route,
    Target,
    ValueMatch,
    Version,
)

# (service, route) -> the fault set through the API (None: the API cleared the file's fault)
Overrides = Mapping[tuple[str, str], Fault | None]


@dataclass(frozen=True, slots=True)
class DevVersion:
    """A version added live on the host (`devmesh dev`): the process listens on 127.0.0.1
    at `port`; the requests whose `header` is `value` go to it, others as the file says."""

    port: int
    header: str
    value: str


DevVersions = Mapping[tuple[str, str], DevVersion]  # (service, version) -> the dev version


def dev_route_name(version: str) -> str:
    return f"dev-{version}"


def with_dev(mesh: Mesh, dev: DevVersions) -> Mesh:
    """The mesh with each dev version added to its service, and a route to it first."""
    if not dev:
        return mesh
    services = []
    for service in mesh.services:
        mine = [(v, d) for (s, v), d in sorted(dev.items()) if s == service.name]
        if not mine:
            services.append(service)
            continue
        versions = service.versions + tuple(
            Version(name=v, image=None, build=None, replicas=1, host=HostApp(d.port))
            for v, d in mine
        )
        routes = tuple(
            Route(
                name=dev_route_name(v),
                to=(Target(v, 100),),
                match=Match(headers=(ValueMatch(d.header.lower(), "exact", d.value),)),
            )
            for v, d in mine
        )
        services.append(
            dataclasses.replace(service, versions=versions, routes=routes + service.routes)
        )
    return dataclasses.replace(mesh, services=tuple(services))


def effective(
    mesh: Mesh, overrides: Overrides, ingress_port: int | None, dev: DevVersions | None = None
) -> Mesh:
    if ingress_port is not None and mesh.ingress is not None:
        mesh = dataclasses.replace(
            mesh, ingress=dataclasses.replace(mesh.ingress, port=ingress_port)
        )
    mesh = with_dev(mesh, dev or {})
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
