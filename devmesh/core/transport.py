"""How the daemon reaches its pods: the transport, chosen once when the daemon starts.

- `unix` (the default where it works): the engine shares this machine's kernel and
  filesystem. xDS, SDS, access logs, spans and Envoy's admin go over UNIX sockets in the
  state directory, bind-mounted into the pods; the host probes the apps' health straight
  at their addresses; hosts files and bootstraps are bind-mounted files.
- `tcp`: the engine is elsewhere (Docker Desktop's VM, a `tcp://` or `ssh://` engine).
  The daemon also listens on TCP 127.0.0.1 (never beyond); every gRPC stream carries the
  mesh's token; pods dial `host.docker.internal` (the engine's `host-gateway`); files go
  in through the Engine API (put-archive); health is a Docker HEALTHCHECK in the pod,
  reported by the engine's events; Envoy pushes its stats to the daemon.

Pure: the adapter (`adapters/enginekind.py`) asks the engine and the environment; this
module decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError

TRANSPORT_ENV = "DEVMESH_TRANSPORT"  # forces one: `unix` or `tcp`
XDS_ADDRESS_ENV = "DEVMESH_XDS_ADDRESS"  # tcp: what the pods dial instead, `host:port`
HOST_GATEWAY = "host.docker.internal"  # tcp: the host, as the pods see it (extra_hosts)


class Transport(enum.Enum):
    UNIX = "unix"
    TCP = "tcp"


class TransportError(MeshError):
    pass


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """What the decision needs to know about the engine and the environment."""

    docker_host: str  # DOCKER_HOST as set ("" when unset: the default local socket)
    operating_system: str  # the engine's `info()["OperatingSystem"]` ("" when unknown)
    forced: str = ""  # DEVMESH_TRANSPORT as set ("" when unset)
    context: str = ""  # the docker CLI context in use, when one is named ("" otherwise)


def is_desktop(operating_system: str) -> bool:
    """Docker Desktop says so in its OperatingSystem ("Docker Desktop"); its engine runs in
    a VM whatever socket it is reached by."""
    return "docker desktop" in operating_system.lower()


def choose(facts: EngineFacts) -> tuple[Transport, str]:
    """The transport for this engine, and why (shown in the daemon's log and `ps`).
    TransportError for a DEVMESH_TRANSPORT that names no transport."""
    forced = facts.forced.strip().lower()
    if forced:
        try:
            return Transport(forced), f"{TRANSPORT_ENV}={forced}"
        except ValueError:
            raise TransportError(
                f"{TRANSPORT_ENV}={facts.forced!r}: expected 'unix' or 'tcp'"
            ) from None
    host = facts.docker_host.strip()
    scheme = host.partition("://")[0].lower() if "://" in host else ""
    if scheme in ("tcp", "ssh", "http", "https"):
        return Transport.TCP, f"the engine is remote ({scheme}://)"
    if "desktop" in facts.context.lower():
        return Transport.TCP, f"a Docker Desktop context ({facts.context})"
    if is_desktop(facts.operating_system):
        return Transport.TCP, "the engine is Docker Desktop (a VM)"
    if scheme in ("", "unix"):
        return Transport.UNIX, "the engine is local (a UNIX socket)"
    return Transport.TCP, f"the engine is not local ({scheme}://)"


def tcp_unsupported(mesh: Mesh) -> list[str]:
    """What of `mesh` transport tcp cannot serve, each said with what to do instead. (Host
    versions are refused per version: reconciler.host_refused.)"""
    out = []
    if mesh.observability.statsd is not None:
        out.append(
            "observability.statsd needs transport unix: the Envoys send StatsD to a socket in "
            "the daemon's state directory, which an engine elsewhere cannot mount; the "
            "daemon's /metrics (Prometheus) works with tcp"
        )
    tracing = mesh.observability.tracing
    if tracing is not None and tracing.provider == "xray":
        out.append(
            "tracing provider xray needs transport unix: the Envoys send segments to the "
            "daemon's relay on the mesh network's gateway, which is not this host on an "
            "engine elsewhere; provider otel works with tcp"
        )
    return out


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (DEVMESH_XDS_ADDRESS) -> (host, port); TransportError if it is not one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TransportError(f"{XDS_ADDRESS_ENV}={text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)
