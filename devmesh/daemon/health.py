"""The health monitor: probes each pod's app from the host, on its own thread and schedule,
and tells the loop when a pod's health changes. It owns the probe results; the loop owns
which pods there are (it hands the monitor its targets after each pass)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from devmesh.adapters.probe import probe
from devmesh.api.types import EventKind, Severity
from devmesh.core.model import HEALTH_INTERVAL_MS, Health
from devmesh.daemon.eventlog import EventLog

log = logging.getLogger("devmesh.health")
TICK = 0.25  # seconds between looks at what is due, at most
UNTIL_HEALTHY = 0.2  # seconds between probes of an app that has not passed (yet, or again)
# A new app (a roll's new pod waits for it) is probed more often at first: it joins its
# endpoints within STARTING_EVERY of answering, not within UNTIL_HEALTHY.
STARTING_EVERY = 0.05
STARTING_FOR = 5.0  # seconds after a new app is first seen
NOT_CHECKED = "not checked yet"
# A healthy pod is dropped from its service's endpoints only after this many failed probes
# in a row, taken RECONFIRM seconds apart (Kubernetes' failureThreshold is 3 too): under
# load one probe can time out, and dropping the only pod of a version for it answered
# clients 503 "no healthy upstream" (measured 157 and 392 of 3000 requests).
FAILURES_TO_DROP = 3
RECONFIRM = 0.3


@dataclass(frozen=True, slots=True)
class Target:
    pod: str
    app_id: str  # the app container checked: a new one starts unhealthy
    ip: str
    port: int
    health: Health | None
    running: bool  # the app container runs (else: unhealthy without a probe)
    app_state: str


@dataclass(frozen=True, slots=True)
class Result:
    app_id: str
    ok: bool = False
    reason: str = NOT_CHECKED
    failures: int = 0  # failed probes in a row while still counted healthy


Probe = Callable[[str, int, Health | None], tuple[bool, str]]


def probe_delay(ok: bool, interval: float, starting: float | None) -> float:
    """Seconds until an app's next probe. `interval`: its check's own; `starting`: seconds
    since it was first seen, while it has never passed (None once it has)."""
    if ok:
        return interval
    if starting is not None and starting < STARTING_FOR:
        return min(interval, STARTING_EVERY)
    return min(interval, UNTIL_HEALTHY)


class EngineHealth:
    """Transport tcp: the apps' health as the engine reports it (a Docker HEALTHCHECK on
    each pod's owner, plan/desired.py `health_check`), never a probe from the host. The
    events thread tells it each `health_status` event, the loop what each look listed; a
    `Probe` of the pods by owner name (the monitor's targets carry it for the address).
    The engine has already counted failures in a row: one unhealthy report drops a pod."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}  # owner name -> healthy | unhealthy | starting
        self._heard: set[str] = set()  # owners an event spoke of

    def reported(self, owner: str, status: str) -> None:
        """A `health_status: STATUS` event (the events thread): it is the newest word."""
        with self._lock:
            self._status[owner] = status
            self._heard.add(owner)

    def listed(self, statuses: Mapping[str, str]) -> None:
        """What a look listed (the loop): taken for owners no event spoke of (an adopted
        pod; a change before the events stream was open), since an event may be newer than
        the look; owners no longer listed are dropped."""
        with self._lock:
            self._status = {
                name: self._status.get(name, status) if name in self._heard else status
                for name, status in statuses.items()
            }
            self._heard &= self._status.keys()

    def check(self, owner: str, port: int, health: Health | None) -> tuple[bool, str]:
        with self._lock:
            status = self._status.get(owner, "")
        if status == "healthy":
            return True, ""
        what = f"GET {health.path}" if health and health.path else f"port {port}"
        if status == "unhealthy":
            return False, f"{what}: the engine's health check fails"
        if status == "starting":  # fewer failures than it counts to call it unhealthy
            return False, f"{what}: the engine's health check has not passed yet"
        return False, NOT_CHECKED


class HealthMonitor:
    def __init__(
        self,
        on_change: Callable[[Mapping[str, Result]], None],
        events: EventLog,
        check: Probe = probe,
        clock: Callable[[], float] = time.monotonic,
        failures_to_drop: int = FAILURES_TO_DROP,
        on_noted: Callable[[Mapping[str, Result]], None] | None = None,
    ) -> None:
        """`on_change`: a pod's health changed (it passes now, or no longer); `on_noted`:
        only why a failing pod fails did (what `ps` shows, not what serves)."""
        self._failures_to_drop = failures_to_drop
        self._on_noted = on_noted
        self._poked = False
        self._on_change = on_change
        self._events = events
        self._check = check
        self._clock = clock
        self._targets: tuple[Target, ...] = ()
        self._results: dict[str, Result] = {}  # pod -> result; this thread's alone
        self._next_at: dict[str, float] = {}
        self._new: dict[str, float] = {}  # pod -> when its app was first seen, until it passes
        self._lock = threading.Lock()  # guards _targets (set by the loop)
        self._stop = threading.Event()
        self._wake = threading.Event()  # new targets: probe them now, not at the next tick
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def set_targets(self, targets: tuple[Target, ...]) -> None:
        with self._lock:
            changed = targets != self._targets
            self._targets = targets
        if changed:
            self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Check every target now (the engine reported a health change)."""
        self._poked = True
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=False)

    def results(self) -> dict[str, Result]:
        """A copy, for the loop's first pass (adopted pods keep their traffic)."""
        with self._lock:
            return dict(self._results)

    def probe_now(self) -> dict[str, Result]:
        """One round of every target, now (the loop's first pass waits for it)."""
        self._round(force=True)
        return self.results()

    def _run(self) -> None:
        while True:
            due = min(self._next_at.values(), default=self._clock() + TICK)
            self._wake.wait(min(TICK, max(0.02, due - self._clock())))
            self._wake.clear()
            if self._stop.is_set():
                return
            force, self._poked = self._poked, False
            try:
                changed, noted = self._round(force=force)
                if changed:
                    self._on_change(self.results())
                elif noted and self._on_noted is not None:
                    self._on_noted(self.results())
            except Exception:
                if self._stop.is_set():
                    return  # the probe pool was shut down under a round: not a fault
                log.exception("health probes failed")

    def _round(self, force: bool) -> tuple[bool, bool]:
        """Probe the apps that are due; whether any pod's health changed, and whether only
        the reason a failing pod fails for did."""
        with self._lock:
            targets = self._targets
        now = self._clock()
        changed = noted = False
        results = dict(self._results)
        due: list[Target] = []
        for t in targets:
            old = results.get(t.pod)
            if old is None or old.app_id != t.app_id:
                changed = changed or bool(old and old.ok)
                results[t.pod] = Result(t.app_id)
                self._next_at[t.pod] = 0.0
                self._new[t.pod] = now
            if not t.running:
                self._next_at[t.pod] = now + TICK  # nothing to probe: no reason to wake
                if results[t.pod].ok or results[t.pod].reason != f"app {t.app_state}":
                    changed = changed or results[t.pod].ok
                    results[t.pod] = Result(t.app_id, False, f"app {t.app_state}")
            elif force or now >= self._next_at.get(t.pod, 0.0):
                due.append(t)
        for gone in set(results) - {t.pod for t in targets}:
            del results[gone]
            self._next_at.pop(gone, None)
            self._new.pop(gone, None)
        outcomes = list(self._pool.map(lambda t: self._check(t.ip, t.port, t.health), due))
        for t, (ok, reason) in zip(due, outcomes, strict=True):
            interval = (t.health.interval_ms if t.health else HEALTH_INTERVAL_MS) / 1000
            old = results[t.pod]
            if not ok and old.ok and old.failures + 1 < self._failures_to_drop:
                # Healthy until failures in a row confirm it: look again soon.
                results[t.pod] = Result(t.app_id, True, "", old.failures + 1)
                self._next_at[t.pod] = now + min(interval, RECONFIRM)
                continue
            # Until it first passes, look often: readiness should not wait a whole interval.
            if ok:
                self._new.pop(t.pod, None)
            first = self._new.get(t.pod)
            self._next_at[t.pod] = now + probe_delay(
                ok, interval, None if first is None else now - first
            )
            noted = noted or (not ok and reason != old.reason)
            if ok != old.ok:
                changed = True
                if ok:
                    self._events.add(EventKind.HEALTH, "healthy", t.pod)
                else:
                    self._events.add(
                        EventKind.HEALTH, f"unhealthy: {reason}", t.pod, Severity.WARNING
                    )
            results[t.pod] = Result(t.app_id, ok, reason)
        with self._lock:
            self._results = results
        return changed, noted
