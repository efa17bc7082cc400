"""Bad engine input, with real processes: an engine that does not answer (a closed port, a
socket path with nothing there, a Podman socket nobody serves, SSH without paramiko), an
engine that refuses the guard NET_ADMIN, and a wrong DOCKER_HOST beside a running mesh.
Each gives a clear message naming the engine and what is missing, exit 1, no traceback, and
never stops what runs.

One small mesh for the module (on the shared Docker engine, DEVMESH_GUARD=off, which this
module also checks for real)."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from devmesh import labels
from devmesh.adapters.engine import Engine, EngineError
from devmesh.core.load import load
from devmesh.plan.desired import (
    GUARD_IMAGE,
    Inputs,
    PodSpec,
    desired,
    hosts_file,
    network_name,
)
from tests.e2e.conftest import APP, ENV, PROJECTS, Mesh, devmesh, free_port, outsider_on, sweep

pytestmark = pytest.mark.docker

SMALL = """
mesh: small
ingress:
  port: @PORT@
  routes:
    - {name: site, service: web}
services:
  web:
    build: @APP@
    port: 8000
    health: {path: /healthz, interval: 1s}
"""
GUARD_OFF = {**ENV, "DEVMESH_GUARD": "off"}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then let go)."""
    return free_port()


def stale_socket(path: Path) -> None:
    """A socket file nothing listens on: what a Podman service killed without cleanup (or
    a stopped systemd socket unit's leftover) leaves behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays; connecting to it is refused


def run_with(host: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return devmesh(*args, env={**GUARD_OFF, "DOCKER_HOST": host}, timeout=90, cwd=cwd)


def assert_clear(result: subprocess.CompletedProcess[str], *words: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text, text
    for word in words:
        assert word in result.stderr, result.stderr


# -- an engine that does not answer -------------------------------------------------------------


def _addresses(tmp: Path) -> list[tuple[str, str, list[str]]]:
    port = closed_port()
    return [
        (
            "tcp-closed",
            f"tcp://127.0.0.1:{port}",
            [f"at tcp://127.0.0.1:{port}", f"nothing listens on 127.0.0.1:{port}"],
        ),
        (
            "unix-missing",
            "unix:///nonexistent/docker.sock",
            ["the Docker engine at unix:///nonexistent/docker.sock", "no socket at"],
        ),
        (
            "ssh",
            "ssh://nobody@127.0.0.1:1",
            ["at ssh://nobody@127.0.0.1:1", "paramiko"],
        ),
        (
            "podman-no-socket",
            f"unix://{tmp}/run/podman/podman.sock",
            ["the Podman engine", "no socket at", "podman system service --time=0"],
        ),
        (
            "podman-stale-socket",
            f"unix://{tmp}/stale/podman/podman.sock",
            ["the Podman engine", "is there but nothing listens on it", "podman.socket"],
        ),
    ]


CASES = ["tcp-closed", "unix-missing", "ssh", "podman-no-socket", "podman-stale-socket"]


@pytest.mark.parametrize("case", CASES)
def test_an_engine_that_does_not_answer_is_named_with_what_is_missing(
    case: str, tmp_path: Path
) -> None:
    (_, host, words), *_ = [a for a in _addresses(tmp_path) if a[0] == case]
    if case == "podman-stale-socket":
        stale_socket(Path(host.removeprefix("unix://")))
    (tmp_path / "devmesh.yaml").write_text(
        SMALL.replace("@PORT@", str(free_port())).replace("@APP@", str(APP))
    )
    project = f"t{uuid.uuid4().hex[:8]}"
    up = run_with(host, "-p", project, "up", "-d", "--wait", "--timeout", "20", cwd=tmp_path)
    assert_clear(up, "cannot reach", *words)
    assert "daemon running" not in up.stderr  # nothing was started
    if case == "podman-stale-socket":  # the other commands connect the same way (CI time)
        assert_clear(run_with(host, "engine"), "cannot reach", *words)
        assert_clear(run_with(host, "-p", project, "ps"), "cannot reach", *words)


# -- a wrong DOCKER_HOST beside a running mesh --------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    client = docker.from_env()
    mesh = Mesh(tmp_path_factory.mktemp("small"), f"t{uuid.uuid4().hex[:8]}", free_port(), client)
    PROJECTS.append(mesh.project)
    mesh.write(SMALL)
    try:
        result = mesh.run("up", "-d", "--wait", "--timeout", "90", env=GUARD_OFF)
        assert result.returncode == 0, result.stdout + result.stderr
        yield mesh
    finally:
        mesh.run("down", timeout=60, env=GUARD_OFF)
        sweep(client, mesh.project)
        client.close()


def test_a_wrong_docker_host_stops_nothing_that_runs(small: Mesh) -> None:
    before = small.ps()
    containers = small.containers()
    host = f"tcp://127.0.0.1:{closed_port()}"
    down = small.run("down", env={**GUARD_OFF, "DOCKER_HOST": host})
    assert_clear(down, "cannot reach", "reaches its engine", "Nothing was stopped")
    engine = small.run("engine", env={**GUARD_OFF, "DOCKER_HOST": host})
    assert_clear(engine, f"nothing listens on {host.removeprefix('tcp://')}")
    # the same daemon serves the same pods, and traffic flows
    after = small.ps()
    assert after["pid"] == before["pid"] and after["ready"]
    assert small.containers() == containers
    assert small.get("/").status == 200


def test_pods_without_the_guard_are_marked_and_open_to_the_network(small: Mesh) -> None:
    """DEVMESH_GUARD=off, for real: the owner's label says so and no firewall closes the
    app's port, so a container on the mesh network reaches it directly (with the guard
    on, tests/e2e/test_no_bypass.py shows the same request refused)."""
    (owner,) = small.client.containers.list(
        filters={"label": [*labels.selector(mesh=small.project), f"{labels.ROLE}=pod"]}
    )
    assert owner.labels[labels.GUARD] == "off"
    address = owner.attrs["NetworkSettings"]["Networks"][network_name(small.project)]["IPAddress"]
    with outsider_on(small, 20) as outsider:
        code, out = outsider.exec_run(["wget", "-q", "-O", "-", f"http://{address}:8000/"])
    assert code == 0, out


# -- an engine that will not give the guard NET_ADMIN ---------------------------------------------


def test_a_guard_without_net_admin_says_so_and_how_to_turn_it_off(tmp_path: Path) -> None:
    """The real guard image and iptables in a real pod namespace, without NET_ADMIN (what a
    rootless or userns-remapped engine that refuses it gives): the pod fails with words that
    say the guard needs NET_ADMIN and how to run without it, and no app is started."""
    client = docker.from_env()
    project = f"t{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    engine = Engine(client)
    mesh = load("mesh: g\nservices:\n  a: {image: busybox:1.35, port: 8000}\n")
    inputs = Inputs(
        project,
        str(tmp_path),
        "busybox:1.35",
        _pause_image(client),
        {("a", "default"): "busybox:1.35"},
        guard_image=GUARD_IMAGE,
    )
    pod: PodSpec = desired(mesh, inputs).pods[0]
    pod = dataclasses.replace(pod, guard=dataclasses.replace(pod.guard, cap_add=()))
    hosts = Path(hosts_file(inputs.state_dir, pod.name))
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text("127.0.0.1\tlocalhost\n")
    try:
        engine.ensure_network(network_name(project), project)
        with pytest.raises(EngineError) as err:
            engine._create_pod(pod, lambda _: None)
        text = str(err.value)
        assert "cannot run the pods' firewall guard, which needs NET_ADMIN" in text, text
        assert "DEVMESH_GUARD=off" in text and engine.identity().name in text, text
        left = {
            c.name
            for c in client.containers.list(
                all=True, filters={"label": labels.selector(mesh=project)}
            )
        }
        assert pod.app.name not in left and pod.name not in left
    finally:
        sweep(client, project)
        client.close()


def _pause_image(client: docker.DockerClient) -> str:
    from devmesh.adapters.images import LOCAL_PAUSE_IMAGE

    try:
        return str(client.images.get(LOCAL_PAUSE_IMAGE).id)
    except docker.errors.ImageNotFound:
        pytest.skip(f"no {LOCAL_PAUSE_IMAGE} (an earlier e2e test builds it)")


# -- no route from the pods to the control plane ------------------------------------------------


def test_no_route_to_the_control_plane_is_named_at_up_wait(tmp_path: Path) -> None:
    """Transport tcp on the local engine: the pods dial host.docker.internal (the bridge's
    gateway) while the daemon listens on 127.0.0.1 only, so no sidecar ever connects. `up
    --wait` says so, with the address, instead of a generic timeout; the mesh is removed."""
    (tmp_path / "devmesh.yaml").write_text(
        SMALL.replace("@PORT@", str(free_port())).replace("@APP@", str(APP))
    )
    project = f"t{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    env = {**GUARD_OFF, "DEVMESH_TRANSPORT": "tcp"}
    try:
        up = devmesh("-p", project, "up", "-d", "--wait", "--timeout", "8", env=env, cwd=tmp_path)
        assert up.returncode == 3, up.stdout + up.stderr  # Exit.NOT_READY
        assert "Traceback" not in up.stderr
        assert "no sidecar reached the control plane at host.docker.internal:" in up.stderr
        assert "within 8 s" in up.stderr and "DEVMESH_XDS_ADDRESS" in up.stderr, up.stderr
        assert "has not ACKed" not in up.stderr  # the one message, not every pod's
    finally:
        devmesh("-p", project, "down", env=env, timeout=60, cwd=tmp_path)
        sweep(docker.from_env(), project)


def test_a_mesh_network_the_engine_will_not_remove_is_named_with_what_to_check(
    docker_client: docker.DockerClient,
) -> None:
    """`down` removes the mesh's containers, then its networks; a network Docker still holds
    endpoints on is refused by the engine (looked at again for a few seconds first: a
    container's removal may not have finished). The message names it and says what to look
    at (an endpoint of a container that is gone needs an engine restart: seen with 20.10)."""
    project = f"t{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    net = docker_client.networks.create(
        f"devmesh-{project}", labels={labels.MANAGED: "1", labels.MESH: project}
    )
    # a container devmesh did not make (no mesh label: `down` leaves it) keeps an endpoint
    other = docker_client.containers.run(
        "busybox:1.35",
        ["sleep", "60"],
        detach=True,
        network=net.name,
        labels={"dev.devmesh.test": project},
        name=f"{project}-outsider",
    )
    try:
        with pytest.raises(EngineError) as caught:
            Engine.connect().remove_all(project)
        message = str(caught.value)
        assert "active endpoints" in message, message
        assert f"`docker network inspect {net.name}`" in message
        other.reload()
        assert other.status == "running"  # down left what it did not make
    finally:
        other.remove(force=True)
        sweep(docker_client, project)
    assert not docker_client.networks.list(filters={"label": labels.selector(mesh=project)})
