"""Driving a real mesh from tests and scripts: up, wait, shift, faults, stats, down.

`MeshInstance.up(file)` brings up an instance of a mesh file under a name of its own and on
free host ports, so several can run at once (pytest-xdist workers, two meshes in one test).
It talks to the daemon through its API (typed values, `devmesh.api.types`), and runs the
`devmesh` command for up and down so that a test drives exactly what a user runs.

`mesh.shift()` acts live and writes the mesh file, as `devmesh shift` does; the file is put
back as it was when the instance goes down (`down()`, the plugin's teardown), so a test run
leaves the user's files as they were. A file changed by someone else meanwhile is left alone.

`Mesh` is the same class under its first name (what the pytest plugin's users import);
`devmesh.core.model.Mesh` is a mesh file's model, a different thing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devmesh.api import codec
from devmesh.api import types as api
from devmesh.client import DaemonClient
from devmesh.core.edit import write_file
from devmesh.core.load import load_path
from devmesh.core.problems import MeshError


class MeshUpError(MeshError):
    """The mesh did not come up (or not ready): the devmesh command's own words inside."""


def _devmesh(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ.copy(),
    )


@dataclass
class FileGuard:
    """A mesh file's bytes from before the first change a test made, put back at the end.

    Only when the file still holds what the last change left: an edit someone made since
    is theirs and stays (with a warning saying the file was not restored)."""

    file: Path
    original: bytes | None = None
    left: bytes | None = None  # the file's bytes after the last change made through us

    def before_change(self) -> None:
        if self.original is None:
            self.original = self.file.read_bytes()

    def after_change(self) -> None:
        self.left = self.file.read_bytes()

    def restore(self) -> None:
        if self.original is None:
            return
        original, self.original = self.original, None
        try:
            now = self.file.read_bytes()
        except OSError:
            return  # gone: nothing of ours to put back
        if now == original:
            return
        if now != self.left:
            warnings.warn(
                f"devmesh: {self.file} was edited during the test; not restoring it",
                stacklevel=2,
            )
            return
        write_file(self.file, original)


@dataclass
class MeshInstance:
    file: Path
    project: str
    state: api.MeshState | None = None  # as of `up` or the last `refresh()`
    _client: DaemonClient | None = None
    _guard: FileGuard | None = field(default=None, repr=False)

    @property
    def guard(self) -> FileGuard:
        if self._guard is None:
            self._guard = FileGuard(self.file)
        return self._guard

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def up(
        cls, file: str | os.PathLike[str], project: str | None = None, timeout: float = 180
    ) -> MeshInstance:
        """Up and ready, or MeshUpError with the reason (the mesh is then torn down)."""
        path = Path(file).resolve()
        name = project or f"{load_path(str(path)).name}-{uuid.uuid4().hex[:6]}"
        mesh = cls(path, name)
        result = _devmesh(
            "up",
            "-d",
            "--wait",
            "--timeout",
            str(int(timeout)),
            "--json",
            "--ingress-port",
            "0",
            "-f",
            str(path),
            "-p",
            name,
            timeout=timeout + 60,
        )
        if result.returncode != 0:
            mesh.down()
            reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise MeshUpError(f"mesh {name} did not come up: " + "\n".join(reason[-15:]))
        try:
            mesh.state = codec.decode(api.MeshState, codec.loads(result.stdout))
        except codec.DecodeError as exc:
            mesh.down()
            raise MeshUpError(f"mesh {name}: `devmesh up --json` printed no state: {exc}") from None
        return mesh

    def down(self) -> None:
        """Remove everything of this instance; also after a crash of its daemon. The mesh
        file is then as it was before the first `shift` (the daemon is gone: no reload)."""
        try:
            _devmesh("down", "-f", str(self.file), "-p", self.project, timeout=120)
        finally:
            self.guard.restore()

    @property
    def client(self) -> DaemonClient:
        if self._client is None:
            from devmesh.daemon.state import StateDir

            self._client = DaemonClient(StateDir.for_project(self.project).api_socket)
        return self._client

    def refresh(self) -> api.MeshState:
        self.state = self.client.state()
        return self.state

    # -- addresses ------------------------------------------------------------------------

    @property
    def gateway(self) -> api.Gateway | None:
        return self.state.gateway if self.state is not None else None

    @property
    def url(self) -> str:
        """The ingress, e.g. http://127.0.0.1:41234/."""
        gw = self.gateway
        if gw is None or not gw.url:
            raise MeshError(f"mesh {self.project} has no ingress")
        return gw.url

    def service_url(self, service: str) -> str:
        """A service's own door from the host: its routes apply as to any caller."""
        services = self.gateway.services if self.gateway is not None else {}
        if service not in services:
            raise MeshError(
                f"no HTTP service '{service}' in mesh {self.project}; "
                f"there are: {', '.join(services) or 'none'}"
            )
        return services[service]

    @property
    def urls(self) -> dict[str, str]:
        """DEVMESH_URL (ingress) and DEVMESH_URL_<SERVICE> for each HTTP service."""
        out: dict[str, str] = {}
        gw = self.gateway
        if gw is None:
            return out
        if gw.url:
            out["DEVMESH_URL"] = gw.url
        for name, url in gw.services.items():
            out["DEVMESH_URL_" + name.upper().replace("-", "_")] = url
        return out

    # -- driving it -----------------------------------------------------------------------

    def shift(self, service: str, route: str | None = None, **weights: int) -> None:
        """`mesh.shift("catalog", v1=20, v2=80)`: live, and written to the mesh file until
        the instance goes down, when the file is put back as it was."""
        self.guard.before_change()
        try:
            self.client.shift(service, dict(weights), route)
        finally:
            self.guard.after_change()

    @contextlib.contextmanager
    def fault(
        self,
        service: str,
        route: str | None = None,
        *,
        abort: int | None = None,
        delay_ms: int | None = None,
        percent: float = 100,
    ) -> Iterator[None]:
        """A fault on a route for the length of a `with` block (the file is not touched).

        Injected by the target's sidecar, so the caller's retries and timeouts act on it.
        """
        self.client.fault(
            service,
            route,
            delay=None if delay_ms is None else api.DelaySpec(delay_ms, percent),
            abort=None if abort is None else api.AbortSpec(percent, status=abort),
        )
        try:
            yield
        finally:
            self.client.fault(service, route)

    def restart(self, service: str) -> list[str]:
        return list(self.client.restart(service=service).restarted)

    def stats(self, service: str) -> dict[str, dict[str, int]]:
        """Requests, errors and retries to each version of `service`, summed over every
        caller (sidecars and the gateway), and per route: {"v1": {...}, "route:main": {...}}.
        Each holds the counters since the callers' Envoys started: requests, completed, 2xx,
        4xx, 5xx, retries (the typed reading: `self.client.stats()`).
        """
        totals: dict[str, dict[str, int]] = {}

        def count(key: str, traffic: api.Traffic) -> None:
            bucket = totals.setdefault(key, dict.fromkeys(_COUNTERS, 0))
            for name, value in _counters(traffic).items():
                bucket[name] += value

        for sidecar in self.client.stats().sidecars:
            for up in sidecar.upstreams:
                if up.service == service:
                    count(up.version, up.traffic)
            for route in sidecar.routes:
                if route.service == service:
                    count("route:" + route.route, route.traffic)
        return totals

    def logs(self, service: str, tail: int = 200) -> str:
        result = _devmesh(
            "-f",  # before the command: after `logs`, -f means --follow (as in compose)
            str(self.file),
            "-p",
            self.project,
            "logs",
            service,
            "--tail",
            str(tail),
            timeout=60,
        )
        return result.stdout + result.stderr


_COUNTERS = ("requests", "completed", "2xx", "4xx", "5xx", "retries")


def _counters(t: api.Traffic) -> dict[str, int]:
    values = (t.requests, t.completed, t.rq_2xx, t.rq_4xx, t.rq_5xx, t.retries)
    return dict(zip(_COUNTERS, values, strict=True))


Mesh = MeshInstance  # its first name: `from devmesh.testing import Mesh` keeps working
