"""`up --wait` on transport tcp when no sidecar reaches the daemon: one message naming the
address the pods dial and what to check, instead of every pod's "not ACKed yet"
(cli/views.no_route_lines). Pure: MeshState values, no daemon."""

from __future__ import annotations

import dataclasses

import pytest

from devmesh.api import types as api
from devmesh.cli import views

ADDRESS = "host.docker.internal:41015"


def _state(
    sidecar: str = "running",
    connected: bool = False,
    gateway_connected: bool = False,
    control_plane: str = ADDRESS,
) -> api.MeshState:
    pod = api.Pod(
        pod="t-web-default-0",
        service="web",
        version="default",
        replica=0,
        state=api.PodState.SYNCING,
        reason="sidecar has not ACKed its config yet",
        sidecar=sidecar,
        xds=api.XdsStatus(connected=connected),
    )
    gateway = api.Gateway(
        name="t-gateway", state="running", ready=False, xds=api.XdsStatus(gateway_connected)
    )
    return api.MeshState(
        mesh="t",
        project="t",
        phase=api.Phase.SERVING,
        ready=False,
        pods=(pod, dataclasses.replace(pod, pod="t-web-default-1", replica=1)),
        gateway=gateway,
        transport="tcp" if control_plane else "unix",
        control_plane=control_plane,
    )


def test_no_sidecar_connected_names_the_address_and_what_to_check() -> None:
    lines = views.no_route_lines(_state(), 30)
    text = "\n".join(lines)
    assert (
        lines[0]
        .strip()
        .startswith(f"no sidecar reached the control plane at {ADDRESS} within 30 s")
    )
    assert "(3 running, none connected)" in text  # two sidecars and the gateway
    assert "reach host.docker.internal" in text and "DEVMESH_XDS_ADDRESS=host:port" in text


@pytest.mark.parametrize(
    "state",
    [
        _state(connected=True),  # a sidecar connected: its pods' own reasons say more
        _state(gateway_connected=True),  # the gateway came: there is a route
        _state(sidecar="created"),  # the sidecars are not running yet: not a route problem
        _state(control_plane=""),  # transport unix: the socket is in the pod
    ],
    ids=["a-sidecar-connected", "gateway-connected", "not-running", "unix"],
)
def test_no_route_is_said_only_when_nothing_connected_and_it_runs(state: api.MeshState) -> None:
    state = (
        dataclasses.replace(state, gateway=dataclasses.replace(state.gateway, state="created"))
        if state.pods[0].sidecar == "created" and state.gateway is not None
        else state
    )
    assert views.no_route_lines(state, 30) == []
