"""The per-mesh state directory: the daemon's lock and pid, its sockets, each pod's files.

$DEVMESH_STATE_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/devmesh-UID, then /PROJECT:
  .devmesh-state           the marker: devmesh made this directory (see `remove`)
  daemon.lock  daemon.pid  daemon.log
  ingress.port             the instance's own ingress port (`--ingress-port`), kept for
                           the next daemon to adopt the running gateway with it
  api.sock                 the daemon's local API (owner only)
  xds/xds.sock             the ADS server; the directory is bind-mounted into sidecars
  pods/POD/                bootstrap.json and admin.sock of each sidecar and the gateway
  xds.token  xds.port      transport tcp: the mesh's token (0600) and the daemon's TCP
                           port, kept so that a new daemon adopts the pods as they are

devmesh changes modes of, and removes, only directories it made: the base directory only
when it creates it (mode 0700 from the start), a project directory only when it carries
the marker written when devmesh created it, and only as a direct child of the base.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from devmesh.core.names import check_project, is_project
from devmesh.core.problems import MeshError
from devmesh.plan.desired import pod_dir

_SUN_PATH_MAX = 107  # a UNIX socket path longer than this cannot be bound
MARKER = ".devmesh-state"
_MARKER_WAIT = 2.0  # seconds a concurrent creator gets to write the marker


def base_dir() -> Path:
    explicit = os.environ.get("DEVMESH_STATE_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(runtime) / f"devmesh-{os.getuid()}"


class StateDirError(MeshError):
    pass


def ensure_base(base: Path) -> None:
    """The base directory, private to its owner: made with mode 0700 when missing; when it
    exists it must be ours and 0700 already (never chmod what devmesh did not make: with
    defaults the base's parent is /tmp)."""
    if not base.exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # a concurrent `up` made it
            base.mkdir(mode=0o700)
    info = base.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"{base} is not a directory; set DEVMESH_STATE_DIR")
    if info.st_uid != os.getuid():  # a shared /tmp: someone else's directory
        raise StateDirError(f"{base} belongs to another user; set DEVMESH_STATE_DIR")
    if info.st_mode & 0o077:
        raise StateDirError(
            f"{base} has mode {stat.S_IMODE(info.st_mode):04o}; devmesh keeps its sockets in "
            f"a directory only its owner can enter and does not change one it did not make: "
            f"`chmod 700 {base}`, or set DEVMESH_STATE_DIR"
        )


@dataclass(frozen=True)
class StateDir:
    path: Path

    @classmethod
    def for_project(cls, project: str) -> StateDir:
        return cls(base_dir() / check_project(project))

    @property
    def marker(self) -> Path:
        return self.path / MARKER

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
    def ingress_port_file(self) -> Path:
        return self.path / "ingress.port"

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
            raise StateDirError(
                f"the state directory {self.path} makes UNIX socket paths too long "
                f"({len(str(longest))} > {_SUN_PATH_MAX}); use a shorter -p name or set "
                "DEVMESH_STATE_DIR to a shorter path"
            )
        self._check_placed()
        ensure_base(self.path.parent)
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            self._check_ours(wait=_MARKER_WAIT)
        else:  # ours: marked at once, before anything else goes in
            self.marker.write_text(f"devmesh state of mesh instance '{self.path.name}'\n")
        for d in (self.xds_dir, self.path / "pods"):
            d.mkdir(exist_ok=True)
        os.chmod(self.path, 0o700)  # ours (marked): the API socket inside is for its owner

    def owned(self) -> bool:
        """Whether devmesh made this directory: a direct child of the base dir, named as a
        project, a real directory (not a link) holding the marker as a regular file."""
        try:
            placed = self.path.parent == base_dir() and is_project(self.path.name)
            return (
                placed
                and stat.S_ISDIR(self.path.lstat().st_mode)
                and stat.S_ISREG(self.marker.lstat().st_mode)
            )
        except OSError:
            return False

    def remove(self) -> bool:
        """Remove the directory; False when there is none. Refuses (StateDirError) to touch
        one devmesh did not make: `down -p ../x` must never become `rm -rf ../x`."""
        if not os.path.lexists(self.path):
            return False
        if not self.owned():
            raise StateDirError(
                f"refusing to remove {self.path}: it is not a state directory devmesh made "
                f"(no {MARKER} in it, or not directly under {base_dir()})"
            )
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    def _check_placed(self) -> None:
        if self.path.parent != base_dir() or not is_project(self.path.name):
            raise StateDirError(f"{self.path} is not a project directory under {base_dir()}")

    def _check_ours(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while not self.owned():
            if time.monotonic() >= deadline:
                raise StateDirError(
                    f"{self.path} exists but devmesh did not make it (no {MARKER} in it); "
                    "remove it yourself or use another -p name"
                )
            time.sleep(0.05)  # a concurrent `up` made it and is about to mark it

    # -- the instance's ingress port -------------------------------------------------------

    def stored_ingress_port(self) -> int | None:
        try:
            port = int(self.ingress_port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def store_ingress_port(self, port: int | None) -> None:
        """Keep the port (None: the file's own port, nothing to keep)."""
        if port is None:
            self.ingress_port_file.unlink(missing_ok=True)
            return
        tmp = self.ingress_port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, self.ingress_port_file)

    # -- transport tcp: the mesh's token and port ------------------------------------------

    @property
    def token_file(self) -> Path:
        return self.path / "xds.token"

    @property
    def xds_port_file(self) -> Path:
        return self.path / "xds.port"

    def xds_token(self) -> str:
        """The mesh's token: every stream to the daemon over TCP carries it. Made once
        (random, mode 0600 from the start) and kept with the instance: the pods' bootstraps
        hold it, so a new daemon adopts them without making them anew."""
        try:
            token = self.token_file.read_text().strip()
            if (
                len(token) >= 32
                and token.isascii()
                and token.replace("-", "").replace("_", "").isalnum()
            ):
                return token
        except OSError:
            pass
        token = secrets.token_urlsafe(32)
        tmp = self.token_file.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.replace(tmp, self.token_file)
        return token

    def stored_xds_port(self) -> int | None:
        try:
            port = int(self.xds_port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def store_xds_port(self, port: int) -> None:
        tmp = self.xds_port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, self.xds_port_file)

    # -- the daemon's lock -----------------------------------------------------------------

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
