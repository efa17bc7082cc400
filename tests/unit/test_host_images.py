"""What devmesh says when it cannot make its own small images on this host (pure: the
host's platform and tools are monkeypatched, no engine is asked)."""

from __future__ import annotations

import platform
import shutil
from typing import Any

import pytest

from devmesh.adapters import images
from devmesh.core.problems import MeshError


@pytest.mark.parametrize("system", ["Darwin", "Windows"])
def test_no_guard_image_on_a_desktop_host_says_how_to_provide_one_or_run_without(
    monkeypatch: pytest.MonkeyPatch, system: str
) -> None:
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(MeshError) as caught:
        images._host_iptables()
    text = str(caught.value)
    assert f"this host is {system}" in text
    assert "DEVMESH_GUARD_IMAGE" in text and "DEVMESH_GUARD=off" in text
    assert "apt-get" not in text


def test_no_iptables_on_linux_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(MeshError, match="apt-get install iptables"):
        images._host_iptables()


@pytest.mark.parametrize(
    ("linux_x86_64", "compiler", "how"),
    [
        (False, "/usr/bin/gcc", "busybox"),  # Docker Desktop on macOS or Windows, arm64
        (True, None, "busybox"),  # no gcc
        (True, "/usr/bin/gcc", "compiled"),
    ],
)
def test_the_tcp_pod_owner_is_compiled_where_it_can_be_else_built_from_busybox(
    monkeypatch: pytest.MonkeyPatch, linux_x86_64: bool, compiler: str | None, how: str
) -> None:
    made: list[str] = []

    def builder(kind: str) -> Any:
        def build(*_args: Any) -> str:
            made.append(kind)
            return f"sha256:{kind}"

        return build

    monkeypatch.setattr(images, "image_id", lambda _client, _name: None)
    monkeypatch.setattr(images, "_linux_x86_64", lambda: linux_x86_64)
    monkeypatch.setattr(
        shutil, "which", lambda name, *_a, **_k: compiler if name == "gcc" else None
    )
    monkeypatch.setattr(images, "build_busybox_probe_pause", builder("busybox"))
    monkeypatch.setattr(images, "_build_static", builder("compiled"))
    client: Any = object()
    choice = images.ensure_probe_pause_image(client, lambda _text: None)
    assert made == [how] and choice.name == images.PROBE_PAUSE_IMAGE and choice.source == "built"


def test_a_static_compile_that_fails_falls_back_to_busybox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gcc with no static libc (Fedora without glibc-static) is no dead end."""
    made: list[str] = []

    def static(*_args: Any) -> str:
        raise images.ImageError("compiling pause.c failed: cannot find -lc")

    def busybox(*args: Any) -> str:
        made.append(args[3])
        return "sha256:b"

    monkeypatch.setattr(images, "image_id", lambda _client, _name: None)
    monkeypatch.setattr(images, "_linux_x86_64", lambda: True)
    monkeypatch.setattr(shutil, "which", lambda name, *_a, **_k: "/usr/bin/gcc")
    monkeypatch.setattr(images, "_build_static", static)
    monkeypatch.setattr(images, "build_busybox_probe_pause", busybox)
    client: Any = object()
    assert images.ensure_probe_pause_image(client, lambda _text: None).image_id == "sha256:b"
    assert made == ["compiling it statically failed"]


def test_no_busybox_and_no_pulling_says_how_to_provide_the_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEVMESH_PULL", "never")
    monkeypatch.setattr(images, "image_id", lambda _client, _name: None)
    client: Any = object()
    with pytest.raises(MeshError) as caught:
        images.build_busybox_probe_pause(client, "t:1", lambda _t: None, "why not")
    text = str(caught.value)
    assert "DEVMESH_PULL=never" in text and "busybox:1.35" in text and "docker load" in text
