"""plan(desired, actual) -> Plan: what to create, replace, start and remove. Pure.

A second pass over an unchanged world plans nothing. A pod whose namespace owner must go
is replaced whole (its app and sidecar lose their network with it); otherwise app and
sidecar are replaced or started on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from devmesh.plan.desired import ContainerSpec, Desired, PodSpec


@dataclass(frozen=True, slots=True)
class Observed:
    """A container with devmesh's labels, as the engine reports it."""

    id: str
    name: str
    role: str
    pod: str
    service: str
    version: str
    config_hash: str
    state: str  # created | running | restarting | exited | paused | dead | removing
    replica: int = 0
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    create_pods: tuple[PodSpec, ...] = ()  # pause first, then app and sidecar
    replace_pods: tuple[tuple[PodSpec, tuple[str, ...]], ...] = ()  # spec, old container ids
    create: tuple[ContainerSpec, ...] = ()  # single containers of an existing pod, or gateway
    replace: tuple[tuple[ContainerSpec, str], ...] = ()
    start: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    # Pods made ahead of a rebuild, without their app (plan/roll.py `spares`); nobody waits
    # for them, nor for `remove`: the daemon carries both out off its loop.
    spares: tuple[PodSpec, ...] = ()
    ensure_network: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (
            self.create_pods
            or self.replace_pods
            or self.create
            or self.replace
            or self.start
            or self.remove
            or self.spares
            or self.ensure_network
        )

    def describe(self) -> list[str]:
        out = [f"create pod {p.name}" for p in self.create_pods]
        out += [f"replace pod {p.name}" for p, _ in self.replace_pods]
        out += [f"create {c.name}" for c in self.create]
        out += [f"replace {c.name}" for c, _ in self.replace]
        out += [f"start {i[:12]}" for i in self.start]
        out += [f"remove {i[:12]}" for i in self.remove]
        out += [f"make spare {p.name}" for p in self.spares]
        return (["create network"] if self.ensure_network else []) + out


_GONE = ("dead", "removing")
_STOPPED = ("created", "exited")


def plan(
    desired: Desired,
    actual: Iterable[Observed],
    network_exists: bool = True,
    keep: frozenset[str] = frozenset(),
    spares: tuple[PodSpec, ...] = (),
) -> Plan:
    """`keep`: pods `desired` does not list that stay for now (old pods of a roll, serving
    or draining: plan/roll.py). `spares`: pods to have ahead of a rebuild without their
    app (plan/roll.py `spares`): made where missing; one that differs from its spec, or
    has an app, is removed (and made again once it is gone)."""
    by_pod: dict[str, dict[str, Observed]] = {}
    extra: list[Observed] = []
    for obs in actual:
        if obs.role == "guard":  # runs only inside apply: one seen here was left behind
            extra.append(obs)
            continue
        roles = by_pod.setdefault(obs.pod, {})
        if obs.role in roles:  # a duplicate (e.g. two daemons raced): keep one
            extra.append(obs)
        else:
            roles[obs.role] = obs
    create_pods: list[PodSpec] = []
    replace_pods: list[tuple[PodSpec, tuple[str, ...]]] = []
    create: list[ContainerSpec] = []
    replace: list[tuple[ContainerSpec, str]] = []
    start: list[str] = []
    wanted: set[str] = set()

    for pod in desired.pods:
        wanted.add(pod.name)
        have = by_pod.get(pod.name, {})
        owner = have.get("pod")
        if owner is None:
            stale = tuple(o.id for o in have.values())
            if stale:
                replace_pods.append((pod, stale))
            else:
                create_pods.append(pod)
            continue
        if owner.config_hash != pod.pause.config_hash or owner.state not in ("running",):
            # A stopped owner cannot just be started: its members would stay cut off.
            replace_pods.append((pod, tuple(o.id for o in have.values())))
            continue
        for spec in (pod.app, pod.sidecar):
            _member(spec, have.get(spec.role), create, replace, start)

    if desired.gateway is not None:
        gw = desired.gateway
        wanted.add(gw.name)
        _member(gw, by_pod.get(gw.name, {}).get("gateway"), create, replace, start)

    make_spares: list[PodSpec] = []
    for pod in spares:
        have = by_pod.get(pod.name, {})
        if not have:
            make_spares.append(pod)
        elif _spare_as_specified(pod, have):
            wanted.add(pod.name)  # else: removed below

    kept_versions = {(s, v) for s, v in desired.failed}
    remove = [o.id for o in extra]
    for pod_name, roles in by_pod.items():
        if pod_name in wanted or pod_name in keep:
            continue
        for obs in roles.values():
            if (obs.service, obs.version) in kept_versions:
                continue  # cannot run its new spec now: the old pods keep serving
            remove.append(obs.id)
    return Plan(
        create_pods=tuple(create_pods),
        replace_pods=tuple(replace_pods),
        create=tuple(create),
        replace=tuple(replace),
        start=tuple(start),
        remove=tuple(remove),
        spares=tuple(make_spares),
        ensure_network=not network_exists,
    )


def _spare_as_specified(pod: PodSpec, have: dict[str, Observed]) -> bool:
    owner, sidecar = have.get("pod"), have.get("sidecar")
    return (
        owner is not None
        and owner.state == "running"
        and owner.config_hash == pod.pause.config_hash
        and sidecar is not None
        and sidecar.state == "running"
        and sidecar.config_hash == pod.sidecar.config_hash
        and "app" not in have
    )


def _member(
    spec: ContainerSpec,
    have: Observed | None,
    create: list[ContainerSpec],
    replace: list[tuple[ContainerSpec, str]],
    start: list[str],
) -> None:
    if have is None or have.state in _GONE:
        create.append(spec) if have is None else replace.append((spec, have.id))
    elif have.config_hash != spec.config_hash:
        replace.append((spec, have.id))
    elif have.state in _STOPPED:
        start.append(have.id)
