"""The loop: the one owner of the daemon's mutable state.

Every trigger is a command on one queue: a read of the mesh file (the mesh source), an API
command (reload, shift, fault, restart), a container event (Docker), a health change (the
monitor), a timer. One thread consumes them in order and re-runs the level-triggered
pipeline: effective → desired → observe → plan → apply → render → publish. Other threads
only enqueue, and read the immutable `View` the loop publishes after every step.

Commands that a caller waits on carry a `Future`; the loop sets its result. A burst of
container events and health changes coalesces into one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmesh.adapters.engine import ContainerInfo, Engine, EngineError, EngineUnavailable
from devmesh.adapters.images import ImageResolver
from devmesh.adapters.probe import probe
from devmesh.adapters.xds_server import XdsServer
from devmesh.api.types import EventKind, Severity
from devmesh.core.edit import pick_route, write_file
from devmesh.core.edit import set_weights as shift_text
from devmesh.core.load import load
from devmesh.core.model import Fault, Ingress, Mesh
from devmesh.core.problems import MeshError, MeshInvalid
from devmesh.core.source import read_mesh_bytes, read_text
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.health import HealthMonitor, Probe, Result, Target
from devmesh.daemon.meshsource import FileRead, MeshSource
from devmesh.daemon.state import StateDir
from devmesh.envoy.render import render
from devmesh.envoy.snapshot import SnapshotError, new_snapshots
from devmesh.plan.desired import Desired, Inputs, desired, hosts_file, hosts_text
from devmesh.plan.effective import Overrides, effective, kept_overrides
from devmesh.plan.plan import plan

log = logging.getLogger("devmesh.daemon")
RECONCILE_EVERY = 15.0  # seconds: a safety net; events and saves trigger a pass at once
RECHECK = 0.1  # seconds between looks while the engine still reports a dead container running
RECHECK_FOR = 1.0  # ... for at most this long (measured: the list trails by about 0.4 s)
ENGINE_RETRY = 0.5  # seconds between looks while the engine does not answer


class Refused(MeshError):
    """An API command the loop would not carry out; `code` is an api.ErrorCode value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileChanged:
    read: FileRead


@dataclass(frozen=True, slots=True)
class ContainerDied:
    name: str
    container_id: str


@dataclass(frozen=True, slots=True)
class HealthChanged:
    results: Mapping[str, Result]


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class Call:
    """An API command: `run(controller)` on the loop's thread, its result on `reply`."""

    run: Callable[[Controller], Any]
    reply: Future[Any] = field(default_factory=Future)


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Command = FileChanged | ContainerDied | HealthChanged | Tick | Call | Stop


# -- what readers see -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """The loop's state after its last step, for the API's readers. Never mutated."""

    phase: str
    mesh: Mesh  # the file's, as last validated
    served: Mesh  # the effective mesh: the instance's port, API faults
    overrides: frozenset[tuple[str, str]] = frozenset()
    desired: Desired | None = None
    infos: Mapping[str, ContainerInfo] = field(default_factory=dict)
    health: Mapping[str, Result] = field(default_factory=dict)
    start_errors: Mapping[str, str] = field(default_factory=dict)  # container -> why
    errors: tuple[str, ...] = ()
    failed: Mapping[tuple[str, str], str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    reloads: int = 0
    reload_failures: int = 0
    engine_ok: bool = True
    engine_detail: str = ""
    push_error: str | None = None
    published: frozenset[str] = frozenset()  # node groups served


class Controller:
    def __init__(
        self,
        mesh_file: Path,
        mesh: Mesh,
        project: str,
        engine: Engine,
        images: ImageResolver,
        xds: XdsServer,
        state: StateDir,
        events: EventLog,
        ingress_port: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        check: Probe = probe,
    ) -> None:
        self.mesh_file = mesh_file
        self.project = project
        self.engine = engine
        self.images = images
        self.xds = xds
        self.state = state
        self.events = events
        self.ingress_port = ingress_port  # -p instances of one file each get their own port
        self._clock = clock
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.source = MeshSource(mesh_file, lambda read: self.submit(FileChanged(read)))
        self.health = HealthMonitor(lambda r: self.submit(HealthChanged(r)), events, check)
        # -- the state this loop owns (only its thread writes it) --
        self._mesh = mesh
        self._overrides: dict[tuple[str, str], Fault | None] = {}
        self._applied = ""  # digest of the file text that serves
        self._reported = ""  # digest of the invalid text last reported
        self._problems: tuple[str, ...] = ()
        self._reloads = 0
        self._reload_failures = 0
        self._desired: Desired | None = None
        self._infos: dict[str, ContainerInfo] = {}
        self._health: Mapping[str, Result] = {}
        self._start_errors: dict[str, str] = {}
        self._errors: tuple[str, ...] = ()
        self._failed: dict[tuple[str, str], str] = {}
        self._failed_passes = 0
        self._engine_ok = True
        self._engine_detail = ""
        self._push_error: str | None = None
        self._published: tuple[Mesh, Mapping[tuple[str, str], list[str]], str | None] | None = None
        self._groups: frozenset[str] = frozenset()
        self._host: str | None = None  # the mesh network's gateway: the host, to the pods
        self._dead: dict[str, float] = {}  # container id -> until when to look again
        self._next_pass = 0.0
        self._phase = "starting"
        self.view = self._view()
        self._thread = threading.Thread(target=self._run, name="loop", daemon=True)

    # -- for other threads ----------------------------------------------------------------------

    def submit(self, command: Command) -> None:
        self._queue.put(command)

    def call(self, run: Callable[[Controller], Any], timeout: float | None = None) -> Any:
        """Run `run(self)` on the loop and wait for its result (or its exception)."""
        command = Call(run)
        self.submit(command)
        return command.reply.result(timeout)

    def start(self) -> None:
        """The first pass, on the caller's thread (a clear error if it cannot come up), then
        the loop and its sources."""
        self.images.ensure_base()
        self._reconcile("start")
        self._phase = "serving"
        self._set_view()
        self._thread.start()
        self.source.start()
        self.health.start()

    def stop(self) -> None:
        self._phase = "stopping"
        self._set_view()
        self.submit(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.source.stop()
        self.health.stop()

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            wait = max(0.0, self._next_wake() - self._clock())
            try:
                command: Command = self._queue.get(timeout=wait)
            except queue.Empty:
                command = Tick()
            batch = [command]
            while True:  # what has queued up meanwhile joins this step
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(isinstance(c, Stop) for c in batch):
                for c in batch:
                    if isinstance(c, Call):
                        c.reply.set_exception(Refused("unavailable", "the daemon is stopping"))
                return
            try:
                self._step(batch)
            except Exception:
                log.exception("the loop's step failed")
            self._set_view()

    def _next_wake(self) -> float:
        if self._dead:
            return self._clock() + RECHECK
        if not self._engine_ok:
            return self._clock() + ENGINE_RETRY
        return self._next_pass

    def _step(self, batch: list[Command]) -> None:
        reconcile = why = ""
        publish = False
        for command in batch:
            if isinstance(command, FileChanged):
                self._on_file(command.read)
            elif isinstance(command, Call):
                try:
                    command.reply.set_result(command.run(self))
                except Exception as exc:  # handed to the caller, who answers the API with it
                    command.reply.set_exception(exc)
            elif isinstance(command, ContainerDied):
                self._dead[command.container_id] = self._clock() + RECHECK_FOR
                reconcile, why = "event", f"{command.name} died"
            elif isinstance(command, HealthChanged):
                self._health = command.results
                publish = True
            elif isinstance(command, Tick):
                reconcile, why = "timer", why or "timer"
        if reconcile:
            self._reconcile(reconcile)
        elif publish:
            self._refresh_infos()
            self._publish()
        self._set_targets()

    # -- the mesh file ----------------------------------------------------------------------

    def _on_file(self, read: FileRead) -> None:
        if read.digest == self._applied and self._problems:
            # An invalid edit undone: the file is again what serves, and has no problems.
            self._problems, self._reported = (), ""
            self.events.add(
                EventKind.SAVE, "back to the config that serves; no problems", str(self.mesh_file)
            )
            return
        if read.digest in (self._applied, self._reported):
            return  # no change (an editor touched it, or `shift` wrote what it applied)
        mesh, problems = read.mesh, read.problems
        if mesh is not None:
            problems = self._refusals(mesh)
        if mesh is None or problems:
            self._report(read.digest, problems)
        elif mesh == self._mesh:
            self._applied = read.digest  # what already runs (the first look after start)
        else:
            self.apply_mesh(read.digest, mesh, "save", rebuild=False)

    def _refusals(self, mesh: Mesh) -> tuple[str, ...]:
        """A valid file this instance still cannot take, checked before anything changes."""
        if mesh.name != self._mesh.name and self.project == self._mesh.name:
            return (
                f"the mesh is now named '{mesh.name}'; "
                f"run `devmesh down` for '{self._mesh.name}' first",
            )
        old, new = self._mesh.ingress, mesh.ingress
        moved = new is not None and (old is None or old.port != new.port)
        # Checked before the working gateway is replaced by one that could not start.
        if self.ingress_port is None and new is not None and moved and port_busy(new):
            return (
                f"{self.mesh_file}: ingress port {new.host}:{new.port} is in use by "
                "another program; the gateway stays where it is",
            )
        return ()

    def _report(self, digest: str, problems: tuple[str, ...]) -> None:
        """Invalid text: the last good mesh keeps serving; the problems are shown everywhere."""
        self._reported = digest
        self._problems = problems
        self._reload_failures += 1
        self.events.add(
            EventKind.PROBLEM,
            f"{len(problems)} problem(s); the last good config serves on",
            str(self.mesh_file),
            Severity.WARNING,
        )
        for problem in problems:
            log.info("  %s", problem)

    def apply_mesh(self, digest: str, mesh: Mesh, why: str, rebuild: bool) -> None:
        started = self._clock()
        self._applied = digest
        self._problems = ()
        self._mesh = mesh
        self._overrides = kept_overrides(mesh, self._overrides)
        self._reloads += 1
        if rebuild:
            self.images.forget()
        self._reconcile(why)
        took = (self._clock() - started) * 1000
        self.events.add(EventKind.SAVE, f"{why}: applied in {took:.0f} ms")

    # -- API commands (run on the loop's thread through `call`) ----------------------------

    def reload(self, asked: str | None) -> tuple[str, ...]:
        """A second `up`: re-read the file now, rebuild images, reconcile; what failed."""
        if asked and Path(asked).resolve() != self.mesh_file.resolve():
            raise Refused(
                "conflict",
                f"the running daemon of '{self.project}' serves {self.mesh_file}, not {asked}; "
                "run `devmesh down` first, or give another -p name",
            )
        read = self.source.read()
        problems = read.problems if read.mesh is None else self._refusals(read.mesh)
        if read.mesh is None or problems:
            self._report(read.digest, problems)
            return problems
        self.apply_mesh(read.digest, read.mesh, "up", rebuild=True)
        failures = [f"{s}/{v}: {r}" for (s, v), r in self._failed.items()]
        failures += [f"{name}: {why}" for name, why in self._start_errors.items()]
        failures += list(self._errors)
        if self._push_error:
            failures.append(self._push_error)
        return tuple(failures)

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> str:
        """New weights, written into the file (comments and layout kept) and applied."""
        if self._problems:
            raise Refused(
                "conflict", "the mesh file has problems; fix them first: " + self._problems[0]
            )
        name = str(self.mesh_file)
        try:
            text = read_text(read_mesh_bytes(name), name)
        except MeshError as exc:
            raise Refused("unavailable", str(exc)) from None
        try:
            new_text, chosen = shift_text(text, self._mesh, service, route, weights)
        except MeshError as exc:
            raise Refused("bad_request", str(exc)) from None
        raw = new_text.encode()
        try:
            mesh = load(read_text(raw, name), name, self.source.base_dir)
        except MeshInvalid as exc:
            raise Refused(
                "bad_request", f"the edited file would not validate: {exc.problems[0]}"
            ) from None
        try:
            write_file(self.mesh_file, new_text)
        except (OSError, MeshError) as exc:
            raise Refused("unavailable", f"{self.mesh_file}: cannot write: {exc}") from None
        self.apply_mesh(hashlib.sha256(raw).hexdigest(), mesh, "shift", rebuild=False)
        return chosen

    def set_fault(self, service: str, route: str | None, fault: Fault | None) -> str:
        """Set or clear a route's fault live; refused, and not kept, if it cannot be served."""
        if not self._mesh.has_service(service):
            raise Refused("not_found", f"no service {service!r} in mesh '{self._mesh.name}'")
        svc = self._mesh.service(service)
        if not svc.is_http:
            raise Refused("bad_request", f"'{service}' is a tcp service: faults are HTTP")
        try:
            chosen = pick_route(svc, route)
        except MeshError as exc:
            raise Refused("not_found", str(exc)) from None
        key = (service, chosen.name)
        before = dict(self._overrides)
        if fault is None:
            self._overrides.pop(key, None)
        else:
            self._overrides[key] = fault
        if not self._publish():
            self._overrides = before  # a rejected change is never stored
            self._publish()
            raise Refused("bad_request", f"the fault cannot be served: {self._push_error}")
        what = "cleared" if fault is None else _fault_text(fault)
        self.events.add(EventKind.FAULT, what, f"{service}/{chosen.name}")
        return chosen.name

    def restart(self, service: str | None, pod: str | None) -> tuple[str, ...]:
        pods = self._desired.pods if self._desired else ()
        chosen = [p for p in pods if (p.name == pod if pod else p.service == service)]
        if not chosen:
            what = f"pod {pod!r}" if pod else f"service {service!r}"
            raise Refused("not_found", f"no {what} runs in mesh '{self.project}'")
        names = [p.app.name for p in chosen]
        try:
            self.engine.restart(names)
        except MeshError as exc:
            raise Refused("unavailable", str(exc)) from None
        self.events.add(EventKind.RESTART, f"restarted {', '.join(names)}")
        self._next_pass = self._clock()  # look at what the restart changed
        return tuple(names)

    def overrides(self) -> Overrides:
        return dict(self._overrides)

    # -- reconcile ------------------------------------------------------------------------------

    def _reconcile(self, why: str) -> None:
        self._next_pass = self._clock() + RECONCILE_EVERY
        if self._failed_passes:  # a container that cannot start is not retried in a tight loop
            self._next_pass = self._clock() + min(30.0, 0.5 * 2**self._failed_passes)
        mesh = effective(self._mesh, self._overrides, self.ingress_port)
        try:
            inputs = self._inputs(mesh)
            want = desired(mesh, inputs)
            if inputs.failed and self._desired is not None:
                # A version that cannot run its new spec keeps its old pods, serving.
                kept = tuple(
                    p for p in self._desired.pods if (p.service, p.version) in inputs.failed
                )
                want = dataclasses.replace(want, pods=want.pods + kept)
            if want == self._desired and self._phase != "starting":
                # The same containers (a change of routes, weights, faults, calls): push
                # the new config before asking the engine anything.
                self._publish()
            actual, infos = self.engine.look(self.project)
            self._engine_back()
            errors: list[str] = []
            errors += self._write_hosts(mesh, want)
            todo = plan(want, actual, network_exists=self.engine.network_exists(want.network))
            engine_errors: list[EngineError] = []
            if todo.ensure_network:
                self._host = None  # a new network: its gateway may differ
            if not todo.empty:
                self.events.add(EventKind.RECONCILE, f"({why}) " + ", ".join(todo.describe()))
                engine_errors = self.engine.apply(todo, self.project, want.network, log.info)
                for error in engine_errors:
                    self.events.add(
                        EventKind.RECONCILE, str(error), error.container or "engine", Severity.ERROR
                    )
                infos = self.engine.containers(self.project)  # what applying changed
            if self._host is None:
                self._host = self.engine.network_gateway(want.network)
        except EngineUnavailable as exc:
            self._engine_lost(str(exc))
            return
        self._start_errors = {e.container: str(e) for e in engine_errors if e.container}
        self._failed_passes = self._failed_passes + 1 if engine_errors else 0
        self._errors = tuple(errors + [str(e) for e in engine_errors if not e.container])
        self._desired = want
        self._infos = infos
        self._forget_dead()
        if self._phase == "starting":  # adopted pods keep their traffic: no empty first push
            self._set_targets()
            self._health = self.health.probe_now()
        self._publish()

    def _refresh_infos(self) -> None:
        try:
            self._infos = self.engine.containers(self.project)
            self._engine_back()
        except EngineUnavailable as exc:
            self._engine_lost(str(exc))

    def _forget_dead(self) -> None:
        """Containers Docker said died: look again until the engine agrees they are gone
        (its list may say `running` for a moment after the event)."""
        now = self._clock()
        running = {i.id for i in self._infos.values() if i.state == "running"}
        self._dead = {
            cid: until for cid, until in self._dead.items() if cid in running and until > now
        }

    def _engine_lost(self, detail: str) -> None:
        if self._engine_ok:
            self.events.add(
                EventKind.ENGINE,
                f"the container engine does not answer: {detail}",
                severity=Severity.ERROR,
            )
        self._engine_ok, self._engine_detail = False, detail

    def _engine_back(self) -> None:
        if not self._engine_ok:
            self._engine_ok, self._engine_detail = True, ""
            self.events.add(EventKind.ENGINE, "the container engine answers again")
            self._heal_joined()

    def _heal_joined(self) -> None:
        """After an engine restart the pods' namespace owners may have restarted after their
        app and sidecar, which then have no network: restart those."""
        try:
            stale = self.engine.joined_before_owner(self.project)
        except (EngineError, EngineUnavailable) as exc:
            log.info("after the engine came back: %s", exc)
            return
        if stale:
            self.events.add(
                EventKind.RECONCILE,
                f"restarting {len(stale)} container(s) that "
                "lost their pod's network with the engine restart",
            )
            try:
                self.engine.restart(stale)
            except MeshError as exc:
                log.info("restart after the engine came back: %s", exc)

    def _inputs(self, mesh: Mesh) -> Inputs:
        assert self.images.envoy is not None and self.images.pause is not None
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
            if self._failed.get(key) != reason:
                self.events.add(EventKind.IMAGE, reason, f"{key[0]}/{key[1]}", Severity.ERROR)
        self._failed = failed
        return Inputs(
            project=self.project,
            state_dir=str(self.state.path),
            envoy_image=self.images.envoy.image_id,
            pause_image=self.images.pause.image_id,
            app_images=app_images,
            failed=failed,
        )

    def _write_hosts(self, mesh: Mesh, want: Desired) -> list[str]:
        errors = []
        for pod in want.pods:
            path = Path(hosts_file(str(self.state.path), pod.name))
            text = hosts_text(mesh, mesh.service(pod.service), pod.name)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_file() and path.read_text() == text:
                    continue
                # In place, never by rename: the pod's bind mount holds on to this very inode.
                with open(path, "a+") as fh:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(text)
            except OSError as exc:  # a full disk: say so, never "ready"
                errors.append(f"{pod.name}: cannot write {path}: {exc.strerror}")
        return errors

    # -- publish -------------------------------------------------------------------------------

    def _endpoints(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        if self._desired is None:
            return out
        for pod in self._desired.pods:
            info = self._infos.get(pod.name)
            health = self._health.get(pod.name)
            app = self._infos.get(pod.app.name)
            if info and info.ip and health and health.ok and app and health.app_id == app.id:
                out.setdefault((pod.service, pod.version), []).append(info.ip)
        return out

    def _publish(self) -> bool:
        """Render the whole mesh and hand every node group's snapshot to the xDS cache at
        once. False (and `push_error` says why) if it could not be served."""
        mesh = effective(self._mesh, self._overrides, self.ingress_port)
        endpoints = self._endpoints()
        published = (mesh, endpoints, self._host)
        if published == self._published and self._push_error is None:
            return True  # the timer's passes over an unchanged mesh build nothing
        try:
            # Without the host's address (no network yet) the gateway's hops admit anyone;
            # the pass after the network exists pushes them locked to the host.
            snapshots = new_snapshots(render(mesh, endpoints, self._host))
            self.xds.set_snapshots(snapshots)
        except (SnapshotError, MeshError, ValueError, OverflowError) as exc:
            if self._push_error != str(exc):
                self.events.add(EventKind.PUSH, f"config not delivered: {exc}", "", Severity.ERROR)
            self._push_error = str(exc)
            return False
        self._push_error = None
        self._groups = frozenset(snapshots)
        self._published = published
        return True

    def _set_targets(self) -> None:
        if self._desired is None:
            return
        targets = []
        for pod in self._desired.pods:
            owner, app = self._infos.get(pod.name), self._infos.get(pod.app.name)
            if not owner or not owner.ip or not app or not self._mesh.has_service(pod.service):
                continue
            service = self._mesh.service(pod.service)
            targets.append(
                Target(
                    pod.name,
                    app.id,
                    owner.ip,
                    service.port,
                    service.health,
                    app.state == "running",
                    app.state,
                )
            )
        self.health.set_targets(tuple(targets))

    # -- the view ---------------------------------------------------------------------------

    def _view(self) -> View:
        return View(
            phase=self._phase,
            mesh=self._mesh,
            served=effective(self._mesh, self._overrides, self.ingress_port),
            overrides=frozenset(k for k in self._overrides),
            desired=self._desired,
            infos=dict(self._infos),
            health=dict(self._health),
            start_errors=dict(self._start_errors),
            errors=self._errors,
            failed=dict(self._failed),
            problems=self._problems,
            reloads=self._reloads,
            reload_failures=self._reload_failures,
            engine_ok=self._engine_ok,
            engine_detail=self._engine_detail,
            push_error=self._push_error,
            published=self._groups,
        )

    def _set_view(self) -> None:
        self.view = self._view()  # one reference swap: readers see one step or the next


def port_busy(ingress: Ingress) -> bool:
    with socket.socket() as probe_sock:
        # As dockerd binds: TIME_WAIT leftovers of a previous run must not count as "in use".
        probe_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_sock.bind((ingress.host, ingress.port))
        except OSError:
            return True
    return False


def _fault_text(fault: Fault) -> str:
    parts = []
    if fault.delay is not None:
        parts.append(f"delay {fault.delay.fixed_ms} ms for {fault.delay.percent:g} %")
    if fault.abort is not None:
        code = fault.abort.http_status or f"grpc {fault.abort.grpc_status}"
        parts.append(f"abort {code} for {fault.abort.percent:g} %")
    return ", ".join(parts)
