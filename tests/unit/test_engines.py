"""Which engine answered, what differs on it, and what devmesh says when one does not answer
or cannot run the pods' firewall guard (devmesh/core/engines.py): pure, no engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from devmesh import labels
from devmesh.core import engines
from devmesh.core.engines import EngineInfo, EngineKind
from devmesh.core.load import load_path
from devmesh.core.problems import MeshError
from devmesh.plan.desired import Inputs, desired

SHOP = load_path(str(Path(__file__).resolve().parents[2] / "examples" / "shop" / "devmesh.yaml"))

# What the engines on this machine answered (`GET /version`, `GET /info`), cut to what counts.
PODMAN_VERSION: dict[str, Any] = {
    "Platform": {"Name": "linux/amd64/debian-12"},
    "Components": [
        {"Name": "Podman Engine", "Version": "4.3.1"},
        {"Name": "Conmon", "Version": "conmon version 2.1.6"},
        {"Name": "OCI Runtime (runc)", "Version": "runc version 1.1.5+ds1"},
    ],
    "Version": "4.3.1",
    "ApiVersion": "1.41",
}
PODMAN_INFO = {
    "OperatingSystem": "debian",
    "ServerVersion": "4.3.1",
    "SecurityOptions": ["name=seccomp,profile=default"],
}
DOCKER_VERSION = {
    "Components": [{"Name": "Engine"}, {"Name": "containerd"}, {"Name": "runc"}],
    "Version": "20.10.24+dfsg1",
    "ApiVersion": "1.41",
}
DOCKER_INFO = {
    "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
    "SecurityOptions": ["name=seccomp,profile=default"],
}
SOCK = "unix:///run/podman/podman.sock"


@pytest.mark.parametrize(
    ("version", "info", "kind", "rootless", "userns", "name"),
    [
        (PODMAN_VERSION, PODMAN_INFO, EngineKind.PODMAN, False, False, "Podman 4.3.1 (rootful)"),
        (
            PODMAN_VERSION,
            {**PODMAN_INFO, "SecurityOptions": ["name=seccomp", "name=rootless"]},
            EngineKind.PODMAN,
            True,
            False,
            "Podman 4.3.1 (rootless)",
        ),
        (DOCKER_VERSION, DOCKER_INFO, EngineKind.DOCKER, False, False, "Docker 20.10.24+dfsg1"),
        (
            DOCKER_VERSION,
            {**DOCKER_INFO, "SecurityOptions": ["name=seccomp", "name=userns"]},
            EngineKind.DOCKER,
            False,
            True,
            "Docker 20.10.24+dfsg1 (userns-remap)",
        ),
        (
            {"Version": "27.3.1", "Components": [{"Name": "Engine"}]},
            {"OperatingSystem": "Docker Desktop"},
            EngineKind.DOCKER_DESKTOP,
            False,
            False,
            "Docker Desktop 27.3.1",
        ),
        ({}, {}, EngineKind.DOCKER, False, False, "Docker"),  # an engine that says nothing
    ],
    ids=["podman", "podman-rootless", "docker", "docker-userns", "desktop", "silent"],
)
def test_identify_names_the_engine(
    version: dict[str, Any],
    info: dict[str, Any],
    kind: EngineKind,
    rootless: bool,
    userns: bool,
    name: str,
) -> None:
    found = engines.identify(version, info, SOCK)
    assert (found.kind, found.rootless, found.userns, found.name) == (kind, rootless, userns, name)
    assert found.describe() == f"{name} at {SOCK}"


PODMAN_PING = {"Api-Version": "1.41", "Libpod-Api-Version": "4.3.1", "Server": "Libpod/4.3.1"}
DOCKER_PING = {"Api-Version": "1.41", "Ostype": "linux", "Server": "Docker/20.10.24+dfsg1"}


@pytest.mark.parametrize(
    ("ping", "info", "kind", "name"),
    [
        (PODMAN_PING, PODMAN_INFO, EngineKind.PODMAN, "Podman 4.3.1 (rootful)"),
        (PODMAN_PING, {}, EngineKind.PODMAN, "Podman 4.3.1 (rootful)"),  # info refused
        (DOCKER_PING, DOCKER_INFO, EngineKind.DOCKER, "Docker"),
    ],
    ids=["podman", "podman-ping-only", "docker"],
)
def test_the_ping_alone_names_podman(
    ping: dict[str, str], info: dict[str, Any], kind: EngineKind, name: str
) -> None:
    """Without `/version` (Podman answers it in seconds on a loaded machine, its ping in
    milliseconds): the ping's headers (as Podman 4.3 and Docker 20.10 sent them here)."""
    found = engines.identify({}, info, SOCK, ping)
    assert (found.kind, found.name, found.api_version) == (kind, name, "1.41")


def _info(kind: EngineKind, rootless: bool = False, userns: bool = False) -> EngineInfo:
    return EngineInfo(kind, "1.0", "1.41", "linux", SOCK, rootless, userns)


def test_docker_differs_in_nothing() -> None:
    docker = _info(EngineKind.DOCKER)
    assert engines.differences(docker) == ()
    assert engines.summary(docker) == f"engine: Docker 1.0 at {SOCK}"


def test_podman_says_builds_and_host_name_differ() -> None:
    text = engines.summary(_info(EngineKind.PODMAN))
    assert text.startswith(f"engine: Podman 1.0 (rootful) at {SOCK}: ")
    assert "no BuildKit" in text and "host-gateway" in text
    assert "NET_ADMIN" not in text


@pytest.mark.parametrize("how", ["rootless", "userns"])
def test_an_engine_without_net_admin_says_the_guard_cannot_run(how: str) -> None:
    info = _info(EngineKind.PODMAN, rootless=how == "rootless", userns=how == "userns")
    assert any("NET_ADMIN" in d and "DEVMESH_GUARD=off" in d for d in engines.differences(info))


# -- an engine that does not answer: (address, root cause, socket file there) -> words --------


@pytest.mark.parametrize(
    ("address", "cause", "exists", "words"),
    [
        (
            "tcp://127.0.0.1:1",
            "[Errno 111] Connection refused",
            None,
            ["the container engine at tcp://127.0.0.1:1", "nothing listens on 127.0.0.1:1"],
        ),
        (
            "unix:///nonexistent",
            "[Errno 2] No such file or directory",
            False,
            ["no socket at /nonexistent (DOCKER_HOST)", "not running there"],
        ),
        (
            "unix:///var/run/docker.sock",
            "[Errno 2] No such file or directory",
            False,
            ["the Docker engine", "(the default socket)", "systemctl start docker"],
        ),
        (
            "unix:///run/user/1000/podman/podman.sock",
            "[Errno 2] No such file or directory",
            False,
            ["the Podman engine", "no socket at", "systemctl --user start podman.socket"],
        ),
        (
            "unix:///run/podman/podman.sock",
            "[Errno 111] Connection refused",
            True,
            [
                "the Podman engine",
                "is there but nothing listens on it",
                "podman system service --time=0 unix:///run/podman/podman.sock",
            ],
        ),
        (
            "unix:///var/run/docker.sock",
            "[Errno 13] Permission denied",
            True,
            ["permission denied on /var/run/docker.sock", "`docker` group"],
        ),
        (
            "ssh://nobody@127.0.0.1:1",
            "name 'SSHHTTPAdapter' is not defined",
            None,
            ["at ssh://nobody@127.0.0.1:1", "paramiko", "ssh -nNT -L"],
        ),
        (
            "tcp://engine.example:2375",
            "[Errno -2] Name or service not known",
            None,
            ["the name engine.example does not resolve"],
        ),
        (
            "tcp://127.0.0.1:2375",
            "Read timed out. (read timeout=30)",
            None,
            ["no answer from 127.0.0.1:2375 in time"],
        ),
        (
            "http://x",
            "Invalid bind address format: port is required: http://x",
            None,
            ["DOCKER_HOST=http://x is not an engine address", "unix:///path/to/socket"],
        ),
        ("docker.sock", "Invalid bind address protocol", None, ["is not an engine address"]),
    ],
    ids=[
        "tcp-closed",
        "unix-missing",
        "default-missing",
        "podman-not-started",
        "podman-stale-socket",
        "permission",
        "ssh-no-paramiko",
        "no-such-name",
        "timeout",
        "bad-scheme",
        "no-scheme",
    ],
)
def test_unreachable_names_the_engine_and_what_is_missing(
    address: str, cause: str, exists: bool | None, words: list[str]
) -> None:
    text = engines.unreachable(address, cause, exists)
    for word in words:
        assert word in text, text
    assert "Traceback" not in text


def test_guard_refused_says_net_admin_and_how_to_turn_it_off() -> None:
    text = engines.guard_refused(
        _info(EngineKind.PODMAN, rootless=True), "iptables-restore: Permission denied"
    )
    assert text.startswith(f"Podman 1.0 (rootless) at {SOCK} cannot run the pods' firewall")
    assert "needs NET_ADMIN" in text and "did not get it" in text
    assert "DEVMESH_GUARD=off" in text and "iptables-restore: Permission denied" in text


@pytest.mark.parametrize(
    ("text", "net_admin"),
    [
        (
            "exited with 1: iptables-restore v1.8.9 (nf_tables): Could not fetch rule set "
            "generation id: Permission denied (you must be root)",
            True,
        ),
        ("exited with 1: can't initialize iptables table `filter': Permission denied", True),
        ("runc create failed: operation not permitted", True),
        ("exited with 1: line 3 failed", False),
        ("image devmesh/netguard:1 not found", False),
    ],
    ids=["nft", "legacy", "runc", "bad-rules", "no-image"],
)
def test_looks_like_no_net_admin(text: str, net_admin: bool) -> None:
    assert engines.looks_like_no_net_admin(text) is net_admin


# -- DEVMESH_GUARD: the guard on or off ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, True), ("on", True), ("OFF", False), ("0", False), ("false", False), (" no ", False)],
    ids=["unset", "on", "OFF", "0", "false", "no"],
)
def test_guard_is_on_unless_turned_off(value: str | None, on: bool) -> None:
    env = {} if value is None else {engines.GUARD_ENV: value}
    assert engines.guard_enabled(env) is on


def test_a_guard_setting_that_is_neither_on_nor_off_is_refused() -> None:
    with pytest.raises(MeshError, match=r"DEVMESH_GUARD='maybe': expected 'on' or 'off'"):
        engines.guard_enabled({engines.GUARD_ENV: "maybe"})


def test_pods_without_the_guard_say_so_in_their_owner_label() -> None:
    """Off: no guard is run, and the owner's label differs, so switching makes new pods
    (a guarded pod is never taken over as unguarded, nor the other way round)."""
    images = {(s.name, v.name): f"sha256:{s.name}" for s in SHOP.services for v in s.versions}
    inputs = Inputs("t", "/state/t", "sha256:envoy", "sha256:pause", images)
    on = desired(SHOP, inputs).pods
    off = desired(SHOP, dataclasses.replace(inputs, guard=False)).pods
    assert all(p.guarded for p in on) and not any(p.guarded for p in off)
    assert all(dict(p.pause.labels)[labels.GUARD] == "off" for p in off)
    assert all(dict(p.pause.labels)[labels.GUARD] == p.guard.config_hash for p in on)
    assert {p.pause.config_hash for p in on}.isdisjoint(p.pause.config_hash for p in off)


# -- Podman's removal rule, as the adapter reads it ---------------------------------------------

OWNER, APP_ID, SIDECAR_ID = (
    "38eacbc896da" + "0" * 52,
    "06121ea44e60" + "1" * 52,
    "614887d73fbe" + "2" * 52,
)


def test_podmans_dependent_containers_are_read_from_its_refusal() -> None:
    """Podman 4.3's words when a pod's owner is removed before its members (measured)."""
    import docker.errors

    from devmesh.adapters.engine import _dependents

    refusal = docker.errors.APIError(
        "500 Server Error",
        explanation=f"container {OWNER} has dependent containers which must be removed "
        f"before it: {APP_ID}, {SIDECAR_ID}: container already exists",
    )
    assert _dependents(refusal) == [APP_ID, SIDECAR_ID]
    assert _dependents(docker.errors.APIError("409", explanation="removal in progress")) == []


def test_joined_containers_are_removed_first() -> None:
    from devmesh.adapters.engine import _joins

    assert _joins({"HostConfig": {"NetworkMode": f"container:{OWNER}"}, "Labels": {}})
    assert _joins({"HostConfig": {"NetworkMode": "devmesh-t"}, "Labels": {labels.ROLE: "app"}})
    assert not _joins({"HostConfig": {"NetworkMode": "devmesh-t"}, "Labels": {labels.ROLE: "pod"}})
