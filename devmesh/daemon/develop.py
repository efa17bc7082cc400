"""The code-edit loop (`develop: watch:`): watch the paths the mesh file names, and carry out
what `core.develop.work_for` decides for each burst of changes.

- sync: the changed files are copied into the service's running app containers through
  the Engine API (adapters/sync.py); deleted ones are removed.
- restart: the service's app containers are restarted in place (the loop sees it through
  Docker's events, as any restart).
- rebuild: the image resolver builds the service again on its worker; the finished build
  wakes the loop, whose pass rolls the pods to the new image. Edits during a build coalesce
  into one next build; a failed build leaves the running pods serving.

This runs on the watcher's thread: it reads the loop's published `View` and enqueues, and
never touches the loop's state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devmesh.adapters.engine import Engine
from devmesh.adapters.images import ImageResolver
from devmesh.adapters.sync import copy_into
from devmesh.adapters.watch import TreeWatcher
from devmesh.api.types import EventKind, Severity
from devmesh.core.develop import PathKind, Work, watched_paths, work_for
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError
from devmesh.daemon.eventlog import EventLog

log = logging.getLogger("devmesh.daemon")


def disabled() -> bool:
    """DEVMESH_WATCH=0: the daemon ignores `develop:` (read when the mesh is set)."""
    return os.environ.get("DEVMESH_WATCH", "1") == "0"


class Develop:
    def __init__(
        self,
        images: ImageResolver,
        engine: Engine,
        events: EventLog,
        view: Callable[[], Any],  # the loop's published View
    ) -> None:
        self._images = images
        self._engine = engine
        self._events = events
        self._view = view
        self._watcher: TreeWatcher | None = None
        self._paths: tuple[str, ...] = ()

    def set_mesh(self, mesh: Mesh) -> None:
        """Watch what `mesh` names (a save may add, change or drop rules)."""
        paths = () if disabled() else watched_paths(mesh)
        if paths == self._paths:
            return
        self.stop()
        self._paths = paths
        if paths:
            self._watcher = TreeWatcher(paths, self._on_change)
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _on_change(self, changed: frozenset[str]) -> None:
        view = self._view()
        mesh: Mesh = view.mesh
        kinds: dict[str, PathKind] = {
            p: "file" if os.path.isfile(p) else "dir" if os.path.isdir(p) else "gone"
            for p in changed
        }
        for work in work_for(mesh, kinds):
            self.carry_out(mesh, work)

    def carry_out(self, mesh: Mesh, work: Work) -> None:
        service = mesh.service(work.service)
        if work.rebuild:
            self._events.add(EventKind.WATCH, "files changed: rebuilding", work.service)
            self._images.rebuild(mesh.base_dir, service)
            return
        if work.copy or work.delete:
            self._sync(work)
        if work.restart:
            # In place, as compose's `restart` action: a rolling restart would start new
            # containers from the image, without the files synced into the old ones.
            names = sorted(self._app_containers(work.service))
            try:
                self._engine.restart(names)
            except MeshError as exc:
                self._events.add(EventKind.WATCH, f"restart: {exc}", work.service, Severity.ERROR)
            else:
                self._events.add(
                    EventKind.WATCH, f"files changed: restarted {', '.join(names)}", work.service
                )

    def _sync(self, work: Work) -> None:
        containers = self._app_containers(work.service)
        if not containers:
            self._events.add(
                EventKind.WATCH, "files changed, but no app container runs", work.service
            )
            return
        errors = []

        def one(cid: str) -> None:
            try:
                copy_into(self._engine.client, cid, work.copy, work.delete)
            except MeshError as exc:
                errors.append(str(exc))

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="sync") as pool:
            list(pool.map(one, containers.values()))
        what = _files(work)
        if errors:
            self._events.add(EventKind.WATCH, "; ".join(errors), work.service, Severity.ERROR)
        else:
            self._events.add(
                EventKind.WATCH, f"synced {what} into {len(containers)} pod(s)", work.service
            )

    def _app_containers(self, service: str) -> Mapping[str, str]:
        """name -> id of the service's running app containers, as the loop last saw them."""
        view = self._view()
        if view.desired is None:
            return {}
        out = {}
        for pod in view.desired.pods:
            info = view.infos.get(pod.app.name)
            if pod.service == service and info is not None and info.state == "running":
                out[pod.app.name] = info.id
        return out


def _files(work: Work) -> str:
    n = len(work.copy) + len(work.delete)
    if n == 1:
        path = work.copy[0][1] if work.copy else work.delete[0]
        return path
    return f"{n} files"
