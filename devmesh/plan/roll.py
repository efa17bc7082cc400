"""Rolling replace, pure: which replicas get a new pod, and what becomes of the old ones.

A replica (service, version, replica number) whose running pod no longer matches its spec
(a new image, env, command; or a `restart`) is not recreated in place. A pod of the next
generation is made beside it, under its own name (`plan()` creates it like any missing
pod). The old pod keeps serving until the new one is ready: its app passes its health
check and its sidecar ACKed its config, so it is in its service's endpoints. Then the old
pod leaves the endpoints and drains for `DRAIN` seconds (in-flight requests end; callers'
Envoys close their keep-alive connections to a host EDS no longer lists) before `plan()`
removes it.

The loop keeps only the drain deadlines; which pods are old, new, ready or serving is
read from what runs each pass, so a daemon restarted in the middle of a roll finishes it.

Spares: a version rebuilt on a save (`develop: watch:` with `action: rebuild`) keeps, per
replica, a pod of the next generation made ahead without its app: namespace owner, guard
run, sidecar connected. The roll after a build takes it as its new pod, and `plan()` only
adds the app. Measured on a loaded 2-core machine, starting the owner, the guard and the
sidecar was about 2 s of the 3 s from a finished build to a new pod that serves. A spare
is read from what runs too: a pod of such a version with no app container, newer than
every pod of its replica that has one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from devmesh.plan.desired import Desired, pod_name
from devmesh.plan.plan import Observed

Slot = tuple[str, str, int]  # (service, version, replica)
DRAIN = 2.0  # seconds an old pod stays up after it left the endpoints
_GONE = ("dead", "removing")
POD_ROLES = ("pod", "app", "sidecar")


@dataclass(frozen=True, slots=True)
class Retiring:
    """An old pod kept for now: still serving (its successor is not ready yet), or
    draining until `until` (out of the endpoints)."""

    name: str
    service: str
    version: str
    replica: int
    generation: int
    app: str  # the app container's name
    sidecar: str  # the sidecar container's name (its xDS node id)
    until: float | None = None  # draining: removed at this time; None: still serving

    @property
    def serving(self) -> bool:
        return self.until is None

    @property
    def slot(self) -> Slot:
        return (self.service, self.version, self.replica)


def _pods(actual: Iterable[Observed]) -> dict[str, dict[str, Observed]]:
    out: dict[str, dict[str, Observed]] = {}
    for obs in actual:
        if obs.role in POD_ROLES and obs.service:
            out.setdefault(obs.pod, {}).setdefault(obs.role, obs)
    return out


def generations(actual: Iterable[Observed]) -> dict[Slot, int]:
    """The newest generation of each replica that has a pod."""
    out: dict[Slot, int] = {}
    for obs in actual:
        if obs.role in POD_ROLES and obs.service:
            slot = (obs.service, obs.version, obs.replica)
            out[slot] = max(out.get(slot, 0), obs.generation)
    return out


def to_roll(
    want: Desired, actual: Iterable[Observed], forced: Iterable[Slot] = ()
) -> frozenset[Slot]:
    """Replicas to give a new pod: their pod runs (its namespace owner does) but one of
    its containers differs from its spec, or a restart asked for it. A pod whose owner is
    not running serves nothing: `plan()` replaces it in place, as before."""
    have_pods = _pods(actual)
    forced = set(forced)
    out: set[Slot] = set()
    for pod in want.pods:
        have = have_pods.get(pod.name, {})
        owner = have.get("pod")
        if owner is None or owner.state != "running":
            continue
        changed = any(
            (obs := have.get(spec.role)) is not None
            and obs.state not in _GONE
            and obs.config_hash != spec.config_hash
            for spec in pod.containers
        )
        if changed or pod.slot in forced:
            out.add(pod.slot)
    return frozenset(out)


def bump(current: Mapping[Slot, int], rolls: Iterable[Slot]) -> dict[Slot, int]:
    """The generations to ask `desired()` for: one past the newest for each rolled slot."""
    out = dict(current)
    for slot in rolls:
        out[slot] = current.get(slot, 0) + 1
    return out


def retire(
    want: Desired,
    actual: Iterable[Observed],
    ready: frozenset[str],
    draining: Mapping[str, float],
    now: float,
    drain: float = DRAIN,
) -> tuple[Retiring, ...]:
    """The old pods to keep for now; `plan()` removes every other pod it does not want.

    `ready`: pods in their service's endpoints now (app healthy, sidecar ACKed), old and
    new alike. `draining`: what the last pass answered, pod -> until when.
    Per old pod (one `want` does not list, of a version that still runs):
    - draining already: kept until its time is up;
    - its replica's new pod is not ready yet: kept serving if it serves, or if no other
      old pod of the replica does (it may answer again: a paused process, a slow start);
    - else (the new pod is ready, or the replica is gone: scaled down, version removed):
      a serving pod starts draining; one that serves nothing goes at once.
    """
    wanted = {p.name: p for p in want.pods}
    successor = {p.slot: p.name for p in want.pods}
    kept_versions = set(want.failed)  # cannot run their new spec: plan keeps their pods
    old: dict[str, dict[str, Observed]] = {
        name: roles
        for name, roles in _pods(actual).items()
        if name not in wanted
        and not any((o.service, o.version) in kept_versions for o in roles.values())
    }
    slots: dict[Slot, list[str]] = {}
    for name, roles in old.items():
        any_member = next(iter(roles.values()))
        slots.setdefault((any_member.service, any_member.version, any_member.replica), []).append(
            name
        )
    out: list[Retiring] = []
    for slot, names in sorted(slots.items()):
        new = successor.get(slot)
        for name in sorted(names):
            roles = old[name]
            member = next(iter(roles.values()))
            until = draining.get(name)
            if until is None:
                if new is not None and new not in ready:
                    others_serve = any(n in ready for n in names if n != name)
                    if name not in ready and others_serve:
                        continue  # a failed attempt beside one that serves: it goes
                elif name in ready:
                    until = now + drain
                else:
                    continue  # serves nothing: nothing to drain
            elif until <= now:
                continue  # drained
            out.append(
                Retiring(
                    name=name,
                    service=slot[0],
                    version=slot[1],
                    replica=slot[2],
                    generation=member.generation,
                    app=roles["app"].name if "app" in roles else f"{name}-app",
                    sidecar=roles["sidecar"].name if "sidecar" in roles else f"{name}-sidecar",
                    until=until,
                )
            )
    return tuple(out)


def spares(actual: Iterable[Observed], versions: Collection[tuple[str, str]]) -> frozenset[str]:
    """The spare pods among those that run: of a version in `versions` (service, version),
    a pod with a namespace owner and no app container, of a generation above every pod of
    its replica that has an app. (A pod whose app could not be made looks the same: a roll
    takes it as its new pod, and `plan()` makes the app again, as it would have.)"""
    pods = _pods(actual)
    newest: dict[Slot, int] = {}  # the newest generation with an app, per replica
    for roles in pods.values():
        app = roles.get("app")
        if app is not None:
            slot = (app.service, app.version, app.replica)
            newest[slot] = max(newest.get(slot, -1), app.generation)
    out = set()
    for name, roles in pods.items():
        owner = roles.get("pod")
        if owner is None or "app" in roles or (owner.service, owner.version) not in versions:
            continue
        if owner.generation > newest.get((owner.service, owner.version, owner.replica), -1):
            out.add(name)
    return frozenset(out)


def spare_generations(
    want: Desired,
    ready: frozenset[str],
    have: frozenset[str],
    versions: Collection[tuple[str, str]],
) -> dict[Slot, int]:
    """The replicas that should have a spare now, and its generation (one past their
    pod's): those of a version in `versions` that can run (not failed) whose pod is ready
    (in `ready`; a spare made while the pod itself starts would slow that start) or whose
    spare exists already (in `have`: kept while the pod is out of the endpoints)."""
    out: dict[Slot, int] = {}
    for pod in want.pods:
        key = (pod.service, pod.version)
        if key not in versions or key in want.failed:
            continue
        generation = pod.generation + 1
        name = pod_name(want.project, pod.service, pod.version, pod.replica, generation)
        if pod.name in ready or name in have:
            out[pod.slot] = generation
    return out
