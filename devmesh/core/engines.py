"""Which container engine devmesh talks to, what differs on it, and what to say when it
cannot be reached or cannot do what devmesh needs. Pure: the adapter (adapters/engine.py)
asks the engine and hands the answers (or the failure's root cause) in here.

    identify(version, info, address) -> EngineInfo     from `GET /version` and `GET /info`
    differences(facts)               -> lines: what devmesh does differently there
    unreachable(address, cause, ...) -> the message for an engine that does not answer
    guard_refused(facts, detail)     -> the message for an engine that cannot run the guard
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from devmesh.core.problems import MeshError

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"  # docker-py's, with no DOCKER_HOST
PODMAN_HOST = "host.containers.internal"  # the host, in every Podman container's hosts file


class EngineKind(StrEnum):
    DOCKER = "docker"
    DOCKER_DESKTOP = "docker-desktop"
    PODMAN = "podman"


@dataclass(frozen=True, slots=True)
class EngineInfo:
    kind: EngineKind
    version: str  # the engine's own ("4.3.1" for Podman, "20.10.24" for Docker)
    api_version: str  # the Docker Engine API version it speaks
    os: str  # `info()["OperatingSystem"]`
    address: str  # where it was reached: DOCKER_HOST, or the default socket
    rootless: bool  # runs as a normal user: no NET_ADMIN over the host, no host routes
    userns: bool  # user namespaces remapped (dockerd --userns-remap)

    @property
    def name(self) -> str:
        """How a message names it: `Podman 4.3.1 (rootful)`, `Docker 20.10.24`."""
        base = {
            EngineKind.DOCKER: "Docker",
            EngineKind.DOCKER_DESKTOP: "Docker Desktop",
            EngineKind.PODMAN: "Podman",
        }[self.kind]
        text = f"{base} {self.version}".strip()
        if self.kind is EngineKind.PODMAN or self.rootless:
            text += " (rootless)" if self.rootless else " (rootful)"
        if self.userns:
            text += " (userns-remap)"
        return text

    def describe(self) -> str:
        """One line: `Podman 4.3.1 (rootful) at unix:///run/podman/podman.sock`."""
        return f"{self.name} at {self.address}"


def identify(
    version: Mapping[str, Any],
    info: Mapping[str, Any],
    address: str,
    ping: Mapping[str, str] | None = None,
) -> EngineInfo:
    """What engine answered `GET /_ping` (its headers), `GET /version` and `GET /info`; any
    may be empty. Podman names itself in its ping's `Libpod-Api-Version` header (one cheap
    request: its `/version` and `/info` take seconds on a loaded machine) and in the
    version's components ("Podman Engine"); Docker Desktop in `OperatingSystem`."""
    headers = {k.lower(): v for k, v in (ping or {}).items()}
    components = [str(c.get("Name", "")) for c in version.get("Components") or []]
    os_name = str(info.get("OperatingSystem") or "")
    security = [str(s) for s in info.get("SecurityOptions") or []]
    libpod = headers.get("libpod-api-version", "")
    if libpod or any(c.lower().startswith("podman") for c in components):
        kind = EngineKind.PODMAN
    elif "docker desktop" in os_name.lower():
        kind = EngineKind.DOCKER_DESKTOP
    else:
        kind = EngineKind.DOCKER
    return EngineInfo(
        kind=kind,
        version=str(version.get("Version") or info.get("ServerVersion") or libpod or ""),
        api_version=str(version.get("ApiVersion") or headers.get("api-version") or ""),
        os=os_name,
        address=address,
        rootless=any("name=rootless" in s for s in security),
        userns=any("name=userns" in s for s in security),
    )


def differences(facts: EngineInfo) -> tuple[str, ...]:
    """What devmesh does differently on this engine, for people (`up`, `devmesh engine`)."""
    out: list[str] = []
    if facts.kind is EngineKind.PODMAN:
        out.append(
            "images are built by the engine's own builder: no BuildKit (RUN --mount, build "
            "secrets and targets are refused)"
        )
        out.append("a pod's containers are removed before its namespace owner (Podman's rule)")
        out.append(
            "transport tcp: the pods dial the daemon at host.containers.internal, which "
            "Podman puts in their hosts file (Podman 4.3 has no `host-gateway`)"
        )
    if facts.kind is EngineKind.DOCKER_DESKTOP:
        out.append("containers reach the host as host.docker.internal")
    if facts.rootless:
        out.append(
            "rootless: the host may not reach container addresses, and the pods' firewall "
            "guard needs NET_ADMIN in the pod's namespace (DEVMESH_GUARD=off runs without "
            "it); not tested here"
        )
    elif facts.userns:
        out.append(
            "userns-remap: the pods' firewall guard needs NET_ADMIN in the pod's namespace "
            "(DEVMESH_GUARD=off runs without it); not tested here"
        )
    return tuple(out)


def summary(facts: EngineInfo) -> str:
    """The one line `up` prints: the engine, and what differs there (if anything)."""
    diff = differences(facts)
    line = f"engine: {facts.describe()}"
    return line + (": " + "; ".join(diff) if diff else "")


# -- an engine that does not answer -----------------------------------------------------------


def guess_kind(address: str) -> str:
    """Which engine an address probably belongs to, from its path alone (nothing answered)."""
    lowered = address.lower()
    for word, name in (
        ("podman", "Podman"),
        ("colima", "Colima"),
        ("orbstack", "OrbStack"),
        ("rd/docker", "Rancher Desktop"),
        ("desktop", "Docker Desktop"),
        ("docker", "Docker"),
    ):
        if word in lowered:
            return name
    return "container"


_PODMAN_START = (
    "start it: `systemctl --user start podman.socket` (rootless), `sudo systemctl start "
    "podman.socket` (rootful), or `podman system service --time=0 {address} &`"
)
_DOCKER_START = (
    "start it (e.g. `sudo systemctl start docker`, or start Docker Desktop / Colima; as root "
    "on Debian, scripts/ensure-docker.sh installs and starts one)"
)


def unreachable(address: str, cause: str, socket_exists: bool | None = None) -> str:
    """The message for an engine at `address` that did not answer; `cause`: the root cause's
    text (an errno's message, a resolver's); `socket_exists`: for unix:// addresses, whether
    a file is at the path. Names the engine, the address and what is missing."""
    kind = guess_kind(address)
    engine = f"the {kind} engine" if kind != "container" else "the container engine"
    where = "DOCKER_HOST" if address != DEFAULT_ADDRESS else "the default socket"
    start = (_PODMAN_START if kind == "Podman" else _DOCKER_START).format(address=address)
    parts = urlsplit(address) if "://" in address else None
    scheme = parts.scheme if parts else ""
    low = cause.lower()
    if scheme not in ("unix", "tcp", "ssh", "http", "https", "npipe") or "bind address" in low:
        return (
            f"DOCKER_HOST={address} is not an engine address ({cause}); give one as "
            "unix:///path/to/socket, tcp://host:port or ssh://user@host"
        )
    if scheme == "ssh" and ("paramiko" in low or "sshhttpadapter" in low):
        return (
            f"cannot reach {engine} at {address}: devmesh reaches engines over SSH through the "
            "paramiko package, which is not installed (`pip install paramiko`); or forward the "
            "engine's socket: `ssh -nNT -L /tmp/engine.sock:/var/run/docker.sock USER@HOST` "
            "and DOCKER_HOST=unix:///tmp/engine.sock"
        )
    if scheme == "unix":
        path = parts.path if parts else address
        if "permission denied" in low:
            return (
                f"cannot reach {engine} at {address}: permission denied on {path}; your user "
                "may not use it (Docker: join the `docker` group; or run as its owner)"
            )
        if socket_exists is False or "no such file" in low:
            return (
                f"cannot reach {engine} at {address}: no socket at {path} ({where}), so it is "
                f"not running there; {start}, or point DOCKER_HOST at the socket it listens on"
            )
        if socket_exists or "connection refused" in low:
            return (
                f"cannot reach {engine} at {address}: the socket file {path} is there but "
                f"nothing listens on it (the engine stopped and left it behind); {start}"
            )
    host = parts.hostname if parts else ""
    port = parts.port if parts and _has_port(parts.netloc) else None
    at = f"{host}:{port}" if port is not None else str(host)
    if "name or service not known" in low or "nodename nor servname" in low or "getaddrinfo" in low:
        return (
            f"cannot reach {engine} at {address}: the name {host} does not resolve; "
            "check DOCKER_HOST"
        )
    if "connection refused" in low:
        return (
            f"cannot reach {engine} at {address}: nothing listens on {at} (connection refused); "
            f"{start}, or check the port in DOCKER_HOST"
        )
    if "timed out" in low or "timeout" in low:
        return (
            f"cannot reach {engine} at {address}: no answer from {at} in time; check that it "
            "runs and that nothing (a firewall, a VPN) is in the way"
        )
    return f"cannot reach {engine} at {address} ({cause}); {start}"


def _has_port(netloc: str) -> bool:
    return bool(re.search(r":\d+$", netloc))


# -- an engine that cannot run devmesh's privileged helpers -----------------------------------


def guard_refused(facts: EngineInfo | None, detail: str) -> str:
    """The pods' firewall guard (iptables in the pod's namespace, NET_ADMIN) could not run."""
    engine = facts.describe() if facts is not None else "the engine"
    return (
        f"{engine} cannot run the pods' firewall guard, which needs NET_ADMIN in the pod's "
        f"network namespace, and did not get it: {detail}. Run devmesh against an engine "
        "that grants NET_ADMIN (rootful Docker or Podman), or turn the guard off with "
        "DEVMESH_GUARD=off (any pod on the mesh network may then reach an app's port "
        "directly, past its sidecar)"
    )


def looks_like_no_net_admin(text: str) -> bool:
    """Whether a guard's failure reads like a missing NET_ADMIN (iptables' or runc's words)."""
    low = text.lower()
    return any(
        w in low
        for w in (
            "permission denied (you must be root)",
            "operation not permitted",
            "can't initialize iptables",
            "could not fetch rule set generation id",
            "cap_net_admin",
            "net_admin",
        )
    )


# -- the pods' firewall guard, on or off ------------------------------------------------------

GUARD_ENV = "DEVMESH_GUARD"  # `off`: no firewall guard (an engine that gives no NET_ADMIN)


def guard_enabled(env: Mapping[str, str]) -> bool:
    """Whether pods get their firewall guard: on unless DEVMESH_GUARD says off. A setting of
    the machine's engine, not of the mesh: the same mesh file runs on engines that can and
    engines that cannot give NET_ADMIN."""
    value = env.get(GUARD_ENV, "").strip().lower()
    if value in ("", "on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise MeshError(f"{GUARD_ENV}={env.get(GUARD_ENV)!r}: expected 'on' or 'off'")
