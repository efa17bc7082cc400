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
