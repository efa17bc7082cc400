"""xDS snapshots: one node group's complete configuration, versioned and checked. Pure.

A snapshot is what the ADS server serves to every Envoy of one node group (Envoy's node
*cluster*): the group's listeners, route configs, clusters and endpoint assignments as
proto-JSON dicts, with one version per resource type, a stable hash of that type's
resources. Modelled on go-control-plane's `cache/v3/snapshot.go`: `new_snapshot` builds the
value and refuses one that is not internally consistent, so nothing served can leave an
Envoy waiting forever for a resource that does not exist (a listener stuck warming on a
route config that never comes, a cluster on endpoints that never come).

Protobuf packing is not done here (this layer imports no grpc/protobuf): the xDS cache in
`devmesh.adapters.xds_cache` packs each distinct resource once, keyed by its digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from devmesh.core.problems import MeshError
from devmesh.envoy.resources import Json, Resources, runtime_layer

_T = "type.googleapis.com/envoy.config."
LISTENER: Final = _T + "listener.v3.Listener"
ROUTE: Final = _T + "route.v3.RouteConfiguration"
CLUSTER: Final = _T + "cluster.v3.Cluster"
ENDPOINT: Final = _T + "endpoint.v3.ClusterLoadAssignment"
SECRET: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME: Final = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
TYPE_URLS: Final = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET, RUNTIME)
NAME_KEY: Final = {
    LISTENER: "name",
    ROUTE: "name",
    CLUSTER: "name",
    ENDPOINT: "cluster_name",
    SECRET: "name",
    RUNTIME: "name",
}
SHORT: Final = {
    LISTENER: "LDS",
    ROUTE: "RDS",
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    SECRET: "SDS",
    RUNTIME: "RTDS",
}


class SnapshotError(MeshError):
    """A snapshot that must not be served: a dangling reference, a duplicate name, or (found
    when the cache packs it) a field Envoy's API lacks. Every problem is listed at once."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def digest(item: Json) -> str:
    """A resource's stable hash: sha256 of its sorted-key JSON."""
    text = json.dumps(item, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


Digests = dict[int, str]  # id(resource) -> digest, for one call that holds the resources


def _digest(item: Json, seen: Digests | None) -> str:
    """`digest`, once per object while `seen` lives: a render hands every caller of a service
    the same route config, clusters and endpoints objects."""
    if seen is None:
        return digest(item)
    found = seen.get(id(item))
    if found is None:
        found = seen[id(item)] = digest(item)
    return found


_WALKS: dict[tuple[str, str], tuple[str, ...]] = {}  # (what, digest) -> names found
_WALKS_LIMIT = 20_000


def _walked(
    what: str, key: str, item: Json, walk: Callable[[Any], Iterator[str]]
) -> tuple[str, ...]:
    """The names `walk` finds in a resource, remembered by its digest (a resource is the
    same wherever and whenever it appears: a push walks only what changed)."""
    found = _WALKS.get((what, key))
    if found is None:
        if len(_WALKS) >= _WALKS_LIMIT:
            _WALKS.clear()  # crude, and rare: a mesh has far fewer distinct resources
        found = _WALKS[(what, key)] = tuple(walk(item))
    return found


@dataclass(frozen=True, slots=True)
class TypeSnapshot:
    """The resources of one type, in the order they are served."""

    type_url: str
    version: str  # a stable hash of the resources' digests, in order
    names: tuple[str, ...]
    items: tuple[Json, ...]
    digests: tuple[str, ...]  # per resource: the cache packs each distinct one only once

    @classmethod
    def of(cls, type_url: str, items: Iterable[Json], seen: Digests | None = None) -> TypeSnapshot:
        items = tuple(items)
        digests = tuple(_digest(item, seen) for item in items)
        version = hashlib.sha256(",".join(digests).encode()).hexdigest()[:16]
        names = tuple(str(item.get(NAME_KEY[type_url], "")) for item in items)
        return cls(type_url, version, names, items, digests)

    def plus(self, other: TypeSnapshot, picked: Iterable[int]) -> TypeSnapshot:
        """These resources, then `other`'s at the indexes `picked` (digested already)."""
        picked = tuple(picked)
        if not picked:
            return self
        digests = self.digests + tuple(other.digests[i] for i in picked)
        return TypeSnapshot(
            self.type_url,
            hashlib.sha256(",".join(digests).encode()).hexdigest()[:16],
            self.names + tuple(other.names[i] for i in picked),
            self.items + tuple(other.items[i] for i in picked),
            digests,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One node group's configuration. Build it with `new_snapshot`, which checks it."""

    listeners: TypeSnapshot
    routes: TypeSnapshot
    clusters: TypeSnapshot
    endpoints: TypeSnapshot
    secrets: TypeSnapshot  # a rotation changes this type's version alone
    # RTDS: the runtime layer every ADS bootstrap waits for (`envoy.bootstrap`); adaptive
    # tracing changes this type's version alone. Always one resource, empty by default.
    runtimes: TypeSnapshot

    @classmethod
    def of(cls, resources: Resources, seen: Digests | None = None) -> Snapshot:
        """The value, unchecked (see `new_snapshot`)."""
        return cls(
            TypeSnapshot.of(LISTENER, resources.listeners, seen),
            TypeSnapshot.of(ROUTE, resources.routes, seen),
            TypeSnapshot.of(CLUSTER, resources.clusters, seen),
            TypeSnapshot.of(ENDPOINT, resources.endpoints, seen),
            TypeSnapshot.of(SECRET, resources.secrets, seen),
            TypeSnapshot.of(RUNTIME, resources.runtimes or (runtime_layer(None),), seen),
        )

    def of_type(self, type_url: str) -> TypeSnapshot:
        return {
            LISTENER: self.listeners,
            ROUTE: self.routes,
            CLUSTER: self.clusters,
            ENDPOINT: self.endpoints,
            SECRET: self.secrets,
            RUNTIME: self.runtimes,
        }[type_url]

    @property
    def types(self) -> tuple[TypeSnapshot, ...]:
        return (
            self.listeners,
            self.routes,
            self.clusters,
            self.endpoints,
            self.secrets,
            self.runtimes,
        )

    @property
    def versions(self) -> dict[str, str]:
        """type URL -> version. Two snapshots with equal versions serve the same thing."""
        return {t.type_url: t.version for t in self.types}

    def references(self) -> dict[str, frozenset[str]]:
        """The RDS and EDS names the listeners and clusters refer to: what an Envoy must
        have asked for, been sent and ACKed before it runs this snapshot."""
        listeners = self.listeners
        rds = (
            _walked("rds", d, item, _rds_names)
            for d, item in zip(listeners.digests, listeners.items, strict=True)
        )
        sds = (
            _walked("sds", d, item, _sds_names)
            for typed in (self.listeners, self.clusters)
            for d, item in zip(typed.digests, typed.items, strict=True)
        )
        return {
            ROUTE: frozenset(name for names in rds for name in names),
            ENDPOINT: frozenset(_eds_names(self.clusters.items)),
            SECRET: frozenset(name for names in sds for name in names),
        }

    def problems(self) -> list[str]:
        """What makes this snapshot inconsistent (go-control-plane's `Consistent`), and
        more: duplicate names, and routes to clusters the snapshot lacks."""
        out = []
        for typed in self.types:
            seen: set[str] = set()
            for name in typed.names:
                if name in seen:
                    out.append(f"two {SHORT[typed.type_url]} resources named {name!r}")
                seen.add(name)
        have = {
            ROUTE: set(self.routes.names),
            ENDPOINT: set(self.endpoints.names),
            SECRET: set(self.secrets.names),
        }
        what = {
            ROUTE: "no route config",
            ENDPOINT: "no endpoints (ClusterLoadAssignment)",
            SECRET: "no secret (no certificate issued)",
        }
        for type_url, names in self.references().items():
            for name in sorted(names - have[type_url]):
                out.append(f"{SHORT[type_url]} {name!r} is referred to but has {what[type_url]}")
        clusters = set(self.clusters.names)
        routed: dict[str, str] = {}
        for typed in (self.listeners, self.routes):
            for owner, d, item in zip(typed.names, typed.digests, typed.items, strict=True):
                for name in _walked("cds", d, item, _cluster_names):
                    routed.setdefault(name, f"{SHORT[typed.type_url]} {owner!r}")
        for name, owner in sorted(routed.items()):
            if name not in clusters:
                out.append(f"{owner} routes to cluster {name!r}, which the snapshot lacks")
        return out

    def consistent(self) -> None:
        """Raise SnapshotError listing every problem, if there is any."""
        problems = self.problems()
        if problems:
            raise SnapshotError(problems)


def new_snapshot(resources: Resources, group: str = "", seen: Digests | None = None) -> Snapshot:
    """A checked snapshot of one node group. Raises SnapshotError (each problem prefixed with
    `group`) rather than return one that would leave an Envoy waiting."""
    snapshot = Snapshot.of(resources, seen)
    problems = snapshot.problems()
    if problems:
        raise SnapshotError(f"{group}: {p}" if group else p for p in problems)
    return snapshot


def new_snapshots(groups: Mapping[str, Resources]) -> dict[str, Snapshot]:
    """Every node group's checked snapshot (`render`'s output in, the cache's input out).
    One SnapshotError lists the problems of every group at once."""
    out: dict[str, Snapshot] = {}
    problems: list[str] = []
    seen: Digests = {}  # while `groups` holds every resource: ids are not reused meanwhile
    for group, resources in groups.items():
        try:
            out[group] = new_snapshot(resources, group, seen)
        except SnapshotError as e:
            problems += e.problems
    if problems:
        raise SnapshotError(problems)
    return out


def with_secrets(
    snapshots: Mapping[str, Snapshot],
    secrets: Mapping[str, tuple[Json, ...]],
    seen: Digests | None = None,
) -> dict[str, Snapshot] | None:
    """These checked snapshots serving other secrets (node group -> its secrets; a group
    not named keeps its own): what a certificate rotation changes, made without digesting
    or checking again what did not change. None when any group's secret names differ from
    what it served (then its references must be checked again: use `new_snapshots`)."""
    out: dict[str, Snapshot] = {}
    for group, snapshot in snapshots.items():
        own = secrets.get(group)
        if own is None:
            out[group] = snapshot
            continue
        typed = TypeSnapshot.of(SECRET, own, seen)
        if typed.names != snapshot.secrets.names:
            return None
        same = typed.version == snapshot.secrets.version
        out[group] = snapshot if same else dataclasses.replace(snapshot, secrets=typed)
    return out


def with_runtime(snapshots: Mapping[str, Snapshot], layer: Json) -> dict[str, Snapshot]:
    """These checked snapshots, every group serving the runtime layer `layer` (one RTDS
    resource, named as every bootstrap's: `runtime_layer`). Nothing else is digested or
    checked again: a layer refers to nothing."""
    typed = TypeSnapshot.of(RUNTIME, (layer,))
    return {
        group: snapshot
        if snapshot.runtimes.version == typed.version
        else dataclasses.replace(snapshot, runtimes=typed)
        for group, snapshot in snapshots.items()
    }


def bridging(old: Snapshot, new: Snapshot) -> Snapshot | None:
    """`new`, still serving the clusters of `old` that it drops, with their endpoints and the
    secrets they use; None when it drops none.

    Make before break, the other half: an Envoy takes CDS before it takes the listeners and
    routes that stop using a cluster, so a cluster dropped in the same push is gone while a
    route still sends to it, and Envoy answers that route 503 with no body (response flag NC).
    Envoy's xDS docs: stale clusters and their endpoints are removed once nothing refers to
    them. The cache serves this first and `new` once every Envoy of the group has taken it
    (`adapters/xds_cache.py`). Consistent by construction: it only adds what `old` held, and
    only under names `new` lacks."""
    kept = set(new.clusters.names)
    dropped = [i for i, name in enumerate(old.clusters.names) if name not in kept]
    if not dropped:
        return None
    eds = set(_eds_names(old.clusters.items[i] for i in dropped)) - set(new.endpoints.names)
    sds = {
        name
        for i in dropped
        for name in _walked("sds", old.clusters.digests[i], old.clusters.items[i], _sds_names)
    } - set(new.secrets.names)
    return dataclasses.replace(
        new,
        clusters=new.clusters.plus(old.clusters, dropped),
        endpoints=new.endpoints.plus(old.endpoints, _named(old.endpoints, eds)),
        secrets=new.secrets.plus(old.secrets, _named(old.secrets, sds)),
    )


def _named(typed: TypeSnapshot, names: set[str]) -> list[int]:
    return [i for i, name in enumerate(typed.names) if name in names]


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a JSON tree, each before those inside it, in document order."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


def _rds_names(node: Any) -> Iterator[str]:
    for d in _dicts(node):
        rds = d.get("rds")
        if isinstance(rds, dict) and "route_config_name" in rds:
            yield str(rds["route_config_name"])


def _sds_names(node: Any) -> Iterator[str]:
    """Secrets a listener or cluster asks SDS for: each `{name, sds_config}`."""
    for d in _dicts(node):
        if "sds_config" in d and "name" in d:
            yield str(d["name"])


def _eds_names(clusters: Iterable[Json]) -> Iterator[str]:
    for c in clusters:
        if c.get("type") == "EDS":
            yield str(c.get("eds_cluster_config", {}).get("service_name") or c.get("name", ""))


def _cluster_names(node: Any) -> Iterator[str]:
    """Clusters a listener or route config sends traffic to: `cluster` in a route action,
    TCP proxy or mirror policy, and each `weighted_clusters` entry's `name`."""
    for d in _dicts(node):
        cluster = d.get("cluster")
        if isinstance(cluster, str):
            yield cluster
        weighted = d.get("weighted_clusters")
        if isinstance(weighted, dict):
            for entry in weighted.get("clusters", ()):
                if isinstance(entry, dict) and "name" in entry:
                    yield str(entry["name"])
