"""Where things listen inside a pod. Pure, so validation can check collisions up front.

An app reaches an upstream by name with no proxy settings: the pod's hosts file maps each
reachable service name to a loopback address of its own (127.64.0.0/10), where the sidecar
listens. HTTP-family upstreams answer there on port 80 (`http://catalog/`) and on the
upstream's own port (`http://catalog:8000/`); TCP upstreams on their own port only.
A port the calling app itself listens on is left out: a wildcard listener owns that port
on every address of the namespace, so the sidecar could not bind it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from devmesh.core.model import Service

MESH_HTTP_PORT = 80
INBOUND_PORT = 15006  # every pod's sidecar accepts mesh traffic here, on the pod's address
GATEWAY_PORT = 15080  # the ingress gateway's public listener inside its container
# The gateway's per-service routing listeners (hops), one port each from here: published on
# the host's 127.0.0.1, bound to 0.0.0.0 in the gateway (as Docker's publishing needs), and
# admitting only the host and the gateway's own loopback (envoy.resources.host_only).
GATEWAY_HOP_BASE = 15100
# The gateway publishes its hops in blocks: Docker publishes a container's ports when it is
# made, so one more published port means a new gateway, and the ingress is down for the
# second that takes. With spare ports a service added (or taken out) within its block
# changes no container; a spare port has no listener behind it (connection refused).
GATEWAY_HOP_BLOCK = 4
RESERVED_PORTS = range(15000, 15200)  # the sidecar's; an app may not listen on them


def gateway_hop_ports(services: int) -> range:
    """The ports the gateway publishes for `services` HTTP services: theirs, in file order
    from GATEWAY_HOP_BASE, and spares to the end of their block."""
    blocks = -(-services // GATEWAY_HOP_BLOCK)
    return range(GATEWAY_HOP_BASE, GATEWAY_HOP_BASE + blocks * GATEWAY_HOP_BLOCK)


_BASE = int(ipaddress.IPv4Address("127.64.0.0"))
_SPAN = 1 << 22  # 127.64.0.0/10


def outbound_ports(caller_port: int | None, upstream: Service) -> tuple[int, ...]:
    """The ports an app of `caller_port` (None: the gateway) reaches `upstream` on."""
    ports = (MESH_HTTP_PORT, upstream.port) if upstream.is_http else (upstream.port,)
    return tuple(p for p in dict.fromkeys(ports) if p != caller_port)


def service_addresses(names: Iterable[str]) -> dict[str, str]:
    """A stable loopback address per service name.

    A hash rather than an index: adding a service must not move the others, since a pod's
    hosts file changing would mean recreating it. Collisions (rare in 4M addresses) are
    settled by probing in name order, so the result depends only on the set of names.
    """
    taken: set[int] = set()
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % (_SPAN - 2) + 1
        while slot in taken:
            slot = slot % (_SPAN - 2) + 1
        taken.add(slot)
        out[name] = str(ipaddress.IPv4Address(_BASE + slot))
    return out
