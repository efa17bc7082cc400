"""The daemon's followed app logs against a real container: lines as they are written, a
restart picked up, a missing container named (busybox from scripts/make-base-image.sh)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from devmesh import labels
from devmesh.adapters.engine import Engine, EngineError
from devmesh.daemon.logtail import LogTails
from tests.e2e.conftest import sweep

pytestmark = pytest.mark.docker

# Five numbered lines, one every 0.2 s, then quiet (so a restart writes five more).
SCRIPT = "i=0; while [ $i -lt 5 ]; do echo line $i; i=$((i+1)); sleep 0.2; done; sleep 600"


def until(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture
def container(docker_client: docker.DockerClient) -> Iterator[Any]:
    project = f"t{uuid.uuid4().hex[:8]}"
    made = docker_client.containers.run(
        "busybox:1.35",
        ["sh", "-c", SCRIPT],
        name=f"{project}-logs",
        detach=True,
        network_mode="none",
        stop_signal="SIGKILL",
        labels={labels.MANAGED: "1", labels.MESH: project},
    )
    try:
        yield made
    finally:
        sweep(docker_client, project)


def test_lines_arrive_as_written_and_a_restart_is_followed(
    docker_client: docker.DockerClient, container: Any
) -> None:
    tails = LogTails(Engine(docker_client).follow_logs)
    try:
        assert until(lambda: tails.tail(container.name, 3) == ["line 2", "line 3", "line 4"])
        assert tails.tail(container.name, 100) == [f"line {i}" for i in range(5)]
        container.restart(timeout=0)  # the stream ends with the old process; asked anew
        assert until(lambda: tails.tail(container.name, 100).count("line 4") == 2)
        assert tails.tail(container.name, 100) == [f"line {i}" for i in range(5)] * 2
    finally:
        tails.close()


def test_a_missing_container_is_an_engine_error(docker_client: docker.DockerClient) -> None:
    tails = LogTails(Engine(docker_client).follow_logs)
    with pytest.raises(EngineError, match="no container"):
        tails.tail(f"nobody-{uuid.uuid4().hex[:8]}", 10)
