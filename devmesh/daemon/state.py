"""The per-mesh state directory: the daemon's lock and pid, its sockets, each pod's files.

$DEVMESH_STATE_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/devmesh-UID, then /PROJECT:
  daemon.lock  daemon.pid  daemon.log
  api.sock                 the daemon's local API (owner only)
  xds/xds.sock             the ADS server; the directory is bind-mounted into sidecars
  pods/POD/                bootstrap.json and admin.sock of each sidecar and the gateway
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from devmesh.core.problems import MeshError
from devmesh.plan.desired import pod_dir

_SUN_PATH_MAX = 107  # a UNIX socket path longer than this cannot be bound


def base_dir() -> Path:
    explicit = os.environ.get("DEVMESH_STATE_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(runtime) / f"devmesh-{os.getuid()}"


@dataclass(frozen=True)
class StateDir:
    path: Path

    @classmethod
    def for_project(cls, project: str) -> StateDir:
        return cls(base_dir() / project)

    @property
    def lock_file(self) -> Path:
        return self.path / "daemon.lock"

    @property
    def pid_file(self) -> Path:
        return self.path / "daemon.pid"

    @property
    def log_file(self) -> Path:
        return self.path / "daemon.log"

    @property
    def api_socket(self) -> Path:
        return self.path / "api.sock"

    @property
    def xds_dir(self) -> Path:
        return self.path / "xds"

    @property
    def xds_socket(self) -> Path:
        return self.xds_dir / "xds.sock"

    def admin_socket(self, pod: str) -> Path:
        return Path(pod_dir(str(self.path), pod)) / "admin.sock"

    def create(self) -> None:
        longest = self.admin_socket("any")  # every pod directory name has the same length
        if len(str(longest)) > _SUN_PATH_MAX:
            raise MeshError(
                f"the state directory {self.path} makes UNIX socket paths too long "
                f"({len(str(longest))} > {_SUN_PATH_MAX}); use a shorter -p name or set "
                "DEVMESH_STATE_DIR to a shorter path"
            )
        base = self.path.parent
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if base.stat().st_uid != os.getuid():  # a shared /tmp: someone else's directory
            raise MeshError(f"{base} belongs to another user; set DEVMESH_STATE_DIR")
        for d in (self.path, self.xds_dir, self.path / "pods"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)
        os.chmod(self.path, 0o700)  # the API socket inside is for its owner only

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def acquire(self) -> IO[str] | None:
        """Take the daemon lock (held for the daemon's life); None when another holds it."""
        self.create()
        handle = open(self.lock_file, "a+")  # noqa: SIM115 - held open on purpose
        for _ in range(20):  # daemon_pid() of a concurrent `ps` holds it for an instant
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            handle.close()
            return None
        self.pid_file.write_text(str(os.getpid()))
        return handle

    def daemon_pid(self) -> int | None:
        """The running daemon's PID, if a daemon holds the lock."""
        if not self.lock_file.exists():
            return None
        with open(self.lock_file, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    return int(self.pid_file.read_text().strip())
                except (OSError, ValueError):
                    return None
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
