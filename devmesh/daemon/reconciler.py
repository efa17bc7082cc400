"""One pass against the engine: resolve images, work out what should run, look at what runs,
plan, apply, write the pods' hosts files. Owned and called by the loop alone (its fields are
the loop's state); it only reports what it found in `Reconciler` fields the loop reads.

What no pass waits for (removing the pods a roll is done with, making spare pods ahead of a
rebuild) runs on housekeeping threads: the loop hands it over and goes on. While that work
runs, the containers it is about are left out of what the passes see, so no pass plans them
twice; when it ends the loop is told (`on_settled`) and looks again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from pathlib import Path

from devmesh.adapters.engine import ContainerInfo, Engine, EngineError, EngineUnavailable
from devmesh.adapters.images import ImageResolver, Pending
from devmesh.api.types import EventKind, Severity
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError
from devmesh.core.transport import Transport, tcp_unsupported
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.health import Result
from devmesh.daemon.publisher import Configured, serves
from devmesh.daemon.state import StateDir
from devmesh.envoy.bootstrap import XdsTcp
from devmesh.plan.desired import (
    GUARD_IMAGE,
    Desired,
    Inputs,
    PodSpec,
    desired,
    hosts_file,
    hosts_text,
    network_name,
    pod_dir,
    proxy_user,
)
from devmesh.plan.plan import Observed, Plan, plan
from devmesh.plan.roll import (
    POD_ROLES,
    Retiring,
    Slot,
    bump,
    generations,
    retire,
    spare_generations,
    spares,
    to_roll,
)

log = logging.getLogger("devmesh.daemon")
RECONCILE_EVERY = 15.0  # seconds: a safety net; events and saves trigger a pass at once
RECHECK = 0.1  # seconds between looks while the engine still reports a dead container running
RECHECK_FOR = 1.0  # ... for at most this long (measured: the list trails by about 0.4 s)
ENGINE_RETRY = 0.5  # seconds between looks while the engine does not answer
ROLL_CHECK = 0.1  # seconds between looks while a roll runs (new pod ready? drain over?)
HOUSEKEEPERS = 2  # threads for removals and spares: one of each can run at once
SPARE_WAIT = 60.0  # seconds a roll waits for the spare it takes to be finished
REMOVED_EVENTS = 10.0  # seconds Docker's events of a container housekeeping removed may trail
SPARE_RETRY = 30.0  # seconds before a spare that could not be made is tried again


def host_refused(service: str, version: str) -> str:
    """Why a version on the host (`host:`, `devmesh dev`) cannot run with transport tcp."""
    return (
        f"{service}/{version} runs on the host (`host:`), which needs transport unix: the "
        "pods reach a host process through a relay on the mesh network's gateway, and this "
        "engine's network is not the host's (transport tcp). Run it as a container, or use a "
        "local engine (DEVMESH_TRANSPORT=unix)"
    )


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
        housekeeping: Executor | None = None,
    ) -> None:
        self.project = project
        self.engine = engine
        self.images = images
        self.state = state
        self.events = events
        self._clock = clock
        self._proxy_user = daemon_user()
        # How the pods reach the daemon (set by the daemon once its xDS server listens).
        self.transport = Transport.UNIX
        self.xds_tcp: XdsTcp | None = None
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
        # Rolls (plan/roll.py): the old pods kept for now, what the last pass saw of the
        # generations, and the replicas a restart asked to roll.
        self.retiring: tuple[Retiring, ...] = ()
        self._generations: dict[Slot, int] = {}
        self._forced: set[Slot] = set()
        # Housekeeping (see the module's doc): the work handed over, by what it is about.
        self._housekeeping = housekeeping or ThreadPoolExecutor(
            HOUSEKEEPERS, thread_name_prefix="housekeeping"
        )
        self._removing: dict[str, Future[None]] = {}  # container id -> its removal
        self._removed: dict[str, float] = {}  # ... once done -> when (its events trail it)
        self._making: dict[str, Future[None]] = {}  # pod name -> its spare being made
        self._spare_failed: dict[str, float] = {}  # pod name -> not made again before
        self.on_settled: Callable[[], None] = lambda: None  # housekeeping ended (any thread)

    def died(self, container_id: str) -> bool:
        """Docker said it died: look until the engine's list agrees (it trails the event).
        False if that is housekeeping removing it: nothing to look at."""
        if container_id in self._removing or container_id in self._removed:
            return False
        self._dead[container_id] = self._clock() + RECHECK_FOR
        return True

    def roll(self, slots: set[Slot]) -> None:
        """A restart: these replicas get a new pod at the next pass, the old ones drain."""
        self._forced |= slots
        self.next_pass = self._clock()

    def look_soon(self) -> None:
        """A pass is due now (the loop's next wake)."""
        self.next_pass = self._clock()

    @property
    def rolling(self) -> bool:
        return bool(self.retiring or self._forced)

    def wants_pass(self) -> bool:
        """A pass is due now (a timer of its own, not another part's wait)."""
        due = self._clock() >= self.next_pass
        return due or bool(self._dead) or not self.engine_ok or self.rolling

    def next_wake(self) -> float:
        if self._dead:
            return self._clock() + RECHECK
        if self.rolling:
            return min(self.next_pass, self._clock() + ROLL_CHECK)
        if not self.engine_ok:
            return self._clock() + ENGINE_RETRY
        return self.next_pass

    def close(self) -> None:
        """Wait for the housekeeping under way (bounded by its engine calls); no more."""
        self._housekeeping.shutdown(wait=True, cancel_futures=True)

    def run(
        self,
        mesh: Mesh,
        why: str,
        push_early: Callable[[], object],
        health: Mapping[str, Result] | None = None,
        configured: Configured = lambda _node: True,
        spare_for: Collection[tuple[str, str]] = (),
    ) -> bool:
        """One pass for `mesh` (the effective one). `push_early` is called when the pods
        stay as they are, before asking the engine anything (a routing change reaches the
        Envoys without waiting for it). `health` and `configured` say which pods serve
        (a roll's old pod leaves when its successor does). `spare_for`: the versions that
        keep a spare pod per replica (plan/roll.py). False when the engine does not
        answer."""
        for _ in range(2):
            done = self._pass(mesh, why, push_early, health or {}, configured, spare_for)
            if done is not None:
                return done
        return True  # a spare was still being made after SPARE_WAIT: the next pass goes on

    def _pass(
        self,
        mesh: Mesh,
        why: str,
        push_early: Callable[[], object],
        health: Mapping[str, Result],
        configured: Configured,
        spare_for: Collection[tuple[str, str]],
    ) -> bool | None:
        """`run`'s pass; None: it waited for a spare a roll takes, and must look again."""
        self._reap()
        self.next_pass = self._clock() + RECONCILE_EVERY
        if self._failed_passes:  # a container that cannot start is not retried in a tight loop
            self.next_pass = self._clock() + min(30.0, 0.5 * 2**self._failed_passes)
        errors: list[str] = []
        engine_errors: list[EngineError] = []
        try:
            if self.host is None:
                self._learn_host()
            inputs = self._inputs(mesh)
            want = self._want(mesh, inputs, self._generations)
            if want == self.desired and not self._forced:
                push_early()
            looked, infos = self.engine.look(self.project)
            self._engine_back()
            looked = self._believe_deaths(looked)
            # What housekeeping works on is left out: no pass plans it again meanwhile.
            actual = [o for o in looked if o.id not in self._removing and o.pod not in self._making]
            spare = spares(actual, spare_for)
            pods = [o for o in actual if o.pod not in spare]  # rolls are decided on these
            want, rolled = self._roll(mesh, inputs, want, pods)
            clash = [self._making[p.name] for p in want.pods if p.name in self._making]
            if clash:  # a roll takes a spare still being made: it is finished first
                wait_for(clash, timeout=SPARE_WAIT)
                return None
            if rolled:
                new = sorted(p.name for p in want.pods if p.slot in rolled)
                taken = [n for n in new if n in spare]
                what = f" ({len(taken)} made ahead)" if taken else ""
                self.events.add(EventKind.RECONCILE, f"rolling: new pod(s) {', '.join(new)}{what}")
            taken_pods = spare & {p.name for p in want.pods}  # a roll's new pods now
            pods += [o for o in actual if o.pod in taken_pods]
            ready = self._serving(pods, infos, health, configured)
            retiring = retire(want, pods, ready, self._draining(), self._clock())
            self._tell_retired(retiring)
            ahead = self._spares(mesh, inputs, want, ready, spare - taken_pods, spare_for, looked)
            errors += self._write_hosts(mesh, want.pods + ahead)
            if self.transport is Transport.TCP:
                errors += tcp_unsupported(mesh)
            todo = plan(
                want,
                actual,
                network_exists=self.engine.network_exists(want.network),
                keep=frozenset(r.name for r in retiring),
                spares=ahead,
            )
            if todo.ensure_network:
                self.host = None  # a new network: its gateway may differ
            if not todo.empty:
                self.events.add(EventKind.RECONCILE, f"({why}) " + ", ".join(todo.describe()))
            now = dataclasses.replace(todo, remove=(), spares=())
            if not now.empty:
                engine_errors = self.engine.apply(now, self.project, want.network, log.info)
                for error in engine_errors:
                    self.events.add(
                        EventKind.RECONCILE, str(error), error.container or "engine", Severity.ERROR
                    )
                infos = self.engine.containers(self.project)  # what applying changed
            self._hand_over(todo, looked)
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
        self.retiring = retiring
        self._forced -= rolled
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

    def _want(self, mesh: Mesh, inputs: Inputs, gens: Mapping[Slot, int]) -> Desired:
        want = desired(mesh, dataclasses.replace(inputs, generations=dict(gens)))
        if inputs.failed and self.desired is not None:
            # A version that cannot run its new spec keeps its old pods, serving.
            kept = tuple(p for p in self.desired.pods if (p.service, p.version) in inputs.failed)
            want = dataclasses.replace(want, pods=want.pods + kept)
        return want

    def _roll(
        self, mesh: Mesh, inputs: Inputs, want: Desired, actual: list[Observed]
    ) -> tuple[Desired, frozenset[Slot]]:
        """What should run, at the generations that run; a replica whose running pod
        changed (or that a restart names) is asked for at the next generation: a new pod
        beside the old one, which retire() keeps until the new one serves."""
        gens = generations(actual)
        if gens != self._generations:
            want = self._want(mesh, inputs, gens)
        self._generations = gens
        rolled = to_roll(want, actual, self._forced)
        if rolled:
            want = self._want(mesh, inputs, bump(gens, rolled))
        return want, rolled

    def _serving(
        self,
        actual: list[Observed],
        infos: Mapping[str, ContainerInfo],
        health: Mapping[str, Result],
        configured: Configured,
    ) -> frozenset[str]:
        """The pods (old and new) that are in their version's endpoints now."""
        members: dict[str, dict[str, str]] = {}
        for obs in actual:
            if obs.role in POD_ROLES:
                members.setdefault(obs.pod, {})[obs.role] = obs.name
        return frozenset(
            pod
            for pod, names in members.items()
            if "app" in names
            and "sidecar" in names
            and serves(pod, names["app"], names["sidecar"], infos, health, configured)
        )

    def _spares(
        self,
        mesh: Mesh,
        inputs: Inputs,
        want: Desired,
        ready: frozenset[str],
        have: frozenset[str],
        spare_for: Collection[tuple[str, str]],
        looked: Iterable[Observed],
    ) -> tuple[PodSpec, ...]:
        """The spare pods to have (plan/roll.py), as specified now; none of a name that
        housekeeping still works on (being made, or removed: made again once gone)."""
        gens = spare_generations(want, ready, have, spare_for)
        if not gens:
            return ()
        now = self._clock()
        busy = set(self._making) | {o.pod for o in looked if o.id in self._removing}
        busy |= {name for name, until in self._spare_failed.items() if until > now}
        ahead = self._want(mesh, inputs, {**{p.slot: p.generation for p in want.pods}, **gens})
        return tuple(p for p in ahead.pods if p.slot in gens and p.name not in busy)

    # -- housekeeping ---------------------------------------------------------------------

    def _hand_over(self, todo: Plan, looked: list[Observed]) -> None:
        """The plan's removals and spares, to the housekeeping threads."""
        if todo.remove:
            ids = frozenset(todo.remove)
            owners = {o.pod: o.id for o in looked if o.id in ids and o.role == "pod"}
            job = self._housekeeping.submit(self._remove, ids, owners)
            for cid in ids:
                self._removing[cid] = job
            job.add_done_callback(self._settled)
        for pod in todo.spares:
            job = self._housekeeping.submit(self.engine.make_spare, pod, log.info)
            self._making[pod.name] = job
            job.add_done_callback(self._settled)

    def _settled(self, _job: Future[None]) -> None:
        self.on_settled()  # after the job is done, so the loop's next pass sees it done

    def _remove(self, ids: frozenset[str], owners: Mapping[str, str]) -> None:
        """On a housekeeping thread: remove the containers; the directory of each pod whose
        namespace owner went (hosts file, bootstrap, admin socket) goes with it: each roll
        makes a pod under a new name, and their directories would pile up."""
        errors = self.engine.remove(ids)
        failed = {e.container for e in errors}
        for name in (name for name, cid in owners.items() if cid not in failed):
            shutil.rmtree(pod_dir(str(self.state.path), name), ignore_errors=True)
        if errors:
            raise errors[0]

    def _reap(self) -> None:
        """Forget the housekeeping that ended; say what failed."""
        ended: set[Future[None]] = set()
        now = self._clock()
        self._removed = {c: t for c, t in self._removed.items() if t > now - REMOVED_EVENTS}
        self._spare_failed = {n: t for n, t in self._spare_failed.items() if t > now}
        for table in (self._removing, self._making):
            for key, job in list(table.items()):
                if job.done():
                    del table[key]
                    ended.add(job)
                    if table is self._removing:
                        self._removed[key] = now
                    elif job.cancelled() or job.exception() is not None:
                        self._spare_failed[key] = now + SPARE_RETRY  # not in a tight loop
        for job in ended:
            error = None if job.cancelled() else job.exception()
            if error is not None:
                subject = getattr(error, "container", "") or "engine"
                self.events.add(EventKind.RECONCILE, str(error), subject, Severity.ERROR)

    def _draining(self) -> dict[str, float]:
        return {r.name: r.until for r in self.retiring if r.until is not None}

    def _tell_retired(self, retiring: tuple[Retiring, ...]) -> None:
        before = self._draining()
        for r in retiring:
            if r.until is not None and r.name not in before:
                self.events.add(EventKind.RECONCILE, "left the endpoints; draining", r.name)

    def _inputs(self, mesh: Mesh) -> Inputs:
        assert self.images.envoy is not None and self.images.pause is not None
        app_images: dict[tuple[str, str], str] = {}
        failed: dict[tuple[str, str], str] = {}
        pending: dict[tuple[str, str], str] = {}  # first build under way: not a failure
        for service in mesh.services:
            for version in service.versions:
                key = (service.name, version.name)
                if version.host is not None and self.transport is Transport.TCP:
                    failed[key] = host_refused(service.name, version.name)
                    continue
                if version.host is not None:  # on the host: the pod's app is a stand-in
                    app_images[key] = self.images.pause.image_id
                    continue
                try:
                    app_images[key] = self.images.app(mesh.base_dir, service.name, version)
                except EngineUnavailable:
                    raise
                except Pending as exc:
                    pending[key] = str(exc)
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
            failed={**failed, **pending},  # either way its old pods, if any, keep serving
            proxy_user=self._proxy_user,
            # DEVMESH_GUARD=off: no guard image was made, and none is run
            guard_image=self.images.guard.image_id if self.images.guard else GUARD_IMAGE,
            guard=self.images.guard is not None,
            host=self.host if self.transport is Transport.UNIX else None,
            transport=self.transport,
            xds_tcp=self.xds_tcp,
        )

    def _write_hosts(self, mesh: Mesh, pods: Iterable[PodSpec]) -> list[str]:
        if self.transport is Transport.TCP:
            return []  # Docker's own hosts files, from each owner's extra_hosts
        errors = []
        for pod in pods:
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
