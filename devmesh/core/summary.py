"""A mesh in one line (`devmesh validate`) and as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devmesh.core.model import Mesh


@dataclass(frozen=True, slots=True)
class Summary:
    mesh: str
    services: int
    versions: int
    pods: int
    routes: int
    ingress: str | None

    def __str__(self) -> str:
        text = (
            f"mesh '{self.mesh}' is valid: {_n(self.services, 'service')}, "
            f"{_n(self.versions, 'version')} ({_n(self.pods, 'pod')}), {_n(self.routes, 'route')}"
        )
        return text + (f", ingress on {self.ingress}" if self.ingress else ", no ingress")

    def as_json(self) -> dict[str, Any]:
        return {
            "mesh": self.mesh,
            "services": self.services,
            "versions": self.versions,
            "pods": self.pods,
            "routes": self.routes,
            "ingress": self.ingress,
        }


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def summarize(mesh: Mesh) -> Summary:
    return Summary(
        mesh=mesh.name,
        services=len(mesh.services),
        versions=sum(len(s.versions) for s in mesh.services),
        pods=sum(v.replicas for s in mesh.services for v in s.versions),
        routes=sum(len(s.routes) for s in mesh.services)
        + (len(mesh.ingress.routes) if mesh.ingress else 0),
        ingress=f"{mesh.ingress.host}:{mesh.ingress.port}" if mesh.ingress else None,
    )


def mesh_routes_json(mesh: Mesh) -> dict[str, Any]:
    """Every service's routes as plain JSON: matches, weights, retries, timeout, fault."""
    from devmesh.core.explain import describe_match

    services = []
    for service in mesh.services:
        routes = []
        for r in service.routes:
            routes.append(
                {
                    "name": r.name,
                    "match": describe_match(r.match),
                    "to": {t.version: t.weight for t in r.to},
                    "retries": None
                    if r.retries is None
                    else {"attempts": r.retries.attempts, "on": list(r.retries.on)},
                    "timeout_ms": r.timeout_ms,
                    "fault": None
                    if r.fault is None
                    else {
                        "delay": None
                        if r.fault.delay is None
                        else {"fixed_ms": r.fault.delay.fixed_ms, "percent": r.fault.delay.percent},
                        "abort": None
                        if r.fault.abort is None
                        else {
                            "status": r.fault.abort.http_status,
                            "grpc_status": r.fault.abort.grpc_status,
                            "percent": r.fault.abort.percent,
                        },
                    },
                    "mirror": None
                    if r.mirror is None
                    else {
                        "service": r.mirror.service,
                        "version": r.mirror.version,
                        "percent": r.mirror.percent,
                    },
                }
            )
        services.append(
            {
                "name": service.name,
                "protocol": service.protocol,
                "port": service.port,
                "versions": {v.name: v.replicas for v in service.versions},
                "routes": routes,
            }
        )
    ingress = None
    if mesh.ingress is not None:
        ingress = {
            "address": f"{mesh.ingress.host}:{mesh.ingress.port}",
            "routes": [
                {"name": r.name, "match": describe_match(r.match), "service": r.service}
                for r in mesh.ingress.routes
            ],
        }
    return {"mesh": mesh.name, "services": services, "ingress": ingress}
