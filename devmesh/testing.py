"""Driving a real mesh from tests and scripts: up, wait, shift, faults, stats, down.

`Mesh.up(file)` brings up an instance of a mesh file under a name of its own and on free
host ports, so several can run at once (pytest-xdist workers, two meshes in one test). It
talks to the daemon through its API, and runs the `devmesh` command for up and down so
that a test drives exactly what a user runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmesh.client import DaemonClient
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
class Mesh:
    file: Path
    project: str
    state: dict[str, Any] = field(default_factory=dict)
    _client: DaemonClient | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def up(
        cls, file: str | os.PathLike[str], project: str | None = None, timeout: float = 180
    ) -> Mesh:
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
        mesh.state = json.loads(result.stdout)
        return mesh

    def down(self) -> None:
        """Remove everything of this instance; also after a crash of its daemon."""
        _devmesh("down", "-f", str(self.file), "-p", self.project, timeout=120)

    @property
    def client(self) -> DaemonClient:
        if self._client is None:
            from devmesh.daemon.state import StateDir

            self._client = DaemonClient(StateDir.for_project(self.project).api_socket)
        return self._client

    def refresh(self) -> dict[str, Any]:
        self.state = self.client.state()
        return self.state

    # -- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ingress, e.g. http://127.0.0.1:41234/."""
        gw = self.state.get("gateway") or {}
        if not gw.get("url"):
            raise MeshError(f"mesh {self.project} has no ingress")
        return str(gw["url"])

    def service_url(self, service: str) -> str:
        """A service's own door from the host: its routes apply as to any caller."""
        services: Mapping[str, str] = (self.state.get("gateway") or {}).get("services", {})
        if service not in services:
            raise MeshError(
                f"no HTTP service '{service}' in mesh {self.project}; "
                f"there are: {', '.join(services) or 'none'}"
            )
        return services[service]

    @property
    def urls(self) -> dict[str, str]:
        """DEVMESH_URL (ingress) and DEVMESH_URL_<SERVICE> for each HTTP service."""
        out = {}
        gw = self.state.get("gateway") or {}
        if gw.get("url"):
            out["DEVMESH_URL"] = str(gw["url"])
        for name, url in gw.get("services", {}).items():
            out["DEVMESH_URL_" + name.upper().replace("-", "_")] = url
        return out

    # -- driving it -----------------------------------------------------------------------

    def shift(self, service: str, route: str | None = None, **weights: int) -> None:
        """`mesh.shift("catalog", v1=20, v2=80)`: live, and written to the mesh file."""
        self.client.shift(service, dict(weights), route)

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
            delay=None if delay_ms is None else {"fixed_ms": delay_ms, "percent": percent},
            abort=None if abort is None else {"status": abort, "percent": percent},
        )
        try:
            yield
        finally:
            self.client.fault(service, route)

    def restart(self, service: str) -> list[str]:
        restarted: list[str] = self.client.restart(service=service)["restarted"]
        return restarted

    def stats(self, service: str) -> dict[str, dict[str, int]]:
        """Requests, errors and retries to each version of `service`, summed over every
        caller (sidecars and the gateway), and per route: {"v1": {...}, "route:main": {...}}.
        """
        totals: dict[str, dict[str, int]] = {}
        sidecars = self.client.stats()["sidecars"]
        for counters in sidecars.values():
            if not isinstance(counters, dict):
                continue
            for name, value in counters.items():
                key, stat = _classify(service, name)
                if key:
                    bucket = totals.setdefault(key, {})
                    bucket[stat] = bucket.get(stat, 0) + value
        return totals

    def logs(self, service: str, tail: int = 200) -> str:
        result = _devmesh(
            "logs",
            service,
            "-f",
            str(self.file),
            "-p",
            self.project,
            "--tail",
            str(tail),
            timeout=60,
        )
        return result.stdout + result.stderr


_STATS = {
    "upstream_rq_total": "requests",
    "upstream_rq_completed": "completed",
    "upstream_rq_2xx": "2xx",
    "upstream_rq_4xx": "4xx",
    "upstream_rq_5xx": "5xx",
    "upstream_rq_retry": "retries",
}


def _classify(service: str, stat: str) -> tuple[str, str]:
    """`cluster.catalog|v2.upstream_rq_retry` -> ("v2", "retries");
    `vhost.catalog.route.catalog.main.upstream_rq_5xx` -> ("route:main", "5xx")."""
    for suffix, short in _STATS.items():
        if not stat.endswith("." + suffix):
            continue
        head = stat[: -len(suffix) - 1]
        prefix = f"cluster.{service}|"
        if head.startswith(prefix):
            return head[len(prefix) :], short
        route_prefix = f"vhost.{service}.route.{service}."
        if head.startswith(route_prefix):
            return "route:" + head[len(route_prefix) :], short
    return "", ""
