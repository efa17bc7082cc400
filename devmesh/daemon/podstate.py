"""What a pod's three containers alone say of its state: shared by the daemon's status and
by `ps` without a daemon. Light on purpose: the CLI imports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devmesh.api.types import PodState

if TYPE_CHECKING:
    from devmesh.adapters.engine import ContainerInfo


def container_state(
    owner: ContainerInfo | None, app: ContainerInfo | None, sidecar: ContainerInfo | None
) -> tuple[PodState, str] | None:
    """Why the containers keep the pod from serving, or None when all three run."""
    if owner is None:
        return PodState.STARTING, "pod starting"
    if owner.state != "running":
        return PodState.STARTING, f"namespace owner {owner.state}"
    if app is None:
        return PodState.STARTING, "app container missing"
    if app.state != "running":
        why = f"app exiting (exit code {app.exit_code}, restarted {app.restarts} times)"
        return PodState.CRASHING, why
    if sidecar is None or sidecar.state != "running":
        return PodState.SIDECAR_DOWN, f"sidecar {sidecar.state if sidecar else 'missing'}"
    return None
