"""The pods' owner for transport tcp where devmesh cannot compile it (Docker Desktop on
macOS or Windows, no gcc): the busybox variant, built in the real engine FROM busybox, and
run beside a real HTTP server in one network namespace. Its probe must answer exactly as
the compiled probe does (same arguments, same exit codes); its pause must stop at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from devmesh.adapters import images
from tests.e2e.conftest import TEST_LABEL

pytestmark = pytest.mark.docker

# (arguments, the exit code both probes give): a server on 8080 serves /healthz and has a
# directory /sub (busybox httpd answers /sub with 301), nothing listens on 8081; on 9000
# a server answers 200 and keeps the connection open, on 9001 one accepts and says
# nothing (a probe must not wait for either to close).
CASES = [
    (["-t1000", "8080"], 0),
    (["-t1000", "8080", "/healthz"], 0),
    (["-t1000", "8080", "/sub"], 0),  # 3xx counts as healthy, as the host's probes say
    (["-t1000", "8080", "/nope"], 1),
    (["-t1000", "8081"], 1),
    (["-t1000", "8081", "/healthz"], 1),
    (["-t1000", "9001"], 0),
    (["-t1000", "9000", "/"], 0),
    (["-t1000", "9001", "/"], 1),  # connected, but no answer within the timeout
    ([], 2),
    (["-tabc", "8080"], 2),
]
SERVER = (
    "mkdir -p /tmp/w/sub && echo ok > /tmp/w/healthz && "
    "{ nc -ll -p 9001 -e sleep 30 & } && "
    "{ nc -ll -p 9000 -e sh -c 'read l; printf \"HTTP/1.1 200 OK\\r\\n\\r\\n\"; sleep 30' & } && "
    "exec httpd -f -p 127.0.0.1:8080 -h /tmp/w"
)


@pytest.fixture(scope="module")
def owners(docker_client: docker.DockerClient) -> Iterator[dict[str, Any]]:
    """The compiled owner and the busybox one, each running with a server in its netns."""
    tag = f"devmesh/pause-probe-busybox-test:{uuid.uuid4().hex[:8]}"
    made: list[Any] = []
    images.build_busybox_probe_pause(docker_client, tag, lambda _text: None)
    compiled = images.ensure_probe_pause_image(docker_client, lambda _text: None).name
    try:
        running = {}
        for kind, image in (("compiled", compiled), ("busybox", tag)):
            owner = docker_client.containers.run(
                image, detach=True, labels={TEST_LABEL: "probe"}, network_mode="none"
            )
            made.append(owner)
            server = docker_client.containers.run(
                "busybox:1.35",
                ["sh", "-c", SERVER],
                detach=True,
                labels={TEST_LABEL: "probe"},
                network_mode=f"container:{owner.id}",
            )
            made.append(server)
            running[kind] = owner
        time.sleep(0.5)  # httpd binds
        yield running
    finally:
        for container in reversed(made):
            container.remove(force=True)
        docker_client.images.remove(tag, force=True)


@pytest.mark.parametrize(("args", "code"), CASES, ids=[" ".join(a) or "none" for a, _ in CASES])
def test_the_busybox_probe_answers_as_the_compiled_one(
    owners: dict[str, Any], args: list[str], code: int
) -> None:
    got = {}
    for kind, owner in owners.items():
        started = time.monotonic()
        got[kind] = owner.exec_run(["/probe", *args], user="65535:65535")
        assert time.monotonic() - started < 3, (kind, args)  # within its 1 s, plus exec
    assert {kind: r.exit_code for kind, r in got.items()} == {"compiled": code, "busybox": code}, {
        kind: r.output for kind, r in got.items()
    }
    if code == 1:  # the reason, for Docker's health log
        assert got["busybox"].output.strip(), got


def test_the_busybox_owner_runs_as_nobody_and_stops_at_once(
    owners: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    owner = owners["busybox"]
    owner.reload()
    assert owner.status == "running"
    assert docker_client.api.inspect_image(owner.image.id)["Config"]["User"] == "65535:65535"
    started = time.monotonic()
    owner.stop(timeout=10)
    assert time.monotonic() - started < 5  # TERM ends it; not killed after the timeout
    assert owner.wait(timeout=5)["StatusCode"] == 0
