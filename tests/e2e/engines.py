"""The engines the core end-to-end tests run against, as one parametrized fixture.

    pytest_plugins = ["tests.e2e.engines"]

    def test_x(engine: Engine) -> None:
        engine.env        # the environment for the devmesh processes the test starts
        engine.client     # docker-py on that engine

- `docker`: the shared local engine, the default transport (UNIX sockets into the pods).
- `remote`: a simulated remote engine that behaves like Docker Desktop
  (scripts/remote-engine.sh: dockerd in a container behind slirp4netns, reached over
  tcp://127.0.0.1:PORT), with DEVMESH_TRANSPORT=tcp.
- `podman`: Podman's Docker-compatible API (scripts/ensure-podman.sh).

The remote engine and Podman are started once per session (the first test that needs one),
get the local images devmesh needs by `docker save | docker load` (no registry), and are
removed at the session's end. DEVMESH_TEST_ENGINES=docker,remote picks which run (default:
all three). Without root (or slirp4netns / podman and apt-get) an engine is skipped with
the reason; as root, one that does not start fails the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import docker.errors
import pytest

from devmesh.adapters import images
from devmesh.plan.desired import GUARD_IMAGE
from tests.e2e.conftest import ENV, ROOT

ENGINES = ("docker", "remote", "podman")
REMOTE_SCRIPT = ROOT / "scripts" / "remote-engine.sh"
PODMAN_SCRIPT = ROOT / "scripts" / "ensure-podman.sh"


@dataclass
class Engine:
    name: str  # one of ENGINES
    env: dict[str, str]  # for the devmesh processes the tests start
    client: docker.DockerClient
    started_in: float = 0.0  # seconds this session spent starting it and loading images


def needed_images() -> list[str]:
    """What devmesh needs offline on a fresh engine, under the names it looks for
    (adapters/images.py); the examples' apps build FROM busybox:1.35."""
    return list(
        dict.fromkeys(
            [
                "busybox:1.35",
                images.local_envoy_image(),
                images.LOCAL_PAUSE_IMAGE,
                images.PROBE_PAUSE_IMAGE,  # the tcp transport's pod owner (its health check)
                GUARD_IMAGE,
            ]
        )
    )


def present(names: list[str]) -> list[str]:
    main = docker.from_env(environment={k: v for k, v in ENV.items() if k != "DOCKER_HOST"})
    found = []
    for name in names:
        with contextlib.suppress(docker.errors.ImageNotFound):
            main.images.get(name)
            found.append(name)
    main.close()
    return found


def parse_exports(text: str) -> dict[str, str]:
    """`export K=V` or `K=V` lines, as the engine scripts print them."""
    env = {}
    for line in text.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def wanted() -> tuple[str, ...]:
    chosen = os.environ.get("DEVMESH_TEST_ENGINES")
    if not chosen:
        return ENGINES
    return tuple(e for e in ENGINES if e in chosen.split(","))


@pytest.fixture(scope="session")
def remote_engine() -> Iterator[Engine]:
    """The simulated remote engine: started once, removed with all it made (by its label)."""
    if os.geteuid() != 0:
        pytest.skip("the simulated remote engine needs root (slirp4netns joins its netns)")
    if shutil.which("slirp4netns") is None and shutil.which("apt-get") is None:
        pytest.skip("the simulated remote engine needs slirp4netns (apt-get install slirp4netns)")
    name = f"e2e{uuid.uuid4().hex[:6]}"
    # this session owns it: if it dies without its teardown, the next start removes it
    outer = {k: v for k, v in ENV.items() if k != "DOCKER_HOST"}
    outer["REMOTE_ENGINE_OWNER"] = str(os.getpid())
    began = time.monotonic()
    try:
        started = subprocess.run(
            [str(REMOTE_SCRIPT), "start", name],
            capture_output=True,
            text=True,
            env=outer,
            timeout=120,
            check=False,
        )
        if started.returncode != 0:
            pytest.fail(f"the simulated remote engine did not start:\n{started.stderr}")
        loaded = subprocess.run(
            [str(REMOTE_SCRIPT), "load", name, *present(needed_images())],
            capture_output=True,
            text=True,
            env=outer,
            timeout=180,
            check=False,
        )
        assert loaded.returncode == 0, loaded.stderr
        env = {**ENV, **parse_exports(started.stdout)}
        client = docker.DockerClient(base_url=env["DOCKER_HOST"], version="auto", timeout=60)
        yield Engine("remote", env, client, time.monotonic() - began)
        client.close()
    finally:
        subprocess.run([str(REMOTE_SCRIPT), "stop", name], env=outer, timeout=120, check=False)


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[Engine]:
    """Podman's Docker-compatible API (scripts/ensure-podman.sh), with the images loaded.
    Stopped at the end only when this session started it."""
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("no podman, and not root to install it")
    outer = {k: v for k, v in ENV.items() if k != "DOCKER_HOST"}
    began = time.monotonic()
    before = subprocess.run(
        [str(PODMAN_SCRIPT), "env"], capture_output=True, text=True, env=outer, check=False
    )
    sock = parse_exports(before.stdout).get("DOCKER_HOST", "").removeprefix("unix://")
    was_running = bool(sock) and os.path.exists(sock)
    started = subprocess.run(
        [str(PODMAN_SCRIPT), "start"],
        capture_output=True,
        text=True,
        env=outer,
        timeout=300,
        check=False,
    )
    if started.returncode != 0:  # root with apt-get: it must start (a skip would hide it)
        pytest.fail(f"Podman did not start:\n{started.stderr[-2000:]}")
    try:
        loaded = subprocess.run(
            [str(PODMAN_SCRIPT), "load", *present(needed_images())],
            capture_output=True,
            text=True,
            env=outer,
            timeout=300,
            check=False,
        )
        assert loaded.returncode == 0, loaded.stderr
        printed = subprocess.run(
            [str(PODMAN_SCRIPT), "env"], capture_output=True, text=True, env=outer, check=True
        )
        env = {**ENV, **parse_exports(printed.stdout)}
        client = docker.DockerClient(base_url=env["DOCKER_HOST"], version="auto", timeout=60)
        yield Engine("podman", env, client, time.monotonic() - began)
        client.close()
    finally:
        if not was_running:
            subprocess.run([str(PODMAN_SCRIPT), "stop"], env=outer, timeout=60, check=False)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Engine:
    """One engine per parameter; a module's tests run engine by engine (module scope)."""
    name: str = request.param
    if name not in wanted():
        pytest.skip(f"DEVMESH_TEST_ENGINES={os.environ.get('DEVMESH_TEST_ENGINES')}")
    if name == "docker":
        return Engine("docker", dict(ENV), docker_client)
    found: Engine = request.getfixturevalue(f"{name}_engine")
    return found
