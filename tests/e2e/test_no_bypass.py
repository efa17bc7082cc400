"""No way around the sidecar: a pod's app port is closed to every other container on the
mesh network (desired.guard_rules, loaded by the pod's guard before its app starts), while
declared callers still reach it through the sidecars and the host's health probes still
reach it directly. One mesh for the module."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from devmesh import labels
from devmesh.adapters.engine import Engine, EngineError
from devmesh.api import types as api
from devmesh.client import DaemonClient
from devmesh.plan.desired import (
    GUARD_IMAGE,
    Inputs,
    PodSpec,
    desired,
    hosts_file,
    network_name,
)
from tests.e2e.conftest import PROJECTS, Mesh, module_mesh, outsider_on, sweep
from tests.e2e.test_runtime import wait_for

pytestmark = pytest.mark.docker

MESH = """
mesh: guarded
ingress:
  port: @PORT@
  routes: [{name: site, service: web}]
defaults:
  health: {path: /healthz, interval: 1s}
services:
  web:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    env: {UPSTREAMS: api}
    calls: [api]
  api:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
  other:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
"""


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Mesh]:
    with module_mesh(tmp_path_factory, docker_client, MESH) as made:
        yield made


def _pod(mesh: Mesh, service: str) -> api.Pod:
    """The service's one pod, from the daemon's API (quicker than `devmesh ps`)."""
    state = DaemonClient(mesh.state_dir() / "api.sock").state()
    return next(p for p in state.pods if p.service == service)


def _address(mesh: Mesh, service: str) -> str:
    pod = _pod(mesh, service)
    assert pod.address, pod
    return pod.address


def _wget_from_app(mesh: Mesh, service: str, url: str) -> tuple[int, str]:
    """busybox wget run in `service`'s app container: (exit code, output)."""
    app = mesh.client.containers.get(f"{mesh.project}-{service}-default-0-app")
    code, out = app.exec_run(["wget", "-q", "-O", "-", url])
    return code, out.decode(errors="replace")


@pytest.fixture(scope="module")
def outsider(mesh: Mesh) -> Iterator[Any]:
    with outsider_on(mesh, seconds=120) as container:
        yield container


def test_a_pod_that_does_not_call_the_service_is_refused_at_its_app_port(mesh: Mesh) -> None:
    code, out = _wget_from_app(mesh, "other", f"http://{_address(mesh, 'api')}:8000/")
    assert code != 0 and "refused" in out, out


def test_even_a_declared_caller_cannot_skip_the_sidecars_by_ip(mesh: Mesh) -> None:
    code, out = _wget_from_app(mesh, "web", f"http://{_address(mesh, 'api')}:8000/")
    assert code != 0 and "refused" in out, out


def test_a_container_on_the_mesh_network_is_refused_at_the_app_port(
    mesh: Mesh, outsider: Any
) -> None:
    code, out = outsider.exec_run(
        ["wget", "-q", "-O", "-", f"http://{_address(mesh, 'api')}:8000/"]
    )
    assert code != 0 and b"refused" in out, out


def test_declared_callers_still_reach_the_service_through_the_sidecars(mesh: Mesh) -> None:
    code, out = _wget_from_app(mesh, "web", "http://api/healthz")
    assert (code, out) == (0, "ok\n")
    body = mesh.get("/").body  # ingress -> web -> (web's sidecar -> api's sidecar) -> api
    assert "-> api: api/default" in body, body


def test_the_host_still_probes_the_app_directly(mesh: Mesh) -> None:
    import http.client

    conn = http.client.HTTPConnection(_address(mesh, "api"), 8000, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_restarted_namespace_owner_gets_a_new_pod_with_the_port_closed_again(
    mesh: Mesh,
) -> None:
    """A restarted pause has a fresh namespace with no rules: the daemon replaces the pod
    (as for any dead owner), and the new pod is guarded before its app starts."""
    name = f"{mesh.project}-api-default-0"
    restarted = False
    for _attempt in range(3):
        owner = mesh.client.containers.get(name)
        before = owner.id
        try:
            owner.restart(timeout=1)
            restarted = True
        except docker.errors.APIError as err:
            # The daemon saw the owner die in restart's stop half and removed it before the
            # engine could start it again ("marked for removal", or gone): a dead owner, which
            # is handled the same way. Try again on the new pod to get a real restart.
            if not (err.status_code == 404 or "removal" in str(err)):
                raise

        def replaced_and_ready(before: str | None = before) -> bool:
            try:
                new = mesh.client.containers.get(name)
            except docker.errors.NotFound:
                return False
            return bool(new.id != before and _pod(mesh, "api").state == api.PodState.READY)

        wait_for(replaced_and_ready, timeout=30, every=0.5)
        if restarted:
            break
    code, out = _wget_from_app(mesh, "other", f"http://{_address(mesh, 'api')}:8000/")
    assert code != 0 and "refused" in out, out
    # Ready means the new pod is in the config the daemon published; web's sidecar takes
    # the new endpoint a moment later (its EDS ACK is not waited for): a 503 meanwhile
    # (seen in full-suite runs here) is that moment, not a bypass or a guard problem.
    assert wait_for(lambda: "-> api: api/default" in mesh.get("/").body, timeout=15, every=0.5), (
        mesh.get("/").body
    )


def test_a_guard_that_fails_leaves_no_pod_and_says_why(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Not silently open: the app is never started, and the namespace owner is removed (the
    next pass makes the pod anew); the error names the pod."""
    from devmesh.core.load import load

    project = f"t{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    engine = Engine(docker_client)
    mesh = load("mesh: g\nservices:\n  a: {image: busybox:1.35, port: 8000}\n")
    inputs = Inputs(
        project,
        str(tmp_path),
        "busybox:1.35",
        _pause_image(docker_client),
        {("a", "default"): "busybox:1.35"},
        guard_image=GUARD_IMAGE,
    )
    pod: PodSpec = desired(mesh, inputs).pods[0]
    broken = dataclasses.replace(
        pod.guard,
        image="busybox:1.35",
        entrypoint=("/bin/sh",),
        command=("-c", "echo nope; exit 3"),
    )
    pod = dataclasses.replace(pod, guard=broken)
    hosts = Path(hosts_file(inputs.state_dir, pod.name))
    hosts.parent.mkdir(parents=True)
    hosts.write_text("127.0.0.1\tlocalhost\n")  # the daemon writes it before any pod starts
    try:
        engine.ensure_network(network_name(project), project)
        with pytest.raises(EngineError) as err:
            engine._create_pod(pod, lambda _: None)
        assert err.value.container == pod.name, str(err.value)
        assert "cannot close the pod's app port" in str(err.value) and "nope" in str(err.value)
        left = {
            c.name
            for c in docker_client.containers.list(
                all=True, filters={"label": labels.selector(mesh=project)}
            )
        }
        assert pod.name not in left and pod.app.name not in left and pod.guard.name not in left
    finally:
        sweep(docker_client, project)


def _pause_image(client: docker.DockerClient) -> str:
    from devmesh.adapters.images import LOCAL_PAUSE_IMAGE

    return str(client.images.get(LOCAL_PAUSE_IMAGE).id)
