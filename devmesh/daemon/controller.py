"""The loop: the one owner of the daemon's mutable state.

Every trigger is a command on one queue: a read of the mesh file (the mesh source), an API
command (reload, shift, fault, restart), a container's death (Docker), a health change (the
monitor), a timer. One thread consumes them in order and re-runs the level-triggered
pipeline: effective → desired → observe → plan → apply (reconciler.py) → render → publish
(publisher.py). Other threads only enqueue, and read the immutable `View` the loop
publishes after every command. Its collaborators (file state, reconciler, publisher) are
called by this thread alone.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmesh.adapters.engine import ContainerInfo, Engine
from devmesh.adapters.images import BuildState, ImageResolver
from devmesh.adapters.probe import probe
from devmesh.adapters.relay import HostRelays
from devmesh.adapters.tlsfiles import ingress_problems
from devmesh.adapters.xds_server import XdsServer
from devmesh.api.types import DevRequest, ErrorCode, EventKind, Phase, Severity
from devmesh.core.develop import rebuilt_versions
from devmesh.core.edit import pick_route
from devmesh.core.model import Fault, Ingress, Mesh
from devmesh.core.problems import MeshError, clip
from devmesh.daemon.develop import Develop
from devmesh.daemon.develop import disabled as develop_disabled
from devmesh.daemon.errors import Refused
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.filestate import FileState
from devmesh.daemon.health import (
    FAILURES_TO_DROP,
    EngineHealth,
    HealthMonitor,
    Probe,
    Result,
    Target,
)
from devmesh.daemon.identities import Cert, Identities
from devmesh.daemon.ingress_tls import uses_ca as ingress_uses_ca
from devmesh.daemon.meshsource import FileRead, MeshSource
from devmesh.daemon.publisher import Publisher, endpoints, serves
from devmesh.daemon.reconciler import Reconciler
from devmesh.daemon.state import StateDir
from devmesh.envoy.resources import uses_tls
from devmesh.plan.desired import Desired
from devmesh.plan.effective import DevVersion, effective, kept_overrides
from devmesh.plan.roll import Retiring

log = logging.getLogger("devmesh.daemon")
STOP_WAIT = 30.0  # seconds stop() waits for a pass under way (an image build) to end
UNCONFIGURED_CHECK = 0.5  # seconds between publishes while a healthy pod awaits an ACK


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
class HealthNoted:
    """Only the reason a failing pod fails for changed: what `ps` shows, nothing to push."""

    results: Mapping[str, Result]


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class ImagesReady:
    """A build on the image resolver's worker ended: a pass takes its image (or error)."""


@dataclass(frozen=True, slots=True)
class Acked:
    """An Envoy ACKed its first listener config: a healthy pod waiting for it can serve."""


@dataclass(frozen=True, slots=True)
class Settled:
    """Housekeeping ended (a removal, a spare made: reconciler.py): a pass looks again."""


@dataclass(frozen=True, slots=True)
class Call:
    """An API command: `run(controller)` on the loop's thread, its result on `reply`."""

    run: Callable[[Controller], Any]
    reply: Future[Any] = field(default_factory=Future)


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Resample:
    """Adaptive tracing chose another share of requests to trace: push it (RTDS alone)."""


@dataclass(frozen=True, slots=True)
class Renew:
    """A certificate's replacement is due to be issued ahead, or due to be pushed (see
    identities.py)."""


Command = (
    FileChanged
    | ContainerDied
    | HealthChanged
    | HealthNoted
    | Tick
    | ImagesReady
    | Settled
    | Acked
    | Renew
    | Resample
    | Call
    | Stop
)


def _reasons_from(health: Mapping[str, Result], noted: Mapping[str, Result]) -> dict[str, Result]:
    """`health` with the newer reasons `noted` gives, for pods whose passing or failing is
    the same in both: which pods serve changes only by a HealthChanged (or the loop's own
    probe round), never by a note."""
    out = dict(health)
    for pod, old in health.items():
        new = noted.get(pod)
        if new is not None and new.ok == old.ok and new.app_id == old.app_id:
            out[pod] = new
    return out


# -- what readers see -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """The loop's state after its last step, for the API's readers. Never mutated."""

    phase: Phase
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
    retiring: tuple[Retiring, ...] = ()  # a roll's old pods: serving, or draining
    builds: tuple[BuildState, ...] = ()  # image builds under way, or failed last
    certs: Mapping[str, Cert] = field(default_factory=dict)  # node group -> its certificate
    # (service, version) -> the pod addresses in the config last handed to the xDS cache: a
    # pod is ready only once it is in them (its sidecar's ACK alone comes up to a publish
    # earlier, while callers still have no endpoint for it).
    endpoints: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)


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
        identities: Identities | None = None,
        housekeeping: Executor | None = None,
        engine_health: EngineHealth | None = None,
    ) -> None:
        # Transport tcp: health as the engine reports it (daemon/health.py EngineHealth)
        self.engine_health = engine_health
        self.mesh_file = mesh_file
        self.project = project
        self.engine = engine
        self.images = images
        self.state = state
        self.events = events
        self.ingress_port = ingress_port  # -p instances of one file each get their own port
        self._clock = clock
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.source = MeshSource(mesh_file, lambda read: self.submit(FileChanged(read)))
        self.health = HealthMonitor(
            lambda r: self.submit(HealthChanged(r)),
            events,
            engine_health.check if engine_health is not None else check,
            failures_to_drop=1 if engine_health is not None else FAILURES_TO_DROP,
            on_noted=lambda r: self.submit(HealthNoted(r)),
        )
        images.on_built = lambda: self.submit(ImagesReady())  # builds run on its worker
        self.develop = Develop(
            images,
            engine,
            events,
            lambda: self.view,
        )
        # -- the state this loop owns (only its thread writes it, and its collaborators') --
        self.file = FileState(mesh, str(mesh_file), events)
        self.reconciler = Reconciler(project, engine, images, state, events, clock, housekeeping)
        self.reconciler.on_settled = lambda: self.submit(Settled())  # a housekeeping thread
        self.identities = identities if identities is not None else Identities(clock=clock)
        self.publisher = Publisher(xds, events, self.identities)
        self.relays = HostRelays()  # to versions running on the host
        self._relay_problems: tuple[str, ...] = ()
        self._overrides: Mapping[tuple[str, str], Fault | None] = {}  # replaced, never changed
        self._dev: Mapping[tuple[str, str], DevVersion] = {}  # `devmesh dev`; replaced too
        self._health: Mapping[str, Result] = {}
        self._phase = Phase.STARTING
        self._unconfigured = False  # a healthy pod waits for its sidecar's first ACK
        self._endpoints: dict[tuple[str, str], tuple[str, ...]] = {}  # as last published
        # `sampling: auto`: the share of requests traced that the daemon chose (None: the
        # mesh's own); read at each push (daemon/tracing.py sets it, then `Resample`)
        self.sampling: Callable[[], float | None] = lambda: None
        self.view = self._view()
        self._thread = threading.Thread(target=self._run, name="loop", daemon=True)

    # -- for other threads ----------------------------------------------------------------------

    def submit(self, command: Command) -> None:
        self._queue.put(command)

    def call(self, run: Callable[[Controller], Any], timeout: float) -> Any:
        """Run `run(self)` on the loop and wait for its result (or its exception). Not done
        within `timeout`: TimeoutError, and it is not carried out later either."""
        command = Call(run)
        self.submit(command)
        try:
            return command.reply.result(timeout)
        except TimeoutError:
            if command.reply.cancel():
                raise
            return command.reply.result()  # it started meanwhile: it finishes, and counts

    def start(self) -> None:
        """The first pass, on the caller's thread (a clear error if it cannot come up), then
        the loop and its sources."""
        if uses_tls(self.file.mesh) or ingress_uses_ca(self.file.mesh):
            self.identities.ensure_ca()  # CAError naming the directory, before any container
        self.images.ensure_base()
        self.images.build_now(self.file.mesh)  # here, before the loop runs: up waits for it
        self._reconcile("start")
        self._phase = Phase.SERVING
        self._set_view()
        self._thread.start()
        self.source.start()
        self.health.start()
        self.develop.set_mesh(self.file.mesh)

    def stop(self) -> bool:
        """Stop the loop and its sources. False if a pass under way did not end in time (the
        loop may still act on the engine: its caller must not tear the mesh down)."""
        self.submit(Stop())
        stopped = True
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT)
            stopped = not self._thread.is_alive()
        self.reconciler.close()  # no removal or spare still under way once the loop is gone
        self.source.stop()
        self.health.stop()
        self.relays.close()
        self.develop.stop()
        self.images.stop()
        return stopped

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            wake = self.reconciler.next_wake()
            if self._unconfigured:  # `Acked` comes; a look now and then, should it not
                wake = min(wake, self._clock() + UNCONFIGURED_CHECK)
            renewal = self.identities.next_wake()
            wait = max(0.0, min(wake, renewal or wake) - self._clock())
            try:
                command: Command = self._queue.get(timeout=wait)
            except queue.Empty:
                # A certificate due before the next pass: issue its replacement ahead, or
                # push it, with no pass over the engine.
                early = renewal is not None and self._clock() < wake
                command = Renew() if early else Tick()
            batch = [command]
            while True:  # what has queued up meanwhile joins this step
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(isinstance(c, Stop) for c in batch):
                self._phase = Phase.STOPPING
                self._set_view()
                for c in batch:
                    if isinstance(c, Call) and c.reply.set_running_or_notify_cancel():
                        c.reply.set_exception(Refused(ErrorCode.UNAVAILABLE, "the daemon stops"))
                return
            try:
                self._step(batch)
            except Exception:
                log.exception("the loop's step failed")
            self._set_view()

    def _step(self, batch: list[Command]) -> None:
        why = ""
        publish = republish = renew = False
        for command in batch:
            if isinstance(command, FileChanged):
                mesh = self.file.take(command.read, self._refusals)
                if mesh is not None:
                    self.apply_mesh(command.read.digest, mesh, "save", rebuild=False)
            elif isinstance(command, Call):
                if not command.reply.set_running_or_notify_cancel():
                    continue  # its caller gave up waiting: not carried out
                try:
                    result = command.run(self)
                except Exception as exc:  # handed to the caller, who answers the API with it
                    command.reply.set_exception(exc)
                else:
                    self._set_view()  # what the caller reads next shows its change
                    command.reply.set_result(result)
            elif isinstance(command, ContainerDied):
                if self.reconciler.died(command.container_id):
                    why = f"{command.name} died" if command.name else why or "event"
            elif isinstance(command, HealthChanged):
                self._health = command.results
                publish = True
            elif isinstance(command, HealthNoted):
                self._health = _reasons_from(self._health, command.results)
            elif isinstance(command, Renew):
                renew = True
            elif isinstance(command, Tick):
                if self._unconfigured and not self.reconciler.wants_pass():
                    republish = True  # only a sidecar's first ACK awaited: no pass for it
                else:
                    why = why or "timer"
            elif isinstance(command, ImagesReady):
                why = "image built"
            elif isinstance(command, Settled):
                why = why or "housekeeping done"
            elif isinstance(command, Acked):
                republish = republish or self._unconfigured
            elif isinstance(command, Resample):
                # not before a pass has made the pods' endpoints: a push then would have none
                republish = republish or self.reconciler.desired is not None
        if why:
            self._reconcile(why)
        elif publish:
            self.reconciler.refresh()
            self._publish()
        elif renew:  # the pods are as they were: only the certificates change
            self.publisher.prepare(self._served())  # replacements due ahead: no push
            self._publish()  # what is due for renewal: swapped in, pushed
        elif republish:  # a sidecar's first ACK (endpoints may change), or a new sampling
            self._publish()
        self._set_targets()

    # -- the mesh file ----------------------------------------------------------------------

    def _refusals(self, mesh: Mesh) -> tuple[str, ...]:
        """A valid file this instance still cannot take, checked before anything changes."""
        current = self.file.mesh
        if mesh.name != current.name and self.project == current.name:
            return (
                f"the mesh is now named '{mesh.name}'; "
                f"run `devmesh down` for '{current.name}' first",
            )
        files = ingress_problems(mesh)  # the user's certificate: expired, foreign, unreadable
        if files:
            return files
        old, new = current.ingress, mesh.ingress
        moved = new is not None and (old is None or old.port != new.port)
        # Checked before the working gateway is replaced by one that could not start.
        if self.ingress_port is None and new is not None and moved and port_busy(new):
            return (
                f"{self.mesh_file}: ingress port {new.host}:{new.port} is in use by "
                "another program; the gateway stays where it is",
            )
        return ()

    def apply_mesh(self, digest: str, mesh: Mesh, why: str, rebuild: bool) -> None:
        started = self._clock()
        self.file.accept(digest, mesh)
        self.develop.set_mesh(mesh)
        self._overrides = kept_overrides(mesh, self._overrides)
        self._dev = {  # a dev version stays while its service does and the file has no twin
            (s, v): d
            for (s, v), d in self._dev.items()
            if mesh.has_service(s) and v not in {x.name for x in mesh.service(s).versions}
        }
        if rebuild:
            self.images.forget()
        self._reconcile(why)
        took = (self._clock() - started) * 1000
        self.events.add(EventKind.SAVE, f"{why}: applied in {took:.0f} ms")

    # -- API commands (run on the loop's thread through `call`) ----------------------------

    def prebuild(self, asked: str | None) -> None:
        """Before a second `up` reaches the loop: build the file's images again, on the
        caller's (API) thread, so the loop keeps serving meanwhile."""
        if asked and Path(asked).resolve() != self.mesh_file.resolve():
            return  # refused by reload()
        read = self.source.read()
        if read.mesh is not None:
            self.images.build_now(read.mesh, again=True)

    def reload(self, asked: str | None) -> tuple[str, ...]:
        """A second `up`: re-read the file now, rebuild images, reconcile; what failed."""
        if asked and Path(asked).resolve() != self.mesh_file.resolve():
            raise Refused(
                ErrorCode.CONFLICT,
                f"the running daemon of '{self.project}' serves {self.mesh_file}, not {asked}; "
                "run `devmesh down` first, or give another -p name",
            )
        read = self.source.read()
        problems = read.problems if read.mesh is None else self._refusals(read.mesh)
        if read.mesh is None or problems:
            self.file.report(read.digest, problems)
            return problems
        self.apply_mesh(read.digest, read.mesh, "up", rebuild=True)
        r = self.reconciler
        failures = [f"{s}/{v}: {why}" for (s, v), why in r.failed.items()]
        failures += [f"{name}: {why}" for name, why in r.start_errors.items()]
        failures += [*r.errors, *([self.publisher.error] if self.publisher.error else [])]
        return tuple(failures)

    def shift(self, service: str, weights: dict[str, int], route: str | None) -> str:
        """New weights, written into the file (comments and layout kept) and applied."""
        digest, mesh, chosen = self.file.shift(service, weights, route, self.source.base_dir)
        self.apply_mesh(digest, mesh, "shift", rebuild=False)
        return chosen

    def set_fault(self, service: str, route: str | None, fault: Fault | None) -> str:
        """Set or clear a route's fault live; refused, and not kept, if it cannot be served."""
        mesh = self.file.mesh
        if not mesh.has_service(service):
            raise Refused(ErrorCode.NOT_FOUND, f"no service {service!r} in mesh '{mesh.name}'")
        svc = mesh.service(service)
        if not svc.is_http:
            raise Refused(ErrorCode.BAD_REQUEST, f"'{service}' is a tcp service: faults are HTTP")
        try:
            chosen = pick_route(svc, route)
        except MeshError as exc:
            raise Refused(ErrorCode.NOT_FOUND, str(exc)) from None
        key = (service, chosen.name)
        before = self._overrides
        self._overrides = {k: v for k, v in before.items() if k != key}
        if fault is not None:
            self._overrides = {**self._overrides, key: fault}
        if not self._publish():
            self._overrides = before  # a rejected change is never stored
            self._publish()
            why = self.publisher.error
            raise Refused(ErrorCode.BAD_REQUEST, f"the fault cannot be served: {why}")
        what = "cleared" if fault is None else _fault_text(fault)
        self.events.add(EventKind.FAULT, what, f"{service}/{chosen.name}")
        return chosen.name

    def restart(self, service: str | None, pod: str | None) -> tuple[str, ...]:
        """A rolling restart: each chosen pod gets a new pod beside it; the old one serves
        until the new one does, then drains (plan/roll.py). Answers the pods replaced."""
        want = self.reconciler.desired
        chosen = [p for p in (want.pods if want else ()) if p.name == pod or p.service == service]
        if not chosen:
            what = f"pod {pod!r}" if pod else f"service {service!r}"
            raise Refused(ErrorCode.NOT_FOUND, f"no {what} runs in mesh '{self.project}'")
        names = [p.name for p in chosen]
        self.reconciler.roll({p.slot for p in chosen})
        self.events.add(EventKind.RESTART, f"rolling restart of {', '.join(names)}")
        return tuple(names)

    def set_dev(self, req: DevRequest) -> bool:
        """Add (or with `remove`, take out) a version served by a process on the host, live;
        refused, and not kept, if it cannot be served. Whether it is in the mesh now."""
        mesh, key = self.file.mesh, (req.service, req.version)
        if not mesh.has_service(req.service):
            raise Refused(ErrorCode.NOT_FOUND, f"no service {req.service!r} in mesh '{mesh.name}'")
        if req.remove:
            if key in self._dev:
                self._dev = {k: d for k, d in self._dev.items() if k != key}
                self._reconcile("dev: removed")
                self.events.add(EventKind.RECONCILE, "host version removed", "/".join(key))
            return False
        service = mesh.service(req.service)
        problems = []
        if not service.is_http:
            problems.append(f"'{req.service}' is a tcp service: a dev version is routed by header")
        if req.version in {v.name for v in service.versions}:
            problems.append(f"'{req.service}' has a version '{req.version}' in the file already")
        if not _NAME.fullmatch(req.version):
            problems.append(f"version name {req.version!r}: lower-case letters, digits and -")
        if not 0 < req.port < 65536:
            problems.append(f"port {req.port}: expected 1-65535")
        if not _HEADER.fullmatch(req.header):
            problems.append(
                f"header {clip(req.header)!r}: not an HTTP header name (a token, e.g. x-dev)"
            )
        if not req.value or "\n" in req.value:
            problems.append(f"value {clip(req.value)!r}: a header value, one line, not empty")
        if problems:
            raise Refused(ErrorCode.BAD_REQUEST, "; ".join(problems))
        before = self._dev
        self._dev = {**before, key: DevVersion(req.port, req.header, req.value)}
        self._reconcile("dev")
        if self.publisher.error is not None:
            self._dev = before  # a change that cannot be served is never kept
            self._reconcile("dev: refused")
            raise Refused(ErrorCode.BAD_REQUEST, f"cannot serve it: {self.publisher.error}")
        what = f"on the host at 127.0.0.1:{req.port} for {req.header}: {req.value}"
        self.events.add(EventKind.RECONCILE, f"host version added, {what}", "/".join(key))
        return True

    def overrides(self) -> Mapping[tuple[str, str], Fault | None]:
        return self._overrides

    # -- a pass, and what it hands on -------------------------------------------------------

    def _served(self) -> Mesh:
        return effective(self.file.mesh, self._overrides, self.ingress_port, self._dev)

    def _reconcile(self, why: str) -> None:
        configured = self.publisher.configured
        served = self._served()
        spare_for = self._spare_for(served)
        if not self.reconciler.run(served, why, self._publish, self._health, configured, spare_for):
            return  # the engine does not answer: the Envoys keep what they have
        if self._phase is Phase.STARTING:  # adopted pods keep their traffic: no empty push
            self._set_targets()
            self._health = self.health.probe_now()
        self._publish()

    def _spare_for(self, served: Mesh) -> frozenset[tuple[str, str]]:
        """The versions that keep a spare pod per replica: those a save rebuilds, while the
        daemon watches (plan/roll.py)."""
        return frozenset() if develop_disabled() else rebuilt_versions(served)

    def _publish(self) -> bool:
        r = self.reconciler
        served = endpoints(r.desired, r.infos, self._health, r.retiring, self.publisher.configured)
        self._unconfigured = any(
            not self.publisher.configured(p.node_id)
            and serves(p.name, p.app.name, p.node_id, r.infos, self._health, lambda _: True)
            for p in (r.desired.pods if r.desired else ())
        )
        mesh = self._served()
        # The share of requests traced goes to every Envoy as a runtime layer, a fixed one
        # too: a route's own `tracing` block (its custom tags) would otherwise sample at
        # Envoy's default of 100 %, whatever the connection manager says; the runtime key
        # overrides both. A file that just turned auto off is served its own share at once.
        tracing = mesh.observability.tracing
        sampling = None
        if tracing is not None:
            chosen = self.sampling() if tracing.adapts else None
            sampling = chosen if chosen is not None else tracing.sampling_percent
        ok = self.publisher.publish(mesh, served, r.host, self._host_apps(mesh), sampling)
        if ok:
            now = {key: tuple(ips) for key, ips in served.items()}
            if now != self._endpoints and self._spare_for(mesh):
                r.look_soon()  # a pod that serves now may get its spare (plan/roll.py)
            self._endpoints = now
        return ok

    def _host_apps(self, mesh: Mesh) -> dict[tuple[str, str], tuple[str, int]]:
        """Relays to the versions on the host, on the mesh network's gateway address (the
        host, to the pods), started and stopped to match; where each one is reached."""
        bridge = self.reconciler.host
        on_host = {
            (s.name, v.name): v.host.port for s in mesh.services for v in s.versions if v.host
        }
        problems = tuple(
            self.relays.set({(bridge, p) for p in on_host.values()} if bridge else set())
        )
        for problem in set(problems) - set(self._relay_problems):
            self.events.add(EventKind.RECONCILE, problem, "relay", Severity.ERROR)
        self._relay_problems = problems
        out = {}
        for key, port in on_host.items():
            address = self.relays.address(bridge, port) if bridge else None
            if address is not None:
                out[key] = address
        return out

    def _set_targets(self) -> None:
        want, infos, mesh = self.reconciler.desired, self.reconciler.infos, self._served()
        if self.engine_health is not None:
            owners = self._owners(want)
            self.engine_health.listed(
                {i.name: i.health for i in infos.values() if i.name in owners}
            )
        targets = []
        pods = [(p.name, p.app.name, p.service, p.version) for p in want.pods] if want else []
        # A roll's old pods are probed too: they serve until their successor does.
        pods += [(r.name, r.app, r.service, r.version) for r in self.reconciler.retiring]
        for name, app_name, service_name, version in pods:
            owner, app = infos.get(name), infos.get(app_name)
            if not owner or not owner.ip or not app or not mesh.has_service(service_name):
                continue
            service = mesh.service(service_name)
            running = app.state == "running"
            ip, port = owner.ip, service.port
            host = next((v.host for v in service.versions if v.name == version and v.host), None)
            if host is not None:  # the process on the host, probed where it listens
                ip, port = "127.0.0.1", host.port
            if self.engine_health is not None:
                ip = name  # the engine checks it: EngineHealth looks it up by owner name
            targets.append(Target(name, app.id, ip, port, service.health, running, app.state))
        self.health.set_targets(tuple(targets))

    def _owners(self, want: Desired | None) -> frozenset[str]:
        names = {p.name for p in want.pods} if want is not None else set()
        return frozenset(names | {r.name for r in self.reconciler.retiring})

    def _view(self) -> View:
        r = self.reconciler
        return View(
            phase=self._phase,
            mesh=self.file.mesh,
            served=self._served(),
            overrides=frozenset(self._overrides),
            desired=r.desired,
            infos=dict(r.infos),
            health=dict(self._health),
            start_errors=dict(r.start_errors),
            errors=r.errors,
            failed=dict(r.failed),
            problems=self.file.problems,
            reloads=self.file.reloads,
            reload_failures=self.file.reload_failures,
            engine_ok=r.engine_ok,
            engine_detail=r.engine_detail,
            push_error=self.publisher.error,
            published=self.publisher.groups,
            retiring=r.retiring,
            builds=self.images.states(),
            certs=dict(self.identities.certs),
            endpoints=self._endpoints,
        )

    def _set_view(self) -> None:
        self.view = self._view()  # one reference swap: readers see one step or the next


_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")  # an HTTP token


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
