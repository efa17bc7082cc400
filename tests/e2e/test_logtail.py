"""The daemon's followed app logs against a real container: lines as they are written, a
stopped container's end, a restart picked up, a missing container named (busybox from
scripts/make-base-image.sh)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from devmesh import labels
from devmesh.adapters.engine import Engine, EngineError
from devmesh.daemon import logtail
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


def _tails(docker_client: docker.DockerClient) -> LogTails:
    engine = Engine(docker_client)
    return LogTails(engine.follow_logs, lambda name, n: engine.logs(name, follow=False, tail=n))


def test_lines_arrive_as_written_a_stopped_container_shows_its_end_and_a_restart_is_followed(
    docker_client: docker.DockerClient, container: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tails = _tails(docker_client)
    name = container.name
    try:
        assert until(lambda: tails.tail(name, 3, running=True) == ["line 2", "line 3", "line 4"])
        assert tails.followed() == [name]  # later asks are answered from the stream
        assert tails.tail(name, 100, running=True) == [f"line {i}" for i in range(5)]
        container.stop(timeout=0)
        assert tails.tail(name, 2, running=False) == ["line 3", "line 4"]  # a plain read
        assert tails.followed() == []
        container.start()
        assert until(lambda: tails.tail(name, 100, running=True).count("line 4") == 2)
        assert tails.tail(name, 100, running=True) == [f"line {i}" for i in range(5)] * 2
        assert tails.followed() == [name]
        monkeypatch.setattr(logtail, "IDLE", 0.0)
        tails.sweep()  # nobody asked "lately": the stream is closed
        assert tails.followed() == []
    finally:
        tails.close()


def test_a_missing_container_is_an_engine_error(docker_client: docker.DockerClient) -> None:
    with pytest.raises(EngineError, match="no container"):
        _tails(docker_client).tail(f"nobody-{uuid.uuid4().hex[:8]}", 10, running=True)
