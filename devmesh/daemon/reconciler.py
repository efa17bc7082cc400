"""One pass against the engine: resolve images, work out what should run, look at what runs,
plan, apply, write the pods' hosts files. Owned and called by the loop alone (its fields are
the loop's state); it only reports what it found in `Reconciler` fields the loop reads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from devmesh.adapters.engine import ContainerInfo, Engine, EngineError, EngineUnavailable
from devmesh.adapters.images import ImageResolver
from devmesh.api.types import EventKind, Severity
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.state import StateDir
from devmesh.plan.desired import (
    Desired,
    Inputs,
    desired,
    hosts_file,
    hosts_text,
    network_name,
    proxy_user,
)
from devmesh.plan.plan import Observed, plan

log = logging.getLogger("devmesh.daemon")
RECONCILE_EVERY = 15.0  # seconds: a safety net; events and saves trigger a pass at once
RECHECK = 0.1  # seconds between looks while the engine still reports a dead container running
RECHECK_FOR = 1.0  # ... for at most this long (measured: the list trails by about 0.4 s)
ENGINE_RETRY = 0.5  # seconds between looks while the engine does not answer


def daemon_user() -> str:
    """Who the proxies run as for this daemon (see `plan.desired.proxy_user`)."""
    return proxy_user(os.geteuid(), os.getegid())


class Reconciler:
    def __init__(
        self,
        project: str,
        engine: Engine,
        images: ImageResolver,
        state: StateDir,
        events: EventLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self.engine = engine
        self.images = images
        self.state = state
        self.events = events
        self._clock = clock
        self._proxy_user = daemon_user()
        # What the last pass found (the loop reads these; nothing else writes them).
        self.desired: Desired | None = None
        self.infos: dict[str, ContainerInfo] = {}
        self.start_errors: dict[str, str] = {}  # container -> why it could not start
        self.errors: tuple[str, ...] = ()  # failures not about one container
        self.failed: dict[tuple[str, str], str] = {}  # version -> why it cannot run
        self.engine_ok = True
        self.engine_detail = ""
        self.host: str | None = None  # the mesh network's gateway: the host, to the pods
        self.next_pass = 0.0
        self._failed_passes = 0
        self._dead: dict[str, float] = {}  # container id -> until when to look again
        self._acted: set[str] = set()  # of those, the ones a pass already planned as dead

    def died(self, container_id: str) -> None:
        """Docker said it died: look until the engine's list agrees (it trails the event)."""
        self._dead[container_id] = self._clock() + RECHECK_FOR

    def next_wake(self) -> float:
        if self._dead:
            return self._clock() + RECHECK
        if not self.engine_ok:
            return self._clock() + ENGINE_RETRY
        return self.next_pass

    def run(self, mesh: Mesh, why: str, push_early: Callable[[], object]) -> bool:
        """One pass for `mesh` (the effective one). `push_early` is called when the pods
        stay as they are, before asking the engine anything (a routing change reaches the
        Envoys without waiting for it). False when the engine does not answer."""
        self.next_pass = self._clock() + RECONCILE_EVERY
        if self._failed_passes:  # a container that cannot start is not retried in a tight loop
            self.next_pass = self._clock() + min(30.0, 0.5 * 2**self._failed_passes)
        errors: list[str] = []
        engine_errors: list[EngineError] = []
        try:
            if self.host is None:
                self._learn_host()
            want = self._desired_for(mesh)
            if want == self.desired:
                push_early()
            actual, infos = self.engine.look(self.project)
            self._engine_back()
            actual = self._believe_deaths(actual)
            errors += self._write_hosts(mesh, want)
            todo = plan(want, actual, network_exists=self.engine.network_exists(want.network))
            if todo.ensure_network:
                self.host = None  # a new network: its gateway may differ
            if not todo.empty:
                self.events.add(EventKind.RECONCILE, f"({why}) " + ", ".join(todo.describe()))
                engine_errors = self.engine.apply(todo, self.project, want.network, log.info)
                for error in engine_errors:
                    self.events.add(
                        EventKind.RECONCILE, str(error), error.container or "engine", Severity.ERROR
                    )
                infos = self.engine.containers(self.project)  # what applying changed
            if self.host is None:
                self.host = self.engine.network_gateway(want.network)
        except EngineUnavailable as exc:
            self._engine_lost(str(exc))
            return False
        except EngineError as exc:  # the engine answered no (a network it cannot make, ...)
            self.events.add(EventKind.RECONCILE, str(exc), "engine", Severity.ERROR)
            self.errors = (*errors, str(exc))
            self._failed_passes += 1
            return True
        self.start_errors = {e.container: str(e) for e in engine_errors if e.container}
        self._failed_passes = self._failed_passes + 1 if engine_errors else 0
        self.errors = tuple(errors + [str(e) for e in engine_errors if not e.container])
        self.desired = want
        self.infos = infos
        self._forget_dead()
        return True

    def refresh(self) -> None:
        """What the engine has now (after a health change: addresses may have moved)."""
        try:
            self.infos = self.engine.containers(self.project)
            self._engine_back()
        except EngineUnavailable as exc:
            self._engine_lost(str(exc))

    def _learn_host(self) -> None:
        """The network's gateway address, before planning: each pod's firewall admits the
        host's health probes by it (desired.guard_rules), so the network is made first."""
        network = network_name(self.project)
        self.engine.ensure_network(network, self.project)
        self.host = self.engine.network_gateway(network)

    def _desired_for(self, mesh: Mesh) -> Desired:
        inputs = self._inputs(mesh)
        want = desired(mesh, inputs)
        if inputs.failed and self.desired is not None:
            # A version that cannot run its new spec keeps its old pods, serving.
            kept = tuple(p for p in self.desired.pods if (p.service, p.version) in inputs.failed)
            want = dataclasses.replace(want, pods=want.pods + kept)
        return want

    def _inputs(self, mesh: Mesh) -> Inputs:
        assert self.images.envoy is not None and self.images.pause is not None
        assert self.images.guard is not None
        app_images: dict[tuple[str, str], str] = {}
        failed: dict[tuple[str, str], str] = {}
        for service in mesh.services:
            for version in service.versions:
                key = (service.name, version.name)
                try:
                    app_images[key] = self.images.app(mesh.base_dir, service.name, version)
                except EngineUnavailable:
                    raise
                except MeshError as exc:
                    failed[key] = str(exc)
        for key, reason in failed.items():
            if self.failed.get(key) != reason:
                self.events.add(EventKind.IMAGE, reason, f"{key[0]}/{key[1]}", Severity.ERROR)
        self.failed = failed
        return Inputs(
            project=self.project,
            state_dir=str(self.state.path),
            envoy_image=self.images.envoy.image_id,
            pause_image=self.images.pause.image_id,
            app_images=app_images,
            failed=failed,
            proxy_user=self._proxy_user,
            guard_image=self.images.guard.image_id,
            host=self.host,
        )

    def _write_hosts(self, mesh: Mesh, want: Desired) -> list[str]:
        errors = []
        for pod in want.pods:
            path = Path(hosts_file(str(self.state.path), pod.name))
            text = hosts_text(mesh, mesh.service(pod.service), pod.name)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_file() and path.read_bytes() == text.encode():
                    continue
                # In place, never by rename: the pod's bind mount holds on to this very inode.
                with open(path, "a+") as fh:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(text)
            except OSError as exc:  # a full disk: say so, never "ready"
                errors.append(f"{pod.name}: cannot write {path}: {exc.strerror}")
        return errors

    def _believe_deaths(self, actual: list[Observed]) -> list[Observed]:
        """Docker's `die` event comes first and its list says `running` a moment longer:
        plan a container it said died as stopped now, not after the list catches up (a
        start of one that still runs is a no-op; the next look corrects either way)."""
        if not self._dead:
            return actual
        return [
            dataclasses.replace(o, state="exited")
            if o.id in self._dead and o.state == "running"
            else o
            for o in actual
        ]

    def _forget_dead(self) -> None:
        now = self._clock()
        running = {i.id for i in self.infos.values() if i.state == "running"}
        self._dead = {
            cid: until for cid, until in self._dead.items() if cid in running and until > now
        }
        self._acted &= self._dead.keys()

    def _engine_lost(self, detail: str) -> None:
        if self.engine_ok:
            self.events.add(
                EventKind.ENGINE,
                f"the container engine does not answer: {detail}",
                severity=Severity.ERROR,
            )
        self.engine_ok, self.engine_detail = False, detail

    def _engine_back(self) -> None:
        if not self.engine_ok:
            self.engine_ok, self.engine_detail = True, ""
            self.events.add(EventKind.ENGINE, "the container engine answers again")
            self._heal_joined()

    def _heal_joined(self) -> None:
        """After an engine restart the pods' namespace owners may have restarted after their
        app and sidecar, which then have no network: restart those."""
        try:
            stale = self.engine.joined_before_owner(self.project)
            if stale:
                self.events.add(
                    EventKind.RECONCILE,
                    f"restarting {len(stale)} container(s) that lost their pod's network "
                    "with the engine restart",
                )
                self.engine.restart(stale)
        except MeshError as exc:
            log.info("after the engine came back: %s", exc)
