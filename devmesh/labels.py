"""Every Docker label devmesh puts on what it makes, in one place.

Containers, networks and images are found (and cleaned up) by these, never by name.
"""

from __future__ import annotations

PREFIX = "dev.devmesh."
MANAGED = PREFIX + "managed"  # "1" on everything devmesh made
MESH = PREFIX + "mesh"  # the mesh's project name (its `mesh:` unless -p overrides it)
SERVICE = PREFIX + "service"
VERSION = PREFIX + "version"
REPLICA = PREFIX + "replica"
POD = PREFIX + "pod"  # the pod's name, shared by its pause, app and sidecar containers
ROLE = PREFIX + "role"  # pod (namespace owner) | app | sidecar | guard | gateway | network | image
CONFIG_HASH = PREFIX + "config-hash"  # recreate only when this differs from the desired one
GUARD = PREFIX + "guard"  # on a pod's namespace owner: the config hash of its firewall guard


def selector(**labels: str) -> list[str]:
    """Docker's label filter: `selector(mesh="shop")` -> ["dev.devmesh.mesh=shop", ...]."""
    out = [f"{MANAGED}=1"]
    for key, value in labels.items():
        out.append(f"{PREFIX}{key.replace('_', '-')}={value}")
    return out
