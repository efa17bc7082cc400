"""Copy files into running containers through the Engine API (`develop: watch:` sync): no
bind mount, so it works wherever the engine is, and the image stays what it was built as."""

from __future__ import annotations

import io
import os
import posixpath
import shlex
import tarfile
import uuid
from collections.abc import Sequence

import docker
import docker.errors
import requests.exceptions

from devmesh.core.problems import MeshError


class SyncError(MeshError):
    pass


def _tar(files: Sequence[tuple[str, str]]) -> bytes:
    """One archive of `files` (host file, absolute container path), rooted at `/`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for host, target in files:
            try:
                st = os.stat(host)
                with open(host, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue  # gone again since the event: the next event says so
            info = tarfile.TarInfo(posixpath.normpath(target).lstrip("/"))
            info.size = len(data)
            info.mode = st.st_mode & 0o7777
            info.mtime = int(st.st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def copy_into(
    client: docker.DockerClient,
    container: str,
    files: Sequence[tuple[str, str]],
    deleted: Sequence[str] = (),
) -> None:
    """Write `files` into `container` (parents made by the engine), remove `deleted`.

    The engine's extraction removes a file before it writes the new one, so a server
    reading it in between answers 404: the files go in under a temporary name beside
    each target and are renamed into place (`mv`, atomic in one directory). A container
    with no `mv` gets them written in place."""
    try:
        if files:
            tag = uuid.uuid4().hex[:8]
            staged = [(host, _staging(target, tag)) for host, target in files]
            _put(client, container, staged)
            moves = [
                (tmp, posixpath.normpath(t)) for (_, tmp), (_, t) in zip(staged, files, strict=True)
            ]
            if not _run(client, container, _mv_command(moves)):
                _run(client, container, ["rm", "-f", "--", *(tmp for tmp, _ in moves)])
                _put(client, container, files)
        if deleted:
            paths = [posixpath.normpath(p) for p in deleted if posixpath.normpath(p) != "/"]
            if paths:
                _run(client, container, ["rm", "-rf", "--", *paths])
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        text = str(getattr(exc, "explanation", None) or exc)
        raise SyncError(f"{container}: cannot copy files in: {text[:200]}") from None


def _staging(target: str, tag: str) -> str:
    head, name = posixpath.split(posixpath.normpath(target))
    return posixpath.join(head, f".devmesh-sync-{tag}-{name}")


def _mv_command(moves: Sequence[tuple[str, str]]) -> list[str]:
    if len(moves) == 1:
        return ["mv", "-f", "--", *moves[0]]
    script = " && ".join(f"mv -f -- {shlex.quote(a)} {shlex.quote(b)}" for a, b in moves)
    return ["sh", "-c", script]


def _put(client: docker.DockerClient, container: str, files: Sequence[tuple[str, str]]) -> None:
    if not client.api.put_archive(container, "/", _tar(files)):
        raise SyncError(f"{container}: the engine did not take the files")


def _run(client: docker.DockerClient, container: str, command: list[str]) -> bool:
    """Run `command` in the container; whether it ran and exited 0."""
    try:
        exec_id = client.api.exec_create(container, command)["Id"]
        client.api.exec_start(exec_id)
        return bool(client.api.exec_inspect(exec_id).get("ExitCode") == 0)
    except docker.errors.APIError:
        return False  # no such binary in the image, say
