"""End-to-end fixtures: a real Docker engine, real Envoy, the real `devmesh` command.

Each test gets its own project name and ingress port, and whatever it starts is removed by
label afterwards, also when it fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from devmesh import labels
from devmesh.plan.desired import network_name
from devmesh.unixhttp import UnixHTTPConnection

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "shop" / "app"
ENV = {**os.environ, "DEVMESH_PULL": "never"}  # no registry: never contact one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def devmesh(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
        cwd=cwd,
        check=False,
    )


PROJECTS: list[str] = []  # every project this session made, for the image sweep at the end


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine CI's setup started; the examples' base image made if it is missing.

    At the end, the images built for this session's meshes are removed (by their labels).
    """
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"no Docker engine for the end-to-end tests ({exc}); run scripts/ensure-docker.sh"
        )
    subprocess.run([str(ROOT / "scripts" / "make-base-image.sh")], check=True, env=ENV)
    yield client
    # The legacy builder can leave a build step's container behind when builds of one tag
    # race (parallel meshes); it carries the image's labels.
    built = {"label": [f"{labels.ROLE}=image"], "status": "created"}
    for leftover in client.containers.list(all=True, filters=built):
        with contextlib.suppress(docker.errors.APIError):
            leftover.remove(force=True)
    for image in client.images.list(filters={"label": f"{labels.MANAGED}=1"}):
        owner = image.labels.get(labels.MESH) or image.labels.get("variant")
        if owner in PROJECTS:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str


def request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Response:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    finally:
        if own:
            c.close()


@dataclass
class Mesh:
    """One mesh under test: its file, project, port and the commands to drive it."""

    directory: Path
    project: str
    port: int
    client: docker.DockerClient
    file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.file = self.directory / "devmesh.yaml"

    def write(self, text: str) -> None:
        self.file.write_text(text.replace("@PORT@", str(self.port)).replace("@APP@", str(APP)))

    def run(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # -f and -p before the command, as compose takes them (after `logs`, -f is --follow)
        return devmesh("-f", str(self.file), "-p", self.project, *args, timeout=timeout, env=env)

    def up(self, *flags: str) -> subprocess.CompletedProcess[str]:
        result = self.run("up", "-d", "--wait", "--timeout", "60", *flags)
        return result

    def up_ok(self) -> None:
        result = self.up()
        assert result.returncode == 0, result.stdout + result.stderr

    def ps(self) -> dict[str, Any]:
        result = self.run("ps", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def containers(self) -> dict[str, str]:
        """name -> id of every container with this mesh's label. From the list alone
        (sparse): an inspect per container fails on one the daemon removes meanwhile."""
        found = self.client.api.containers(
            all=True, filters={"label": labels.selector(mesh=self.project)}
        )
        return {str(c["Names"][0]).lstrip("/"): str(c["Id"]) for c in found}

    def get(self, path: str, **kw: Any) -> Response:
        return request(self.port, path, **kw)

    def state_dir(self) -> Path:
        from devmesh.daemon.state import StateDir

        return StateDir.for_project(self.project).path

    def admin_stats(self, pod: str, filter_: str) -> dict[str, int]:
        """Counters from a sidecar's admin API, read through its UNIX socket."""
        from devmesh.daemon.state import StateDir

        sock_path = StateDir.for_project(self.project).admin_socket(pod)
        conn = UnixHTTPConnection(sock_path)
        try:
            conn.request("GET", f"/stats?format=json&filter={filter_}")
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return {s["name"]: s["value"] for s in data["stats"] if "value" in s}


def sweep(client: docker.DockerClient, project: str) -> None:
    selector = {"label": labels.selector(mesh=project)}
    for c in client.containers.list(all=True, filters=selector):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)
    for n in client.networks.list(filters=selector):
        n.remove()


TEST_LABEL = "dev.devmesh.test"  # not devmesh's own labels: the daemon would remove it


@contextlib.contextmanager
def outsider_on(mesh: Mesh, seconds: int) -> Iterator[Any]:
    """A plain container on the mesh network, in no pod (busybox: no lookups, IPs only),
    living at most `seconds` and removed afterwards."""
    container = mesh.client.containers.run(
        "busybox:1.35",
        ["sleep", str(seconds)],
        detach=True,
        network=network_name(mesh.project),
        labels={TEST_LABEL: mesh.project},
        name=f"{mesh.project}-outsider",
    )
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


@pytest.fixture
def make_mesh(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Any]:
    made: list[Mesh] = []

    def factory(text: str) -> Mesh:
        directory = tmp_path / f"m{len(made)}"
        directory.mkdir()
        mesh = Mesh(directory, f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client)
        PROJECTS.append(mesh.project)
        mesh.write(text)
        made.append(mesh)
        return mesh

    yield factory
    for mesh in made:
        mesh.run("down", timeout=60)
        sweep(docker_client, mesh.project)


@contextlib.contextmanager
def module_mesh(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, text: str
) -> Iterator[Mesh]:
    """A mesh of `text` up (--wait) for a module's tests, down and swept afterwards."""
    made = Mesh(
        tmp_path_factory.mktemp("mesh"), f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client
    )
    PROJECTS.append(made.project)
    made.write(text)
    try:
        made.up_ok()
        yield made
    finally:
        made.run("down", timeout=60)
        sweep(docker_client, made.project)


class PacedLoad:
    """GETs of `path` on 127.0.0.1:`port` from `threads` threads, each on a keep-alive
    connection like a real client's, about `rate` a second in all, until the block ends
    (`limit` seconds at most, whatever the test does). Every answer but a 200 is a
    failure, kept with the start of its body."""

    def __init__(
        self, port: int, path: str = "/healthz", rate: float = 200, threads: int = 4
    ) -> None:
        self.port, self.path, self.every = port, path, threads / rate
        self.limit = 60.0
        self.ok = 0
        self.failures: list[str] = []
        self.seconds = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> PacedLoad:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=20)
        self.seconds = time.monotonic() - self.started

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{resp.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
            next_at += self.every
            time.sleep(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()
